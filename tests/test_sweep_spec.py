"""Sweep definitions: grid and seeded random expansion, validation, resume matching, ranking."""

import pytest

from celeb_smile.sweep.cli import build_parser, sweep_spec_from_args
from celeb_smile.sweep.search import combination
from celeb_smile.sweep.spec import (DEFAULT_GRID, Budget, EarlyStopping, Objective, SweepSpec,
                                    load_spec_file, parse_assignment, resolved, validate)
from tests.conftest import PROJECT_DIR


def spec_from(*argv):
    return sweep_spec_from_args(build_parser().parse_args(list(argv)))


def test_no_arguments_give_the_small_default_sweep():
    spec = spec_from()
    assert spec.grid == DEFAULT_GRID and len(spec.trials()) == 4
    validate(spec)


def test_grid_is_the_cartesian_product_with_fixed_params():
    spec = spec_from("--grid", "convolutions=0,1,2", "--grid", "randomize_images=true,false",
                     "--param", "epochs=5", "--max-parallel", "3", "--experiment", "x")
    trials = spec.trials()
    assert len(trials) == 6 and all(t["epochs"] == "5" for t in trials)
    assert {(t["convolutions"], t["randomize_images"]) for t in trials} == {
        (c, r) for c in "012" for r in ("true", "false")}
    assert spec.max_parallel == 3 and spec.experiment == "x"


