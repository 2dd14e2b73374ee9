"""Sweep controller at scale: the real controller (TPE search, ASHA early stopping) driving N
simulated trials at parallelism P on a real MLflow server (`--workers 2`) backed by PostgreSQL.

Built as driver.py builds it (`cli.sweep_spec_from_args` on a sweep file, `validate`,
`cli._controller`), but with the simulated backend (`celeb_smile/sweep/backends/simulated.py`):
each trial logs its E epochs over `--duration` seconds by the clock, from worker threads of this
process, so only the controller, the tracking server and the database do real work. The sweep
runs in this process; its per-poll statistics come from the driver's `--stats-file`. Search:
TPE over sweeps/tpe-asha.yaml's space plus `seed` (see SEED_SPACE), ASHA as that file sets it.
Figures (`sweep:` first: its exit code, or where it crashed):
  wall_vs_ideal                   sweep wall time / ideal, where ideal = the trial time the
                                  sweep needed / P: all E epochs of a trial that finished, up to
                                  its deciding rung for one ASHA stopped (without stopping:
                                  N * duration / P, also printed as n_duration_over_p_s)
  wall_vs_zero_overhead           sweep wall time / the same trials list-scheduled on P slots
                                  with no overhead (zero_overhead_s): the controller's own cost,
                                  without the last wave's uneven ends that wall_vs_ideal counts
  empty_slots_wave/_steady/_tail  slot-seconds no trial held, as shares of wall x P: until the
                                  P-th launch, until the last launch, after it
  poll_s_p50/p95_first100, _last100   duration of each poll (observe + the tracking reads),
                                  over the polls made while the first 100 (the last 100) trials
                                  were in flight or ending (fewer when N < 200: window_trials)
  api_calls_per_poll_max          backend + tracking calls of the polling thread in one poll
  ask_ms_p95_first100, _last100   the search's get_suggestions (TPE: a study rebuilt from every
                                  trial, then an ask) for the first / last 100 trials; plus the
                                  asks that found the sweep complete (made on every poll of the
                                  last wave, while slots free up and nothing is left to run)
  controller_cpu_ms_per_trial     CPU time of this process while the sweep ran, minus the
                                  simulated trials' worker threads (time.thread_time of each),
                                  / N: the polling loop, its submission threads and recorder
  server_requests_per_trial       requests the server answered during the sweep (its access
                                  log), / N; split into the simulated trials' own (counted by
                                  the backend) and the controller's (the rest), and by endpoint
  controller_peak_rss_mb          this process's peak RSS (ru_maxrss)
  startup_s, first_wave_s         sweep start -> the first trial launched, -> the P-th (the
                                  first wave in flight)
  simulator_late_s_p95 / _max     how late the simulated epochs were logged (the trials kept
                                  their clock if small: otherwise wall_vs_ideal is not the
                                  controller's alone)

Needs PostgreSQL's binaries (Debian's `postgresql` package: installed here with apt-get if
absent); starts a throwaway cluster and the server on loopback ports and stops both at the end.
    .venv/bin/python benchmarks/sweep_scale.py --trials 60 --parallel 10 --duration 5 --epochs 5
    .venv/bin/python benchmarks/sweep_scale.py     # 1000 trials, 50 in flight, 20 s x 10 epochs
"""

import argparse
import collections
import contextlib
import heapq
import json
import logging
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import print_machine  # noqa: E402
from tracking_load import postgres_bin, postgres_cluster  # noqa: E402
from celeb_smile.local_server import mlflow_server  # noqa: E402

SPACE = """space:
  learning_rate: {loguniform: [0.00001, 0.1]}
  convolutions: {randint: [0, 3]}
  batch_size: {choice: [16, 32, 64]}
"""  # the space and the rule of sweeps/tpe-asha.yaml...
RULE = "early_stopping: {rule: asha, grace_period: 3, reduction_factor: 3, metric: val_loss}\n"
# ...and the seed: without it TPE, spelling learning rates to 3 significant digits, runs out of
# new points near the optimum (100 repeated asks) after ~350-520 trials and the sweep ends there
SEED_SPACE = "  seed: {randint: [0, 99999]}\n"
ACCESS_LINE = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD) (\S+?)(?:\?\S*)? HTTP/[\d.]+" \d+')
ARTIFACT_PATH = re.compile(r"^(/api/2\.0/mlflow-artifacts/artifacts/).*")  # one per run
STOP_EPOCH = re.compile(r"at epoch (\d+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per trial")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the TPE search's seed")
    parser.add_argument("--early-stopping", choices=("asha", "none"), default="asha",
                        help="asha as sweeps/tpe-asha.yaml: rungs at epochs 3 and 9, on val_loss")
    parser.add_argument("--space-without-seed", action="store_true",
                        help="search sweeps/tpe-asha.yaml's space alone (TPE may run dry early)")
    parser.add_argument("--keep", metavar="DIR",
                        help="copy the driver's output, its stats and the server's log here")
    parser.add_argument("--profile", metavar="FILE",
                        help="cProfile the polling loop (this thread) into FILE")
    args = parser.parse_args()
    print_machine()
    if postgres_bin("initdb") is None:
        subprocess.run(["apt-get", "install", "-y", "postgresql"], check=True,
                       stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="sweep-scale-") as root:
        root = Path(root)
        root.chmod(0o755)  # the cluster under it runs as the postgres user
        (root / "pg").mkdir()
        (root / "server").mkdir()
        with postgres_cluster(str(root / "pg")) as database, \
                mlflow_server(database, root / "server", workers=2) as uri:
            server_log = root / "server" / f"mlflow-server-{uri.rsplit(':', 1)[1]}.log"
            figures = run_sweep(uri, server_log, root, args)
    for name, value in figures.items():
        print(f"{name}: {value}", flush=True)


