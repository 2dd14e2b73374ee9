"""Early stopping: decide, from the per-epoch objective values already logged, which running
trials are not worth their remaining epochs.

Both rules are written here rather than delegated to Optuna's pruners, whose semantics differ
(Optuna's MedianPruner compares intermediate values, not Katib's running averages; its
SuccessiveHalvingPruner judges at rungs counted in steps from a minimum resource and keeps
ties out): each rule is a few lines, and every decision names its rule, epoch, value and
threshold. Neither waits for slow trials: a decision uses whatever the other trials have
logged when it is asked. NaN counts as the worst value; ties never stop a trial.
"""

import math
import statistics
from dataclasses import dataclass
from typing import Protocol

from celeb_smile.constants import TrialState
from celeb_smile.sweep.spec import SweepSpec
from celeb_smile.sweep.trial import Trial


@dataclass(frozen=True)
class StopDecision:
    trial_index: int
    rule: str  # "median" | "asha"
    epoch: int  # 1-based: the epoch whose value decided
    value: float  # the trial's value the rule judged (NaN when it only logged NaN)
    threshold: float  # what it had to reach (NaN when no trial logged a number)
    explanation: str  # one sentence, for the run's tag and the progress table


class StoppingRule(Protocol):
    def decide(self, trials: list[Trial]) -> list[StopDecision]:
        """Stop decisions for RUNNING trials; each trial is decided at most once."""


def make_stopping_rule(spec: SweepSpec) -> StoppingRule | None:
    stopping = spec.early_stopping
    if stopping is None:
        return None
    metric, direction = spec.objective.metric, spec.objective.direction
    if stopping.rule == "median":
        return MedianStop(metric, direction, stopping.start_step, stopping.min_trials_required)
    if stopping.rule == "asha":
        return ASHA(metric, direction, stopping.grace_period, stopping.reduction_factor)
    raise ValueError(f"early_stopping.rule must be median or asha, got {stopping.rule!r}")


class _Rule:
    name = ""

    def __init__(self, metric: str, direction: str):
        self.metric = metric
        self.maximize = direction == "maximize"
        self._stopped: set[int] = set()

    def decide(self, trials: list[Trial]) -> list[StopDecision]:
        decisions = []
        for trial in trials:
            if (trial.state != TrialState.RUNNING or trial.index in self._stopped
                    or trial.warm_start or trial.past_last_epoch):  # nothing to save
                continue
            decision = self._judge(trial, trials)
            if decision is not None:
                self._stopped.add(trial.index)
                decisions.append(decision)
        return decisions

    def _judge(self, trial: Trial, trials: list[Trial]) -> StopDecision | None:
        raise NotImplementedError

    def _worse(self, a: float, b: float) -> bool:
        """a strictly worse than b; NaN is worse than any number (NaN vs NaN: a tie)."""
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and not math.isnan(b)
        return a < b if self.maximize else a > b

    def _best(self, values: list[float]) -> float:
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return math.nan
        return max(finite) if self.maximize else min(finite)

    def _decision(self, trial: Trial, epoch: int, value: float, threshold: float,
                  why: str) -> StopDecision:
        return StopDecision(trial.index, self.name, epoch, value, threshold,
                            f"stopped by {self.name} at epoch {epoch}: {self.metric} "
                            f"{_fmt(value)} {why} {_fmt(threshold)}.")


class MedianStop(_Rule):
    """Katib's medianstop (Vizier's median stopping rule): at step s >= start_step, stop a
    trial whose best value so far is worse than the median, over the FINISHED trials that
    reached step s, of their running averages (the mean of their values up to s); only once
    min_trials_required finished trials are there to compare with."""

    name = "median"

    def __init__(self, metric: str, direction: str, start_step: int = 4,
                 min_trials_required: int = 3):
        super().__init__(metric, direction)
        self.start_step = start_step
        self.min_trials_required = min_trials_required

    def _judge(self, trial: Trial, trials: list[Trial]) -> StopDecision | None:
        step = trial.epochs_done
        if step < self.start_step:
            return None
        averages = [_mean(other.history[:step]) for other in trials
                    if other.state == TrialState.FINISHED and other.epochs_done >= step]
        averages = [a for a in averages if not math.isnan(a)]  # NaNs never poison the median
        if len(averages) < self.min_trials_required:
            return None
        median = statistics.median(averages)
        best = self._best(trial.history)
        if not self._worse(best, median):
            return None
        return self._decision(trial, step, best, median,
                              f"(best so far) is worse than the median running average of "
                              f"{len(averages)} finished trials at that epoch,")


class ASHA(_Rule):
    """Asynchronous successive halving: rungs at epochs grace_period * reduction_factor**k.
    A trial reaching a rung continues only if its value there is among the best
    1/reduction_factor of the values every trial (running or ended) logged at that rung so far
    -- at least the best one, so the first to arrive never waits for the others."""

    name = "asha"

    def __init__(self, metric: str, direction: str, grace_period: int = 1,
                 reduction_factor: int = 3):
        super().__init__(metric, direction)
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self._judged: set[tuple[int, int]] = set()  # (trial index, rung) already let through

    def rungs(self, epochs: int) -> list[int]:
        rungs, rung = [], self.grace_period
        while rung <= epochs:
            rungs.append(rung)
            rung *= self.reduction_factor
        return rungs

    def _judge(self, trial: Trial, trials: list[Trial]) -> StopDecision | None:
        for rung in self.rungs(trial.epochs_done):
            if (trial.index, rung) in self._judged:
                continue
            self._judged.add((trial.index, rung))
            value = trial.history[rung - 1]
            reached = [other.history[rung - 1] for other in trials
                       if other.epochs_done >= rung]
            keep = max(1, len(reached) // self.reduction_factor)
            finite = sorted((v for v in reached if not math.isnan(v)), reverse=self.maximize)
            threshold = finite[keep - 1] if len(finite) >= keep else math.nan
            if math.isnan(value) or self._worse(value, threshold):
                return self._decision(
                    trial, rung, value, threshold,
                    f"is not in the best {keep} of {len(reached)} trials at rung "
                    f"{rung}, whose cut-off is")
        return None


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.4g}"
