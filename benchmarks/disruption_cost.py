"""What losing a trial's pod costs, on the cluster (issue 19): seconds from the pod's deletion to
the next epoch logged, against a fresh trial's start.

Deploys the k8s/ stack into a namespace of its own (as the cluster tests do: `make deploy`, the
admin's generated credentials, a port-forward; deleted at the end, whatever happened), then per
run: the real driver (`driver.py --backend kubernetes --no-build`) with two trials of the same
small synthetic settings, one at a time. Once the first trial has logged epoch K, its pod is
deleted halfway through epoch K+1 (`--at`, a fraction of its last epoch's time); the driver sees
the pod gone, submits a new Job for the same run, which resumes from the last per-epoch
checkpoint (its Job, whose backoffLimit is 0, may also replace the pod itself: the same resume).
The second trial then starts fresh on the same node (image present, nothing else of this
benchmark running), which is what the relaunch is compared with:
  disruption_to_next_epoch_s      pod deleted -> the replacement's first epoch logged
  fresh_submit_to_first_epoch_s   the second trial: its run created -> its first epoch logged
  disruption_vs_fresh_start       the first / the second
  epochs_lost                     epochs the first pod had logged that the replacement trained
                                  again (0 expected); points_logged_twice (0 expected)
  resumed_at_epoch, next_epoch_logged   from the replacement's log; its first epoch logged
  relaunched_by                   a new Job (the driver), or its Job's new pod
  where the time goes (Kubernetes' pod timestamps are whole seconds):
    disruption_noticed_s          pod deleted -> the driver reports the disruption
    replacement_pod_created_s, replacement_pod_to_next_epoch_s   pod deleted -> the
                                  replacement pod created -> its first epoch logged
    fresh_pod_created_s, fresh_pod_to_first_epoch_s   the same for the fresh trial
    partial_epoch_lost_s          the first pod's last epoch logged -> the deletion: training
                                  thrown away, done again by the replacement
    epoch_s_median                a steady epoch (epoch_seconds, epochs after the first)
With --runs N: each run's lines, then the medians (epochs_lost as the maximum).

Needs a cluster (KUBECONFIG, or `source /var/lib/k8s-local/env.sh`) whose registry holds the
images (`make images`):
    .venv/bin/python benchmarks/disruption_cost.py            # ~5 min: deploy, 1 run, clean-up
    .venv/bin/python benchmarks/disruption_cost.py --runs 3   # ~9 min, medians
"""

import argparse
import datetime
import json
import os
import re
import secrets
import shutil
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # on the trial log

from mlflow import MlflowClient  # noqa: E402

from machine import print_machine  # noqa: E402
from celeb_smile import deploy  # noqa: E402
from celeb_smile.constants import EPOCH_METRICS, JOB_TAG, RUN_LABEL  # noqa: E402
from tests.cluster.conftest import (ClusterStack, PortForward, kube_environment,  # noqa: E402
                                    kubectl, make)
from tests.helpers.cluster_driver import start_driver, training_runs, wait_for  # noqa: E402
from tests.helpers.sweeps import sweep_runs  # noqa: E402

NAMESPACE_PREFIX = "celeb-smile-disruption-"
RESUMED = re.compile(r"resumed at epoch (\d+)")


