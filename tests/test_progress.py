"""How trial states read in the progress table, the summary and the note."""

from celeb_smile.constants import TrialState
from celeb_smile.sweep import progress
from celeb_smile.sweep.trial import Trial
from tests.helpers.fake_sweep import trial


def test_every_state_has_words_and_a_style():
    assert set(progress.STATE_WORDS) == set(TrialState) == set(progress.STATE_STYLES)


def test_an_early_stopped_trial_reads_as_stopped_early_with_its_reason():
    stopped = trial(1, TrialState.STOPPED, reason="val_accuracy 0.41 < median 0.60 at epoch 2")
    assert progress.state_text(stopped) == \
        "stopped early: val_accuracy 0.41 < median 0.60 at epoch 2"


def test_a_skipped_trial_reads_as_finished_earlier():
    assert progress.state_text(trial(1, TrialState.SKIPPED, reason="same code")) == \
        "finished earlier"


def test_long_reasons_are_cut_in_tables():
    failed = trial(1, TrialState.FAILED, reason="x" * 500)
    assert len(progress.state_text(failed)) == len("failed: ") + progress.REASON_SHOWN


def test_the_progress_table_counts_every_ended_trial_as_done():
    from rich.console import Console

    trials = [trial(1), trial(2, TrialState.STOPPED), trial(3, TrialState.RUNNING)]
    table = progress.Progress(Console(), trials, ["convolutions"], "val_accuracy").table()
    assert table.title == "sweep: 2/3 done"
    assert "stopped early" in table.columns[2]._cells[1]


def test_a_waiting_pod_shows_why_in_the_table():
    waiting = Trial(1, {}, state=TrialState.SCHEDULED,
                    reason="Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.")
    assert progress.state_text(waiting, reason_chars=None) == \
        "scheduled: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
