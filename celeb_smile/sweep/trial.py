"""One trial of a sweep as the controller, the search strategies, the stopping rules and the
report all see it. Search strategies and stopping rules read only `params`, `state`,
`history`, `watched`, `warm_start` and `rung_passed` (which ASHA also sets); the rest is the
controller's bookkeeping."""

import math
import time
from dataclasses import dataclass, field

from celeb_smile.config import TrainConfig, parse_value
from celeb_smile.constants import TrialState


@dataclass
class Trial:
    index: int  # 1-based, in the order the search suggested it
    params: dict[str, str]  # every parameter the trial was submitted with, normalised
    sweep_id: str = ""
    state: TrialState = TrialState.PENDING
    reason: str = ""  # why it FAILED / STOPPED / KILLED, or what it waits for (Pending pod)
    run_id: str | None = None
    sweep_run_id: str | None = None  # the parent run that submitted it
    history: list[float] = field(default_factory=list)  # objective per epoch (step order)
    # Per epoch, a metric other than the objective that the stopping rule judges.
    watched: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of every metric
    warm_start: bool = False  # an earlier sweep's run, told to the search, never run here
    rung_passed: int = 0  # the highest ASHA rung (epoch) it was let through (RUNG_TAG)
    rung_recorded: int = 0  # ... as its run records it
    handle: object = None  # the backend's handle while in flight
    started: float | None = None  # time.monotonic() at submission
    ended: float | None = None
    pending_since: float | None = None  # time.monotonic() since it waits for its pod (not queued)
    attempt: int = 1  # Jobs or processes launched for its run: one more after each disruption
    disruptions: list[str] = field(default_factory=list)  # why its pod or process was lost

    @property
    def name(self) -> str:
        """Unique across sweeps: the run name of the trial's MLflow run."""
        return f"{self.sweep_id}/trial-{self.index:02d}" if self.sweep_id else \
            f"trial-{self.index:02d}"

    def series(self, metric: str | None = None) -> list[float]:
        """Per-epoch values of `metric`, or of the objective when None."""
        return self.history if metric is None else self.watched.get(metric, [])

    def set_series(self, metric: str | None, values: list[float]) -> None:
        if metric is None:
            self.history = values
        else:
            self.watched[metric] = values

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    @property
    def past_last_epoch(self) -> bool:
        """Every epoch logged: it only evaluates on the test split and saves its model now."""
        try:
            epochs = parse_value("epochs", self.params["epochs"])
        except (KeyError, ValueError):
            epochs = TrainConfig.epochs
        return self.epochs_done >= epochs

    def objective(self, metric: str) -> float | None:
        """The trial's final (latest) value of `metric`, None if absent or NaN."""
        value = self.metrics.get(metric)
        return None if value is None or math.isnan(value) else value

    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.monotonic()) - self.started