@contextmanager
def deployed_stack():
    """The stack in a new namespace, as the cluster tests' `cluster_stack` fixture makes it
    (`make deploy`, the admin's generated credentials, a port-forward); then deleted."""
    env, source = kube_environment()
    if not source:
        sys.exit("no kubeconfig: set KUBECONFIG or `source /var/lib/k8s-local/env.sh`")
    namespace = f"{NAMESPACE_PREFIX}{secrets.token_hex(3)}"
    overlay = deploy.Overlay(namespace, deploy.DEFAULT_REGISTRY, deploy.deploy_dir(namespace))
    stack = None
    try:
        make(env, "deploy", timeout=700, NAMESPACE=namespace)
        username, password = overlay.admin_credentials()
        os.environ.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
        env = dict(env, MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
        stack = ClusterStack(env, PortForward(env, namespace, overlay.directory / "pf.log"),
                             overlay, sweep_user_env=env)  # the drivers run as the admin
        stack.port_forward.start(timeout=120)
        yield stack
    finally:
        if stack is not None:
            stack.port_forward.stop()
        kubectl(env, "delete", "namespace", overlay.sweeps_namespace, namespace,
                "--ignore-not-found", "--wait=true", "--timeout=300s", check=False, timeout=330)
        shutil.rmtree(overlay.directory, ignore_errors=True)


class TimedLines:
    """The driver's output, each line with the time it was read (the driver prints each
    trial's events as lines: its output is not a terminal)."""

    def __init__(self, stream):
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append((time.time(), line.rstrip("\n")))

    def first(self, pattern: str) -> float | None:
        return next((t for t, line in self.lines if re.search(pattern, line)), None)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def history(client, run_id: str, metric: str = "loss") -> list:
    return sorted(client.get_metric_history(run_id, metric), key=lambda m: m.timestamp)


def delete_mid_epoch(stack, client, run, after_epoch: int, at: float) -> float:
    """Once `run` has logged `after_epoch` epochs: wait `at` of its last epoch's time, delete
    its pod; returns when the deletion was asked for (time.time())."""
    deadline = time.monotonic() + 600
    while len(points := history(client, run.info.run_id)) < after_epoch:
        if time.monotonic() > deadline:
            sys.exit(f"the trial never logged {after_epoch} epochs")
        time.sleep(0.2)
    last = next(m for m in history(client, run.info.run_id, "epoch_seconds")
                if m.step == after_epoch - 1)
    logged = max(m.timestamp for m in points if m.step == after_epoch - 1) / 1000
    time.sleep(max(0.0, logged + at * last.value - time.time()))
    job = run.data.tags[JOB_TAG].split("/", 1)[1]
    deleted = time.time()
    stack.kubectl("delete", "pod", "-l", f"job-name={job}", "--wait=false")
    return deleted


def pods_of(stack, run_id: str) -> list[dict]:
    """The run's pods still in the API (a deleted one is gone), oldest first, each as
    {"job", "created", "started"} (Kubernetes' timestamps: whole seconds)."""
    items = json.loads(stack.kubectl("get", "pods", "-l", f"{RUN_LABEL}={run_id}",
                                     "-o", "json").stdout)["items"]
    pods = []
    for pod in items:
        statuses = pod["status"].get("containerStatuses") or [{}]
        state = statuses[0].get("state", {})
        started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
        pods.append({"job": pod["metadata"]["labels"].get("job-name", ""),
                     "created": seconds(pod["metadata"]["creationTimestamp"]),
                     "started": seconds(started) if started else None})
    return sorted(pods, key=lambda pod: pod["created"])


def seconds(timestamp: str) -> float:
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def one_run(stack, args) -> dict[str, float | str]:
    experiment = f"bench-disruption-{int(time.time())}"
    params = {"epochs": args.epochs, "training_samples": args.training_samples,
              "validation_samples": args.validation_samples, "batch_size": args.batch_size}
    options = [item for name, value in params.items() for item in ("--param", f"{name}={value}")]
    process = start_driver(stack, "--experiment", experiment, "--no-build", "--max-parallel",
                           "1", "--grid", "seed=1,2", *options)
    output = TimedLines(process.stdout)
    client = MlflowClient(stack.tracking_uri)
    try:
        (run,) = wait_for(lambda: training_runs(client, experiment, 1), "the first trial training",
                          timeout=600)
        deleted = delete_mid_epoch(stack, client, run, args.after_epoch, args.at)
        process.wait(timeout=1200)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output.thread.join(timeout=10)
    if process.returncode != 0:
        sys.exit(f"driver exited {process.returncode}:\n{output.text()[-4000:]}")
    _, trials = sweep_runs(client, experiment)
    disrupted = next(t for t in trials if t.info.run_id == run.info.run_id)
    fresh = next(t for t in trials if t.info.run_id != run.info.run_id)
    log = open(client.download_artifacts(disrupted.info.run_id, "logs/trial.log")).read()
    resumed = [int(n) for n in RESUMED.findall(log)]
    if not resumed:
        sys.exit(f"the relaunched attempt did not resume from a checkpoint:\n{log[-3000:]}")
    # The deleted pod is gone from the API: what is left of the run's are its successors. Its
    # Job (backoffLimit 0) may replace the pod itself, or the driver submits a new Job.
    (replacement, *_) = pods_of(stack, disrupted.info.run_id)
    (fresh_pod, *_) = pods_of(stack, fresh.info.run_id)
    points = history(client, disrupted.info.run_id)
    # Whatever was logged before the replacement's container started is the first pod's
    # (the replacement logs nothing in its first seconds: Python, TensorFlow, the data).
    first_pod = {m.step for m in points if m.timestamp / 1000 < replacement["started"]}
    after = [m for m in points if m.timestamp / 1000 >= replacement["started"]]
    next_epoch = min(m.timestamp for m in after) / 1000
    fresh_first = min(m.timestamp for m in history(client, fresh.info.run_id)) / 1000
    twice = sum(len(steps) - len(set(steps)) for steps in (
        [m.step for m in client.get_metric_history(t.info.run_id, metric)]
        for t in (disrupted, fresh) for metric in EPOCH_METRICS))
    epoch_s = [m.value for t in (disrupted, fresh)
               for m in client.get_metric_history(t.info.run_id, "epoch_seconds") if m.step > 0]
    last_logged = max(m.timestamp for m in points if m.timestamp / 1000 <= deleted) / 1000
    noticed = output.first(r"disrupted \(")
    to_next = next_epoch - deleted
    fresh_start = fresh_first - fresh.info.start_time / 1000
    return {
        "disruption_to_next_epoch_s": to_next,
        "fresh_submit_to_first_epoch_s": fresh_start,
        "disruption_vs_fresh_start": to_next / fresh_start,
        "epochs_lost": max(0, len(first_pod) - (resumed[0] - 1)),
        "points_logged_twice": twice,
        "resumed_at_epoch": resumed[0],
        "next_epoch_logged": min(after, key=lambda m: m.timestamp).step + 1,
        "relaunched_by": ("a new Job" if replacement["job"] != run.data.tags[JOB_TAG].split("/")[1]
                          else "its Job's new pod"),
        "disruption_noticed_s": noticed - deleted if noticed else float("nan"),
        "replacement_pod_created_s": replacement["created"] - deleted,
        "replacement_pod_to_next_epoch_s": next_epoch - replacement["created"],
        "fresh_pod_created_s": fresh_pod["created"] - fresh.info.start_time / 1000,
        "fresh_pod_to_first_epoch_s": fresh_first - fresh_pod["created"],
        "partial_epoch_lost_s": deleted - last_logged,
        "epoch_s_median": statistics.median(epoch_s),
    }


def show(name: str, value: float | str) -> None:
    print(f"{name}: {value}" if isinstance(value, (int, str)) else f"{name}: {value:.2f}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="sweeps one after the other in the "
                        "same namespace; then the medians")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--after-epoch", type=int, default=2,
                        help="the pod is deleted once this many epochs are logged")
    parser.add_argument("--at", type=float, default=0.5,
                        help="... and this fraction of an epoch later (mid-epoch)")
    parser.add_argument("--training-samples", type=int, default=4096)
    parser.add_argument("--validation-samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if not 0 < args.after_epoch < args.epochs:
        parser.error("--after-epoch must leave an epoch to train")
    print_machine()
    for name in ("epochs", "after_epoch", "at", "training_samples", "validation_samples"):
        print(f"setting_{name}: {getattr(args, name)}")
    results = []
    with deployed_stack() as stack:
        print(f"namespace: {stack.namespace}", flush=True)
        for number in range(1, args.runs + 1):
            print(f"run: {number}", flush=True)
            results.append(one_run(stack, args))
            for name, value in results[-1].items():
                show(name, value)
    if args.runs > 1:
        for name in results[0]:
            values = [r[name] for r in results]
            if name in ("epochs_lost", "points_logged_twice"):
                show(f"{name}_max", max(values))
            elif isinstance(values[0], str) or name.startswith(("resumed", "next_epoch")):
                print(f"{name}_runs: {', '.join(str(v) for v in values)}")
            else:
                print(f"{name}_runs: {', '.join(f'{v:.2f}' for v in values)}")
                show(f"{name}_median", statistics.median(values))
    print_machine_load()


def print_machine_load() -> None:
    print(f"machine_load_1min_at_end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
