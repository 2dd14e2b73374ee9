"""Detached sweeps on a real cluster: `driver.py --detach` hands the sweep to a controller Job
and exits; the sweep runs to its end with nobody attached, survives its controller's pod being
deleted, is cancelled from another process, and is watched with --status, --attach, --logs."""

import re
import subprocess
import time

import pytest
from mlflow import MlflowClient

from celeb_smile.constants import CANCEL_TAG, COMPONENT_LABEL, REASON_TAG, SWEEP_LABEL
from celeb_smile.sweep import detach
from tests.conftest import PROJECT_DIR
from tests.helpers.cluster_driver import (TINY, driver_command, driver_env, runs_on, sweep_jobs,
                                          training_runs, wait_for)
from tests.helpers.sweeps import sweep_runs

pytestmark = pytest.mark.cluster
DETACHED = re.compile(r"sweep (\w{12}) detached: controller Job (\S+)/(\S+)")


def steer(stack, *args, timeout=600) -> subprocess.CompletedProcess:
    """driver.py with a steering command (--status, --attach, --cancel, --logs)."""
    return subprocess.run(driver_command(stack, *args), cwd=PROJECT_DIR, env=driver_env(stack),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def detached(cluster_stack):
    """start(experiment, *args) detaches a sweep and returns its id; its controller and trial
    Jobs are deleted afterwards, whatever happened."""
    started = []

    def start(experiment: str, *args) -> str:
        result = steer(cluster_stack, "--detach", "--no-build", "--experiment", experiment,
                       *args, timeout=300)
        found = DETACHED.search(result.stdout)
        assert result.returncode == 0 and found, result.stdout[-3000:] + result.stderr[-3000:]
        started.append(found[1])
        return found[1]

    yield start
    for sweep_id in started:
        cluster_stack.kubectl("delete", "jobs", "-l", f"{SWEEP_LABEL}={sweep_id}",
                              "--ignore-not-found", "--wait=true", "--timeout=120s",
                              check=False, timeout=150)


def ended(client, experiment: str):
    """The parent run, once it is no longer RUNNING."""
    parents, _ = sweep_runs(client, experiment)
    return parents[0] if parents and parents[0].info.status != "RUNNING" else None


def controller_pods(stack, sweep_id: str) -> list[str]:
    selector = f"{COMPONENT_LABEL}=controller,{SWEEP_LABEL}={sweep_id}"
    return stack.kubectl("get", "pods", "-l", selector, "-o", "name").stdout.split()


def test_a_detached_sweep_runs_to_its_end_with_nobody_attached(cluster_stack, detached):
    experiment = f"detached-{int(time.time())}"
    sweep_id = detached(experiment, "--grid", "seed=1,2,3", "--max-parallel", "2", *TINY)
    client = MlflowClient(cluster_stack.tracking_uri)
    parent = wait_for(lambda: ended(client, experiment), "the detached sweep's end", 900)
    _, _, children = runs_on(cluster_stack, experiment)
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3
    assert len(sweep_jobs(cluster_stack, sweep_id)) == 3
    wait_for(lambda: cluster_stack.kubectl(  # the controller exits 0 once its sweep ended
        "get", "job", detach.controller_job_name(sweep_id), "-o",
        "jsonpath={.status.succeeded}").stdout == "1", "the controller's Job to succeed", 120)

    status = steer(cluster_stack, "--status")
    line = next(line for line in status.stdout.splitlines() if line.startswith(sweep_id))
    assert f"{sweep_id}  {experiment}  finished  3 finished · 0 in flight" in line
    assert "best val_accuracy=" in line and "Succeeded" in line

    attached = steer(cluster_stack, "--attach", sweep_id)
    assert attached.returncode == 0, attached.stdout[-3000:] + attached.stderr[-2000:]
    assert "sweep summary (best first)" in attached.stdout
    assert f"sweep {sweep_id} ended FINISHED" in attached.stdout

    logs = steer(cluster_stack, "--logs", sweep_id)
    assert f"controller of sweep {sweep_id}, started by" in logs.stdout
    assert "sweep summary (best first)" in logs.stdout


def test_a_deleted_controller_pod_is_replaced_and_every_trial_runs_once(cluster_stack,
                                                                       detached):
    experiment = f"detached-takeover-{int(time.time())}"
    epochs = 60  # long enough to be in flight when the next controller starts
    sweep_id = detached(experiment, "--grid", "seed=1,2,3", "--max-parallel", "2",
                        "--param", f"epochs={epochs}", "--param", "training_samples=256",
                        "--param", "validation_samples=32")
    client = MlflowClient(cluster_stack.tracking_uri)
    wait_for(lambda: training_runs(client, experiment, 2), "two trials training", 600)
    (first_pod,) = controller_pods(cluster_stack, sweep_id)
    cluster_stack.kubectl("delete", first_pod, "--wait=false")

    parent = wait_for(lambda: ended(client, experiment), "the sweep's end", 900)
    assert parent.info.status == "FINISHED"
    _, _, children = runs_on(cluster_stack, experiment)
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3  # none run twice
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert sorted(steps) == list(range(epochs))  # every epoch, once
    assert len(sweep_jobs(cluster_stack, sweep_id)) == 3  # none submitted twice
    logs = steer(cluster_stack, "--logs", sweep_id).stdout  # the next pod's: the first is gone
    assert re.search(r"[12] adopted in flight", logs), logs[-3000:]


def test_cancel_kills_the_trials_leaves_no_pod_and_says_who(cluster_stack, detached):
    experiment = f"detached-cancel-{int(time.time())}"
    sweep_id = detached(experiment, "--grid", "seed=1,2,3", "--max-parallel", "2",
                        "--param", "epochs=100", "--param", "training_samples=256")
    client = MlflowClient(cluster_stack.tracking_uri)
    wait_for(lambda: training_runs(client, experiment, 2), "two trials training", 600)

    cancelled = steer(cluster_stack, "--cancel", sweep_id)
    assert cancelled.returncode == 0, cancelled.stdout[-3000:] + cancelled.stderr[-2000:]
    assert "2 trials KILLED; no trial pod left" in cancelled.stdout
    parents, children = sweep_runs(client, experiment)
    assert parents[0].info.status == "KILLED" and CANCEL_TAG in parents[0].data.tags
    assert sorted(c.info.status for c in children) == ["KILLED", "KILLED"]
    assert {c.data.tags[REASON_TAG] for c in children} == {
        f"sweep cancelled by {parents[0].data.tags[CANCEL_TAG]}"}
    pods = cluster_stack.kubectl("get", "pods", "-l",
                                 f"{SWEEP_LABEL}={sweep_id},{COMPONENT_LABEL}=training",
                                 "-o", "name").stdout.split()
    assert pods == []


def test_a_paused_sweep_resumes_every_trial_from_its_checkpoint(cluster_stack, detached):
    experiment = f"detached-pause-{int(time.time())}"
    epochs = 12
    sweep_id = detached(experiment, "--grid", "seed=1,2", "--max-parallel", "2",
                        "--param", f"epochs={epochs}", "--param", "training_samples=512",
                        "--param", "validation_samples=32")
    client = MlflowClient(cluster_stack.tracking_uri)
    wait_for(lambda: training_runs(client, experiment, 2), "two trials training", 600)

    paused = steer(cluster_stack, "--pause", sweep_id)
    assert paused.returncode == 0, paused.stdout[-3000:] + paused.stderr[-2000:]
    assert f"sweep {sweep_id} paused: 2 trials stopped at their last checkpoint" in paused.stdout
    assert cluster_stack.kubectl("get", "pods", "-l",
                                 f"{SWEEP_LABEL}={sweep_id},{COMPONENT_LABEL}=training",
                                 "-o", "name").stdout.split() == []
    status = steer(cluster_stack, "--status").stdout
    assert f"{sweep_id}  {experiment}  paused  2 paused" in status

    resumed = steer(cluster_stack, "--resume", sweep_id)
    assert "its controller relaunches the paused trials" in resumed.stdout, resumed.stdout
    parent = wait_for(lambda: ended(client, experiment), "the sweep's end", 900)
    assert parent.info.status == "FINISHED"
    _, _, children = runs_on(cluster_stack, experiment)
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 2
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert sorted(steps) == list(range(epochs))  # no epoch logged twice
        log = open(client.download_artifacts(child.info.run_id, "logs/trial.log")).read()
        assert re.search(r"resumed (at epoch \d+|after its last epoch)", log), log[-2000:]
