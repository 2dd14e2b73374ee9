"""TPE's ask at a thousand trials, alone: the search as the controller drives it (one
suggestion at a time, P trials in flight, each ending P asks later), no tracking server, no
controller. It isolates `sweep_scale.py`'s `ask_ms_p95`, which also waits for the cores the
server and the simulated trials share: beside the ask's wall time it reports its CPU time (the
process's: nothing else runs in it), which a loaded machine hardly moves.

Space: sweeps/tpe-asha.yaml's plus `seed`, as sweep_scale.py's. Prints `ask_cpu_ms_p50` and
`_p95` and `ask_wall_ms_p95`, over the first and the last 100 asks.

    .venv/bin/python benchmarks/tpe_ask.py                # 1000 trials, 50 in flight, ~1-2 min
    .venv/bin/python benchmarks/tpe_ask.py --trials 300
"""

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from celeb_smile.constants import TrialState  # noqa: E402
from celeb_smile.sweep.search import TPESearch  # noqa: E402
from celeb_smile.sweep.spec import spec_from_mapping  # noqa: E402
from celeb_smile.sweep.trial import Trial  # noqa: E402
from machine import print_machine  # noqa: E402

SPACE = {"learning_rate": {"loguniform": [0.00001, 0.1]}, "convolutions": {"randint": [0, 3]},
         "batch_size": {"choice": [16, 32, 64]}, "seed": {"randint": [0, 99999]}}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=50)
    args = parser.parse_args()
    print_machine()
    search = TPESearch(spec_from_mapping({
        "experiment": "tpe-ask", "search": "tpe", "max_trials": args.trials,
        "max_parallel": args.parallel, "params": {"epochs": 10}, "space": SPACE}))
    rng, trials, cpu, wall = random.Random(0), [], [], []
    for index in range(1, args.trials + 1):
        started_cpu, started = time.process_time(), time.perf_counter()
        params = search.get_suggestions(trials, 1)[0]
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
        trials.append(Trial(index, params, state=TrialState.RUNNING))
        if index > args.parallel:  # the trial submitted P asks ago ends
            ended = trials[index - args.parallel - 1]
            value = rng.random()
            ended.state, ended.history, ended.metrics = \
                TrialState.FINISHED, [value], {"val_accuracy": value}
    for name, part in (("first100", slice(0, 100)), ("last100", slice(-100, None))):
        print(f"ask_cpu_ms_p50_{name}: {1000 * percentile(cpu[part], 0.5):.1f}")
        print(f"ask_cpu_ms_p95_{name}: {1000 * percentile(cpu[part], 0.95):.1f}")
        print(f"ask_wall_ms_p95_{name}: {1000 * percentile(wall[part], 0.95):.1f}")


if __name__ == "__main__":
    main()
