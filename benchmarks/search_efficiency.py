"""Search efficiency: how many trial-epochs an adaptive sweep needs to find what random search
finds, against the peers a user would choose instead, on the same space, trials, parallelism
and epochs, for each seed:
  random            this driver's random search, no early stopping (the reference)
  tpe_asha          this driver's TPE + ASHA, search and early_stopping as sweeps/tpe-asha.yaml
                    ships them
  optuna_hyperband  Optuna's own study in-process: TPE as the driver configures it, Optuna's
                    HyperbandPruner with its defaults (benchmarks/optuna_study.py)
  tpe_hyperband     this driver's TPE with its Hyperband rule, as sweeps/tpe-hyperband.yaml (the
                    other shipped adaptive sweep) sets it: 3 brackets, first rungs at epochs 2, 4 and 8,
                    the best half going on at each rung, judged on val_loss (the last bracket
                    stops nobody before epoch 8, protecting late bloomers); until 2026-12-02
                    tpe-asha.yaml's rung, factor and metric in 2 brackets
  tpe_median        (with --configs) TPE + the median rule
The driver's configurations run through the real driver (`driver.py --sweep FILE --backend
local`). Per seed and configuration it prints `trial_epochs` (epochs trained, summed over
trials), `wall_s`, `best` (best final objective of a trial), `epochs_vs_random` (the
trial-epochs used when a trial first logged a value within 0.005 of random's best, over
random's trial-epochs; inf if it never did) and `reached_random_best`. Across seeds, one line
each: `epochs_vs_random_median_<config>` and `reached_random_best_<config>: K/N`.

Goals (issue 22), over >= 10 seeds that played no part in choosing settings: a shipped
adaptive sweep (tpe_asha or tpe_hyperband) reaches random's best on >= 9 of 10;
its median epochs_vs_random <= 0.4; and at most optuna_hyperband's median. Seeds used to choose
settings: 0-9 (tpe-asha.yaml's), 100-119 (their trials are search_replay.py's pool, with which
tpe-hyperband.yaml's settings and TPE's Latin-hypercube start-up were chosen on replayed seeds).
Fresh: 110-119 (before that start-up, and before they joined the pool), then 120-129.

    .venv/bin/python benchmarks/search_efficiency.py --seeds 120-129          # the report
    .venv/bin/python benchmarks/search_efficiency.py --seeds 0 --trials 8 --epochs 3
    .venv/bin/python benchmarks/search_efficiency.py --seeds 120-127 --configs tpe_hyperband \
        --random-from earlier-output.txt   # random's figures from an earlier run, not run again
"""

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from celeb_smile.constants import SWEEP_ID_TAG  # noqa: E402
from machine import print_machine  # noqa: E402
from optuna_study import run_study  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]
METRIC = "val_accuracy"
WITHIN = 0.005
SPACE = {"learning_rate": {"loguniform": [0.00001, 1.0]},
         "convolutions": {"randint": [0, 3]},
         "batch_size": {"choice": [16, 32, 64]}}
ASHA_FILE, HYPERBAND_FILE = (yaml.safe_load((PROJECT_DIR / "sweeps" / name).read_text())
                             for name in ("tpe-asha.yaml", "tpe-hyperband.yaml"))
CONFIGS = {  # the driver's configurations: name -> what differs from random search
    "random": {"search": "random"},
    "tpe_asha": {"search": ASHA_FILE["search"], "early_stopping": ASHA_FILE["early_stopping"]},
    "tpe_hyperband": {"search": HYPERBAND_FILE["search"],
                      "early_stopping": HYPERBAND_FILE["early_stopping"]},
    "tpe_median": {"search": "tpe",
                   "early_stopping": {"rule": "median", "start_step": 3,
                                      "min_trials_required": 3}},
}
PEERS = ("optuna_hyperband",)  # run by optuna_study.py, not the driver
DEFAULT_CONFIGS = ("random", "tpe_asha", "optuna_hyperband", "tpe_hyperband")


