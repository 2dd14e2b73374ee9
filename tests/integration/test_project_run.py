"""`mlflow run` of the project against a real tracking server: what a run records."""

import os
import signal
import subprocess
import time

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from celeb_smile import IMAGE_SHAPE
from celeb_smile.constants import (ERROR_TAG, EPOCH_METRICS, EXIT_TERMINATED, FINAL_METRICS,
                                   REASON_TAG)
from tests.helpers.flaky_front import flaky_front
from tests.helpers.project import docker_free_project, train_argv
from tests.conftest import BIN_DIR, PROJECT_DIR

pytestmark = pytest.mark.integration
# Settings that learn the synthetic set (see benchmarks/README.md for the timings).
LEARNING_PARAMS = {"epochs": "8", "training_samples": "2000", "validation_samples": "300",
                   "convolutions": "1", "batch_size": "32", "dataset": "synthetic"}


def mlflow_run(tracking_uri, project_dir, params, experiment, timeout=600):
    """`mlflow run PROJECT --env-manager local -P ...`; returns the finished process."""
    argv = [str(BIN_DIR / "mlflow"), "run", str(project_dir), "--env-manager", "local",
            "--experiment-name", experiment]
    for name, value in params.items():
        argv += ["-P", f"{name}={value}"]
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{BIN_DIR}:/usr/bin:/bin"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def only_run(tracking_uri, experiment):
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.fixture(scope="module")
def local_project(tmp_path_factory):
    """The project as `mlflow run --env-manager local` can run it (MLflow runs any project with
    a docker_env in Docker; tests/docker covers that path)."""
    return docker_free_project(tmp_path_factory.mktemp("project"))


def test_mlflow_run_records_params_epoch_metrics_and_a_loadable_model(
        mlflow_server, local_project, small_params):
    result = mlflow_run(mlflow_server, local_project, small_params, "it-run")
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(mlflow_server, "it-run")
    assert run.info.status == "FINISHED"
    for name, value in small_params.items():
        assert run.data.params[name] == value
    assert run.data.params["randomize_images"] == "true"  # resolved defaults are logged too
    # Exactly the metrics a sweep's objective may name (celeb_smile.constants).
    assert set(run.data.metrics) == set(EPOCH_METRICS + FINAL_METRICS)
    for metric in EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == [0, 1], metric
    for metric in FINAL_METRICS:
        assert len(client.get_metric_history(run.info.run_id, metric)) == 1, metric
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    images = np.zeros((3, *IMAGE_SHAPE), dtype=np.uint8)
    assert np.asarray(model.predict(images)).shape == (3, 1)


def test_bad_parameter_under_mlflow_run_ends_the_run_failed_with_its_message(
        mlflow_server, local_project, small_params):
    result = mlflow_run(mlflow_server, local_project, dict(small_params, epochs="0"), "it-bad")
    assert result.returncode != 0
    assert "error: epochs must be a positive integer, got 0" in result.stderr
    _, run = only_run(mlflow_server, "it-bad")
    assert run.info.status == "FAILED"
    assert run.data.tags["celeb_smile.error"] == "epochs must be a positive integer, got 0"


def test_other_spellings_of_valid_values_train_under_mlflow_run(
        mlflow_server, local_project, small_params):
    """MLflow logs -P values as given when it creates the run; train.py must not try to
    re-log them in its own spelling (MLflow refuses to change a logged parameter)."""
    spelt = {"learning_rate": "1e-3", "randomize_images": "True", "epochs": "02"}
    result = mlflow_run(mlflow_server, local_project, dict(small_params, **spelt), "it-spelling")
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(mlflow_server, "it-spelling")
    assert run.info.status == "FINISHED"
    assert {name: run.data.params[name] for name in spelt} == spelt
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2


def test_a_run_recording_a_different_value_is_refused_with_both_values(
        mlflow_server, small_params):
    client = MlflowClient(mlflow_server)
    run_id = client.create_run(client.create_experiment("it-different")).info.run_id
    client.log_param(run_id, "learning_rate", "0.5")
    argv = train_argv(small_params, "--learning_rate", "1e-3")
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_RUN_ID": run_id,
           "PATH": f"{BIN_DIR}:/usr/bin:/bin"}
    result = subprocess.run(argv, cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                            timeout=300)
    message = f"run {run_id} already records learning_rate=0.5, not 0.001"
    assert result.returncode == 1 and f"error: {message}" in result.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[ERROR_TAG] == message


