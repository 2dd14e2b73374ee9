"""Search strategies: seeded and reproducible, no repeats, resume continues, max_trials, warm
start, and TPE learning from results on a toy objective."""

import math
import statistics

import pytest

from celeb_smile.constants import TrialState
from celeb_smile.sweep.search import TPESearch, make_search, use_scipy_log_ndtr
from celeb_smile.sweep.spec import SweepSpec
from celeb_smile.sweep.trial import Trial

FINISHED = TrialState.FINISHED
SPACE = {"learning_rate": {"loguniform": [1e-5, 1.0]}, "convolutions": {"randint": [0, 3]},
         "batch_size": {"choice": [16, 32, 64]}}


def as_trials(suggestions, start=1, state=FINISHED, **fields):
    return [Trial(start + i, params, state=state, **fields)
            for i, params in enumerate(suggestions)]


def grid_spec(**fields):
    return SweepSpec(params={"epochs": "2"},
                     grid={"convolutions": ["0", "1", "2"], "randomize_images": ["true", "false"]},
                     **fields)


def tpe_spec(**fields):
    return SweepSpec(**{"search": "tpe", "params": {"epochs": "3"}, "random_space": dict(SPACE),
                        "max_trials": 12, "seed": 1, **fields})


# -- grid and random ---------------------------------------------------------------------------

def test_grid_suggests_every_combination_once_in_order():
    spec = grid_spec()
    search = make_search(spec)
    assert search.name == "grid" and search.planned() == 6
    first = search.get_suggestions([], 4)
    rest = search.get_suggestions(as_trials(first), 4)
    assert first + rest == spec.trials() and len(rest) == 2
    assert search.get_suggestions(as_trials(first + rest), 4) == []


def test_resume_continues_with_what_was_not_run_whatever_its_state():
    search = make_search(grid_spec())
    combos = grid_spec().trials()
    # Resumed runs carry every logged parameter (defaults too) in train.py's spelling.
    earlier = [Trial(1, {**combos[0], "learning_rate": "0.001", "seed": "42"},
                     state=TrialState.SKIPPED),
               Trial(2, dict(combos[2]), state=TrialState.FAILED),
               Trial(3, dict(combos[3]), state=TrialState.RUNNING)]
    assert search.get_suggestions(earlier, 10) == [combos[1], combos[4], combos[5]]


def test_warm_start_trials_neither_count_nor_block_a_grid():
    combos = grid_spec().trials()
    warm = as_trials(combos[:2], start=100, warm_start=True)
    assert make_search(grid_spec()).get_suggestions(warm, 10) == combos


def test_max_trials_caps_grid_and_random():
    assert make_search(grid_spec(max_trials=4)).planned() == 4
    spec = SweepSpec(search="random", random_space=dict(SPACE), max_trials=5, seed=3)
    search = make_search(spec)
    suggestions = search.get_suggestions([], 10)
    assert search.planned() == 5 and len(suggestions) == 5
    assert len({tuple(sorted(s.items())) for s in suggestions}) == 5


def test_random_search_keeps_the_seeded_draws_of_the_example_sweep():
    from celeb_smile.sweep.spec import load_spec_file
    from tests.conftest import PROJECT_DIR

    spec = load_spec_file(PROJECT_DIR / "sweeps" / "example.yaml")
    suggestions = make_search(spec).get_suggestions([], 2)
    assert make_search(spec).name == "random"
    assert [(s["convolutions"], s["learning_rate"], s["batch_size"]) for s in suggestions] == [
        ("1", "0.0021", "32"), ("2", "0.0021", "32")]


def test_suggested_values_are_spelt_as_training_logs_them():
    spec = SweepSpec(params={"epochs": "05", "randomize_images": "True"},
                     grid={"learning_rate": ["1e-3", "0.01"]})
    first = make_search(spec).get_suggestions([], 1)[0]
    assert first == {"epochs": "5", "randomize_images": "true", "learning_rate": "0.001"}
    tpe = make_search(SweepSpec(search="tpe", params={"epochs": "05"}, max_trials=2,
                                random_space={"learning_rate": {"choice": ["1e-3"]}}))
    assert tpe.get_suggestions([], 2) == [{"epochs": "5", "learning_rate": "0.001"}]


# -- tpe ---------------------------------------------------------------------------------------

