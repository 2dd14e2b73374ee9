"""What a sweep decides from what it has observed, with no I/O: which parameters to try next
(the search), which running trials to stop (the early-stopping rule), and when the sweep has
done enough (its goal, its budget, too many failures).

The controller observes trials (their states and per-epoch values), asks the policy, and
carries out the answers; the policy never calls the tracking server, the cluster or the
clock (the controller passes the wall time in). So every decision is tested with plain
Trial objects.
"""

from celeb_smile.constants import TrialState
from celeb_smile.sweep.search import Search, make_search
from celeb_smile.sweep.spec import SweepSpec
from celeb_smile.sweep.stopping import StopDecision, StoppingRule, make_stopping_rule
from celeb_smile.sweep.trial import Trial

S = TrialState


class Policy:
    def __init__(self, spec: SweepSpec, search: Search | None = None,
                 rule: StoppingRule | None = None):
        self.spec = spec
        self.search = search or make_search(spec)
        self.rule = rule if rule is not None else make_stopping_rule(spec)

    # -- what to run -----------------------------------------------------------------------
    def suggest(self, known: list[Trial]) -> dict[str, str] | None:
        """The next parameter set to try, given every trial known (this sweep's, resumed and
        warm-start ones); None when the search has nothing more."""
        suggestions = self.search.get_suggestions(known, 1)
        return suggestions[0] if suggestions else None

    def planned(self) -> int | None:
        return self.search.planned()

    # -- what to stop ----------------------------------------------------------------------
    def stops(self, trials: list[Trial]) -> list[StopDecision]:
        """Stop decisions for RUNNING trials (each trial at most once per rung or step)."""
        if self.rule is None or not any(t.state == S.RUNNING for t in trials):
            return []
        running = {t.index for t in trials if t.state == S.RUNNING}
        return [d for d in self.rule.decide(trials) if d.trial_index in running]

    def series_kept(self) -> list[str | None]:
        """The per-epoch series each trial keeps: the objective's (None) and, when the
        stopping rule judges another metric, that one's."""
        watch = self.rule.watch if self.rule is not None else None
        return [None] + ([watch] if watch else [])

    # -- when to end -----------------------------------------------------------------------
    def goal_reached_by(self, trials: list[Trial]) -> Trial | None:
        """The first FINISHED trial whose objective reaches the goal, if any."""
        goal, objective = self.spec.goal, self.spec.objective
        if goal is None:
            return None
        for trial in trials:
            value = trial.objective(objective.metric)
            if trial.state == S.FINISHED and value is not None and \
                    (value == goal or objective.better(value, goal)):
                return trial
        return None

    def why_closed(self, trials: list[Trial], wall_seconds: float) -> str:
        """Why no new trial may start ('' while they may): too many failures, or the budget
        of trial-epochs or wall-clock seconds spent."""
        limit = self.spec.max_failures
        failures = sum(t.state == S.FAILED for t in trials)
        if limit is not None and failures > limit:
            return f"more than {limit} trials failed (max_failures)"
        budget = self.spec.budget
        epochs = sum(t.epochs_done for t in trials if t.state != S.SKIPPED)
        if budget.trial_epochs is not None and epochs >= budget.trial_epochs:
            return f"budget of {budget.trial_epochs} trial-epochs spent ({epochs})"
        if budget.wall_seconds is not None and wall_seconds >= budget.wall_seconds:
            return f"budget of {budget.wall_seconds:.0f}s wall-clock spent"
        return ""

    def room(self, trials: list[Trial]) -> int:
        """How many more trials may be in flight now."""
        return self.spec.max_parallel - sum(t.state.in_flight for t in trials)