def run_sweep(uri: str, server_log: Path, root: Path, args) -> dict:
    import mlflow
    from rich.console import Console

    from celeb_smile.sweep.backends.simulated import SimulatedBackend
    from celeb_smile.sweep.cli import build_parser, sweep_spec_from_args
    from celeb_smile.sweep.spec import validate

    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.chdir(root)  # the report's plots land under .sweep/ here
    sweep_file, stats = root / "sweep.yaml", root / "stats.jsonl"
    sweep_file.write_text(f"params:\n  epochs: {args.epochs}\n" + SPACE
                          + ("" if args.space_without_seed else SEED_SPACE) + RULE)
    argv = ["--sweep", str(sweep_file), "--search", "tpe", "--max-trials", str(args.trials),
            "--max-parallel", str(args.parallel), "--seed", str(args.seed),
            "--early-stopping", args.early_stopping,
            "--experiment", f"bench-sweep-scale-{int(time.time())}",
            "--stats-file", str(stats)]
    cli_args = build_parser().parse_args(argv)
    spec = sweep_spec_from_args(cli_args)
    validate(spec)
    mlflow.set_tracking_uri(uri)
    backend = SimulatedBackend(duration=args.duration, epochs=args.epochs)
    console_log = open(root / "driver.log", "w")
    sweep = build_controller(cli_args, spec, backend, Console(file=console_log, width=160),
                             uri)
    asks = timed_asks(sweep)
    sampler = CpuSampler(backend)
    requests_before = server_requests(server_log)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    sampler.start()
    cpu_before, began = time.process_time(), time.monotonic()
    try:
        outcome = f"exit {sweep.run()}"
    except Exception as error:  # noqa: BLE001 - a crash at scale is a finding: say where
        outcome = f"crashed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
        traceback.print_exc()
    wall, cpu = time.monotonic() - began, time.process_time() - cpu_before
    finished_at = time.time()
    sampler.stop()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    backend.close()
    console_log.close()
    time.sleep(1)  # the access log's last lines
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        for path in (root / "driver.log", stats, server_log):
            shutil.copy(path, Path(args.keep) / path.name)
    requests = server_requests(server_log) - requests_before
    return {"sweep": outcome, **figures(
        sweep, backend, args, wall, cpu, asks, requests,
        [json.loads(line) for line in stats.read_text().splitlines()], rss_before,
        finished_at, sampler.samples)}


def build_controller(cli_args, spec, backend, console, tracking_uri: str):
    """The controller as driver.py builds it. (The "before" figures in benchmarks/README.md
    were measured on a93bb24's scheduler, built with the same arguments.)"""
    from celeb_smile.sweep import cli

    return cli._controller(cli_args, spec, backend, console, tracking_uri)


class CpuSampler:
    """Every second: (time.time(), this process's CPU seconds, the simulated trials' worker
    threads' CPU seconds, the polling loop's (main thread's)), so that the controller's CPU
    can be split by time window and by thread."""

    def __init__(self, backend):
        import psutil

        self.process, self.backend = psutil.Process(), backend
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-sampler")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        loop = threading.main_thread().native_id
        while True:
            ids = set(self.backend.thread_ids)
            threads = {t.id: t.user_time + t.system_time for t in self.process.threads()}
            self.samples.append((time.time(), time.process_time(),
                                 sum(cpu for tid, cpu in threads.items() if tid in ids),
                                 threads.get(loop, 0.0)))
            if self._stop.wait(1.0):
                return


