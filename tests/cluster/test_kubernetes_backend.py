"""`mlflow run --backend kubernetes` end to end on a real cluster with the k8s/ stack: a small
training Job reports to the in-cluster server (as the trainer, granted the experiment), its
model downloads and predicts, everything (runs, users, grants) survives a server and database
restart, and bad parameters fail fast and visibly."""

import uuid

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.server import get_app_client

from celeb_smile.constants import EPOCH_METRICS, ERROR_TAG
from celeb_smile.sweep.access import grant_trainer
from tests.cluster.conftest import (
    LABEL_KEY, TrainingJobs, http_status, job_pod_logs, job_pods, mlflow_run_on_cluster,
)
from tests.conftest import SMALL_PARAMS

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def experiment_id(cluster_stack):
    client = MlflowClient(cluster_stack.tracking_uri)
    experiment_id = client.create_experiment(f"cluster-tests-{uuid.uuid4().hex[:8]}")
    grant_trainer(cluster_stack.tracking_uri, experiment_id)  # what the driver does
    return experiment_id


@pytest.fixture(scope="module")
def finished_run(cluster_stack, experiment_id):
    """One small training run through the kubernetes backend (its Job deleted afterwards)."""
    jobs = TrainingJobs(cluster_stack)
    try:
        run = mlflow_run_on_cluster(cluster_stack, jobs, dict(SMALL_PARAMS), experiment_id)
        logs = "".join(job_pod_logs(cluster_stack, name) for name in run.job_names)
        assert run.returncode == 0, f"mlflow run failed:\n{run.output[-4000:]}\npod:\n{logs}"
        assert len(run.job_names) == 1 and run.run_id, run.output[-4000:]
        yield run
    finally:
        jobs.cleanup()


def _client(stack) -> MlflowClient:
    return MlflowClient(stack.tracking_uri)


def _snapshot(stack, experiment_id) -> dict:
    """Every run of the experiment with its status, params, tags and metric histories."""
    client = _client(stack)
    snapshot = {}
    for run in client.search_runs([experiment_id]):
        histories = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                     for key in run.data.metrics}
        snapshot[run.info.run_id] = (run.info.status, run.data.params, histories,
                                     {k: v for k, v in run.data.tags.items()})
    return snapshot


