"""Optuna's own study, as a user would run it instead of this driver: the peer that
search_efficiency.py measures the driver against.

The same sweep definition (space, trials, parallelism, epochs, seed) as the driver's sweeps;
the sampler configured as the driver configures TPE (multivariate, constant liar, the same
start-up trials); Optuna's HyperbandPruner with its defaults (min_resource 1, reduction factor
3; max_resource = the trials' epochs, which "auto" would only learn from a finished trial)
judging the objective, reported after every epoch. Parallelism is Optuna's documented way:
`max_parallel` worker processes sharing one study through a journal file, each asking,
training and telling in turn (ask-and-tell). Trials train the project's model through its own
code (celeb_smile.training.prepare: the model, datasets and per-epoch randomness), in-process:
no MLflow run, no process per trial, a pruned trial stops right after the epoch that decided it.

    .venv/bin/python benchmarks/optuna_study.py SWEEP.yaml DIR   # one study; prints its stats
"""

import json
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPOCH_TIME_ATTR = "epoch_{}_ms"  # a trial's user attribute: when it reported that epoch
JOURNAL = "optuna-journal.log"  # the study's storage, in the study's directory


def study_name_of(seed: int) -> str:
    return f"optuna-seed{seed}"


def run_study(definition: dict, directory: Path) -> list[tuple[int, float, int]]:
    """Run the sweep `definition` (a sweep file's content) as an Optuna study in `directory`;
    every epoch's objective of every trial: (timestamp ms, value, trial number)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = directory / JOURNAL
    journal.unlink(missing_ok=True)
    study_name = study_name_of(definition["seed"])
    optuna.create_study(study_name=study_name, storage=journal_storage(journal),
                        direction=definition["objective"]["direction"])
    workers = definition["max_parallel"]
    shares = [definition["max_trials"] // workers + (w < definition["max_trials"] % workers)
              for w in range(workers)]
    context = multiprocessing.get_context("spawn")  # TensorFlow is started in each worker
    processes = [context.Process(target=work, args=(definition, journal, study_name, w, n))
                 for w, n in enumerate(shares)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"an Optuna worker exited {process.exitcode}")
    study = optuna.load_study(study_name=study_name, storage=journal_storage(journal))
    return sorted((trial.user_attrs[EPOCH_TIME_ATTR.format(step)], value, trial.number)
                  for trial in study.get_trials(deepcopy=False)
                  for step, value in trial.intermediate_values.items())


def work(definition: dict, journal: Path, study_name: str, worker: int, trials: int) -> None:
    """One worker: ask, train, tell, `trials` times."""
    import optuna

    from celeb_smile.sweep.search import TPESearch
    from celeb_smile.sweep.spec import spec_from_mapping

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = spec_from_mapping(definition)
    sampler, pruner = sampler_and_pruner(spec, worker)
    study = optuna.load_study(study_name=study_name, storage=journal_storage(journal),
                              sampler=sampler, pruner=pruner)
    distributions = TPESearch(spec).distributions
    for _ in range(trials):
        trial = study.ask(distributions)
        value, pruned = train_trial(trial, spec)
        study.tell(trial, None if pruned else value,
                   state=optuna.trial.TrialState.PRUNED if pruned else None)


def sampler_and_pruner(spec, worker: int):
    """One worker's TPESampler, as the driver configures TPE (seeded per worker: workers of one
    seed must not draw the same points), and HyperbandPruner(1, the trials' epochs, 3)."""
    import optuna

    from celeb_smile.sweep.search import TPESearch

    sampler = optuna.samplers.TPESampler(
        multivariate=True, constant_liar=True,
        n_startup_trials=TPESearch(spec).startup_trials(), seed=spec.seed * 1000 + worker)
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.most_epochs(),
                                            reduction_factor=3)
    return sampler, pruner


def train_trial(trial, spec) -> tuple[float, bool]:
    """Train the trial's configuration, reporting the objective after each epoch and stopping
    when the pruner says so; (last value, pruned)."""
    import keras

    from celeb_smile.config import config_from_params, format_value
    from celeb_smile.training import prepare

    params = {**spec.params, **{name: format_value(value) for name, value in trial.params.items()}}
    cfg = config_from_params(params)
    keras.backend.clear_session()
    model, splits, randomness = prepare(cfg)
    reporter = _reporter(trial, spec.objective.metric)
    model.fit(splits["train"], validation_data=splits["validation"], epochs=cfg.epochs,
              callbacks=[randomness, reporter], verbose=0)
    return reporter.last, reporter.pruned


def _reporter(trial, metric: str):
    """A Keras callback: report `metric` after each epoch, stop training once pruned."""
    import keras

    class Reporter(keras.callbacks.Callback):
        last, pruned = float("nan"), False

        def on_epoch_end(self, epoch, logs=None):
            self.last = float((logs or {}).get(metric, float("nan")))
            trial.report(self.last, epoch + 1)
            trial.set_user_attr(EPOCH_TIME_ATTR.format(epoch + 1), int(time.time() * 1000))
            if trial.should_prune():
                self.pruned = self.model.stop_training = True

    return Reporter()


def journal_storage(journal: Path):
    import optuna

    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))


def main() -> None:
    import yaml

    definition = yaml.safe_load(Path(sys.argv[1]).read_text())
    started = time.monotonic()
    points = run_study(definition, Path(sys.argv[2]))
    print(json.dumps({"trial_epochs": len(points), "wall_s": time.monotonic() - started}))


if __name__ == "__main__":
    main()