def toy_accuracy(params) -> float:
    """Best at learning_rate 1e-3 with 2 convolutions; batch size does not matter."""
    distance = abs(math.log10(float(params["learning_rate"])) + 3)
    return 1 - distance / 5 - 0.05 * abs(int(params["convolutions"]) - 2)


def run_toy(spec, parallel=2) -> list[Trial]:
    """Drive a search as the scheduler does: ask for free slots, finish, tell, repeat."""
    search, trials = make_search(spec), []
    while suggestions := search.get_suggestions(trials, parallel):
        for params in suggestions:
            trial = Trial(len(trials) + 1, params, state=FINISHED)
            trial.metrics = {"val_accuracy": toy_accuracy(params)}
            trials.append(trial)
    return trials


def test_tpe_is_seeded_and_reproducible():
    search = make_search(tpe_spec())
    known = run_toy(tpe_spec(max_trials=6))
    assert search.get_suggestions(known, 3) == make_search(tpe_spec()).get_suggestions(known, 3)
    assert search.get_suggestions(known, 3) != make_search(tpe_spec(seed=2)).get_suggestions(
        known, 3)
    assert run_toy(tpe_spec()) == run_toy(tpe_spec())


def test_tpe_runs_max_trials_not_counting_warm_start():
    spec = tpe_spec(max_trials=5)
    warm = [Trial(100 + t.index, t.params, state=FINISHED, metrics=t.metrics, warm_start=True)
            for t in run_toy(tpe_spec(seed=9, max_trials=4))]
    search = make_search(spec)
    assert search.planned() == 5
    own = as_trials(search.get_suggestions(warm, 3), state=TrialState.FAILED)
    assert len(own) == 3
    assert len(search.get_suggestions(warm + own, 10)) == 2
    assert search.get_suggestions(warm + own + as_trials([{"epochs": "3"}] * 2, 4), 10) == []


@pytest.mark.parametrize("seed", range(8))
def test_tpe_start_up_trials_cover_every_slice_of_each_parameter(seed):
    """A Latin hypercube: with 6 start-up trials, each batch size twice, every convolution
    count at least once, one learning rate in each sixth of its log range. Independent draws
    (Optuna's own start-up) fail this for most seeds."""
    spec = tpe_spec(max_trials=24, seed=seed)
    search = make_search(spec)
    assert search.startup_trials() == 6
    first = search.get_suggestions([], 2)
    first += search.get_suggestions(as_trials(first, state=TrialState.RUNNING), 4)
    assert sorted(int(p["batch_size"]) for p in first) == [16, 16, 32, 32, 64, 64]
    assert {int(p["convolutions"]) for p in first} == {0, 1, 2, 3}
    slices = sorted(int(math.log(float(p["learning_rate"]) / 1e-5) / math.log(1e5) * 6)
                    for p in first)
    assert slices == [0, 1, 2, 3, 4, 5]
    assert first == make_search(spec).get_suggestions([], 6)  # seeded: asked at once, the same


def test_tpe_never_repeats_a_combination_and_ends_when_the_space_is_exhausted():
    spec = SweepSpec(search="tpe", grid={"convolutions": ["0", "1", "2"]}, max_trials=10,
                     random_space={"batch_size": {"choice": [16, 32]}}, seed=4)
    trials = run_toy_space_only(spec)
    combos = {(t.params["convolutions"], t.params["batch_size"]) for t in trials}
    assert len(trials) == len(combos) == 6


def run_toy_space_only(spec):
    search, trials = make_search(spec), []
    while suggestions := search.get_suggestions(trials, 4):
        trials += as_trials(suggestions, start=len(trials) + 1)
    return trials


