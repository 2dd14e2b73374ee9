"""Early-stopping rules on recorded metric histories: who stops, at which epoch, and why."""

import math

import pytest

from celeb_smile.constants import TrialState
from celeb_smile.sweep.spec import EarlyStopping, Objective, SweepSpec
from celeb_smile.sweep.stopping import ASHA, Hyperband, MedianStop, make_stopping_rule
from celeb_smile.sweep.trial import Trial

NAN = math.nan
FINISHED, RUNNING, STOPPED = TrialState.FINISHED, TrialState.RUNNING, TrialState.STOPPED


def trial(index, state, history, epochs=10):
    return Trial(index, {"epochs": str(epochs)}, state=state, history=list(history))


def finished(*histories):
    return [trial(i + 100, FINISHED, h) for i, h in enumerate(histories)]


def median(start_step=3, min_trials=3, direction="maximize"):
    return MedianStop("val_accuracy", direction, start_step, min_trials)


def stopped(rule, trials):
    return [d.trial_index for d in rule.decide(trials)]


# -- median ---------------------------------------------------------------------------------
# Running averages at step 3 of these finished trials: 0.6, 0.7, 0.8 -> median 0.7.
DONE = finished([0.5, 0.6, 0.7, 0.8], [0.6, 0.7, 0.8, 0.9], [0.7, 0.8, 0.9, 0.9])


def test_median_stops_a_trial_whose_best_is_below_the_median_running_average():
    bad, good = trial(1, RUNNING, [0.5, 0.6, 0.65]), trial(2, RUNNING, [0.5, 0.5, 0.75])
    decisions = median().decide(DONE + [bad, good])
    assert [d.trial_index for d in decisions] == [1]
    decision = decisions[0]
    assert (decision.rule, decision.epoch, decision.value) == ("median", 3, 0.65)
    assert decision.threshold == pytest.approx(0.7)
    assert "0.65" in decision.explanation and "0.7" in decision.explanation


def test_median_waits_for_start_step_and_enough_finished_trials():
    bad = trial(1, RUNNING, [0.1, 0.1])
    assert stopped(median(start_step=3), DONE + [bad]) == []  # step 2 < start_step
    bad.history.append(0.1)
    assert stopped(median(min_trials=4), DONE + [bad]) == []  # only 3 finished
    assert stopped(median(), DONE[:2] + [trial(9, RUNNING, [0.9] * 5)] + [bad]) == []
    assert stopped(median(), DONE + [bad]) == [1]


def test_median_counts_only_finished_trials_that_reached_the_step():
    short = [trial(50, FINISHED, [0.1, 0.1, 0.1])]  # never reached step 4
    running = [trial(1, RUNNING, [0.6, 0.7, 0.7, 0.3]), trial(7, RUNNING, [0.9] * 4)]
    assert stopped(median(start_step=4), DONE[:2] + short + running) == []
    assert stopped(median(start_step=4), DONE + short + running) == [1]


def test_a_tie_with_the_median_does_not_stop():
    assert stopped(median(), DONE + [trial(1, RUNNING, [0.6, 0.7, 0.7])]) == []


def test_median_respects_minimize():
    losses = finished([0.5, 0.4, 0.3], [0.6, 0.5, 0.4], [0.7, 0.6, 0.5])  # median 0.5
    rule = median(direction="minimize")
    assert stopped(rule, losses + [trial(1, RUNNING, [0.9, 0.6, 0.55]),
                                   trial(2, RUNNING, [0.9, 0.8, 0.45])]) == [1]


def test_nan_never_poisons_the_median_and_a_nan_trial_is_stopped():
    done = DONE + finished([NAN, NAN, NAN], [NAN, 0.9, 0.9])  # averages: -, 0.9 -> median 0.75
    nan_trial, fine = trial(1, RUNNING, [NAN, NAN, NAN]), trial(2, RUNNING, [NAN, 0.76, NAN])
    decisions = median().decide(done + [nan_trial, fine])
    assert [d.trial_index for d in decisions] == [1]
    assert decisions[0].threshold == pytest.approx(0.75)
    assert "NaN" in decisions[0].explanation


