"""Sweep definitions: grid and seeded random expansion, validation, resume matching, ranking."""

import pytest

from celeb_smile.sweep.cli import build_parser, sweep_spec_from_args
from celeb_smile.sweep.report import best_trial, ranked, summary_csv
from celeb_smile.sweep.scheduler import _params_key
from celeb_smile.sweep.trial import Trial
from celeb_smile.sweep.spec import (DEFAULT_GRID, Objective, SweepSpec, load_spec_file,
                                    parse_assignment, resolved, validate)


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
    assert _params_key(logged) == _params_key(expected)
    assert _params_key(dict(expected, epochs="3")) != _params_key(expected)
    assert _params_key({"epochs": "2", "randomize_images": "false"}) == _params_key(expected)
    assert _params_key({"epochs": "zero"}) is None


def make_trial(index, state, value=None):
    trial = Trial(index, {"convolutions": str(index)}, state=state, run_id=f"r{index}")
    if value is not None:
        trial.metrics = {"val_accuracy": value}
    return trial


def test_summary_ranks_by_objective_and_best_ignores_failed_runs():
    trials = [make_trial(1, "FINISHED", 0.7), make_trial(2, "FAILED", 0.9),
              make_trial(3, "SKIPPED", 0.8), make_trial(4, "FAILED")]
    order = [t.index for t in ranked(trials, Objective())]
    assert order == [2, 3, 1, 4]
    assert best_trial(trials, Objective()).index == 3
    assert [t.index for t in ranked(trials, Objective(direction="minimize"))] == [1, 3, 2, 4]
    assert summary_csv(ranked(trials, Objective()), ["convolutions"], "val_accuracy") \
        .splitlines()[1].startswith("1,trial-02,2,FAILED,0.9,r2")


def test_sweep_id_is_stable_and_follows_the_definition():
    assert SweepSpec(grid={"epochs": ["1"]}).sweep_id() == SweepSpec(grid={"epochs": ["1"]}).sweep_id()
    assert SweepSpec(grid={"epochs": ["1"]}).sweep_id() != SweepSpec(grid={"epochs": ["2"]}).sweep_id()


def test_the_shipped_example_sweep_file_is_valid():
    from tests.conftest import PROJECT_DIR

    spec = load_spec_file(PROJECT_DIR / "sweeps" / "example.yaml")
    validate(spec, remote=True)
    assert len(spec.trials()) == 6 and spec.max_failures == 2
