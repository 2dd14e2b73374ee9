"""Sweep overhead on a cluster: what the driver and Kubernetes add around each trial's training.

For N trials at parallelism P (driver backends, tiny synthetic trials) it measures per trial:
submission time (driver side), submit -> pod running, submit -> first logged metric,
submit -> finished, and the trial's own training time (sum of its epoch_seconds); then the
sweep's wall time against the ideal N/P x trial time; and the cost of one submission when
MLflow rebuilds the image per run (build_image=True) instead of once per sweep.

Needs the k8s/ stack and a port-forward (`make images deploy`, `make port-forward`):
    .venv/bin/python benchmarks/sweep_overhead.py --trials 4 --parallel 2
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from machine import print_machine  # noqa: E402
from rich.console import Console  # noqa: E402
from celeb_smile.sweep.cli import DEFAULT_CLUSTER_TRACKING_URI  # noqa: E402
from celeb_smile.sweep.backends import KubernetesBackend  # noqa: E402
from celeb_smile.sweep.spec import PROJECT_DIR  # noqa: E402

TRIAL_PARAMS = {"epochs": "3", "training_samples": "256", "validation_samples": "64",
                "batch_size": "32"}


class Timeline:
    def __init__(self, trial):
        self.trial = trial
        self.submit_started = time.time()
        self.submit_seconds = None
        self.running = self.first_metric = self.finished = None


def pod_started_at(trial) -> float | None:
    for pod in trial._pods():
        for status in pod.status.container_statuses or []:
            state = status.state.running or status.state.terminated
            if state is not None and state.started_at is not None:
                return state.started_at.timestamp()
    return None


def first_metric_at(client, run_id) -> float | None:
    history = client.get_metric_history(run_id, "loss")
    return min(m.timestamp for m in history) / 1000 if history else None


def run_sweep(backend, client, experiment_id, trials, parallel):
    pending = [dict(TRIAL_PARAMS, seed=str(i)) for i in range(trials)]
    live, done = [], []
    started = time.time()
    while pending or live:
        while pending and len(live) < parallel:
            timeline = Timeline(None)
            name = f"bench-{len(done) + len(live)}"
            timeline.trial = backend.submit(pending.pop(0), experiment_id, name)
            timeline.submit_seconds = time.time() - timeline.submit_started
            live.append(timeline)
        time.sleep(0.5)
        for timeline in list(live):
            trial = timeline.trial
            timeline.running = timeline.running or pod_started_at(trial)
            timeline.first_metric = timeline.first_metric or first_metric_at(client, trial.run_id)
            if trial.poll().state in ("FINISHED", "FAILED"):
                timeline.finished = time.time()
                live.remove(timeline)
                done.append(timeline)
    return done, time.time() - started


def training_seconds(client, run_id) -> float:
    return sum(m.value for m in client.get_metric_history(run_id, "epoch_seconds"))


def rebuild_submission_seconds(backend, experiment_id) -> float:
    """One submission with MLflow building the project image itself (build_image=True), from a
    copy of the tracked files (MLflow would otherwise send the whole folder, .venv included)."""
    files = subprocess.run(["git", "ls-files"], cwd=PROJECT_DIR, capture_output=True,
                           text=True, check=True).stdout.split()
    with tempfile.TemporaryDirectory() as copy:
        for name in files:
            (Path(copy) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_DIR / name, Path(copy) / name)
        started = time.time()
        submitted = mlflow.projects.run(
            copy, parameters=dict(TRIAL_PARAMS, epochs="1"), experiment_id=experiment_id,
            backend="kubernetes", backend_config=dict(backend.backend_config),
            synchronous=False, build_image=True)
        seconds = time.time() - started
    from celeb_smile.sweep.backends import KubernetesTrial

    KubernetesTrial(submitted.run_id, submitted._job_name, submitted._job_namespace,
                    backend._core, backend._batch).cancel()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI",
                                                                  "http://localhost:5000"))
    args = parser.parse_args()
    print_machine()
    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient()
    experiment_id = client.create_experiment(f"bench-sweep-overhead-{int(time.time())}")
    backend = KubernetesBackend(PROJECT_DIR / "kubernetes_config.json",
                                os.environ.get("KUBE_MLFLOW_TRACKING_URI",
                                               DEFAULT_CLUSTER_TRACKING_URI), build=True)
    started = time.time()
    backend.prepare(Console(quiet=True))
    print(f"image_build_and_push_once_s: {time.time() - started:.1f}")
    done, wall = run_sweep(backend, client, experiment_id, args.trials, args.parallel)
    submit = [t.submit_seconds for t in done]
    to_running = [t.running - t.submit_started for t in done if t.running]
    to_metric = [t.first_metric - t.submit_started for t in done if t.first_metric]
    to_finished = [t.finished - t.submit_started for t in done]
    trial_seconds = [t.finished - (t.running or t.submit_started) for t in done]
    training = [training_seconds(client, t.trial.run_id) for t in done]
    ideal = args.trials / args.parallel * statistics.mean(trial_seconds)
    print(f"trials: {args.trials}")
    print(f"parallel: {args.parallel}")
    print(f"submission_s_mean: {statistics.mean(submit):.2f}")
    print(f"submission_s_max: {max(submit):.2f}")
    print(f"submit_to_pod_running_s_mean: {statistics.mean(to_running):.1f}")
    print(f"submit_to_first_metric_s_mean: {statistics.mean(to_metric):.1f}")
    print(f"submit_to_first_metric_s_max: {max(to_metric):.1f}")
    print(f"submit_to_finished_s_mean: {statistics.mean(to_finished):.1f}")
    print(f"trial_pod_s_mean: {statistics.mean(trial_seconds):.1f}")
    print(f"trial_training_s_mean: {statistics.mean(training):.1f}")
    print(f"sweep_wall_s: {wall:.1f}")
    print(f"ideal_wall_s: {ideal:.1f}")
    print(f"wall_vs_ideal: {wall / ideal:.2f}")
    print(f"submission_rebuild_per_run_s: {rebuild_submission_seconds(backend, experiment_id):.1f}")


if __name__ == "__main__":
    main()
