"""driver.py --backend kubernetes on a real cluster: one Job per combination, nested runs,
failures with their Kubernetes reason, resume as a no-op, and cancellation without leftovers."""

import re
import signal
import subprocess
import time

import pytest
from mlflow import MlflowClient

from celeb_smile.sweep.access import grant_trainer
from tests.conftest import BIN_DIR, PROJECT_DIR, interrupt_when_training, sweep_runs

pytestmark = pytest.mark.cluster
TINY = ["--param", "epochs=2", "--param", "training_samples=64",
        "--param", "validation_samples=32", "--param", "batch_size=16"]
JOB_PATTERN = re.compile(r"submitted \(job (\S+)\)")


def driver_command(stack, *args):
    return [str(BIN_DIR / "python"), str(PROJECT_DIR / "driver.py"), "--backend", "kubernetes",
            "--backend-config", str(stack.backend_config), "--poll-seconds", "2", *args]


def driver_env(stack):
    return dict(stack.env, MLFLOW_TRACKING_URI=stack.tracking_uri,
                KUBE_MLFLOW_TRACKING_URI=stack.in_cluster_tracking_uri)


def granted_experiment(stack, name: str) -> str:
    """Until the driver grants the trainer itself: the experiment, created and granted."""
    experiment_id = MlflowClient(stack.tracking_uri).create_experiment(name)
    grant_trainer(stack.tracking_uri, experiment_id)
    return name


def run_driver(stack, jobs, *args, timeout=900):
    result = subprocess.run(driver_command(stack, *args), cwd=PROJECT_DIR, env=driver_env(stack),
                            capture_output=True, text=True, timeout=timeout)
    jobs.names.extend(JOB_PATTERN.findall(result.stdout))
    return result


def runs_on(stack, experiment):
    client = MlflowClient(stack.tracking_uri)
    return (client, *sweep_runs(client, experiment))


def test_four_combinations_two_at_a_time_then_rerun_is_a_no_op(cluster_stack, training_jobs):
    experiment = granted_experiment(cluster_stack, f"cluster-sweep-{int(time.time())}")
    args = ["--experiment", experiment, "--max-parallel", "2", "--grid", "convolutions=0,1",
            "--grid", "randomize_images=true,false", *TINY]
    first = run_driver(cluster_stack, training_jobs, *args)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-3000:]
    assert "built and pushed" in first.stdout  # once for the whole sweep
    assert len(training_jobs.names) == 4
    client, (parent,), children = runs_on(cluster_stack, experiment)
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["mlflow.project.backend"] for c in children} == {"kubernetes"}
    assert all(len(client.get_metric_history(c.info.run_id, "val_accuracy")) == 2
               for c in children)
    assert client.get_model_version_by_alias("celeb-smile", "champion").run_id == \
        parent.data.tags["celeb_smile.best_run_id"]

    again = run_driver(cluster_stack, training_jobs, *args, "--no-build")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "0 to run, 4 finished earlier" in again.stdout
    assert len(training_jobs.names) == 4  # no new Job
    assert len(runs_on(cluster_stack, experiment)[2]) == 4


def test_failing_combination_is_reported_with_its_reason_while_others_finish(
        cluster_stack, training_jobs):
    experiment = granted_experiment(cluster_stack, f"cluster-fail-{int(time.time())}")
    # The tfds-data volume holds no CelebA: that trial's pod exits 1, the other finishes.
    result = run_driver(cluster_stack, training_jobs, "--experiment", experiment, "--no-build",
                        "--grid", "dataset=synthetic,celeb_a", *TINY)
    assert result.returncode == 1, result.stdout[-4000:]
    assert "exit code 1" in result.stdout and "CelebA is not prepared" in result.stdout
    client, _, children = runs_on(cluster_stack, experiment)
    by_dataset = {c.data.params["dataset"]: c for c in children}
    assert by_dataset["synthetic"].info.status == "FINISHED"
    failed = by_dataset["celeb_a"]
    assert failed.info.status == "FAILED"
    assert "exit code 1" in failed.data.tags["celeb_smile.failure_reason"]
    tail = client.download_artifacts(failed.info.run_id, "logs/tail.txt")
    assert "CelebA is not prepared" in open(tail).read()


def test_interrupted_sweep_deletes_its_jobs_and_pods(cluster_stack, training_jobs):
    experiment = granted_experiment(cluster_stack, f"cluster-cancel-{int(time.time())}")
    process = subprocess.Popen(
        driver_command(cluster_stack, "--experiment", experiment, "--no-build", "--grid", "seed=1,2,3",
                       "--param", "epochs=100", "--param", "training_samples=256"),
        cwd=PROJECT_DIR, env=driver_env(cluster_stack), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(cluster_stack.tracking_uri)
    trained, output = interrupt_when_training(process, client, experiment, signal.SIGTERM, 300)
    training_jobs.names.extend(JOB_PATTERN.findall(output))  # cleaned up whatever happens
    assert trained, f"no trial trained an epoch within 300s:\n{output[-3000:]}"
    assert process.returncode == 130, output[-4000:]
    assert len(training_jobs.names) == 2
    assert training_jobs.remaining() == []  # deleted by the driver, not by the clean-up
    _, _, children = runs_on(cluster_stack, experiment)
    assert {c.info.status for c in children} == {"KILLED"}