def controller_cores(samples, start: float, end: float) -> float:
    """Cores the controller used between `start` and `end` (time.time()): this process's CPU
    less the simulated trials' threads (and the sampler's own, which is small)."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return float("nan")
    (t0, cpu0, sim0, _), (t1, cpu1, sim1, _) = inside[0], inside[-1]
    return round(((cpu1 - cpu0) - (sim1 - sim0)) / (t1 - t0), 3)


def timed_asks(sweep) -> list[tuple[int, int, float, float]]:
    """Wrap the search's get_suggestions: (own trials before the ask, suggestions, ms, CPU s)."""
    search = sweep.policy.search if hasattr(sweep, "policy") else sweep.search
    asks, ask = [], search.get_suggestions

    def timed(trials, n):
        started, cpu = time.perf_counter(), time.thread_time()
        suggestions = ask(trials, n)
        asks.append((sum(not t.warm_start for t in trials), len(suggestions),
                     (time.perf_counter() - started) * 1000, time.thread_time() - cpu))
        return suggestions

    search.get_suggestions = timed
    return asks


def server_requests(log: Path) -> collections.Counter:
    """Requests in the server's access log so far, by method and path."""
    counts: collections.Counter = collections.Counter()
    with contextlib.suppress(OSError), open(log, errors="replace") as lines:
        for line in lines:
            match = ACCESS_LINE.search(line)
            if match:
                path = ARTIFACT_PATH.sub(r"\1…", match[2])
                counts[f"{match[1]} {path}"] += 1
    return counts


