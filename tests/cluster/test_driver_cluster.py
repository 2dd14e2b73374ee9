"""driver.py --backend kubernetes on a real cluster, in the tests' own namespace: one Job per
trial, nested runs, failures with their Kubernetes reason, resume as a no-op, cancellation
without leftovers; and the faults a long sweep meets: a Job deleted behind its back, the driver
SIGKILLed and started again, a submission the API server refuses, an early-stopped trial."""

import copy
import json
import re
import signal
import time

import pytest
import yaml
from mlflow import MlflowClient

from celeb_smile.constants import (DISRUPTIONS_TAG, EPOCH_METRICS, REASON_TAG, STOPPED_TAG,
                                   TRIAL_INDEX_TAG)
from tests.conftest import PROJECT_DIR
from tests.helpers.cluster_driver import (JOB_PATTERN, TINY, run_driver, runs_on, start_driver,
                                          sweep_jobs, training_runs, wait_for)
from tests.helpers.sweeps import interrupt_when_training

pytestmark = pytest.mark.cluster
def test_four_combinations_two_at_a_time_then_rerun_is_a_no_op(cluster_stack, training_jobs):
    experiment = f"cluster-sweep-{int(time.time())}"
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
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [0, 1]  # no gap, no duplicate
        log = client.download_artifacts(child.info.run_id, "logs/trial.log")
        lines = open(log).read().splitlines()  # the pod's whole log, kept after its TTL
        assert any(line.startswith("config: ") for line in lines), lines[:3]

    again = run_driver(cluster_stack, training_jobs, *args, "--no-build")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "4 done before" in again.stdout
    assert len(training_jobs.names) == 4  # no new Job
    assert len(runs_on(cluster_stack, experiment)[2]) == 4


def test_failing_combination_is_reported_with_its_reason_while_others_finish(
        cluster_stack, training_jobs):
    experiment = f"cluster-fail-{int(time.time())}"
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
    assert "exit code 1" in failed.data.tags[REASON_TAG]
    log = client.download_artifacts(failed.info.run_id, "logs/trial.log")
    assert any(line.startswith("error: CelebA is not prepared")
               for line in open(log).read().splitlines())
    volumes = {}
    for job in training_jobs.names:
        pods = json.loads(cluster_stack.kubectl("get", "pods", "-l", f"job-name={job}",
                                                "-o", "json").stdout)["items"]
        dataset = pods[0]["spec"]["containers"][0]["command"]
        dataset = dataset[dataset.index("--dataset") + 1]
        volumes[dataset] = [v["name"] for v in pods[0]["spec"].get("volumes", [])]
    assert "tfds-data" in volumes["celeb_a"] and "tfds-data" not in volumes["synthetic"]


def test_interrupted_sweep_deletes_its_jobs_and_pods(cluster_stack, training_jobs):
    experiment = f"cluster-cancel-{int(time.time())}"
    process = start_driver(cluster_stack, "--experiment", experiment, "--no-build",
                           "--grid", "seed=1,2,3", "--param", "epochs=100",
                           "--param", "training_samples=256")
    client = MlflowClient(cluster_stack.tracking_uri)
    trained, output = interrupt_when_training(process, client, experiment, signal.SIGTERM, 300)
    training_jobs.names.extend(JOB_PATTERN.findall(output))  # cleaned up whatever happens
    assert trained, f"no trial trained an epoch within 300s:\n{output[-3000:]}"
    assert process.returncode == 130, output[-4000:]
    assert len(training_jobs.names) == 2
    assert training_jobs.remaining() == []  # deleted by the driver, not by the clean-up
    _, _, children = runs_on(cluster_stack, experiment)
    assert {c.info.status for c in children} == {"KILLED"}


def test_a_job_deleted_behind_the_drivers_back_fails_its_trial(cluster_stack, training_jobs):
    experiment = f"cluster-deleted-{int(time.time())}"
    process = start_driver(cluster_stack, "--experiment", experiment, "--no-build",
                           "--grid", "epochs=1000,2", "--param", "training_samples=64",
                           "--param", "validation_samples=32")
    client = MlflowClient(cluster_stack.tracking_uri)
    try:
        runs = wait_for(lambda: training_runs(client, experiment, 1), "a trial training")
        long_run = next((r for r in runs if r.data.params["epochs"] == "1000"), None) or \
            wait_for(lambda: [r for r in training_runs(client, experiment, 2) or []
                              if r.data.params["epochs"] == "1000"], "the long trial")[0]
        job = long_run.data.tags["celeb_smile.job"].split("/", 1)[1]
        cluster_stack.kubectl("delete", "job", job, "--wait=false")
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    training_jobs.names.extend(JOB_PATTERN.findall(output))
    assert process.returncode == 1, output[-4000:]
    deleted = client.get_run(long_run.info.run_id)
    assert deleted.info.status == "FAILED"
    assert deleted.data.tags[REASON_TAG] == f"Job {job} deleted"
    _, _, children = runs_on(cluster_stack, experiment)
    assert {c.data.params["epochs"]: c.info.status for c in children}["2"] == "FINISHED"


