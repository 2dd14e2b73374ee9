"""The policy's decisions from plain trials, with no tracking server, cluster or clock: what to
stop, when the goal is reached, when no new trial may start, how much room there is."""

from celeb_smile.constants import TrialState
from celeb_smile.sweep.policy import Policy
from celeb_smile.sweep.spec import Budget, EarlyStopping, Objective, SweepSpec
from celeb_smile.sweep.trial import Trial

S = TrialState


def policy(**settings) -> Policy:
    spec = SweepSpec(params={"epochs": "9"}, grid={"learning_rate": ["0.01", "0.02"]},
                     **settings)
    return Policy(spec)


def trial(index, state, history=(), epochs=9, **fields) -> Trial:
    history = list(history)
    return Trial(index, {"epochs": str(epochs)}, state=state, history=history,
                 metrics={"val_accuracy": history[-1]} if history else {}, **fields)


ASHA_AT_3 = EarlyStopping("asha", grace_period=3, reduction_factor=3)


def test_asha_stops_only_running_trials_below_the_cut_at_their_rung():
    done = [trial(i, S.FINISHED, [0.5, 0.6, 0.9 - i / 100]) for i in range(1, 4)]
    low, high = trial(4, S.RUNNING, [0.5, 0.5, 0.5]), trial(5, S.RUNNING, [0.5, 0.6, 0.95])
    decisions = policy(early_stopping=ASHA_AT_3).stops(done + [low, high])
    assert [d.trial_index for d in decisions] == [4]
    assert high.rung_passed == 3 and low.rung_passed == 0


def test_a_rung_a_trial_passed_before_a_restart_is_not_judged_again():
    """The controller that adopts a trial reads the rung it passed from its run."""
    done = [trial(i, S.FINISHED, [0.5, 0.6, 0.9]) for i in range(1, 4)]
    adopted = trial(4, S.RUNNING, [0.5, 0.5, 0.5, 0.5], rung_passed=3)
    assert policy(early_stopping=ASHA_AT_3).stops(done + [adopted]) == []
    fresh = trial(4, S.RUNNING, [0.5, 0.5, 0.5, 0.5])  # the same values, no rung recorded
    assert len(policy(early_stopping=ASHA_AT_3).stops(done + [fresh])) == 1


def test_without_a_rule_nothing_is_stopped_and_only_the_objective_is_kept():
    sweep = policy()
    assert sweep.stops([trial(1, S.RUNNING, [0.0] * 5)]) == []
    assert sweep.series_kept() == [None]
    on_loss = policy(early_stopping=EarlyStopping("asha", metric="val_loss"))
    assert on_loss.series_kept() == [None, "val_loss"]


def test_the_goal_is_reached_by_a_finished_trial_not_by_one_still_running():
    sweep = policy(goal=0.9)
    running_above = trial(1, S.RUNNING, [0.95])
    finished_below = trial(2, S.FINISHED, [0.85])
    assert sweep.goal_reached_by([running_above, finished_below]) is None
    reaching = trial(3, S.FINISHED, [0.9])  # reaching it exactly counts
    assert sweep.goal_reached_by([running_above, finished_below, reaching]) is reaching


def test_a_goal_to_minimize_is_reached_from_above():
    sweep = policy(goal=0.2, objective=Objective("val_loss", "minimize"))
    low = Trial(1, {}, state=S.FINISHED, metrics={"val_loss": 0.19})
    high = Trial(2, {}, state=S.FINISHED, metrics={"val_loss": 0.21})
    assert sweep.goal_reached_by([high]) is None
    assert sweep.goal_reached_by([high, low]) is low


def test_submissions_close_after_more_failures_than_allowed():
    sweep = policy(max_failures=1)
    one_failed = [trial(1, S.FAILED), trial(2, S.FINISHED, [0.5])]
    assert sweep.why_closed(one_failed, wall_seconds=0) == ""
    assert sweep.why_closed(one_failed + [trial(3, S.FAILED)], wall_seconds=0) == \
        "more than 1 trials failed (max_failures)"


def test_the_trial_epochs_budget_counts_epochs_trained_here_not_earlier_runs():
    sweep = policy(budget=Budget(trial_epochs=6))
    trained = [trial(1, S.RUNNING, [0.5] * 3), trial(2, S.STOPPED, [0.4] * 2)]
    skipped = trial(3, S.SKIPPED, [0.9] * 9)  # finished in an earlier sweep: cost nothing now
    assert sweep.why_closed(trained + [skipped], wall_seconds=0) == ""
    trained[0].history.append(0.6)
    assert sweep.why_closed(trained + [skipped], wall_seconds=0) == \
        "budget of 6 trial-epochs spent (6)"


def test_the_wall_clock_budget_closes_submissions_once_spent():
    sweep = policy(budget=Budget(wall_seconds=600))
    assert sweep.why_closed([], wall_seconds=599.9) == ""
    assert sweep.why_closed([], wall_seconds=600) == "budget of 600s wall-clock spent"


def test_room_is_max_parallel_less_the_trials_in_flight():
    sweep = policy(max_parallel=3)
    trials = [trial(1, S.SCHEDULED), trial(2, S.RUNNING), trial(3, S.FINISHED, [0.5]),
              trial(4, S.PENDING)]
    assert sweep.room(trials) == 1


def test_suggestions_come_from_the_search_and_end_when_it_has_no_more():
    sweep = policy()
    first = sweep.suggest([])
    assert first == {"epochs": "9", "learning_rate": "0.01"}
    second = sweep.suggest([Trial(1, first, state=S.RUNNING)])
    assert second == {"epochs": "9", "learning_rate": "0.02"}
    assert sweep.suggest([Trial(1, first), Trial(2, second)]) is None
