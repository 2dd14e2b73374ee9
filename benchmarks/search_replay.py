"""Search replay: search_efficiency.py's sweeps in seconds, to choose settings before spending
an hour measuring them. Not a measurement: a guide.

The real search (`TPESearch`, random's draws) and the real stopping rules run; training does
not. Each suggested configuration gets the per-epoch val_accuracy and val_loss of the closest
configuration `search_efficiency.py --keep DIR` recorded (same convolutions and batch size,
nearest learning rate; training is deterministic given the parameters, so a recorded one comes
back exactly). Trials start ~12 s after submission, take each epoch in the time recorded for
their convolutions and batch size, and are polled every 0.5 s, as the local backend does; the
sweeps' sizes and figures are search_efficiency.py's (same flags and defaults). `--jitter P` takes the second-nearest recorded curve with probability P, and
`--draws N` repeats each seed N times, for a spread instead of one answer. `--optuna` also
replays Optuna's own study (optuna_study.py's: workers asking and telling one study, its
HyperbandPruner judging each epoch), so the driver's settings meet the peer on many seeds.
Per setting: the median epochs_vs_random, the share of sweeps that never reached random's best,
and the share that missed because of a stop (`missed_by_stopping_share`: a trial the rule
stopped would have got there on its recorded curve; the other misses are the search's).

    .venv/bin/python benchmarks/search_replay.py --pool DIR --seeds 0-19 --draws 3 --jitter 0.5 \\
        --asha 3,3,val_accuracy --asha 3,3,val_loss --hyperband 3,3,val_loss
"""

import argparse
import heapq
import math
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlflow import MlflowClient  # noqa: E402

from celeb_smile.constants import TrialState  # noqa: E402
from celeb_smile.sweep.search import TPESearch, make_search  # noqa: E402
from celeb_smile.sweep.spec import spec_from_mapping  # noqa: E402
from celeb_smile.sweep.stopping import make_stopping_rule  # noqa: E402
from celeb_smile.sweep.trial import Trial  # noqa: E402
from optuna_study import sampler_and_pruner, study_name_of  # noqa: E402
from search_efficiency import (CONFIGS, METRIC, WITHIN, add_size_arguments,  # noqa: E402
                               epochs_to_reach, summarise, sweep_definition)

POLL_S, STARTUP_S, FINISH_S = 0.5, 12.0, 1.5  # as measured on the local backend
OPTUNA_START_S = 1.0  # an Optuna trial's ask to its first epoch's start: the model's building


@dataclass
class Recorded:
    learning_rate: float
    convolutions: int
    batch_size: int
    accuracy: list[float]
    loss: list[float]
    epoch_s: float


def load_pool(directory: Path, epochs: int) -> list[Recorded]:
    """Every trial that ran all its epochs, from the stores `search_efficiency.py --keep` left."""
    pool = []
    for store in sorted(directory.glob("seed*.db")):
        client = MlflowClient(f"sqlite:///{store}")
        for experiment in client.search_experiments():
            for run in client.search_runs([experiment.experiment_id]):
                if "mlflow.parentRunId" not in run.data.tags:
                    continue
                accuracy = client.get_metric_history(run.info.run_id, METRIC)
                loss = client.get_metric_history(run.info.run_id, "val_loss")
                if len(accuracy) != epochs or len(loss) != epochs:
                    continue
                accuracy, loss = (sorted(h, key=lambda m: m.step) for h in (accuracy, loss))
                params = run.data.params
                pool.append(Recorded(
                    float(params["learning_rate"]), int(params["convolutions"]),
                    int(params["batch_size"]), [m.value for m in accuracy],
                    [m.value for m in loss],
                    (accuracy[-1].timestamp - accuracy[0].timestamp) / 1000 / (epochs - 1)))
    return pool


