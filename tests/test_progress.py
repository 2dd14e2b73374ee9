"""How trial states read in the progress table, the summary and the note."""

import io
import random

from rich.console import Console

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
    trials = [trial(1), trial(2, TrialState.STOPPED), trial(3, TrialState.RUNNING)]
    table = progress.Progress(Console(), trials, ["convolutions"], "val_accuracy").table()
    assert table.title == "sweep: 2/3 done"
    assert "stopped early" in table.columns[2]._cells[1]


def test_a_waiting_pod_shows_why_in_the_table():
    waiting = Trial(1, {}, state=TrialState.SCHEDULED,
                    reason="Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.")
    assert progress.state_text(waiting, reason_chars=None) == \
        "scheduled: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."


def table_of(trials, **options):
    return progress.Progress(Console(), trials, ["convolutions"], "val_accuracy",
                             **options).table()


def names_in(table) -> list[str]:
    return list(table.columns[0]._cells)


def a_thousand_trials(in_flight: int) -> list[Trial]:
    """412 ended (in a shuffled order: 3 failed, 103 stopped early), then `in_flight`
    running, then pending ones; trial-101 is the best."""
    trials = []
    for i in range(1, 413):
        state = (TrialState.FAILED if i % 137 == 0 else
                 TrialState.STOPPED if i % 4 == 0 else TrialState.FINISHED)
        trials.append(trial(i, state, history=[] if state == TrialState.FAILED else
                            [0.99 if i == 101 else 0.5]))
    for t, ended in zip(trials, random.Random(1).sample(range(412), 412)):
        t.ended = float(ended)
    trials += [trial(i, TrialState.RUNNING, history=[0.999]) for i in range(413, 413 + in_flight)]
    return trials + [trial(i, TrialState.PENDING) for i in range(413 + in_flight, 1001)]


def latest_ended(trials, count) -> list[str]:
    ended = sorted((t for t in trials if t.ended is not None), key=lambda t: t.ended)
    return [t.name for t in ended[-count:]]


def test_a_thousand_trials_with_fifty_in_flight_fit_one_screen_and_count_the_rest():
    trials = a_thousand_trials(in_flight=50)
    table = table_of(trials)
    running = [t.name for t in trials if t.state == TrialState.RUNNING]
    shown_running = progress.LIVE_ROWS - progress.ENDED_SHOWN
    assert table.row_count == progress.LIVE_ROWS
    assert set(running[:shown_running]) | set(latest_ended(trials, progress.ENDED_SHOWN)) == \
        set(names_in(table))
    assert names_in(table) == sorted(names_in(table), key=lambda name: int(name[9:]))
    assert table.title == "sweep: 412/1000 done · 50 in flight · 3 failed · 103 stopped early"
    assert table.caption == (f"… {50 - shown_running} more in flight · 409 more ended · "
                             "538 pending · best so far: s1/trial-101 (convolutions=101) "
                             "val_accuracy=0.9900")


def test_with_few_in_flight_the_latest_ended_fill_one_screen():
    trials = a_thousand_trials(in_flight=2)
    table = table_of(trials)
    assert table.row_count == progress.LIVE_ROWS == 15
    assert set(latest_ended(trials, 13)) < set(names_in(table))
    assert table.caption.startswith("… 399 more ended · 586 pending · best so far: ")


def test_the_best_so_far_follows_the_direction_and_ignores_stopped_trials():
    trials = a_thousand_trials(in_flight=2)
    trials[0].history, trials[0].metrics = [0.1], {"val_accuracy": 0.1}
    trials[3].metrics = {"val_accuracy": 0.01}  # trial-04: stopped early
    assert "best so far: s1/trial-01 (convolutions=1) val_accuracy=0.1000" in \
        table_of(trials, direction="minimize").caption


def test_a_small_sweep_shows_every_trial_as_before():
    trials = [trial(1), trial(2, TrialState.RUNNING), trial(3, TrialState.PENDING),
              trial(4, TrialState.FAILED, reason="OOMKilled")]
    table = table_of(trials)
    assert names_in(table) == [t.name for t in trials]
    assert (table.title, table.caption) == ("sweep: 2/4 done", None)


def test_without_a_terminal_each_event_is_a_line():
    console = Console(file=io.StringIO(), width=200)
    with progress.Progress(console, [trial(1)], ["convolutions"], "val_accuracy") as shown:
        shown.event(trial(1), "submitted (pid 7)")
    assert console.file.getvalue() == "s1/trial-01 [convolutions=1] submitted (pid 7)\n"