def test_a_killed_driver_started_again_adopts_its_trials(cluster_stack, training_jobs):
    experiment = f"cluster-adopt-{int(time.time())}"
    args = ["--experiment", experiment, "--no-build", "--max-parallel", "2",
            "--grid", "seed=1,2,3", "--param", "epochs=40", "--param", "training_samples=256",
            "--param", "validation_samples=32"]
    process = start_driver(cluster_stack, *args)
    client = MlflowClient(cluster_stack.tracking_uri)
    try:
        wait_for(lambda: training_runs(client, experiment, 2), "two trials training")
    finally:
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate()
    training_jobs.names.extend(JOB_PATTERN.findall(output))
    again = run_driver(cluster_stack, training_jobs, *args)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    assert "2 adopted in flight" in again.stdout
    _, (parent,), children = runs_on(cluster_stack, experiment)
    assert sorted(c.data.tags[TRIAL_INDEX_TAG] for c in children) == ["1", "2", "3"]
    assert {c.info.status for c in children} == {"FINISHED"}
    sweep_id = parent.data.tags["celeb_smile.sweep_id"]
    assert len(sweep_jobs(cluster_stack, sweep_id)) == 3  # none submitted twice
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert sorted(steps) == list(range(40))


def test_a_refused_submission_ends_its_run_failed_with_the_reason(
        cluster_stack, training_jobs, tmp_path):
    """A namespace that does not exist stops the sweep before anything is created; a Job the
    API server rejects ends its trial's run FAILED with the API's reason."""
    config = json.loads(cluster_stack.backend_config.read_text())
    template = yaml.safe_load(open(cluster_stack.backend_config.parent /
                                   config["kube-job-template-path"]))

    def sweep_with(job_template: dict, experiment: str):
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job_template))
        (tmp_path / "config.json").write_text(json.dumps(
            {**config, "kube-job-template-path": str(tmp_path / "job.yaml")}))
        return run_driver(cluster_stack, training_jobs, "--experiment", experiment,
                          "--no-build", *TINY, backend_config=tmp_path / "config.json")

    nowhere = copy.deepcopy(template)
    nowhere["metadata"]["namespace"] = "celeb-smile-no-such-namespace"
    experiment = f"cluster-nowhere-{int(time.time())}"
    result = sweep_with(nowhere, experiment)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    # A sweep user (the drivers' identity here) may not look into a namespace that is not
    # theirs, so the API answers 403 where an admin gets 404: either stops it in one line.
    assert "celeb-smile-no-such-namespace" in errors[0]
    assert re.search(r"\((403|404) ", errors[0]), errors[0]
    client = MlflowClient(cluster_stack.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is None or client.search_runs([found.experiment_id]) == []

    invalid = copy.deepcopy(template)
    invalid["spec"]["backoffLimit"] = -1  # the API server's validation refuses it: 422
    experiment = f"cluster-refused-{int(time.time())}"
    result = sweep_with(invalid, experiment)
    assert result.returncode == 1, result.stdout[-3000:]
    _, _, (child,) = runs_on(cluster_stack, experiment)
    assert child.info.status == "FAILED"
    assert child.data.tags[REASON_TAG].startswith("submission failed: Job rejected (422")


def test_an_early_stopped_trial_loses_its_job_and_pod_and_ends_killed_with_the_rule(
        cluster_stack, training_jobs):
    experiment = f"cluster-stop-{int(time.time())}"
    # The sane learning rate finishes first (one at a time); the absurd one's first epoch is
    # then worse than the median of the finished trial's running average: stopped at once.
    result = run_driver(cluster_stack, training_jobs, "--experiment", experiment, "--no-build",
                        "--sweep", str(PROJECT_DIR / "tests" / "cluster" / "median_stop.yaml"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    client, _, children = runs_on(cluster_stack, experiment)
    stopped = next(c for c in children if c.data.params["learning_rate"] == "50.0")
    assert stopped.info.status == "KILLED"
    assert "median" in stopped.data.tags[STOPPED_TAG]
    assert client.get_metric_history(stopped.info.run_id, "val_loss")  # its metrics stay
    job = stopped.data.tags["celeb_smile.job"].split("/", 1)[1]
    leftovers = cluster_stack.kubectl("get", "jobs,pods", "-l", f"job-name={job}",
                                      "-o", "name").stdout.split()
    job_left = cluster_stack.kubectl("get", "jobs", job, "--ignore-not-found",
                                     "-o", "name").stdout.split()
    assert leftovers + job_left == []


def test_a_trial_whose_pod_is_deleted_goes_on_in_another_pod_from_its_checkpoint(
        cluster_stack, training_jobs):
    experiment = f"cluster-disrupted-{int(time.time())}"
    epochs = 5
    process = start_driver(cluster_stack, "--experiment", experiment, "--no-build",
                           "--param", f"epochs={epochs}", "--param", "training_samples=4096",
                           "--param", "validation_samples=64")
    client = MlflowClient(cluster_stack.tracking_uri)
    try:
        (run,) = wait_for(lambda: training_runs(client, experiment, 1), "the trial training")
        deadline = time.monotonic() + 300  # a hang guard; polled closely: epochs take seconds
        while len(client.get_metric_history(run.info.run_id, "loss")) < 2 and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        before = len(client.get_metric_history(run.info.run_id, "loss"))
        job = run.data.tags["celeb_smile.job"].split("/", 1)[1]
        cluster_stack.kubectl("delete", "pod", "-l", f"job-name={job}", "--wait=false")
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    training_jobs.names.extend(JOB_PATTERN.findall(output) + [job])
    assert process.returncode == 0, output[-4000:]
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and REASON_TAG not in finished.data.tags
    assert "deleted or evicted" in finished.data.tags[DISRUPTIONS_TAG]
    for metric in EPOCH_METRICS:  # every epoch's point exactly once, across both pods
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert sorted(steps) == list(range(epochs)), (metric, steps)
    log = open(client.download_artifacts(run.info.run_id, "logs/trial.log")).read()
    resumed = [int(n) for n in re.findall(r"resumed at epoch (\d+)", log)]
    assert resumed and resumed[0] - 1 in (before, before + 1), (before, log[-2000:])
