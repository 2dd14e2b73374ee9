"""Early stopping: decide, from the per-epoch values already logged, which running trials are
not worth their remaining epochs.

A rule judges the objective or, when the sweep file names one (`early_stopping.metric`),
another per-epoch metric: val_loss ranks trials at an early rung better than val_accuracy, which
sits at chance until a model starts to learn (benchmarks/README.md).

Which code decides:
  - `asha` and `hyperband`: Optuna's SuccessiveHalvingPruner, one in-memory study per bracket
    (SuccessiveHalving below). This module only feeds it the epochs the controller observed,
    deals trials to Hyperband's brackets (by index rather than Optuna's hash, so a small sweep's
    brackets get their share and a restarted controller deals them alike), and explains each
    decision from the values Optuna compared.
  - `median`: our own. It is Vizier's median stopping rule (Golovin et al. 2017, as Ray Tune's
    MedianStoppingRule and NNI's Medianstop): at epoch s >= start_step, a trial whose best value
    so far is worse than the median, over the FINISHED trials that reached s, of their running
    averages up to s. Optuna's MedianPruner decides something else (the trial's best so far
    against the median of the finished trials' values *at* s, not their averages), and so does
    Katib's medianstop (the median, over succeeded trials, of the mean of their first
    start_step values, against which every later value of a running trial is compared).
Every decision names its rule, epoch, value and threshold. No rule waits for slow trials: a
decision uses whatever the other trials have logged when it is asked. NaN counts as the worst
value; ties never stop a trial.
"""

import math
import statistics
from dataclasses import dataclass
from typing import Protocol

from celeb_smile.constants import TrialState
from celeb_smile.sweep.spec import SweepSpec
from celeb_smile.sweep.trial import Trial

# The system attribute Optuna's SuccessiveHalvingPruner sets on a trial for each rung it judged
# it at (`completed_rung_0`, ...), holding the value it compared.
OPTUNA_RUNG_PREFIX = "completed_rung_"


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
    if stopping.rule == "hyperband":
        return Hyperband(metric, direction, stopping.grace_period, stopping.reduction_factor,
                         spec.most_epochs(), watch=watch)
    raise ValueError(f"early_stopping.rule must be median, asha or hyperband, "
                     f"got {stopping.rule!r}")


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
            if not self._judgeable(trial):
                continue
            decision = self._judge(trial, trials)
            if decision is not None:
                self._stopped.add(trial.index)
                decisions.append(decision)
        return decisions

    def _judgeable(self, trial: Trial) -> bool:
        """Running, not yet stopped, and with epochs left to save."""
        return (trial.state == TrialState.RUNNING and trial.index not in self._stopped
                and not trial.warm_start and not trial.past_last_epoch)

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
    """Vizier's median stopping rule (not Katib's, not Optuna's MedianPruner: see the module's
    docstring): at step s >= start_step, stop a trial whose best value so far is worse than the
    median, over the FINISHED trials that reached step s, of their running averages (the mean
    of their values up to s); only once min_trials_required finished trials are there to
    compare with."""

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