def test_tpe_tells_each_state_as_optuna_knows_it():
    from optuna.trial import TrialState as OptunaState

    search = make_search(tpe_spec())
    params = search.get_suggestions([], 6)
    trials = [Trial(1, params[0], state=FINISHED, metrics={"val_accuracy": 0.8}),
              Trial(2, params[1], state=TrialState.STOPPED, history=[0.5, math.nan]),
              Trial(3, params[2], state=TrialState.FAILED),
              Trial(4, params[3], state=TrialState.KILLED),
              Trial(5, params[4], state=TrialState.RUNNING),
              Trial(6, params[5], state=FINISHED, metrics={"val_accuracy": math.nan}),
              Trial(7, {**params[0], "epochs": "9"}, state=FINISHED, warm_start=True,
                    metrics={"val_accuracy": 0.99}),  # another problem: not told
              Trial(8, {**params[0], "learning_rate": "5"}, state=FINISHED)]  # outside the space
    study = search._synced(trials)  # its own six suggestions, told how each ended
    assert [t.state for t in study.trials] == [
        OptunaState.COMPLETE, OptunaState.PRUNED, OptunaState.FAIL, OptunaState.FAIL,
        OptunaState.RUNNING, OptunaState.FAIL]
    assert study.trials[0].value == 0.8 and study.trials[1].intermediate_values[0] == 0.5
    rebuilt = make_search(tpe_spec())._synced(trials)  # a restarted controller's: added
    assert [t.state for t in rebuilt.trials] == [t.state for t in study.trials]
    assert make_search(tpe_spec()).get_suggestions(trials, 2) == \
        make_search(tpe_spec()).get_suggestions(trials[:6], 2)


def test_the_kept_study_is_told_each_trial_once_and_only_what_changed():
    """Each pair runs through the next ask and ends before the one after: the study sees it
    as running once, then told its end; nothing is added twice."""
    search, trials = make_search(tpe_spec(max_trials=12)), []
    while suggestions := search.get_suggestions(trials, 2):
        for trial in trials[-2:]:
            trial.state, trial.metrics = FINISHED, {"val_accuracy": toy_accuracy(trial.params)}
        trials += as_trials(suggestions, start=len(trials) + 1, state=TrialState.RUNNING)
        assert [t.state.name for t in search._kept.trials[-2:]] == ["RUNNING", "RUNNING"]
    for trial in trials[-2:]:
        trial.state, trial.metrics = FINISHED, {"val_accuracy": toy_accuracy(trial.params)}
    study = search._synced(trials)
    assert len(study.trials) == len(trials) == 12  # each suggestion one Optuna trial
    assert [t.value for t in study.trials] == [t.metrics["val_accuracy"] for t in trials]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpe_concentrates_near_the_optimum_better_than_random(seed):
    budget = 40
    tpe = run_toy(tpe_spec(max_trials=budget, seed=seed))
    random = run_toy(SweepSpec(search="random", params={"epochs": "3"},
                               random_space=dict(SPACE), max_trials=budget, seed=seed))
    assert len(tpe) == len(random) == budget

    def late_quality(trials):  # the second half: where a learning search has learned
        return statistics.mean(toy_accuracy(t.params) for t in trials[budget // 2:])

    assert late_quality(tpe) > late_quality(random) + 0.1
    assert max(map(toy_accuracy, (t.params for t in tpe))) >= max(
        map(toy_accuracy, (t.params for t in random)))


def test_tpe_goes_on_with_unseen_points_when_it_keeps_proposing_tried_ones():
    """Near its optimum TPE proposes, at the spelling's precision, values already tried; the
    sweep goes on with points nobody tried while the space has any (it used to end early)."""
    spec = SweepSpec(params={"epochs": "2"}, search="tpe", max_trials=11, seed=3,
                     random_space={"learning_rate": {"loguniform": [0.001, 0.0011]}})
    search = TPESearch(spec)
    trials = []
    while suggestion := search.get_suggestions(trials, 1):
        value = float(suggestion[0]["learning_rate"])
        trials.append(Trial(len(trials) + 1, suggestion[0], state=TrialState.FINISHED,
                            metrics={"val_accuracy": -abs(value - 0.00105)}))
    spelled = {t.params["learning_rate"] for t in trials}
    assert len(spelled) == len(trials) == 11  # 0.001, 0.00101, ..., 0.0011: all of them


def test_tpe_computes_log_phi_with_scipy_which_agrees_with_optunas_own():
    """The pinned Optuna still has the function replaced, and SciPy's values are its values
    (Optuna's scalar function is what its own vectorised one applies element by element)."""
    import numpy as np
    from optuna.samplers._tpe import _truncnorm

    assert use_scipy_log_ndtr()
    x = np.concatenate([np.linspace(-40, 40, 20001), [-1000.0, -20.0001, 6.0001, 38.5]])
    optunas = np.frompyfunc(_truncnorm._log_ndtr_single, 1, 1)(x).astype(float)
    assert np.allclose(_truncnorm._log_ndtr(x), optunas, rtol=1e-7, atol=1e-12)