def test_each_trial_is_decided_once_and_only_while_running():
    bad = trial(1, RUNNING, [0.1, 0.1, 0.1])
    rule = median()
    assert stopped(rule, DONE + [bad]) == [1]
    bad.history.append(0.1)
    assert stopped(rule, DONE + [bad]) == []
    for state in (FINISHED, STOPPED, TrialState.SCHEDULED):
        assert stopped(median(), DONE + [trial(2, state, [0.1, 0.1, 0.1])]) == []


def test_a_trial_past_its_last_epoch_is_left_to_finish():
    assert stopped(median(), DONE + [trial(1, RUNNING, [0.1, 0.1, 0.1], epochs=3)]) == []


# -- asha -----------------------------------------------------------------------------------

def asha(grace=1, factor=3, direction="maximize"):
    return ASHA("val_accuracy", direction, grace, factor)


def test_asha_rungs_grow_by_the_reduction_factor():
    assert asha(grace=1, factor=3).rungs(10) == [1, 3, 9]
    assert asha(grace=2, factor=2).rungs(10) == [2, 4, 8]


def test_the_first_trial_at_a_rung_never_waits_for_others():
    assert stopped(asha(), [trial(1, RUNNING, [0.1])]) == []


def test_asha_keeps_only_the_best_third_at_a_rung():
    ended = [trial(2, STOPPED, [0.8]), trial(3, FINISHED, [0.6] * 10)]
    decisions = asha().decide(ended + [trial(1, RUNNING, [0.7])])
    assert [(d.trial_index, d.epoch, d.value, d.threshold) for d in decisions] == [
        (1, 1, 0.7, 0.8)]
    assert "0.7" in decisions[0].explanation and "0.8" in decisions[0].explanation


def test_asha_judges_each_rung_once_on_arrival():
    rule = asha()
    leader = trial(1, RUNNING, [0.5])
    assert stopped(rule, [leader]) == []  # alone at rung 1: promoted
    later = [trial(i, FINISHED, [0.9] * 10) for i in (2, 3, 4)]
    assert stopped(rule, [leader] + later) == []  # rung 1 was decided; rung 3 not reached
    leader.history += [0.5, 0.5]
    assert stopped(rule, [leader] + later) == [1]  # rung 3: 0.5 < best of 4 (0.9)


def test_asha_ties_continue_and_minimize_is_respected():
    assert stopped(asha(), [trial(2, FINISHED, [0.8] * 10), trial(3, FINISHED, [0.8] * 10),
                            trial(1, RUNNING, [0.8])]) == []
    losses = [trial(2, FINISHED, [0.3] * 10), trial(3, FINISHED, [0.4] * 10)]
    assert stopped(asha(direction="minimize"), losses + [trial(1, RUNNING, [0.35])]) == [1]
    assert stopped(asha(direction="minimize"), losses + [trial(1, RUNNING, [0.2])]) == []


def test_asha_stops_nan_and_ignores_nan_in_the_cutoff():
    others = [trial(2, FINISHED, [NAN] * 10), trial(3, FINISHED, [NAN] * 10)]
    assert stopped(asha(), others + [trial(1, RUNNING, [0.1])]) == []
    decisions = asha().decide(others + [trial(1, RUNNING, [NAN])])
    assert [d.trial_index for d in decisions] == [1]
    assert math.isnan(decisions[0].value) and "NaN" in decisions[0].explanation


# -- hyperband ------------------------------------------------------------------------------

def hyperband(grace=1, factor=3, epochs=9):
    return Hyperband("val_accuracy", "maximize", grace, factor, epochs)


def test_hyperband_deals_trials_to_brackets_in_its_proportions_and_in_turn():
    rule = hyperband()  # 3 brackets: first rungs at epochs 1, 3 and 9; 9:5:3 trials
    assert [rule.rungs(9, b) for b in range(3)] == [[1, 3, 9], [3, 9], [9]]
    dealt = [rule.bracket_of(trial(i, RUNNING, [])).number for i in range(1, 18)]
    assert [dealt.count(b) for b in range(3)] == [9, 5, 3]
    assert len(set(dealt[:5])) == 3  # the first few already reach every bracket
    assert dealt == [hyperband().bracket_of(trial(i, RUNNING, [])).number
                     for i in range(1, 18)]  # a restarted controller deals them alike


