"""What a sweep's report and promotion read: the sweep's definition, its trials as the
controller last saw them, where it is recorded, and how it ended."""

from dataclasses import dataclass, field

from celeb_smile.constants import REGISTERED_MODEL
from celeb_smile.sweep.spec import SweepSpec
from celeb_smile.sweep.trial import Trial


@dataclass
class SweepResult:
    spec: SweepSpec
    trials: list[Trial] = field(default_factory=list)  # this sweep's own, in index order
    experiment_id: str = ""
    parent_run_id: str = ""
    code_version: str = ""
    status: str | None = None  # the parent run's final MLflow status; None while it runs
    promote: bool = False  # --promote: the best model may move the champion alias
    registered_model: str = REGISTERED_MODEL
    warm_start_runs: int = 0  # earlier runs that seeded an adaptive search
    ended_because: str = ""  # why it ended before running every trial (goal, budget, cancel)
