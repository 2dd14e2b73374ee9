"""driver.py on the local backend against a real tracking server: nesting, failures, resume,
the best run (nothing registered without --promote), plots and cancellation."""

import signal
import subprocess

import pytest
import yaml
from mlflow import MlflowClient

from celeb_smile.constants import PID_TAG, STOPPED_TAG
from tests.conftest import BIN_DIR, PROJECT_DIR
from tests.helpers.sweeps import interrupt_when_training, sweep_runs

pytestmark = pytest.mark.integration


def driver(tracking_uri, cwd, *args, wait=True):
    argv = [str(BIN_DIR / "python"), str(PROJECT_DIR / "driver.py"), "--poll-seconds", "1", *args]
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    if not wait:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_sweep_nests_trials_reports_failures_tags_the_best_and_resumes(
        mlflow_server, tmp_path, small_params):
    empty_data_dir = tmp_path / "no-celeba"
    empty_data_dir.mkdir()
    fixed = ["--experiment", "it-sweep", "--grid", "convolutions=0,1",
             "--param", f"data_dir={empty_data_dir}",
             *[a for name in ("epochs", "training_samples", "validation_samples", "batch_size")
               for a in ("--param", f"{name}={small_params[name]}")]]
    args = [*fixed, "--grid", "dataset=synthetic,celeb_a"]
    first = driver(mlflow_server, tmp_path, *args)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "CelebA is not prepared" in first.stdout

    client = MlflowClient(mlflow_server)
    (parent,), children = sweep_runs(client, "it-sweep")
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    statuses = sorted((c.data.params["dataset"], c.info.status) for c in children)
    assert statuses == [("celeb_a", "FAILED")] * 2 + [("synthetic", "FINISHED")] * 2
    failed = [c for c in children if c.info.status == "FAILED"]
    for run in failed:
        assert "exit code 1" in run.data.tags["celeb_smile.failure_reason"]
        log = client.download_artifacts(run.info.run_id, "logs/trial.log")
        assert "CelebA is not prepared" in open(log).read()  # the trial's whole output
    best_id = parent.data.tags["celeb_smile.best_run_id"]
    assert best_id in {c.info.run_id for c in children if c.info.status == "FINISHED"}
    assert client.search_model_versions(f"run_id = '{best_id}'") == []  # no --promote
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/objective_per_combination.png", "plots/learning_curves_top.png"}
    assert parent.info.status == "FAILED"

    again = driver(mlflow_server, tmp_path, *args)  # finished ones skipped, failed ones retried
    assert again.returncode == 1
    assert "2 done before" in again.stdout
    (parent_again,), children = sweep_runs(client, "it-sweep")
    assert parent_again.info.run_id == parent.info.run_id
    assert len(children) == 6

    rerun = driver(mlflow_server, tmp_path, *fixed, "--param", "dataset=synthetic")
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert rerun.stdout.count("finished earlier (run ") == 2  # another sweep, the same code
    assert len(sweep_runs(client, "it-sweep")[1]) == 6  # nothing ran again


@pytest.mark.parametrize("reader_gone", [False, True], ids=["output-read", "output-pipe-closed"])
def test_interrupted_sweep_kills_its_trials_and_exits_cleanly(mlflow_server, tmp_path,
                                                              reader_gone):
    """Also when whatever read the driver's output went away with the Ctrl-C (`| tee`)."""
    experiment = f"it-cancel-{reader_gone}"
    process = driver(mlflow_server, tmp_path, "--experiment", experiment,
                     "--grid", "seed=1,2,3", "--param", "epochs=50",
                     "--param", "training_samples=256", wait=False)
    client = MlflowClient(mlflow_server)
    trained, output = interrupt_when_training(process, client, experiment, signal.SIGINT, 900,
                                              reader_gone=reader_gone)
    assert trained, f"no trial trained an epoch (driver ended or hung):\n{output[-3000:]}"
    assert process.returncode == 130, output[-3000:]
    _, children = sweep_runs(client, experiment)
    assert len(children) == 2  # max-parallel 2; the third was never submitted
    assert {c.info.status for c in children} == {"KILLED"}
    for child in children:  # each trial leads its own process group: nothing of it may be left
        group = child.data.tags[PID_TAG]
        leftover = subprocess.run(["pgrep", "-g", group], capture_output=True, text=True)
        assert leftover.returncode == 1, f"processes of trial {group} left: {leftover.stdout}"


@pytest.mark.parametrize("objective", [
    {"metric": "val_loss", "direction": "minimize"},  # the rule judges the objective
    {"metric": "val_accuracy", "direction": "maximize"},  # ... or val_loss beside it
])
def test_a_hopeless_trial_is_stopped_early_while_the_good_one_finishes(
        mlflow_server, tmp_path, objective):
    median_stop = PROJECT_DIR / "tests" / "cluster" / "median_stop.yaml"
    definition = yaml.safe_load(median_stop.read_text())
    definition["objective"] = objective
    definition["early_stopping"]["metric"] = "val_loss"
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(definition))
    experiment = f"it-stop-{objective['metric']}"
    result = driver(mlflow_server, tmp_path, "--experiment", experiment, "--sweep", str(sweep_file))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    client = MlflowClient(mlflow_server)
    _, children = sweep_runs(client, experiment)
    by_rate = {c.data.params["learning_rate"]: c for c in children}
    assert by_rate["0.001"].info.status == "FINISHED"
    stopped = by_rate["50.0"]
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags[STOPPED_TAG].startswith("stopped by median at epoch ")
    assert ": val_loss " in stopped.data.tags[STOPPED_TAG]
    epochs = len(client.get_metric_history(stopped.info.run_id, "val_loss"))
    assert 1 <= epochs < 150  # its metrics so far stay; it never ran to the end
    assert "stopped early" in result.stdout
