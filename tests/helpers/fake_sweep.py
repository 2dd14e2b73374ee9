"""Sweeps and trials made in memory, for the report's and the plots' tests."""

from celeb_smile.constants import TrialState
from celeb_smile.sweep.spec import Objective, SweepSpec
from celeb_smile.sweep.trial import Trial


def spec_with(varying: dict[str, list[str]], metric="val_accuracy", direction="maximize",
              experiment="celeb-smile") -> SweepSpec:
    return SweepSpec(experiment=experiment, objective=Objective(metric, direction),
                     params={"epochs": "3"}, grid=varying)


def trial(index, state=TrialState.FINISHED, history=(), params=None, sweep_id="s1",
          metric="val_accuracy", run_id=None, sweep_run_id="parent-1", reason="") -> Trial:
    """A trial whose objective is the last value of `history`."""
    history = list(history)
    return Trial(index, dict(params or {"convolutions": str(index)}), sweep_id=sweep_id,
                 state=state, reason=reason, run_id=run_id or f"run-{index}",
                 sweep_run_id=sweep_run_id, history=history,
                 metrics={metric: history[-1]} if history else {})


def finished_trials(count) -> list[Trial]:
    """`count` finished trials of distinct objective values, the higher the index the better."""
    return [trial(i, history=[i / count]) for i in range(1, count + 1)]
