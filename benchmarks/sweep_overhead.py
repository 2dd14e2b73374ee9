"""Sweep overhead on a cluster, measured on the real driver (`driver.py --backend kubernetes`).

N tiny synthetic trials at parallelism P. From the driver's own per-poll statistics
(--stats-file) and the runs it recorded:
  submission_s_mean               driver-side time to create a trial's run and its Job
  submit_to_first_metric_s_mean   run created -> first logged metric (pod start + TF import)
  wall_vs_ideal                   sweep wall time / (sum of trial durations / P); with --runs
                                  (3): each run's, then wall_vs_ideal_median
  startup_s, refill_gap_s_mean, tail_s   where the rest goes: the sweep's start -> first run,
                                  a run's end -> the run created in its slot, last run's end ->
                                  the sweep's end (the report)
  end_seen_after_s_mean, poll_s_mean     of the refill gap: a run's end -> the poll that saw
                                  it; how long a poll takes
  poll_late_s_mean                how much later than its interval a poll starts after the
                                  previous one (the loop's rhythm; ~0 unless polls and
                                  submissions take longer than the interval)
  api_calls_per_poll_at_1         tracking + Kubernetes requests in a poll with 1 trial in flight
  api_calls_per_poll_at_P         ... with P trials in flight (goal: the same as at 1)

Needs the k8s/ stack deployed (`make images deploy`) and MLFLOW_TRACKING_URI (or the driver's
own connection) plus the credentials the driver uses:
    .venv/bin/python benchmarks/sweep_overhead.py --trials 24 --parallel 4
    .venv/bin/python benchmarks/sweep_overhead.py --detached ...   # the controller as a Job
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlflow import MlflowClient  # noqa: E402

from machine import print_machine  # noqa: E402
from celeb_smile.constants import SWEEP_ID_TAG, TRIAL_INDEX_TAG  # noqa: E402
from celeb_smile.sweep.cli import _namespaces_and_context  # noqa: E402
from celeb_smile.sweep.connect import connect_to_tracking_server  # noqa: E402
from celeb_smile.sweep.spec import PROJECT_DIR  # noqa: E402

TINY = {"epochs": "2", "training_samples": "128", "validation_samples": "32",
        "batch_size": "32"}


def run_driver(experiment: str, args, stats: Path) -> float:
    trials, parallel = args.trials, args.parallel
    extra = ["--no-build"] if args.no_build else []
    # Detached, the controller's statistics stay in its pod: only MLflow's figures are read.
    extra += ["--detach"] if args.detached else ["--stats-file", str(stats)]
    command = [sys.executable, str(PROJECT_DIR / "driver.py"), "--backend", "kubernetes",
               "--backend-config", args.backend_config,
               "--experiment", experiment, "--max-parallel", str(parallel),
               "--grid", "seed=" + ",".join(str(s) for s in range(1, trials + 1)),
               "--poll-seconds", "2", *extra]
    for name, value in TINY.items():
        command += ["--param", f"{name}={value}"]
    started = time.monotonic()
    result = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"driver exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                 f"{result.stderr[-2000:]}")
    return time.monotonic() - started


def refill_gaps(starts: list[float], ends: list[float], parallel: int) -> list[float]:
    """For each run created after the first `parallel`: seconds since the earliest run end
    not yet followed by a new run (the slot it refilled)."""
    free = list(ends)
    gaps = []
    for start in starts[parallel:]:
        freed = free.pop(0)
        gaps.append(start - freed)
    return gaps


def read_stats(stats: Path) -> list[dict]:
    return [json.loads(line) for line in stats.read_text().splitlines()]


def seen_after_end(stats: list[dict], trials) -> list[float]:
    """For each trial: seconds from its run's end to the driver ending it (the poll that saw
    it)."""
    seen = {line["ended"]: line["t"] for line in stats if "ended" in line}
    delays = []
    for run in trials:
        index = int(run.data.tags.get(TRIAL_INDEX_TAG, "0"))
        if index in seen:
            delays.append(seen[index] - run.info.end_time / 1000)
    return delays


def poll_lateness(poll_stats: list[dict]) -> list[float]:
    """For each poll after the first: how much later than its interval it started after the
    one before (0 when the loop keeps its rhythm; a poll's line is written as it ends)."""
    starts = [(p["t"] - p["poll_s"], p["interval_s"]) for p in poll_stats]
    return [max(0.0, start - before - interval)
            for (before, interval), (start, _) in zip(starts, starts[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--no-build", action="store_true", help="use the pushed image")
    parser.add_argument("--backend-config", default=str(PROJECT_DIR / "kubernetes_config.json"),
                        help="e.g. .deploy/<namespace>/kubernetes_config.json")
    parser.add_argument("--detached", action="store_true",
                        help="the sweep's controller in the cluster (driver.py --detach): "
                             "the figures MLflow records (wall time, refill gaps, tail)")
    parser.add_argument("--runs", type=int, default=3,
                        help="sweeps one after the other; wall_vs_ideal is their median (the "
                             "last wave's imbalance moves a single run by +-0.02)")
    args = parser.parse_args()
    print_machine()
    ratios = []
    for run in range(1, args.runs + 1):
        print(f"run: {run}")
        ratios.append(one_sweep(args))
    print(f"wall_vs_ideal_runs: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"wall_vs_ideal_median: {statistics.median(ratios):.2f}")


def one_sweep(args) -> float:
    """Run the driver once and print its figures; returns its wall_vs_ideal."""
    experiment = f"bench-sweep-overhead-{int(time.time())}"
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.jsonl"
        driver_s = run_driver(experiment, args, stats)
        stats_lines = [] if args.detached else read_stats(stats)
    with ExitStack() as stack:
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking_uri:  # as the driver did: through the Kubernetes API
            _, context, tracking_namespace = _namespaces_and_context(args.backend_config)
            tracking_uri = stack.enter_context(
                connect_to_tracking_server(tracking_namespace, context=context)).uri
        client = MlflowClient(tracking_uri)
        if args.detached:
            wait_for_the_end(client, experiment)
        return report(client, experiment, args, driver_s, stats_lines)


def wait_for_the_end(client, experiment: str, timeout: float = 3600) -> None:
    """Until the detached sweep's parent run has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if any(SWEEP_ID_TAG in r.data.tags and "mlflow.parentRunId" not in r.data.tags
               and r.info.status != "RUNNING" for r in runs):
            return
        time.sleep(5)
    sys.exit(f"the detached sweep of {experiment} did not end within {timeout:.0f}s")


def report(client, experiment, args, driver_s, stats) -> float:
    poll_stats = [line for line in stats if "api_calls" in line]
    submits = [line["submit_s"] for line in stats if "submit_s" in line]
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parent = next(r for r in runs if SWEEP_ID_TAG in r.data.tags
                  and "mlflow.parentRunId" not in r.data.tags)
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    durations = [(r.info.end_time - r.info.start_time) / 1000 for r in trials]
    to_metric = []
    for run in trials:
        history = client.get_metric_history(run.info.run_id, "loss")
        if history:
            to_metric.append(min(m.timestamp for m in history) / 1000 - run.info.start_time / 1000)
    wall = parent.data.metrics.get("sweep_seconds", driver_s)
    ideal = sum(durations) / args.parallel
    by_in_flight: dict[int, list[int]] = {}
    for poll in poll_stats:
        by_in_flight.setdefault(poll["in_flight"], []).append(poll["api_calls"])
    print(f"trials: {len(trials)}")
    print(f"parallel: {args.parallel}")
    print(f"controller: {'detached (a Job in the cluster)' if args.detached else 'this machine'}")
    if submits:
        print(f"submission_s_mean: {statistics.mean(submits):.2f}")
        print(f"submission_s_max: {max(submits):.2f}")
    print(f"submit_to_first_metric_s_mean: {statistics.mean(to_metric):.1f}")
    print(f"trial_s_mean: {statistics.mean(durations):.1f}")
    print(f"sweep_wall_s: {wall:.1f}")
    print(f"ideal_wall_s: {ideal:.1f}")
    print(f"wall_vs_ideal: {wall / ideal:.2f}")
    starts = sorted(r.info.start_time / 1000 for r in trials)
    ends = sorted(r.info.end_time / 1000 for r in trials)
    began = next((line["t"] for line in stats if "started" in line),
                 parent.info.start_time / 1000)  # detached: from its parent run's start
    print(f"startup_s: {starts[0] - began:.1f}")
    gaps = refill_gaps(starts, ends, args.parallel)
    print(f"refill_gap_s_mean: {statistics.mean(gaps):.1f} (max {max(gaps):.1f})")
    if poll_stats:
        seen = seen_after_end(stats, trials)
        print(f"end_seen_after_s_mean: {statistics.mean(seen):.2f} (max {max(seen):.2f})")
        print(f"poll_s_mean: {statistics.mean(p['poll_s'] for p in poll_stats):.2f}")
        print(f"poll_late_s_mean: {statistics.mean(poll_lateness(poll_stats)):.2f}")
    print(f"tail_s: {parent.info.end_time / 1000 - ends[-1]:.1f}")
    for in_flight in sorted(by_in_flight):
        calls = by_in_flight[in_flight]
        print(f"api_calls_per_poll_at_{in_flight}: {statistics.mean(calls):.2f} "
              f"(max {max(calls)}, {len(calls)} polls)")
    return wall / ideal


if __name__ == "__main__":
    main()
