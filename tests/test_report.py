"""The report's logic without a server: ranking, summary rows across reruns, the note."""

import csv
import io
from types import SimpleNamespace

from rich.console import Console

from celeb_smile.constants import TrialState
from celeb_smile.sweep import report
from celeb_smile.sweep.spec import Objective
from celeb_smile.sweep.result import SweepResult
from tests.helpers.fake_sweep import finished_trials, spec_with, trial

METRIC = "val_accuracy"
VARYING = ["convolutions"]


def test_params_label_names_the_varying_parameters_in_order():
    params = {"epochs": "3", "convolutions": "2", "learning_rate": "0.01"}
    assert report.params_label(params, ["learning_rate", "convolutions"]) == \
        "learning_rate=0.01, convolutions=2"
    assert report.params_label(params, []) == "defaults"


def test_ranking_puts_trials_without_the_objective_last_and_best_ignores_failed_ones():
    trials = [trial(1, history=[0.7]), trial(2, TrialState.FAILED, history=[0.9]),
              trial(3, TrialState.SKIPPED, history=[0.8]), trial(4, TrialState.FAILED),
              trial(5, TrialState.STOPPED, history=[0.95])]
    assert [t.index for t in report.ranked(trials, Objective())] == [5, 2, 3, 1, 4]
    assert [t.index for t in report.ranked(trials, Objective(direction="minimize"))] == \
        [1, 3, 2, 5, 4]
    assert report.best_trial(trials, Objective()).index == 3


def test_best_trial_ignores_warm_start_trials_of_other_sweeps():
    earlier = trial(1, TrialState.SKIPPED, history=[0.99])
    earlier.warm_start = True
    assert report.best_trial([earlier, trial(2, history=[0.5])], Objective()).index == 2


def rows_of(trials):
    return report.summary_rows(report.ranked(trials, Objective()), VARYING, METRIC)


def test_a_skipped_trial_is_recorded_as_finished_by_the_sweep_run_that_ran_it():
    (row,) = rows_of([trial(1, TrialState.SKIPPED, history=[0.8], sweep_run_id="first")])
    assert (row["state"], row["sweep_run_id"], row["run_id"]) == \
        (TrialState.FINISHED, "first", "run-1")


def test_a_rerun_that_ran_nothing_keeps_the_earlier_rows_word_for_word():
    first = [trial(1, history=[0.8]), trial(2, TrialState.STOPPED, history=[0.4],
                                            reason="median rule at epoch 1")]
    header, earlier = report.merged_summary(rows_of(first), [], VARYING, METRIC)
    earlier_text = report.to_csv(header, earlier)
    parsed = list(csv.DictReader(earlier_text.splitlines()))
    again = [trial(1, TrialState.SKIPPED, history=[0.8], sweep_run_id="parent-1", reason="x"),
             trial(2, TrialState.SKIPPED, history=[0.4], sweep_run_id="parent-1")]
    _, merged = report.merged_summary(rows_of(again), parsed, VARYING, METRIC)
    assert report.to_csv(header, merged) == earlier_text
    assert [row["state"] for row in merged] == [TrialState.FINISHED, TrialState.STOPPED]


def test_a_retried_trial_keeps_its_earlier_failed_attempt():
    failed = trial(2, TrialState.FAILED, run_id="run-2a", reason="OOMKilled")
    header, earlier = report.merged_summary(rows_of([trial(1, history=[0.8]), failed]), [],
                                            VARYING, METRIC)
    earlier = [{k: str(v) for k, v in row.items()} for row in earlier]
    retried = [trial(1, TrialState.SKIPPED, history=[0.8]),
               trial(2, history=[0.9], run_id="run-2b", sweep_run_id="parent-2")]
    _, merged = report.merged_summary(rows_of(retried), earlier, VARYING, METRIC)
    assert [(r["rank"], r["run_id"], str(r["state"])) for r in merged] == [
        (1, "run-2b", TrialState.FINISHED), (2, "run-1", TrialState.FINISHED),
        ("", "run-2a", TrialState.FAILED)]
    assert merged[2]["reason"] == "OOMKilled"


def test_only_trials_submitted_now_count_as_having_run_here():
    trials = [trial(1, TrialState.SKIPPED, history=[0.8]), trial(2, TrialState.PENDING)]
    assert report.ran_here(trials) == []
    assert report.ran_here(trials + [trial(3, TrialState.KILLED)])[0].index == 3


