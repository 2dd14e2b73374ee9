"""`mlflow run --backend kubernetes` end to end on a real cluster with the k8s/ stack: the
README's command (through celeb_smile.sweep.single_run, as scripts/tracking.py runs it) finishes
with no grant by hand, as a trial user made for the run and gone after it, and a person who may
not manage the experiment is refused before anything is made; a plain `mlflow run` still works
as the legacy trainer (granted the experiment): its model downloads and predicts, everything
(runs, users, grants) survives a server and database restart, and bad parameters fail fast and
visibly."""

import re
import subprocess
import uuid

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.server import get_app_client

from celeb_smile.constants import EPOCH_METRICS, ERROR_TAG, EXIT_BAD_INPUT, TRIAL_USER_TAG
from celeb_smile.sweep.access import grant_trainer
from celeb_smile.sweep.backends.kubernetes import CREDENTIALS_COMPONENT
from tests.cluster.conftest import (
    LABEL_KEY, RUN_ID_PATTERN, ProjectRun, TrainingJobs, http_status, job_pod_logs, job_pods,
    mlflow_run_on_cluster,
)
from tests.conftest import BIN_DIR, PROJECT_DIR, SMALL_PARAMS

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
    assert _credentials_mounted_from(pod) == "mlflow-trainer"
    run = _client(cluster_stack).get_run(finished_run.run_id)
    assert run.data.params["epochs"] == "2"  # logged by the pod, as the trainer (from the file)


def _credentials_mounted_from(pod) -> str:
    """The Secret whose MLflow credentials file the pod read at ~/.mlflow/credentials; no
    credential variable in its environment (it would win over the file)."""
    container = pod["spec"]["containers"][0]
    env = {item["name"] for item in container["env"]}
    assert not env & {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}, env
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/home/trainer/.mlflow"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["projected"]["defaultMode"] == 0o440
    (source,) = volume["projected"]["sources"]
    assert source["secret"]["items"] == [{"key": "credentials", "path": "credentials"}]
    return source["secret"]["name"]


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


# -- the README's command: a trial user of its own, no grant by hand ---------------------------
TRIAL_USER_LINE = re.compile(r"trial user (trial-\S+) \(Secret (\S+) in (\S+)\)")


def readme_command(stack, jobs: TrainingJobs, credentials, *args, timeout: float = 900
                   ) -> ProjectRun:
    """`scripts/tracking.py -- mlflow run . --backend kubernetes --backend-config ... -P ...`
    as `credentials` on MLflow and as the stack's sweep user on Kubernetes (the shipped Role
    celeb-smile-sweep-user): what scripts/tracking.py runs once it has the tracking addresses."""
    command = [str(BIN_DIR / "python"), "-m", "celeb_smile.sweep.single_run", "--",
               str(BIN_DIR / "mlflow"), "run", str(PROJECT_DIR), "--backend", "kubernetes",
               "--backend-config", str(stack.backend_config), *args]
    env = dict(stack.sweep_user_env, MLFLOW_TRACKING_URI=stack.tracking_uri,
               KUBE_MLFLOW_TRACKING_URI=stack.in_cluster_tracking_uri,
               MLFLOW_TRACKING_USERNAME=credentials[0], MLFLOW_TRACKING_PASSWORD=credentials[1])
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    try:
        result = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode() + (error.stderr or b"").decode()
        jobs.track_output(output)
        raise AssertionError(f"the README's command did not end within {timeout}s:\n"
                             f"{output[-4000:]}")
    output = result.stdout + result.stderr
    run_ids = RUN_ID_PATTERN.findall(output)
    return ProjectRun(result.returncode, output, run_ids[-1] if run_ids else None,
                      jobs.track_output(output))


def _trial_secrets(stack) -> list[str]:
    return stack.kubectl("get", "secrets", "-l", f"{LABEL_KEY}={CREDENTIALS_COMPONENT}",
                         "-o", "name").stdout.split()


def _auth_client(stack):
    return get_app_client("basic-auth", tracking_uri=stack.tracking_uri)


@pytest.fixture(scope="module")
def readme_run(cluster_stack):
    """The README's command as the admin, in the Default experiment, which nobody granted the
    trainer or anyone else (its Job deleted afterwards)."""
    trainer = _auth_client(cluster_stack).get_user_permission("trainer", "experiment", "0")
    assert not trainer.allowed, trainer.permission  # no grant by hand
    admin = (cluster_stack.env["MLFLOW_TRACKING_USERNAME"],
             cluster_stack.env["MLFLOW_TRACKING_PASSWORD"])
    secrets_before = _trial_secrets(cluster_stack)
    jobs = TrainingJobs(cluster_stack)
    try:
        params = [item for name, value in SMALL_PARAMS.items()
                  for item in ("-P", f"{name}={value}")]
        run = readme_command(cluster_stack, jobs, admin, *params)
        logs = "".join(job_pod_logs(cluster_stack, name) for name in run.job_names)
        assert run.returncode == 0, f"the README's command failed:\n{run.output[-5000:]}\n" \
                                    f"pod:\n{logs}"
        assert len(run.job_names) == 1 and run.run_id, run.output[-4000:]
        (user, secret, namespace), = TRIAL_USER_LINE.findall(run.output)
        yield run, user, secret, namespace, secrets_before
    finally:
        jobs.cleanup()