def test_run_finishes_with_epoch_metrics(cluster_stack, finished_run):
    client = _client(cluster_stack)
    run = client.get_run(finished_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("mlflow.project.backend") == "kubernetes"
    assert run.data.params["epochs"] == "2" and run.data.params["training_samples"] == "64"
    for key in EPOCH_METRICS:
        history = client.get_metric_history(finished_run.run_id, key)
        assert sorted(m.step for m in history) == [0, 1], (key, history)


def test_job_ran_as_configured(cluster_stack, finished_run):
    (pod,) = job_pods(cluster_stack, finished_run.job_names[0])
    assert pod["metadata"]["labels"][LABEL_KEY] == "training"
    assert pod["spec"]["serviceAccountName"] == "celeb-smile-trainer"
    container = pod["status"]["containerStatuses"][0]
    assert container["state"]["terminated"]["exitCode"] == 0
    env = {item["name"]: item.get("value") for item in pod["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == cluster_stack.in_cluster_tracking_uri
    assert env["MLFLOW_RUN_ID"] == finished_run.run_id
    assert env["TFDS_DATA_DIR"] == "/data/tensorflow_datasets"
    secrets = {item["name"]: item["valueFrom"]["secretKeyRef"]["name"]
               for item in pod["spec"]["containers"][0]["env"] if "valueFrom" in item}
    assert secrets == {"MLFLOW_TRACKING_USERNAME": "mlflow-trainer",
                       "MLFLOW_TRACKING_PASSWORD": "mlflow-trainer"}
    run = _client(cluster_stack).get_run(finished_run.run_id)
    assert run.data.params["epochs"] == "2"  # logged by the pod, as the trainer


def test_model_downloads_through_the_server_and_predicts(cluster_stack, finished_run, tmp_path,
                                                         monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", cluster_stack.tracking_uri)
    mlflow.set_tracking_uri(cluster_stack.tracking_uri)
    model_uri = f"runs:/{finished_run.run_id}/model"
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp_path))
    assert (tmp_path / "model" / "MLmodel").is_file() or any(tmp_path.rglob("MLmodel")), local
    model = mlflow.pyfunc.load_model(model_uri)
    images = np.random.default_rng(0).integers(0, 256, size=(1, 218, 178, 3), dtype=np.uint8)
    prediction = np.asarray(model.predict(images))
    assert prediction.shape == (1, 1)
    assert 0.0 <= float(prediction[0, 0]) <= 1.0


def test_bad_parameter_fails_fast_and_visibly(cluster_stack, experiment_id, training_jobs):
    run = mlflow_run_on_cluster(cluster_stack, training_jobs, dict(SMALL_PARAMS, epochs="0"),
                                experiment_id, timeout=300)
    assert run.returncode != 0, run.output[-3000:]
    assert len(run.job_names) == 1 and run.run_id, run.output[-3000:]
    mlflow_run = _client(cluster_stack).get_run(run.run_id)
    assert mlflow_run.info.status == "FAILED"
    assert "epochs must be a positive integer" in mlflow_run.data.tags.get(ERROR_TAG, ""), \
        mlflow_run.data.tags
    (pod,) = job_pods(cluster_stack, run.job_names[0])
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0
    assert "epochs must be a positive integer" in job_pod_logs(cluster_stack, run.job_names[0])


def test_everything_survives_a_server_and_database_restart(cluster_stack, experiment_id,
                                                           finished_run, tmp_path):
    """Runs last in this module: every earlier run, metric and artifact must still be there."""
    import mlflow

    before = _snapshot(cluster_stack, experiment_id)
    assert finished_run.run_id in before
    user = (f"restart-check-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex)
    get_app_client("basic-auth", tracking_uri=cluster_stack.tracking_uri).create_user(*user)
    artifacts_before = sorted(
        p.relative_to(tmp_path / "before").as_posix() for p in _download(
            cluster_stack, finished_run.run_id, tmp_path / "before").rglob("*"))

    old_pods = set(cluster_stack.kubectl(
        "get", "pods", "-l", f"{LABEL_KEY} in (mlflow,postgres)", "-o", "name").stdout.split())
    cluster_stack.kubectl("delete", "pods", "-l", f"{LABEL_KEY} in (mlflow,postgres)",
                          "--wait=true", "--timeout=120s", timeout=150)
    cluster_stack.reconnect()
    new_pods = set(cluster_stack.kubectl(
        "get", "pods", "-l", f"{LABEL_KEY} in (mlflow,postgres)", "-o", "name").stdout.split())
    assert new_pods and not new_pods & old_pods

    assert _snapshot(cluster_stack, experiment_id) == before
    api = f"{cluster_stack.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(api, credentials=user) == 200  # users live in PostgreSQL
    trainer = cluster_stack.overlay.trainer_credentials()
    assert http_status(f"{cluster_stack.tracking_uri}/api/2.0/mlflow/experiments/get?"
                       f"experiment_id={experiment_id}", credentials=trainer) == 200  # and grants
    artifacts_after = sorted(
        p.relative_to(tmp_path / "after").as_posix() for p in _download(
            cluster_stack, finished_run.run_id, tmp_path / "after").rglob("*"))
    assert artifacts_after == artifacts_before
    mlflow.set_tracking_uri(cluster_stack.tracking_uri)
    assert mlflow.pyfunc.load_model(f"runs:/{finished_run.run_id}/model") is not None


def _download(stack, run_id, destination):
    import mlflow

    mlflow.set_tracking_uri(stack.tracking_uri)
    destination.mkdir(parents=True)
    mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/model",
                                        dst_path=str(destination))
    return destination