def note_of(trials, version=None, status=None, plots=()):
    sweep = SweepResult(spec_with({"convolutions": ["1", "2", "3"]}), trials, "7", "parent-1",
                        status=status)
    best = report.best_trial(trials, sweep.spec.objective)
    return report.note_markdown(sweep, best, version, list(plots))


def test_the_note_states_the_sweep_and_links_its_best_run_and_model():
    trials = [trial(1, history=[0.7]), trial(2, history=[0.9]),
              trial(3, TrialState.STOPPED, history=[0.2], reason="below median")]
    version = SimpleNamespace(name="celeb-smile", version="4", aliases=["champion"])
    note = note_of(trials, version, "FINISHED", ["plots/learning_curves_top.png"])
    assert "grid search, maximize `val_accuracy`" in note
    assert "[s1/trial-02](#/experiments/7/runs/run-2?workflowType=machine_learning)" in note
    assert "run `run-2`" in note and "`val_accuracy` = 0.9000" in note
    assert "2 finished, 1 stopped early" in note and "**Status**: finished" in note
    assert "`convolutions` ∈ {1, 2, 3}" in note and "fixed epochs=3" in note
    assert "[celeb-smile v4](#/models/celeb-smile/versions/4) @champion" in note
    assert "(get-artifact?path=plots/learning_curves_top.png&run_uuid=parent-1)" in note


def test_the_note_of_a_sweep_in_progress_has_no_best_yet():
    note = note_of([trial(1, TrialState.RUNNING), trial(2, TrialState.PENDING)])
    assert "**Status**: running" in note and "1 pending, 1 running" in note
    assert "**Best**: none yet" in note


def test_the_note_of_a_thousand_trials_is_as_short_as_that_of_four():
    def note(count):
        trials = finished_trials(count)
        sweep = SweepResult(spec_with({"seed": [str(i) for i in range(count)]}), trials, "7",
                            "parent-1")
        best = report.best_trial(trials, sweep.spec.objective)
        return report.note_markdown(sweep, best, None, ["plots/a.png"])

    small, large = note(4), note(1000)
    assert "`seed` ∈ {0, 1, 2, 3}" in small
    assert "`seed` ∈ {0, 1, 2, 3, 4, 5, 6, 7, … (1000 values)}" in large
    assert len(large.splitlines()) == len(small.splitlines())
    assert len(large) < len(small) + 100
    assert large.count("trial-") == 1  # the best, and no other trial


def recording_console() -> Console:
    return Console(width=200, record=True, file=io.StringIO())


def rendered(renderable) -> str:
    console = recording_console()
    console.print(renderable)
    return console.export_text()


def test_the_summary_table_of_a_thousand_trials_shows_the_best_and_counts_the_rest():
    rows = report.ranked(finished_trials(1000), Objective())
    table = report.summary_table(rows, VARYING, METRIC)
    assert table.row_count == report.SUMMARY_ROWS == 20
    text = rendered(table)
    assert "top 20 of 1000 trials; 980 more in summary.csv" in text
    assert [line.split()[3] for line in text.splitlines() if "s1/trial-" in line] == \
        [t.name for t in rows[:20]]


def test_the_summary_table_of_a_small_sweep_has_every_trial_and_no_more():
    rows = report.ranked(finished_trials(4), Objective())
    table = report.summary_table(rows, VARYING, METRIC)
    assert table.row_count == 4 and table.caption is None
    assert "more" not in rendered(table)


def failures_printed(count) -> list[str]:
    console = recording_console()
    rows = [trial(i, TrialState.FAILED, reason=f"exit code {i}") for i in range(1, count + 1)]
    report.print_failures(console, [trial(0, history=[0.9])] + rows)
    return console.export_text().splitlines()


def test_failed_trials_are_named_up_to_a_bound_then_counted():
    lines = failures_printed(25)
    assert len(lines) == report.FAILURES_NAMED + 1 == 11
    assert lines[0] == "s1/trial-01 failed: exit code 1"
    assert lines[-1] == "and 15 more failed: see summary.csv"
    assert failures_printed(2) == ["s1/trial-01 failed: exit code 1",
                                   "s1/trial-02 failed: exit code 2"]


def test_experiment_links_open_the_model_training_view():
    assert report.experiment_url("http://mlflow:5000/", "3") == \
        "http://mlflow:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert report.experiment_url("sqlite:///mlflow.db", "3") is None