class SuccessiveHalving(_Rule):
    """Successive halving, decided by Optuna's SuccessiveHalvingPruner: in a bracket whose
    first rung is at epoch grace_period * reduction_factor**bracket, rungs follow every
    reduction_factor-fold more epochs; a trial reaching a rung continues only if its value
    there is among the best 1/reduction_factor of the values every trial of its bracket
    (running or ended) logged at that rung so far -- at least the best one, so the first to
    arrive never waits for the others.

    Each bracket is an in-memory Optuna study that mirrors the trials' per-epoch values, fed
    one epoch at a time as the controller observes them, so Optuna judges every rung on the
    value logged at that epoch, exactly as in its own optimize loop. The highest rung a trial
    passed is kept on the trial (`rung_passed`; the controller records it on the run, as
    Optuna keeps `completed_rung_N`): a restarted controller replays the values but never
    takes a decision at a rung that trial already passed."""

    name = "asha"

    def __init__(self, metric: str, direction: str, grace_period: int = 1,
                 reduction_factor: int = 3, brackets: int = 1, watch: str | None = None):
        super().__init__(metric, direction, watch)
        if grace_period < 1 or reduction_factor < 2 or brackets < 1:
            raise ValueError("successive halving needs grace_period >= 1, "
                             "reduction_factor >= 2 and brackets >= 1")
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.brackets = [_Bracket(number, self._pruner(number), direction)
                         for number in range(brackets)]
        self._allocation = _allocation(brackets, reduction_factor)
        self._fed: dict[int, int] = {}  # trial index -> epochs fed to its bracket's study

    def _pruner(self, bracket: int):
        import optuna

        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.grace_period, reduction_factor=self.reduction_factor,
            min_early_stopping_rate=bracket, bootstrap_count=0)

    def rungs(self, epochs: int, bracket: int = 0) -> list[int]:
        rungs, rung = [], self.grace_period * self.reduction_factor ** bracket
        while rung <= epochs:
            rungs.append(rung)
            rung *= self.reduction_factor
        return rungs

    def bracket_of(self, trial: Trial) -> "_Bracket":
        """Trials go to brackets in turn, in proportion to Hyperband's allocation: by index,
        so a restarted controller puts each where the first did."""
        return self.brackets[self._allocation[(trial.index - 1) % len(self._allocation)]]

    def decide(self, trials: list[Trial]) -> list[StopDecision]:
        decisions = []
        # What ended trials logged is fed first: they reached their rungs before those still
        # running reach theirs.
        for trial in sorted(trials, key=lambda t: (t.state == TrialState.RUNNING, t.index)):
            decision = self._feed(trial, judge=self._judgeable(trial))
            if decision is not None:
                self._stopped.add(trial.index)
                decisions.append(decision)
        return decisions

    def _feed(self, trial: Trial, judge: bool) -> StopDecision | None:
        """Tell the trial's bracket the epochs it has not seen yet, asking Optuna after each."""
        bracket, values = self.bracket_of(trial), self._values(trial)
        for epoch in range(self._fed.get(trial.index, 0) + 1, len(values) + 1):
            self._fed[trial.index] = epoch
            rungs_before = bracket.rungs_completed(trial)
            pruned = bracket.report(trial, epoch, values[epoch - 1])
            if not judge or epoch <= trial.rung_passed:
                continue  # told only, or decided before a restart
            if pruned:
                return self._stop(trial, bracket, epoch, values[epoch - 1], rungs_before)
            if bracket.rungs_completed(trial) > rungs_before:
                trial.rung_passed = epoch
        return None

    def _stop(self, trial: Trial, bracket: "_Bracket", epoch: int, value: float,
              rung: int) -> StopDecision:
        """The decision Optuna took, explained from the same values it compared."""
        reached = bracket.values_at(rung)
        keep = max(1, len(reached) // self.reduction_factor)
        best_first = sorted(reached, reverse=self.maximize)
        threshold = best_first[keep - 1] if len(best_first) >= keep else math.nan
        among = f"trials of bracket {bracket.number}" if len(self.brackets) > 1 else "trials"
        return self._decision(trial, epoch, value, threshold,
                              f"is not in the best {keep} of {len(reached)} {among} at rung "
                              f"{epoch}, whose cut-off is")


class ASHA(SuccessiveHalving):
    """Asynchronous successive halving (one bracket): rungs at epochs
    grace_period * reduction_factor**k."""

    name = "asha"

    def __init__(self, metric: str, direction: str, grace_period: int = 1,
                 reduction_factor: int = 3, watch: str | None = None):
        super().__init__(metric, direction, grace_period, reduction_factor, 1, watch)


class Hyperband(SuccessiveHalving):
    """Hyperband as Optuna's HyperbandPruner runs it: floor(log_rf(epochs / grace_period)) + 1
    brackets of successive halving, bracket b's first rung at grace_period * rf**b, trials
    shared among them in Hyperband's proportions (the last bracket stops nobody: it protects
    late bloomers that the first rung would stop). Unlike Optuna's, which assigns a trial by
    a hash of its number (so a sweep of 24 may leave a bracket nearly empty), trials are dealt
    to brackets in turn."""

    name = "hyperband"

    def __init__(self, metric: str, direction: str, grace_period: int = 1,
                 reduction_factor: int = 3, epochs: int = 9, watch: str | None = None):
        if grace_period > epochs:
            raise ValueError(f"hyperband needs grace_period <= epochs ({epochs}), "
                             f"got {grace_period}")
        brackets = int(math.log(epochs / grace_period, reduction_factor) + 1e-9) + 1
        super().__init__(metric, direction, grace_period, reduction_factor, brackets, watch)


class _Bracket:
    """One bracket's in-memory Optuna study: a RUNNING Optuna trial per sweep trial, its
    intermediate values the epochs fed so far."""

    def __init__(self, number: int, pruner, direction: str):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.number, self.pruner = number, pruner
        self.storage = optuna.storages.InMemoryStorage()
        self.study = optuna.create_study(storage=self.storage, direction=direction,
                                         study_name=f"bracket-{number}", pruner=pruner)
        self._trial_ids: dict[int, int] = {}  # sweep trial index -> Optuna trial id

    def report(self, trial: Trial, epoch: int, value: float) -> bool:
        """Record the trial's value at `epoch`; True if Optuna's pruner would prune it now."""
        trial_id = self._trial_id(trial)
        self.storage.set_trial_intermediate_value(trial_id, epoch, value)
        return self.pruner.prune(self.study, self.storage.get_trial(trial_id))

    def rungs_completed(self, trial: Trial) -> int:
        attrs = self.storage.get_trial(self._trial_id(trial)).system_attrs
        return sum(1 for key in attrs if key.startswith(OPTUNA_RUNG_PREFIX))

    def values_at(self, rung: int) -> list[float]:
        """Every value Optuna compared at the bracket's rung number `rung` (0-based)."""
        key = f"{OPTUNA_RUNG_PREFIX}{rung}"
        return [t.system_attrs[key] for t in self.study.get_trials(deepcopy=False)
                if key in t.system_attrs]

    def _trial_id(self, trial: Trial) -> int:
        if trial.index not in self._trial_ids:
            study_id = self.storage.get_study_id_from_name(self.study.study_name)
            self._trial_ids[trial.index] = self.storage.create_new_trial(study_id)
        return self._trial_ids[trial.index]


def _allocation(brackets: int, reduction_factor: int) -> list[int]:
    """Bracket numbers in the order trials are dealt to them: Hyperband's trials per bracket
    (Optuna's budget: ceil(n * rf**s / (s + 1)), s = n - 1 - bracket), interleaved so that
    every run of consecutive trials keeps those proportions as nearly as it can."""
    budgets = [math.ceil(brackets * reduction_factor ** (brackets - 1 - b) / (brackets - b))
               for b in range(brackets)]
    total, dealt, order = sum(budgets), [0] * brackets, []
    for position in range(1, total + 1):
        bracket = max(range(brackets), key=lambda b: budgets[b] * position / total - dealt[b])
        dealt[bracket] += 1
        order.append(bracket)
    return order


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.4g}"
