"""`mlflow run` of the project against a real tracking server: what a run records."""

import os
import signal
import subprocess
import tempfile
import time

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from celeb_smile import IMAGE_SHAPE, checkpoint
from celeb_smile.config import config_from_params
from celeb_smile.constants import (EPOCH_METRIC_DIRECTIONS, ERROR_TAG, EPOCH_METRICS,
                                   EXIT_TERMINATED, FINAL_METRICS, REASON_TAG, SWEEP_ENV)
from celeb_smile.training import epoch_seeds
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


def terminate(process) -> str:
    """SIGTERM to a training process; what it printed, once it exited 143."""
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_TERMINATED, output[-3000:]
    return output


def test_sigterm_mid_epoch_ends_the_run_killed_with_the_reason_and_exits_143(mlflow_server):
    process, client, run_id = start_training(mlflow_server, LONG_EPOCHS)
    wait_for_epochs(process, client, run_id, 1)
    assert "error: terminated by SIGTERM" in terminate(process)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[REASON_TAG].startswith("terminated by SIGTERM")
    assert epochs_logged(client, run_id) < int(LONG_EPOCHS["epochs"])  # it did not train on
    assert "model" not in {a.path for a in client.list_artifacts(run_id)}
    # How soon it stops (within the epoch under way) is benchmarks/sigterm_stop.py's figure.


def test_a_run_ended_by_the_driver_before_the_sigterm_is_left_as_the_driver_left_it(
        mlflow_server):
    process, client, run_id = start_training(mlflow_server, LONG_EPOCHS)
    wait_for_epochs(process, client, run_id, 1)
    client.set_tag(run_id, REASON_TAG, "stopped by asha at epoch 1")
    client.set_terminated(run_id, "FAILED")  # a status train.py itself never writes on SIGTERM
    assert "already ended FAILED: left as it is" in terminate(process)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[REASON_TAG] == "stopped by asha at epoch 1"


# -- resuming a run from its checkpoint ---------------------------------------------------------
# The SIGTERM is sent once epoch 2's checkpoint is on the run; on a loaded machine epoch 3's may
# be there too by the time it lands (how soon is not this test's): the run resumes after
# whichever checkpoint it has, and 4 epochs leave room for either.
RESUMED_PARAMS = dict(LEARNING_PARAMS, epochs="4", training_samples="3000", convolutions="3")


def checkpoint_record(client, run_id):
    """The record of the run's checkpoint, None before the first."""
    if not client.list_artifacts(run_id, checkpoint.CHECKPOINT_DIR):
        return None
    with tempfile.TemporaryDirectory() as scratch:
        return checkpoint.read(
            client.download_artifacts(run_id, checkpoint.CHECKPOINT_ARTIFACT, scratch)).record


def wait_for_checkpoint(process, client, run_id, epochs: int, timeout: float = 300):
    wait_for_epochs(process, client, run_id, epochs, timeout)  # cheaper to poll first
    deadline = time.monotonic() + timeout
    while (found := checkpoint_record(client, run_id)) is None or found.epochs_done < epochs:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.1)
    return found


def train_on(tracking_uri, run_id, params):
    """`python train.py` on an existing run, to the end."""
    return subprocess.run(train_argv(params), cwd=PROJECT_DIR, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri,
                                                MLFLOW_RUN_ID=run_id))


@pytest.fixture(scope="module")
def resumed_run(mlflow_server):
    """A 4-epoch run stopped by SIGTERM once epoch 2's checkpoint is on it, then reopened (as a
    controller does for a new Job) and trained again: (client, run id, the checkpoint's record
    after the stop, the second process)."""
    process, client, run_id = start_training(mlflow_server, RESUMED_PARAMS)
    wait_for_checkpoint(process, client, run_id, 2)
    terminate(process)
    assert client.get_run(run_id).info.status == "KILLED"
    after_stop = checkpoint_record(client, run_id)
    client.update_run(run_id, "RUNNING")
    return client, run_id, after_stop, train_on(mlflow_server, run_id, RESUMED_PARAMS)


def test_a_stopped_run_resumes_after_its_last_checkpoint_and_logs_every_epoch_once(resumed_run):
    client, run_id, after_stop, resumed = resumed_run
    assert after_stop.epochs_done in (2, 3)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at epoch {after_stop.epochs_done + 1} from the checkpoint of run " \
           f"{run_id}\n" in resumed.stdout
    assert client.get_run(run_id).info.status == "FINISHED"
    for metric in EPOCH_METRICS:
        assert sorted(m.step for m in client.get_metric_history(run_id, metric)) == \
            [0, 1, 2, 3], metric
    for metric in FINAL_METRICS:
        assert len(client.get_metric_history(run_id, metric)) == 1, metric
    listed = client.list_artifacts(run_id, checkpoint.CHECKPOINT_DIR)
    assert [a.path for a in listed] == [checkpoint.CHECKPOINT_ARTIFACT]  # only the last one
    assert checkpoint_record(client, run_id).epochs_done == 4


def test_a_resumed_run_logs_the_metrics_of_an_uninterrupted_one(resumed_run, mlflow_server):
    """TensorFlow on CPU repeats the computation bit for bit on one machine (the tolerance
    covers another CPU's kernels): the resumed epochs are the uninterrupted run's."""
    client, run_id, _, _ = resumed_run
    other = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    assert train_on(mlflow_server, other, RESUMED_PARAMS).returncode == 0
    for metric in (*EPOCH_METRIC_DIRECTIONS, *FINAL_METRICS):
        resumed, uninterrupted = (
            [m.value for m in sorted(client.get_metric_history(run, metric),
                                     key=lambda m: m.step)] for run in (run_id, other))
        assert resumed == pytest.approx(uninterrupted, rel=1e-5), metric


def test_a_checkpoint_of_another_configuration_is_refused_in_one_line(
        mlflow_server, small_params, tmp_path):
    client = MlflowClient(mlflow_server)
    run_id = client.create_run(client.create_experiment("it-foreign-checkpoint")).info.run_id
    theirs = config_from_params(dict(small_params, batch_size="8"))
    record = checkpoint.Record(1, theirs.as_params(), epoch_seeds(theirs.seed, 1))
    client.log_artifact(run_id, str(checkpoint.write(checkpoint.Snapshot(record, [], []),
                                                     tmp_path)), checkpoint.CHECKPOINT_DIR)
    result = train_on(mlflow_server, run_id, small_params)
    message = (f"the checkpoint of run {run_id} was made with batch_size=8, "
               f"not batch_size={small_params['batch_size']}")
    assert result.returncode == 1 and f"error: {message}\n" in result.stderr, result.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[ERROR_TAG] == message
    assert client.get_metric_history(run_id, "loss") == []


def test_sigterm_to_a_sweeps_trial_leaves_its_run_to_the_sweeps_controller(mlflow_server,
                                                                          monkeypatch):
    """Under a sweep's controller (which records every trial's end) a terminated trial writes
    nothing: two writers ending the same run could leave its status and reason disagreeing."""
    monkeypatch.setenv(SWEEP_ENV, "0123456789ab")
    process, client, run_id = start_training(mlflow_server, LONG_EPOCHS)
    wait_for_epochs(process, client, run_id, 1)
    assert "the run is left to sweep 0123456789ab's controller" in terminate(process)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and REASON_TAG not in run.data.tags