def figures(sweep, backend, args, wall, cpu, asks, requests, stats, rss_before,
            finished_at, samples) -> dict:
    from celeb_smile.constants import TrialState

    handles = {h.run_id: h for h in backend.launched}
    trials = sorted((t for t in sweep.trials if t.ended is not None and t.run_id in handles),
                    key=lambda t: t.index)  # all of them, unless the sweep crashed
    n, parallel = len(trials), args.parallel
    window = min(100, n // 2)
    offset = time.time() - time.monotonic()  # stats lines carry time.time()
    first_end = max(t.ended for t in trials[:window]) + offset
    last_start = min(t.started for t in trials[-window:]) + offset
    polls = [line for line in stats if "poll_s" in line]
    first = [p["poll_s"] for p in polls if p["t"] <= first_end]
    last = [p["poll_s"] for p in polls if p["t"] >= last_start]
    epoch_s = args.duration / args.epochs
    needed = []  # trial seconds an ideal controller would have spent on each trial
    submit_s, seen_s = [], []  # run created -> its clock started; its ideal end -> ended
    for trial in trials:
        stop = STOP_EPOCH.search(trial.reason) if trial.state == TrialState.STOPPED else None
        epochs = int(stop[1]) if stop else args.epochs
        needed.append(epochs * epoch_s)
        handle = handles[trial.run_id]
        submit_s.append(handle.started_at - (trial.started + offset))
        seen_s.append(trial.ended + offset - handle.due(epochs))
    ideal = sum(needed) / parallel
    lateness = poll_lateness(polls)
    states = collections.Counter(str(t.state) for t in trials)
    asked = [a for a in asks if a[1]]
    empty = [a for a in asks if not a[1]]
    simulated_cpu = backend.cpu_seconds
    total_requests = sum(requests.values())
    late = sorted(backend.lateness)
    began = next(line["t"] for line in stats if "started" in line)
    submitted = [line["t"] for line in stats if "submit_s" in line]
    ended = [line["t"] for line in stats if "ended" in line]
    out = {
        "trials": n, "trials_planned": args.trials, "parallel": parallel,
        "duration_s": args.duration, "epochs": args.epochs,
        "trial_states": ", ".join(f"{k} {v}" for k, v in sorted(states.items())),
        "trial_epochs_mean": round(statistics.mean(len(t.history) for t in trials), 2),
        "sweep_wall_s": round(wall, 1),
        "ideal_s": round(ideal, 1),
        "n_duration_over_p_s": round(n * args.duration / parallel, 1),
        "wall_vs_ideal": round(wall / ideal, 3),
        "zero_overhead_s": round(zero_overhead_wall(needed, parallel), 1),
        "wall_vs_zero_overhead": round(wall / zero_overhead_wall(needed, parallel), 3),
        **empty_slot_shares(began, submitted, ended, parallel),
        "startup_s": round(submitted[0] - began, 1),
        "first_wave_s": round(submitted[min(parallel, len(submitted)) - 1] - began, 1),
        "tail_s": round(finished_at - max(ended), 1),
        "window_trials": window,
        "polls": len(polls),
        "poll_s_p50_first100": pct(first, 50), "poll_s_p95_first100": pct(first, 95),
        "poll_s_p50_last100": pct(last, 50), "poll_s_p95_last100": pct(last, 95),
        "poll_s_p95_last_vs_first": round(pct(last, 95) / pct(first, 95), 2),
        "poll_late_s_p95_first100": pct([late for p, late in zip(polls[1:], lateness)
                                         if p["t"] <= first_end], 95),
        "poll_late_s_p95_last100": pct([late for p, late in zip(polls[1:], lateness)
                                        if p["t"] >= last_start], 95),
        "submit_s_mean_first100": mean(submit_s[:window]),
        "submit_s_mean_last100": mean(submit_s[-window:]),
        "end_seen_after_s_mean_first100": mean(seen_s[:window]),
        "end_seen_after_s_mean_last100": mean(seen_s[-window:]),
        "in_flight_mean": round(statistics.mean(p["in_flight"] for p in polls), 1),
        "api_calls_per_poll_mean": round(statistics.mean(p["api_calls"] for p in polls), 2),
        "api_calls_per_poll_max": max(p["api_calls"] for p in polls),
        "ask_ms_p95_first100": pct([a[2] for a in asked if a[0] < window], 95, 1),
        "ask_ms_p95_last100": pct([a[2] for a in asked if a[0] >= n - window], 95, 1),
        "ask_ms_max": pct([a[2] for a in asks], 100, 1),
        "asks_after_the_last_trial": f"{len(empty)} ({sum(a[2] for a in empty) / 1000:.1f} s)",
        "ask_s_total": round(sum(a[2] for a in asks) / 1000, 1),
        "ask_cpu_s_total": round(sum(a[3] for a in asks), 1),
        "controller_cpu_ms_per_trial": round((cpu - simulated_cpu) * 1000 / n, 1),
        "controller_cpu_s": round(cpu - simulated_cpu, 1),
        "controller_cores_first100": controller_cores(samples, began, first_end),
        "controller_cores_last100": controller_cores(samples, last_start, max(ended)),
        "loop_thread_cpu_s": round(samples[-1][3] - samples[0][3], 1) if samples else None,
        "simulator_cpu_ms_per_trial": round(simulated_cpu * 1000 / n, 1),
        "server_requests_per_trial": round(total_requests / n, 2),
        "simulated_requests_per_trial": round(backend.requests / n, 2),
        "controller_requests_per_trial": round((total_requests - backend.requests) / n, 2),
        "simulator_failed_requests": backend.failed_requests,
        "controller_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                        / 1024, 1),
        "controller_rss_mb_before_sweep": round(rss_before, 1),
        "simulator_late_s_mean": mean(late), "simulator_late_s_p95": pct(late, 95),
        "simulator_late_s_max": pct(late, 100),
    }
    for endpoint, count in requests.most_common(10):
        out[f"requests_per_trial[{endpoint}]"] = round(count / n, 2)
    return out


def zero_overhead_wall(needed: list[float], parallel: int) -> float:
    """The same trials in the same order on P slots with no overhead at all, each started the
    moment a slot frees (list scheduling): the floor of the sweep's wall time. Above the ideal
    (sum / P) by the last wave's uneven ends, which no controller removes."""
    slots = [0.0] * parallel
    for seconds in needed:
        heapq.heappush(slots, heapq.heappop(slots) + seconds)
    return max(slots)


def empty_slot_shares(began: float, submitted: list[float], ended: list[float],
                      parallel: int) -> dict:
    """Slot-seconds no trial held, as shares of wall x P: before the P-th launch (the first
    wave), from then to the last launch (steady: a freed slot waiting to be refilled), after
    the last launch (the tail: the last trials end one by one)."""
    events = sorted([(t, 1) for t in submitted] + [(t, -1) for t in ended])
    wave_end, last_launch = sorted(submitted)[min(parallel, len(submitted)) - 1], max(submitted)
    empty = {"wave": 0.0, "steady": 0.0, "tail": 0.0}
    in_flight, before = 0, began
    for at, change in events:
        phase = "wave" if before < wave_end else "steady" if before < last_launch else "tail"
        empty[phase] += (at - before) * (parallel - in_flight)
        in_flight, before = in_flight + change, at
    total = (before - began) * parallel
    return {f"empty_slots_{phase}": round(value / total, 3) for phase, value in empty.items()}


def poll_lateness(polls: list[dict]) -> list[float]:
    """For each poll after the first: how much later than its interval it started after the
    one before (0 while the loop keeps its rhythm; sweep_overhead.py's measure)."""
    starts = [(p["t"] - p["poll_s"], p["interval_s"]) for p in polls]
    return [max(0.0, start - before - interval)
            for (before, interval), (start, _) in zip(starts, starts[1:])]


def mean(values, digits=3):
    return round(statistics.mean(values), digits) if values else float("nan")


def pct(values, q, digits=3):
    """The q-th percentile (nearest rank); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))],
                 digits)


if __name__ == "__main__":
    main()
