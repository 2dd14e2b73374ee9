"""Early stopping: decide, from the per-epoch values already logged, which running trials are
not worth their remaining epochs.

A rule judges the objective or, when the sweep file names one (`early_stopping.metric`),
another per-epoch metric: val_loss ranks trials at an early rung better than val_accuracy, which
sits at chance until a model starts to learn (benchmarks/README.md).

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
    metric, direction = spec.stopping_metric()
    watch = None if metric == spec.objective.metric else metric
    if stopping.rule == "median":
        return MedianStop(metric, direction, stopping.start_step, stopping.min_trials_required,
                          watch=watch)
    if stopping.rule == "asha":
        return ASHA(metric, direction, stopping.grace_period, stopping.reduction_factor,
                    watch=watch)
    raise ValueError(f"early_stopping.rule must be median or asha, got {stopping.rule!r}")


class _Rule:
    name = ""

    def __init__(self, metric: str, direction: str, watch: str | None = None):
        self.metric = metric
        self.maximize = direction == "maximize"
        self.watch = watch  # the Trial.series it judges: None = the objective's history
        self._stopped: set[int] = set()

    def _values(self, trial: Trial) -> list[float]:
        return trial.series(self.watch)

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
                 min_trials_required: int = 3, watch: str | None = None):
        super().__init__(metric, direction, watch)
        self.start_step = start_step
        self.min_trials_required = min_trials_required

    def _judge(self, trial: Trial, trials: list[Trial]) -> StopDecision | None:
        values = self._values(trial)
        step = len(values)
        if step < self.start_step:
            return None
        averages = [_mean(self._values(other)[:step]) for other in trials
                    if other.state == TrialState.FINISHED and len(self._values(other)) >= step]
        averages = [a for a in averages if not math.isnan(a)]  # NaNs never poison the median
        if len(averages) < self.min_trials_required:
            return None
        median = statistics.median(averages)
        best = self._best(values)
        if not self._worse(best, median):
            return None
        return self._decision(trial, step, best, median,
                              f"(best so far) is worse than the median running average of "
                              f"{len(averages)} finished trials at that epoch,")


class ASHA(_Rule):
    """Asynchronous successive halving: rungs at epochs grace_period * reduction_factor**k.
    A trial reaching a rung continues only if its value there is among the best
    1/reduction_factor of the values every trial (running or ended) logged at that rung so far
    -- at least the best one, so the first to arrive never waits for the others. The highest
    rung a trial passed is kept on the trial (`rung_passed`; the controller records it on the
    run, as Optuna keeps `completed_rung_N`), so a restarted controller never judges a trial
    at a rung twice."""

    name = "asha"

    def __init__(self, metric: str, direction: str, grace_period: int = 1,
                 reduction_factor: int = 3, watch: str | None = None):
        super().__init__(metric, direction, watch)
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor

    def rungs(self, epochs: int) -> list[int]:
        rungs, rung = [], self.grace_period
        while rung <= epochs:
            rungs.append(rung)
            rung *= self.reduction_factor
        return rungs

    def _judge(self, trial: Trial, trials: list[Trial]) -> StopDecision | None:
        values = self._values(trial)
        for rung in self.rungs(len(values)):
            if rung <= trial.rung_passed:
                continue
            value = values[rung - 1]
            reached = [self._values(other)[rung - 1] for other in trials
                       if len(self._values(other)) >= rung]
            keep = max(1, len(reached) // self.reduction_factor)
            finite = sorted((v for v in reached if not math.isnan(v)), reverse=self.maximize)
            threshold = finite[keep - 1] if len(finite) >= keep else math.nan
            if math.isnan(value) or self._worse(value, threshold):
                return self._decision(
                    trial, rung, value, threshold,
                    f"is not in the best {keep} of {len(reached)} trials at rung "
                    f"{rung}, whose cut-off is")
            trial.rung_passed = rung
        return None


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.4g}"