class Replay:
    def __init__(self, pool: list[Recorded], jitter: float, sizes):
        self.pool, self.jitter, self.sizes = pool, jitter, sizes  # sizes: --trials, --epochs...
        epoch_s: dict[tuple, list[float]] = {}
        for r in pool:
            epoch_s.setdefault((r.convolutions, r.batch_size), []).append(r.epoch_s)
        self.epoch_s = {key: statistics.median(values) for key, values in epoch_s.items()}

    def closest(self, params: dict, rng: random.Random) -> Recorded:
        rate = math.log10(float(params["learning_rate"]))
        same = sorted((abs(math.log10(r.learning_rate) - rate), i) for i, r in enumerate(self.pool)
                      if (r.convolutions, r.batch_size) ==
                      (int(params["convolutions"]), int(params["batch_size"])))
        second = len(same) > 1 and same[0][0] > 0 and rng.random() < self.jitter
        return self.pool[same[1 if second else 0][1]]

    def sweep(self, settings: dict, seed: int, draw: int) -> tuple[list, list[Trial]]:
        """One sweep: every epoch's (time, value, trial) in the order they were logged, and its
        trials (each with the `recorded` curve it was given)."""
        rng = random.Random(draw * 7919 + seed)
        spec = spec_from_mapping(sweep_definition("replay", settings, seed, self.sizes))
        search, rule = make_search(spec), make_stopping_rule(spec)
        epochs = self.sizes.epochs
        trials, running, logged, now = [], [], [], 0.0
        while True:
            while len(running) < spec.max_parallel:  # one suggestion at a time, as the scheduler
                suggestions = search.get_suggestions(trials, 1)
                if not suggestions:
                    break
                trial = Trial(len(trials) + 1, suggestions[0], state=TrialState.RUNNING)
                trial.recorded = self.closest(trial.params, rng)
                epoch_s = self.epoch_s[(trial.recorded.convolutions, trial.recorded.batch_size)]
                first = now + STARTUP_S * rng.uniform(0.85, 1.15)
                trial.epoch_ends = [first + epoch_s * (k + 1) for k in range(epochs)]
                trials.append(trial)
                running.append(trial)
            if not running:
                break
            now += POLL_S
            for trial in list(running):
                while trial.epochs_done < epochs and trial.epoch_ends[trial.epochs_done] <= now:
                    epoch = trial.epochs_done
                    trial.history.append(trial.recorded.accuracy[epoch])
                    trial.watched["val_loss"] = trial.recorded.loss[:epoch + 1]
                    logged.append((trial.epoch_ends[epoch], trial.history[-1], trial.index))
                if trial.epoch_ends[-1] + FINISH_S <= now:
                    trial.state, trial.metrics = TrialState.FINISHED, {METRIC: trial.history[-1]}
                    running.remove(trial)
            for decision in (rule.decide(trials) if rule else []):
                trial = trials[decision.trial_index - 1]
                trial.state = TrialState.STOPPED
                running.remove(trial)
        return sorted(logged), trials

    def optuna_study(self, seed: int, draw: int) -> list:
        """optuna_study.py's study replayed: `max_parallel` workers sharing one study, each with
        its own sampler and pruner as optuna_study.py sets them, the pruner judging the objective
        after every epoch; a worker asks, trains, tells in turn. Trials
        start OPTUNA_START_S after their ask (in-process: no run, no process). Every epoch's
        (time, value, trial number), in the order they were logged."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        rng = random.Random(draw * 7919 + seed)
        spec = spec_from_mapping(sweep_definition("replay", CONFIGS["random"], seed, self.sizes))
        distributions = TPESearch(spec).distributions
        storage, epochs = optuna.storages.InMemoryStorage(), self.sizes.epochs
        # Named as optuna_study.py names it: Hyperband deals trials to brackets by a hash of it.
        name = optuna.create_study(study_name=study_name_of(seed), storage=storage,
                                   direction="maximize").study_name
        studies = []
        for worker in range(spec.max_parallel):
            sampler, pruner = sampler_and_pruner(spec, worker)
            studies.append(optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                             pruner=pruner))
        left = [spec.max_trials // len(studies) + (w < spec.max_trials % len(studies))
                for w in range(len(studies))]
        logged, running, events = [], {}, []  # worker -> (trial, curve, epoch_s, values)

        def start(worker: int, now: float) -> None:
            if not left[worker]:
                return
            left[worker] -= 1
            trial = studies[worker].ask(distributions)
            curve = self.closest({k: str(v) for k, v in trial.params.items()}, rng)
            epoch_s = self.epoch_s[(curve.convolutions, curve.batch_size)]
            running[worker] = (trial, curve, epoch_s, [])
            heapq.heappush(events, (now + OPTUNA_START_S + epoch_s, worker))

        for worker in range(len(studies)):
            start(worker, 0.0)
        while events:
            now, worker = heapq.heappop(events)
            trial, curve, epoch_s, values = running[worker]
            values.append(curve.accuracy[len(values)])
            logged.append((now, values[-1], trial.number))
            trial.report(values[-1], len(values))
            if trial.should_prune():
                studies[worker].tell(trial, state=optuna.trial.TrialState.PRUNED)
            elif len(values) == epochs:
                studies[worker].tell(trial, values[-1])
            else:
                heapq.heappush(events, (now + epoch_s, worker))
                continue
            start(worker, now)
        return sorted(logged)


def epochs_vs_random(adaptive: list, random_sweep: list) -> float:
    """search_efficiency.py's figure; inf unless the best came within WITHIN of random's."""
    target = summarise(random_sweep)["best"] - WITHIN
    if not summarise(adaptive)["best"] >= target:
        return math.inf
    return epochs_to_reach(adaptive, target) / len(random_sweep)


def stopped_too_soon(trials: list[Trial], random_sweep: list) -> bool:
    """Whether a trial the rule stopped would have come within WITHIN of random's best had it
    run all its epochs (its recorded curve says so): a miss the stopping rule caused."""
    target = summarise(random_sweep)["best"] - WITHIN
    return any(trial.state == TrialState.STOPPED and max(trial.recorded.accuracy) >= target
               for trial in trials)


def rule_setting(rule: str, text: str) -> tuple[str, dict]:
    """("asha" or "hyperband", "GRACE,FACTOR,METRIC") -> (a name, a TPE sweep's settings)."""
    grace, factor, metric = text.split(",")
    return f"{rule}_{grace}_{factor}_{metric}", {
        "search": "tpe", "early_stopping": {"rule": rule, "grace_period": int(grace),
                                            "reduction_factor": int(factor), "metric": metric}}


def seeds(text: str) -> list[int]:
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, metavar="DIR",
                        help="a search_efficiency.py --keep directory (its seed*.db stores)")
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-19 or 0,2,5")
    parser.add_argument("--draws", type=int, default=1)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--asha", action="append", metavar="GRACE,FACTOR,METRIC",
                        help="a TPE + ASHA setting to replay (repeatable); "
                             "default 3,3,val_accuracy and 3,3,val_loss")
    parser.add_argument("--hyperband", action="append", metavar="GRACE,FACTOR,METRIC",
                        help="a TPE + Hyperband setting to replay (repeatable)")
    parser.add_argument("--optuna", action="store_true",
                        help="also replay Optuna's own study (optuna_hyperband)")
    add_size_arguments(parser)
    args = parser.parse_args()
    replay = Replay(load_pool(Path(args.pool), args.epochs), args.jitter, args)
    print(f"pool_trials: {len(replay.pool)}")
    settings = dict(rule_setting("asha", a) for a in args.asha or
                    ([] if args.hyperband else ["3,3,val_accuracy", "3,3,val_loss"]))
    settings.update(rule_setting("hyperband", h) for h in args.hyperband or [])
    ratios: dict[str, list[float]] = {name: [] for name in settings}
    stopped_misses = {name: 0 for name in settings}  # misses the stopping rule caused
    if args.optuna:
        ratios["optuna_hyperband"] = []
    for seed in seeds(args.seeds):
        for draw in range(args.draws):
            baseline, _ = replay.sweep(CONFIGS["random"], seed, draw)
            for name, setting in settings.items():
                logged, trials = replay.sweep(setting, seed, draw)
                ratios[name].append(epochs_vs_random(logged, baseline))
                if math.isinf(ratios[name][-1]) and stopped_too_soon(trials, baseline):
                    stopped_misses[name] += 1
            if args.optuna:
                ratios["optuna_hyperband"].append(
                    epochs_vs_random(replay.optuna_study(seed, draw), baseline))
    for name, values in ratios.items():
        print(f"{name}_epochs_vs_random_median: {statistics.median(values):.3f}")
        print(f"{name}_goal_met_share: {sum(v <= 0.5 for v in values) / len(values):.2f}")
        print(f"{name}_never_reached_share: {sum(math.isinf(v) for v in values) / len(values):.2f}")
        if name in stopped_misses:
            print(f"{name}_missed_by_stopping_share: {stopped_misses[name] / len(values):.2f}")


if __name__ == "__main__":
    main()