def test_random_search_is_seeded_and_combined_with_the_grid(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("""
experiment: search
objective: {metric: val_loss, direction: minimize}
params: {epochs: 2}
grid: {convolutions: [1, 2]}
random:
  samples: 3
  seed: 7
  space:
    learning_rate: {loguniform: [0.0001, 0.01]}
    batch_size: {choice: [16, 32]}
    seed: {randint: [0, 100]}
""")
    spec = load_spec_file(path)
    trials = spec.trials()
    assert len(trials) == 6 and trials == load_spec_file(path).trials()
    assert all(0.0001 <= float(t["learning_rate"]) <= 0.01 for t in trials)
    assert spec.objective == Objective("val_loss", "minimize")
    validate(spec)
    spec.seed = 8
    assert spec.trials() != trials


@pytest.mark.parametrize("argv, message", [
    (["--grid", "convolutions=0,x"], "convolutions must be int"),
    (["--grid", "epochs=0,1"], "epochs must be a positive integer"),
    (["--param", "randomize_images=False!"], "randomize_images must be true or false"),
    (["--param", "colour=red"], "unknown parameter 'colour'"),
    (["--param", "dataset=mnist"], "dataset must be one of"),
    (["--max-parallel", "0"], "max_parallel must be at least 1"),
])
def test_bad_values_are_rejected_before_anything_runs(argv, message):
    with pytest.raises(ValueError, match=message):
        validate(spec_from(*argv))


def test_kubernetes_accepts_only_plain_words_and_defers_data_dir_to_the_pod():
    quoted = spec_from("--param", "data_dir=/my data")
    with pytest.raises(ValueError, match="plain words"):
        validate(quoted, remote=True)
    pod_path = spec_from("--param", "dataset=celeb_a", "--param", "data_dir=/in/the/pod")
    validate(pod_path, remote=True)
    with pytest.raises(ValueError, match="not a readable directory"):
        validate(pod_path, remote=False)


@pytest.mark.parametrize("text", ["epochs", "=3", "epochs="])
def test_malformed_assignments_are_rejected(text):
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_assignment(text, many=False)


def test_bad_sweep_files_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gird: {convolutions: [1]}\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_spec_file(bad)
    with pytest.raises(ValueError, match="cannot read sweep file"):
        load_spec_file(tmp_path / "missing.yaml")
    bad.write_text("random: {samples: 2, space: {learning_rate: {gaussian: [0, 1]}}}\n")
    with pytest.raises(ValueError, match="unknown distribution"):
        validate(load_spec_file(bad))


def test_resume_matches_runs_on_their_resolved_parameters():
    expected = resolved({"epochs": "2", "randomize_images": "false"})
    logged = dict(expected, learning_rate="0.0010", randomize_images="False")
    assert combination(logged) == combination(expected)
    assert combination(dict(expected, epochs="3")) != combination(expected)
    assert combination({"epochs": "2", "randomize_images": "false"}) == combination(expected)
    assert combination({"epochs": "zero"}) == frozenset({("epochs", "zero")})  # as spelt


def test_sweep_id_is_stable_and_follows_the_definition():
    assert SweepSpec(grid={"epochs": ["1"]}).sweep_id() == SweepSpec(grid={"epochs": ["1"]}).sweep_id()
    assert SweepSpec(grid={"epochs": ["1"]}).sweep_id() != SweepSpec(grid={"epochs": ["2"]}).sweep_id()


def test_the_shipped_example_sweep_file_is_valid():
    spec = load_spec_file(PROJECT_DIR / "sweeps" / "example.yaml")
    validate(spec, remote=True)
    assert len(spec.trials()) == 6 and spec.max_failures == 2


@pytest.mark.parametrize("path", sorted((PROJECT_DIR / "sweeps").glob("*.yaml")),
                         ids=lambda path: path.name)
def test_every_shipped_sweep_file_is_valid_and_says_what_it_is_for(path):
    assert path.read_text().startswith("# ")
    spec = load_spec_file(path)
    validate(spec, remote=True)
    assert spec.sweep_id() == load_spec_file(path).sweep_id()


def test_adaptive_search_stopping_goal_and_budget_are_read_from_the_file():
    spec = load_spec_file(PROJECT_DIR / "sweeps" / "tpe-asha.yaml")
    assert (spec.strategy(), spec.max_trials, spec.seed, spec.goal) == ("tpe", 16, 0, 0.97)
    assert spec.early_stopping == EarlyStopping("asha", grace_period=3, reduction_factor=3,
                                                metric="val_loss")
    assert spec.stopping_metric() == ("val_loss", "minimize")
    assert spec.budget == Budget(trial_epochs=100, wall_seconds=3600)
    assert set(spec.random_space) == {"learning_rate", "convolutions", "batch_size"}
    assert spec.trials() == []  # it decides as it goes


def test_command_line_sets_search_stopping_goal_and_budget():
    spec = spec_from("--sweep", str(PROJECT_DIR / "sweeps" / "random.yaml"), "--search", "tpe",
                     "--max-trials", "5", "--early-stopping", "median", "--goal", "0.9",
                     "--budget-epochs", "50", "--budget-minutes", "1.5", "--seed", "3")
    assert (spec.search, spec.max_trials, spec.seed, spec.goal) == ("tpe", 5, 3, 0.9)
    assert spec.early_stopping == EarlyStopping("median")
    assert spec.budget == Budget(trial_epochs=50, wall_seconds=90)
    validate(spec)
    stopping_file = str(PROJECT_DIR / "sweeps" / "tpe-asha.yaml")
    assert spec_from("--sweep", stopping_file, "--early-stopping", "none").early_stopping is None
    kept = spec_from("--sweep", stopping_file, "--early-stopping", "asha").early_stopping
    assert kept == load_spec_file(stopping_file).early_stopping


def test_a_final_objective_can_be_stopped_early_on_a_per_epoch_metric(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("objective: {metric: test_accuracy}\n"
                    "early_stopping: {rule: median, metric: val_loss}\n")
    spec = load_spec_file(path)
    validate(spec)
    assert spec.stopping_metric() == ("val_loss", "minimize")


def test_search_is_inferred_when_not_given():
    assert spec_from().search == "grid"
    assert spec_from("--sweep", str(PROJECT_DIR / "sweeps" / "example.yaml")).search == "random"


def test_values_are_normalised_to_what_training_logs():
    spec = spec_from("--param", "learning_rate=1e-3", "--param", "epochs=05",
                     "--grid", "randomize_images=True,FALSE")
    assert [(t["learning_rate"], t["epochs"], t["randomize_images"]) for t in spec.trials()] == [
        ("0.001", "5", "true"), ("0.001", "5", "false")]
    validate(spec)


def test_a_declared_custom_objective_is_accepted(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text("objective: {metric: f1, custom: true}\ngrid: {convolutions: [1]}\n")
    validate(load_spec_file(path))
    with pytest.raises(ValueError, match="'f1x' is not a metric training logs"):
        validate(spec_from("--sweep", str(path), "--objective", "f1x"))


ADAPTIVE = ["--sweep", str(PROJECT_DIR / "sweeps" / "random.yaml"), "--search", "tpe"]


@pytest.mark.parametrize("argv, message", [
    (["--objective", "val_acuracy"], "'val_acuracy' is not a metric training logs"),
    (["--search", "random"], "a random search needs a space"),
    (ADAPTIVE[:2] + ["--search", "grid"], "a grid search takes no space"),
    (["--search", "tpe"], "a tpe search needs max_trials"),
    (ADAPTIVE + ["--max-trials", "0"], "max_trials must be at least 1"),
    (ADAPTIVE + ["--max-trials", "4", "--samples", "3"], "samples is for random search"),
    (["--early-stopping", "asha", "--objective", "test_accuracy"], "needs a metric logged every"),
    (["--goal", "nan"], "goal must be a number"),
    (["--budget-epochs", "0"], "budget.trial_epochs must be at least 1"),
    (["--budget-minutes", "-1"], "budget.wall_minutes must be positive"),
])
def test_bad_search_settings_are_rejected(argv, message):
    with pytest.raises(ValueError, match=message):
        validate(spec_from(*argv))


@pytest.mark.parametrize("text, message", [
    ("search: bayes\n", "search must be one of grid, random, tpe"),
    ("early_stopping: {rule: pbt}\n", "early_stopping.rule must be one of median, asha, hyperband"),
    ("params: {epochs: 2}\nearly_stopping: {rule: hyperband, grace_period: 3}\n",
     "grace_period \\(3\\) must not exceed the trials' epochs \\(2\\)"),
    ("early_stopping: {rule: asha, start_step: 2}\n", "asha takes grace_period, reduction_factor"),
    ("early_stopping: {grace_period: 2}\n", "early_stopping needs a rule"),
    ("early_stopping: {rule: asha, reduction_factor: 1}\n", "reduction_factor must be at least 2"),
    ("early_stopping: {rule: median, start_step: x}\n", "start_step must be an integer"),
    ("early_stopping: {rule: asha, metric: test_loss}\n",
     "early_stopping.metric must be the objective or one of loss, accuracy, val_loss"),
    ("objective: {metric: f1, custom: true}\nearly_stopping: {rule: asha, metric: f2}\n",
     "early_stopping.metric must be the objective or one of"),
    ("budget: {trial_epochs: 10, hours: 2}\n", "unknown keys \\['hours'\\] in budget"),
    ("goal: high\n", "goal must be a number"),
    ("objective: {metric: val_loss, goal: 1}\n", "unknown keys \\['goal'\\] in objective"),
    ("space: {x: 1}\nrandom: {space: {x: 1}}\n", "give the search space once"),
    ("search: tpe\nmax_trials: 3\nspace: {convolutions: {uniform: [0, 3]}}\n",
     "uniform draws decimals, but convolutions is int"),
    ("search: tpe\nmax_trials: 3\nspace: {learning_rate: {loguniform: [0.001, 1e3]}}\n",
     "needs \\[low, high\\]"),
    ("search: tpe\nmax_trials: 3\nspace: {epochs: {randint: [0, 3]}}\n",
     "epochs must be a positive integer, got 0"),
])
def test_bad_sweep_file_settings_are_rejected_in_one_line(tmp_path, text, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        validate(load_spec_file(path))
    assert "\n" not in str(error.value)


def test_adaptive_sweep_id_follows_what_decides_its_suggestions():
    def tpe(**fields):
        return SweepSpec(**{"search": "tpe", "max_trials": 8, "seed": 0, "params": {"epochs": "2"},
                            "random_space": {"learning_rate": {"loguniform": [1e-4, 1e-1]}},
                            **fields})

    assert tpe().sweep_id() == tpe().sweep_id()
    assert tpe(params={"epochs": "02"}).sweep_id() == tpe().sweep_id()  # same, spelt otherwise
    assert tpe(goal=0.9, early_stopping=EarlyStopping("asha")).sweep_id() == tpe().sweep_id()
    for changed in (tpe(seed=1), tpe(max_trials=9), tpe(experiment="x"), tpe(search="random"),
                    tpe(random_space={"learning_rate": {"loguniform": [1e-5, 1e-1]}})):
        assert changed.sweep_id() != tpe().sweep_id()
