"""Seed noise: how much of a sweep's best value is the luck of its training seed.

Every trial of a sweep trains with the same seed (MLproject's default), so a configuration's
objective is one draw: its weights' initialisation, data order and random flips. This retrains
the best finished trials of sweeps that search_efficiency.py kept (`--keep DIR`) on the same
data (the synthetic set is drawn from the trial's own seed, which is kept) with other training
seeds, in-process, and prints per trial its recorded objective and the retrains'. It asks of
issue 22's measure (within 0.005 of random search's best: 1.5 of 300 validation images) whether
random search's best configuration, trained again with another seed, reaches it again.

Per trial (`seedS_CONFIG_topK_...`): `recorded`, `same_seed` (a retrain with the trial's own
seed: whether training reproduces itself), `retrain_mean`, `retrain_min`, `retrain_max`,
`retrain_reached: H/R` (retrains at or above random's best - 0.005). Across seeds, per
configuration, of its best trial on each seed: `retrains_reaching_random_best_<config>_top1: H/R`
and `retrain_mean_median_<config>_top1` (the median over seeds of its retrains' mean: what the
configuration a sweep hands its user is worth when trained again).

    .venv/bin/python benchmarks/search_efficiency.py --seeds 124 --configs tpe_asha --keep DIR
    .venv/bin/python benchmarks/seed_noise.py DIR --seeds 124 --configs random,tpe_asha
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlflow import MlflowClient  # noqa: E402

from celeb_smile.config import FIELD_TYPES, config_from_params, format_value  # noqa: E402
from machine import print_machine  # noqa: E402
from optuna_study import JOURNAL, journal_storage, study_name_of  # noqa: E402
from search_efficiency import (METRIC, PEERS, SPACE, WITHIN, epoch_points,  # noqa: E402
                               parse_seeds, summarise)


def best_trials(client: MlflowClient, experiment: str, top: int) -> list[tuple[dict, float]]:
    """The driver's sweep's `top` trials that trained every epoch (FINISHED, not stopped), best
    first: (parameters, objective)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in {client.tracking_uri}")
    runs = [run for run in client.search_runs([found.experiment_id])
            if "mlflow.parentRunId" in run.data.tags and run.info.status == "FINISHED"
            and METRIC in run.data.metrics]
    return sorted(((run.data.params, run.data.metrics[METRIC]) for run in runs),
                  key=lambda trial: trial[1], reverse=True)[:top]


def best_study_trials(directory: Path, seed: int, base: dict, top: int) -> list[tuple[dict, float]]:
    """Optuna's own study's `top` trials that trained every epoch (COMPLETE, not pruned), best
    first; their parameters are `base` (a driver's trial of the same seed: sizes, data seed)
    with the study's choices."""
    import optuna

    journal = directory / f"bench-{PEERS[0]}-seed{seed}" / JOURNAL
    study = optuna.load_study(study_name=study_name_of(seed), storage=journal_storage(journal))
    complete = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    return sorted((({**base, **{k: format_value(v) for k, v in trial.params.items()}},
                    trial.value) for trial in complete),
                  key=lambda trial: trial[1], reverse=True)[:top]


def retrain(params: dict, training_seed: int) -> float:
    """The trial's configuration trained again: its data as recorded, every other draw from
    `training_seed`; the last epoch's objective."""
    import keras

    from celeb_smile.training import prepare

    cfg = config_from_params({k: v for k, v in params.items() if k in FIELD_TYPES},
                             check_paths=False)
    keras.backend.clear_session()
    model, splits, randomness = prepare(cfg, training_seed)
    history = model.fit(splits["train"], validation_data=splits["validation"],
                        epochs=cfg.epochs, callbacks=[randomness], verbose=0)
    return float(history.history[METRIC][-1])


def one_trial(prefix: str, trial: tuple[dict, float], target: float,
              retrain_seeds: list[int]) -> list[float]:
    """Print one trial's figures; its retrains' values."""
    params, recorded = trial
    values = [retrain(params, seed) for seed in retrain_seeds]
    reached = sum(value >= target for value in values)
    lines = {
        "params": " ".join(f"{name}={params[name]}" for name in SPACE),
        "recorded": f"{recorded:.4f}",
        "same_seed": f"{retrain(params, int(params['seed'])):.4f}",
        "retrain_mean": f"{statistics.mean(values):.4f}",
        "retrain_min": f"{min(values):.4f}", "retrain_max": f"{max(values):.4f}",
        "retrain_values": " ".join(f"{value:.4f}" for value in values),
        "retrain_reached": f"{reached}/{len(values)}",
    }
    for key, value in lines.items():
        print(f"{prefix}_{key}: {value}", flush=True)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="search_efficiency.py's --keep DIR")
    parser.add_argument("--seeds", required=True, help='the sweeps\' seeds, e.g. "124,125"')
    parser.add_argument("--configs", default="random,tpe_asha",
                        help="of those search_efficiency.py kept (optuna_hyperband too)")
    parser.add_argument("--top", type=int, default=2, help="best finished trials per sweep")
    parser.add_argument("--retrain-seeds", default="1-5", help="training seeds of the retrains")
    args = parser.parse_args()
    retrain_seeds = parse_seeds(args.retrain_seeds)
    print_machine()
    best_retrains = {}  # configuration -> per seed, its best trial's retrains
    directory = Path(args.directory).resolve()
    for seed in parse_seeds(args.seeds):
        client = MlflowClient(f"sqlite:///{directory / f'seed{seed}.db'}")
        target = summarise(epoch_points(client, f"bench-random-seed{seed}"))["best"] - WITHIN
        print(f"seed{seed}_target: {target:.4f}")
        base = best_trials(client, f"bench-random-seed{seed}", 1)[0][0]
        for name in args.configs.split(","):
            trials = best_study_trials(directory, seed, base, args.top) if name in PEERS \
                else best_trials(client, f"bench-{name}-seed{seed}", args.top)
            for rank, trial in enumerate(trials, start=1):
                values = one_trial(f"seed{seed}_{name}_top{rank}", trial, target, retrain_seeds)
                if rank == 1:
                    best_retrains.setdefault(name, []).append((values, target))
    for name, sweeps in best_retrains.items():
        hits = sum(value >= goal for values, goal in sweeps for value in values)
        means = [statistics.mean(values) for values, _ in sweeps]
        print(f"retrains_reaching_random_best_{name}_top1: "
              f"{hits}/{len(sweeps) * len(retrain_seeds)}")
        print(f"retrain_mean_median_{name}_top1: {statistics.median(means):.4f}")


if __name__ == "__main__":
    main()