def sweep_definition(experiment: str, settings: dict, seed: int, args) -> dict:
    """A sweep file's content: the shared space and sizes, and `settings` (CONFIGS' values)."""
    return {
        "experiment": experiment,
        "objective": {"metric": METRIC, "direction": "maximize"},
        "max_trials": args.trials, "seed": seed, "max_parallel": args.parallel,
        "params": {"epochs": args.epochs, "training_samples": args.training_samples,
                   "validation_samples": args.validation_samples, "dataset": "synthetic"},
        "space": SPACE, **settings}


def sweep_file(directory: Path, name: str, seed: int, args) -> Path:
    definition = sweep_definition(f"bench-{name}-seed{seed}", CONFIGS[name], seed, args)
    path = directory / f"{name}-seed{seed}.yaml"
    path.write_text(f"# search_efficiency.py: {name}, seed {seed}\n"
                    + yaml.safe_dump(definition, sort_keys=False))
    return path


def run_driver(path: Path, store: str, work_dir: Path) -> tuple[int, float]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=store)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "driver.py"), "--sweep", str(path),
         "--backend", "local"], cwd=work_dir, env=env, capture_output=True,
        text=True)
    path.with_suffix(".log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:  # 1 = a trial failed: say which and why
        sys.stderr.write(f"{path.name}: driver exited {result.returncode}\n"
                         + result.stdout[-3000:] + result.stderr[-2000:])
    return result.returncode, time.monotonic() - started


def epoch_points(client: MlflowClient, experiment: str) -> list[tuple[int, float, str]]:
    """Every epoch's objective of every trial: (timestamp ms, value, run id)."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    points = []
    for run in runs:
        if SWEEP_ID_TAG in run.data.tags and "mlflow.parentRunId" not in run.data.tags:
            continue  # the parent
        points += [(m.timestamp, m.value, run.info.run_id)
                   for m in client.get_metric_history(run.info.run_id, METRIC)]
    return sorted(points)


def summarise(points) -> dict:
    latest = {}
    for _, value, run_id in points:
        latest[run_id] = value
    finite = [v for v in latest.values() if not math.isnan(v)]
    return {"trial_epochs": len(points), "trials": len(latest),
            "best": max(finite) if finite else math.nan}


def epochs_to_reach(points, target: float) -> float:
    """How many of `points` (time, value, trial), in time order, until a value reaches target."""
    for used, (_, value, _) in enumerate(points, start=1):
        if value >= target:
            return used
    return math.inf


def run_config(name: str, seed: int, args, root: Path, client: MlflowClient) -> dict:
    """One configuration's sweep on `seed`: its stats and every epoch's (time, value, trial)."""
    experiment = f"bench-{name}-seed{seed}"
    if name in PEERS:
        directory = root / experiment
        directory.mkdir(exist_ok=True)
        started = time.monotonic()
        points = run_study(sweep_definition(experiment, {"search": "tpe"}, seed, args),
                           directory)
        exit_code, wall = 0, time.monotonic() - started
    else:
        exit_code, wall = run_driver(sweep_file(root, name, seed, args), client.tracking_uri,
                                     root)
        points = epoch_points(client, experiment)
    return {**summarise(points), "wall_s": wall, "exit": exit_code, "points": points}


def compare_with_random(results: dict) -> None:
    """Each configuration's epochs_vs_random and reached_random_best, from random's sweep."""
    random = results["random"]
    for result in results.values():  # a random sweep recorded earlier keeps its figures
        used = epochs_to_reach(result["points"], random["best"] - WITHIN)
        result.setdefault("epochs_vs_random", used / random["trial_epochs"]
                          if random["trial_epochs"] else math.nan)
        result.setdefault("reached_random_best", math.isfinite(used))


def earlier_random(path: str) -> dict[int, dict]:
    """Random's figures per seed from an earlier run's output (its `seedN_random_KEY: V` lines)."""
    found = {}
    for line in Path(path).read_text().splitlines():
        if match := re.fullmatch(r"seed(\d+)_random_(\w+): (\S+)", line.strip()):
            seed, key, value = match.groups()
            found.setdefault(int(seed), {})[key] = value
    return found


def random_as_recorded(recorded: dict) -> dict:
    """An earlier random sweep's result, with its epochs_vs_random as then printed."""
    return {"trial_epochs": int(recorded["trial_epochs"]), "trials": int(recorded["trials"]),
            "best": float(recorded["best"]), "wall_s": float(recorded["wall_s"]),
            "exit": int(recorded["exit"]), "points": [],
            "epochs_vs_random": float(recorded["epochs_vs_random"]), "reached_random_best": True}


def one_seed(seed: int, args, root: Path) -> dict:
    client = MlflowClient(f"sqlite:///{root / f'seed{seed}.db'}")
    results = {}
    for name in args.configs:
        if name == "random" and seed in args.random_recorded:
            results[name] = random_as_recorded(args.random_recorded[seed])
            continue
        results[name] = run_config(name, seed, args, root, client)
        for key in ("trial_epochs", "trials", "wall_s", "best", "exit"):
            print(f"seed{seed}_{name}_{key}: {_fmt(results[name][key])}", flush=True)
    compare_with_random(results)
    for name, result in results.items():
        print(f"seed{seed}_{name}_epochs_vs_random: {result['epochs_vs_random']:.3f}")
        print(f"seed{seed}_{name}_reached_random_best: {result['reached_random_best']}",
              flush=True)
    return results


def summary_lines(outcomes: list[dict], configs) -> list[str]:
    """Across seeds, per configuration: medians, and how often it reached random's best."""
    lines = []
    for name in configs:
        for key in ("trial_epochs", "wall_s", "best"):
            median = statistics.median(o[name][key] for o in outcomes)
            lines.append(f"median_{name}_{key}: {median:.4f}")
        ratio = statistics.median(o[name]["epochs_vs_random"] for o in outcomes)
        reached = sum(o[name]["reached_random_best"] for o in outcomes)
        lines += [f"epochs_vs_random_median_{name}: {ratio:.3f}",
                  f"reached_random_best_{name}: {reached}/{len(outcomes)}"]
    return lines


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" or "100-109" or a mix."""
    seeds = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += list(range(int(low), int(high or low) + 1))
    return seeds


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweeps' sizes (search_replay.py replays the same ones)."""
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--training-samples", type=int, default=300)
    parser.add_argument("--validation-samples", type=int, default=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help='e.g. "0,1,2" or "100-109"')
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"of {', '.join([*CONFIGS, *PEERS])}; random always runs first")
    add_size_arguments(parser)
    parser.add_argument("--keep", metavar="DIR",
                        help="keep the sweep files, driver logs and MLflow stores in DIR")
    parser.add_argument("--random-from", metavar="FILE",
                        help="an earlier run's output: random's figures for the seeds it has")
    args = parser.parse_args()
    args.random_recorded = earlier_random(args.random_from) if args.random_from else {}
    chosen = [name for name in args.configs.split(",") if name != "random"]
    unknown = set(chosen) - set(CONFIGS) - set(PEERS)
    if unknown:
        parser.error(f"unknown configurations: {', '.join(sorted(unknown))}")
    args.configs = ["random", *chosen]
    print_machine()
    print(f"trials: {args.trials}\nparallel: {args.parallel}\nepochs: {args.epochs}")
    seeds = parse_seeds(args.seeds)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        outcomes = [one_seed(seed, args, Path(args.keep).resolve()) for seed in seeds]
    else:
        with tempfile.TemporaryDirectory(prefix="search-efficiency-") as directory:
            outcomes = [one_seed(seed, args, Path(directory)) for seed in seeds]
    print("\n".join(summary_lines(outcomes, args.configs)))


if __name__ == "__main__":
    main()