def test_the_readme_command_runs_with_no_grant_as_a_user_of_its_own(cluster_stack, readme_run):
    run, user, secret, namespace, _ = readme_run
    assert re.fullmatch(r"trial-0-[0-9a-f]{12}", user) and secret == f"celeb-smile-{user}"
    assert namespace == cluster_stack.namespace
    client = _client(cluster_stack)
    mlflow_run = client.get_run(run.run_id)
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.experiment_id == "0"
    assert mlflow_run.data.tags[TRIAL_USER_TAG] == user
    assert mlflow_run.data.params["epochs"] == "2"
    for key in EPOCH_METRICS:  # logged by the pod, as the run's trial user
        history = client.get_metric_history(run.run_id, key)
        assert sorted(m.step for m in history) == [0, 1], (key, history)
    (pod,) = job_pods(cluster_stack, run.job_names[0])
    assert _credentials_mounted_from(pod) == secret
    assert pod["metadata"]["labels"][LABEL_KEY] == "training"


def test_the_readme_commands_user_and_secret_are_gone_after_it(cluster_stack, readme_run):
    from mlflow.exceptions import MlflowException

    run, user, secret, _, secrets_before = readme_run
    with pytest.raises(MlflowException, match="not found|RESOURCE_DOES_NOT_EXIST"):
        _auth_client(cluster_stack).get_user(user)
    gone = cluster_stack.kubectl("get", "secret", secret, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout + gone.stderr
    assert _trial_secrets(cluster_stack) == secrets_before


def test_a_person_who_may_not_manage_the_experiment_gets_one_line_and_nothing_is_made(
        cluster_stack, training_jobs):
    client = _client(cluster_stack)
    experiment_id = client.create_experiment(f"not-theirs-{uuid.uuid4().hex[:8]}")
    person = (f"analyst-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex)
    auth = _auth_client(cluster_stack)
    auth.create_user(*person)
    auth.grant_user_permission(person[0], "experiment", experiment_id, "EDIT")  # not MANAGE
    secrets_before = _trial_secrets(cluster_stack)

    run = readme_command(cluster_stack, training_jobs, person, "--experiment-id", experiment_id,
                         "-P", "epochs=2", timeout=300)

    assert run.returncode == EXIT_BAD_INPUT, run.output[-3000:]
    errors = [line for line in run.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, run.output[-3000:]
    assert f"'{person[0]}' may not create user 'trial-{experiment_id}-" in errors[0]
    assert f"it needs MANAGE on experiment {experiment_id}" in errors[0]
    assert run.job_names == [] and run.run_id is None
    assert client.search_runs([experiment_id]) == []
    assert _trial_secrets(cluster_stack) == secrets_before


def test_a_failed_job_of_the_readme_command_says_why_in_one_line(cluster_stack, training_jobs):
    """MLflow says only "backoff limit"; the wrapper adds the pod's own error line."""
    admin = (cluster_stack.env["MLFLOW_TRACKING_USERNAME"],
             cluster_stack.env["MLFLOW_TRACKING_PASSWORD"])
    run = readme_command(cluster_stack, training_jobs, admin, "-P", "epochs=0", timeout=600)
    assert run.returncode != 0 and len(run.job_names) == 1, run.output[-3000:]
    assert (f"error: Job {run.job_names[0]} failed: error: epochs must be a positive integer"
            in run.output), run.output[-3000:]
    assert _client(cluster_stack).get_run(run.run_id).info.status == "FAILED"
    (_, secret, _), = TRIAL_USER_LINE.findall(run.output)
    gone = cluster_stack.kubectl("get", "secret", secret, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout + gone.stderr


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

    old_pods = set(cluster_stack.tracking_kubectl(
        "get", "pods", "-l", f"{LABEL_KEY} in (mlflow,postgres)", "-o", "name").stdout.split())
    cluster_stack.tracking_kubectl("delete", "pods", "-l", f"{LABEL_KEY} in (mlflow,postgres)",
                                   "--wait=true", "--timeout=120s", timeout=150)
    cluster_stack.reconnect()
    new_pods = set(cluster_stack.tracking_kubectl(
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