def test_each_bracket_judges_at_its_own_rungs_against_its_own_trials():
    rule = hyperband()
    by_bracket = {}
    for index in range(1, 18):
        by_bracket.setdefault(rule.bracket_of(trial(index, RUNNING, [])).number, []).append(index)
    first, second, last = (by_bracket[b] for b in range(3))
    leaders = [trial(first[0], FINISHED, [0.9] * 9), trial(second[0], FINISHED, [0.9] * 9),
               trial(last[0], FINISHED, [0.9] * 9)]
    weak = [trial(first[1], RUNNING, [0.1]), trial(second[1], RUNNING, [0.1]),
            trial(last[1], RUNNING, [0.1])]
    decisions = rule.decide(leaders + weak)
    assert [(d.trial_index, d.epoch) for d in decisions] == [(first[1], 1)]
    assert "of bracket 0 at rung 1" in decisions[0].explanation
    for late in weak[1:]:
        late.history += [0.1, 0.1]
    assert [(d.trial_index, d.epoch) for d in rule.decide(leaders + weak)] == [(second[1], 3)]
    weak[2].history += [0.1] * 5  # the last bracket's only rung is the last epoch
    assert rule.decide(leaders + weak) == []


def test_asha_is_hyperband_with_one_bracket():
    assert len(asha(grace=3).brackets) == 1
    assert len(hyperband(grace=3, epochs=9).brackets) == 2
    assert len(hyperband(grace=4, epochs=9).brackets) == 1


# -- from the spec ----------------------------------------------------------------------------

def test_the_spec_chooses_the_rule_and_its_settings():
    spec = SweepSpec(objective=Objective("val_loss", "minimize"))
    assert make_stopping_rule(spec) is None
    spec.early_stopping = EarlyStopping("asha", grace_period=2, reduction_factor=4)
    rule = make_stopping_rule(spec)
    assert isinstance(rule, ASHA) and rule.rungs(32) == [2, 8, 32] and not rule.maximize
    spec.early_stopping = EarlyStopping("median", start_step=5, min_trials_required=2)
    rule = make_stopping_rule(spec)
    assert isinstance(rule, MedianStop) and (rule.start_step, rule.min_trials_required) == (5, 2)
    spec.params["epochs"] = "27"
    spec.early_stopping = EarlyStopping("hyperband", grace_period=3, reduction_factor=3)
    rule = make_stopping_rule(spec)
    assert isinstance(rule, Hyperband) and len(rule.brackets) == 3  # first rungs 3, 9, 27


def test_a_rule_may_judge_another_metric_than_the_objective():
    spec = SweepSpec(objective=Objective("val_accuracy", "maximize"),
                     early_stopping=EarlyStopping("asha", grace_period=1, metric="val_loss"))
    rule = make_stopping_rule(spec)
    assert (rule.metric, rule.maximize, rule.watch) == ("val_loss", False, "val_loss")
    # Equal accuracy at the rung; the loss tells the learner (0.66) from the flat one (0.69).
    learner, flat = (Trial(i, {"epochs": "10"}, state=RUNNING, history=[0.5],
                           watched={"val_loss": [loss]}) for i, loss in ((1, 0.66), (2, 0.69)))
    decisions = rule.decide([learner, flat])
    assert [(d.trial_index, d.value, d.threshold) for d in decisions] == [(2, 0.69, 0.66)]
    assert "val_loss 0.69" in decisions[0].explanation


def test_a_rule_on_another_metric_waits_for_that_metric():
    rule = MedianStop("val_loss", "minimize", start_step=1, min_trials_required=1,
                      watch="val_loss")
    done = Trial(9, {"epochs": "2"}, state=FINISHED, history=[0.9, 0.9],
                 watched={"val_loss": [0.3, 0.2]})
    behind = Trial(1, {"epochs": "10"}, state=RUNNING, history=[0.1])  # no val_loss read yet
    assert stopped(rule, [done, behind]) == []
    behind.watched["val_loss"] = [0.5]
    assert stopped(rule, [done, behind]) == [1]


def test_the_objective_named_as_the_stopping_metric_is_the_objective():
    spec = SweepSpec(objective=Objective("val_loss", "minimize"),
                     early_stopping=EarlyStopping("median", metric="val_loss"))
    assert make_stopping_rule(spec).watch is None
    assert spec.stopping_metric() == ("val_loss", "minimize")