def test_missing_celeb_a_fails_the_run_with_a_clear_message(
        mlflow_server, local_project, small_params, tmp_path):
    params = dict(small_params, dataset="celeb_a", data_dir=str(tmp_path))
    result = mlflow_run(mlflow_server, local_project, params, "it-celeba")
    assert result.returncode != 0
    _, run = only_run(mlflow_server, "it-celeba")
    assert run.info.status == "FAILED"
    assert "CelebA is not prepared" in run.data.tags["celeb_smile.error"]


def test_synthetic_set_is_learned_to_90_percent(mlflow_server):
    """The learning test: the whole `python train.py` process. How fast it gets there is a
    benchmark (benchmarks/training_speed.py, time to val_accuracy >= 0.9), not an assertion."""
    argv = train_argv(LEARNING_PARAMS)
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "it-learning",
           "PATH": f"{BIN_DIR}:/usr/bin:/bin"}
    result = subprocess.run(argv, cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(mlflow_server, "it-learning")
    best = max(m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy"))
    assert best >= 0.9, f"val_accuracy peaked at {best:.3f}"


def test_training_waits_out_a_server_that_is_away_and_logs_to_its_own_run(
        mlflow_server, small_params):
    """The driver's case: the run exists (MLFLOW_RUN_ID) and the server's first answers are a
    gateway's empty 404s. Nothing is lost, no second run appears."""
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(f"away-{time.time_ns()}")
    launched = client.create_run(experiment_id).info.run_id
    argv = train_argv(small_params)
    with flaky_front(mlflow_server, failures=3) as (uri, answered):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=dict(
            os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_RUN_ID=launched,
            MLFLOW_EXPERIMENT_ID=experiment_id))
    assert result.returncode == 0, result.stderr[-3000:]
    assert answered[:4] == [404, 404, 404, 200]
    assert "tracking server unavailable (open the run: MlflowException" in result.stderr
    assert [r.info.run_id for r in client.search_runs([experiment_id])] == [launched]
    assert client.get_run(launched).info.status == "FINISHED"
    for metric in EPOCH_METRICS:
        assert sorted(m.step for m in client.get_metric_history(launched, metric)) == [0, 1]


def start_training(tracking_uri, params):
    """`python train.py` on a run created here (as the driver does); (process, client, run id)."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(f"sigterm-{time.time_ns()}")
    run_id = client.create_run(experiment_id).info.run_id
    process = subprocess.Popen(
        train_argv(params), cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_RUN_ID=run_id,
                            MLFLOW_EXPERIMENT_ID=experiment_id))
    return process, client, run_id


def epochs_logged(client, run_id) -> int:
    return len(client.get_metric_history(run_id, "loss"))


def wait_for_epochs(process, client, run_id, count: int, timeout: float = 300) -> int:
    """Until the run has `count` epochs (a hang guard, not a speed figure)."""
    deadline = time.monotonic() + timeout
    while (logged := epochs_logged(client, run_id)) < count:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    return logged


LONG_EPOCHS = dict(LEARNING_PARAMS, epochs="50", training_samples="3000")


def test_sigterm_mid_epoch_ends_the_run_killed_with_the_reason_and_exits_143(mlflow_server):
    process, client, run_id = start_training(mlflow_server, LONG_EPOCHS)
    before = wait_for_epochs(process, client, run_id, 1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_TERMINATED, output[-3000:]
    assert "error: terminated by SIGTERM" in output
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[REASON_TAG].startswith("terminated by SIGTERM")
    assert epochs_logged(client, run_id) <= before + 1  # stopped within the epoch under way
    assert "model" not in {a.path for a in client.list_artifacts(run_id)}


def test_a_run_ended_by_the_driver_before_the_sigterm_is_left_as_the_driver_left_it(
        mlflow_server):
    process, client, run_id = start_training(mlflow_server, LONG_EPOCHS)
    wait_for_epochs(process, client, run_id, 1)
    client.set_tag(run_id, REASON_TAG, "stopped by asha at epoch 1")
    client.set_terminated(run_id, "FAILED")  # a status train.py itself never writes on SIGTERM
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_TERMINATED, output[-3000:]
    assert "already ended FAILED: left as it is" in output
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[REASON_TAG] == "stopped by asha at epoch 1"
