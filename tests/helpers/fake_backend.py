"""An in-process backend for fast scheduler tests: each trial "trains" one epoch per poll,
logging to its real MLflow run (a sqlite store), so the scheduler meets a real tracking store
and only the cluster is simulated. Parameters script the behaviour:
  learning_rate -> the val_accuracy it reaches (val_loss: 1 - val_accuracy);
  convolutions=9 -> the trial fails (exit 1);
  convolutions=8 -> its "pod" is never scheduled (stays SCHEDULED, Unschedulable);
  convolutions=7 -> its Job waits in a queue (suspended) for QUEUED_POLLS polls first.
A handle's `evicted` makes its next observation a disruption (its Job failed: relaunch); a
relaunched trial goes on from the epochs its run has, as train.py does from its checkpoint.
With `gang=N`, trials stay SCHEDULED until N have been launched, and `polls` counts from then:
the controller launches each trial as soon as its run exists, so without it a test that acts
"at the second poll" could meet a first wave still being launched."""

from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.time import get_current_time_millis as now_ms

from celeb_smile.constants import TRIAL_USER_TAG, TrialState
from celeb_smile.sweep.backends import LaunchError, Observation

ADOPT_TAG = "fake.handle"
FAILING_CONVOLUTIONS = "9"
UNSCHEDULABLE_CONVOLUTIONS = "8"
UNSCHEDULABLE = "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
QUEUED_CONVOLUTIONS = "7"
QUEUED_POLLS = 3
EVICTED = "Evicted: The node was low on resource: memory."


@dataclass
class FakeHandle:
    run_id: str
    params: dict
    polls: int = 0
    deleted: bool = False
    cancelled: bool = False
    exiting: int = -1  # polls its "pod" still runs after its run ended (-1: not ended yet)
    evicted: bool = False
    queued: int = 0  # polls it still waits in its queue

    def describe(self) -> str:
        return f"fake {self.run_id[:8]}"

    @property
    def epochs(self) -> int:
        return int(self.params.get("epochs", 2))


@dataclass
class FakeBackend:
    name: str = "fake"
    poll_seconds: float = 0.0
    remote: bool = False
    blips: int = 0  # launches that fail with a transient error first
    reject: bool = False  # every launch fails for good
    on_poll: object = None  # called with the backend before each observation
    on_logs: object = None  # called with the backend and the handle before a log is read
    exit_polls: int = 0  # polls a trial still shows RUNNING after ending its run
    gang: int = 0  # trials train once this many were launched; polls count from then
    launched: list = field(default_factory=list)
    polls: int = 0
    max_in_flight: int = 0
    calls: int = 0
    trial_credentials: dict = field(default_factory=dict)  # the sweep's Secrets: user -> password
    trial_user: str | None = None  # whom its trials log as (a remote backend, with auth)

    def prepare(self, console) -> None:
        self.client = MlflowClient()

    def has_trial_credentials(self, username: str) -> bool:
        return username in self.trial_credentials

    def keep_trial_credentials(self, username: str, password: str) -> None:
        self.trial_credentials[username] = password

    def use_trial_credentials(self, username: str) -> None:
        self.trial_user = username

    def drop_trial_credentials(self, username: str) -> None:
        self.trial_credentials.pop(username, None)

    def run_tags(self, trial) -> dict:
        return {TRIAL_USER_TAG: self.trial_user} if self.trial_user else {}

    def launch(self, trial, experiment_id, tracking_uri) -> FakeHandle:
        if self.reject:
            raise LaunchError("Job rejected (422 Unprocessable Entity): bad spec")
        if self.blips:
            self.blips -= 1
            raise ConnectionError("API server blip")
        resumed_at = len(self.client.get_metric_history(trial.run_id, "val_accuracy"))
        queued = QUEUED_POLLS if trial.params.get("convolutions") == QUEUED_CONVOLUTIONS else 0
        handle = FakeHandle(trial.run_id, dict(trial.params), polls=resumed_at, queued=queued)
        self.launched.append(handle)
        return handle

    def launched_tags(self, handle) -> dict:
        return {ADOPT_TAG: "yes"}

    def adopt(self, trial, run):
        return FakeHandle(trial.run_id, dict(run.data.params)) \
            if run.data.tags.get(ADOPT_TAG) else None

    def observe(self, trials) -> dict:
        self.calls += 1
        self.max_in_flight = max(self.max_in_flight, len(trials))
        if len(self.launched) < self.gang:
            return {t.index: Observation(TrialState.SCHEDULED) for t in trials}
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self)
        return {t.index: self._step(t.handle) for t in trials}

    def _step(self, handle: FakeHandle) -> Observation:
        if handle.deleted:
            return Observation(TrialState.FAILED, "Job deleted")
        if handle.evicted:
            return Observation(TrialState.SCHEDULED, disrupted=EVICTED, relaunch=True)
        if handle.queued:
            handle.queued -= 1
            return Observation(TrialState.SCHEDULED, "suspended: waiting in its queue",
                               queued=True)
        if handle.params.get("convolutions") == UNSCHEDULABLE_CONVOLUTIONS:
            return Observation(TrialState.SCHEDULED, UNSCHEDULABLE)
        if handle.params.get("convolutions") == FAILING_CONVOLUTIONS:
            self.client.set_terminated(handle.run_id, "FAILED")
            return Observation(TrialState.FAILED, "exit code 1", exit_code=1)
        if handle.polls < handle.epochs:
            value = accuracy(handle.params, handle.polls + 1)
            self.client.log_batch(handle.run_id, metrics=[
                Metric("val_accuracy", value, now_ms(), handle.polls),
                Metric("val_loss", round(1 - value, 4), now_ms(), handle.polls)])
            handle.polls += 1
            return Observation(TrialState.RUNNING)
        if handle.exiting < 0:
            self.client.set_terminated(handle.run_id, "FINISHED")
            handle.exiting = self.exit_polls
        if handle.exiting > 0:
            handle.exiting -= 1
            return Observation(TrialState.RUNNING)
        return Observation(TrialState.FINISHED, exit_code=0)

    def cancel(self, handle) -> None:
        handle.cancelled = True

    def cancel_all(self, handles) -> None:
        for handle in handles:
            self.cancel(handle)

    def release(self, handle) -> None:
        pass

    def logs(self, handle) -> str:
        if self.on_logs is not None:
            self.on_logs(self, handle)
        return f"trained {handle.polls} epochs\n"


def accuracy(params: dict, epoch: int) -> float:
    """Rises with the epoch towards a ceiling set by the learning rate (higher is better)."""
    ceiling = min(0.99, 0.5 + float(params.get("learning_rate", 0.001)) * 10)
    return round(ceiling * epoch / (epoch + 1), 4)
