"""Simulated trials, for measuring the controller at scale (`benchmarks/sweep_scale.py`) and for
tests: no process, no cluster, no TensorFlow, but real runs on a real tracking server.

Each launched trial trains by the clock, not by the polls: epoch k (1-based) of E is logged at
start + k * duration / E (one `log_batch` of val_accuracy, val_loss, loss and accuracy, step =
k - 1 as Keras counts, timestamped with that moment), and the last epoch's log is followed by
`set_terminated(FINISHED)`. One heap of due epochs is served by a few worker threads, each
epoch scheduled once the one before it was logged, so a trial's epochs stay in order. Values
are a deterministic function of the parameters: learning_rate sets the ceiling (best at 1e-3),
the other parameters (seed among them) a small offset.

`observe` reports RUNNING until the worker ended the run, then FINISHED (and `on_end` is called,
as a local process's exit calls it); `cancel` stops the trial's logging (a log under way
completes first) and it counts as ended (KILLED). Adoption:
the run's tag records when the trial started and its length, so a new driver's backend resumes
its clock; epochs due meanwhile are logged at once with their scheduled timestamps (the store
keeps an identical point once, so an epoch the old driver had logged is not doubled). The trial
writes that tag itself, with its first epoch, as a pod writes what it logs: like the Kubernetes
backend's, a launch costs the controller no request of its own (a driver restarted before a
trial's first epoch finds no tag, and that trial fails as "not found again").
"""

import heapq
import itertools
import math
import threading
import time
import zlib
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from celeb_smile.constants import TrialState
from celeb_smile.sweep.backends import Observation

ADOPT_TAG = "celeb_smile.simulated"  # '<start, epoch seconds> <duration s> <epochs>'
RETRY_S = 1.0  # a failed log is tried again this much later...
MAX_ERRORS = 30  # ...this many times in a row before the trial fails


@dataclass
class SimulatedTrial:
    run_id: str
    params: dict
    started_at: float  # time.time() at launch: the epochs' timestamps derive from it
    duration: float
    epochs: int
    logged: int = 0  # epochs logged so far
    errors: int = 0  # failed logs in a row
    state: TrialState = TrialState.RUNNING
    reason: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def describe(self) -> str:
        return f"simulated {self.run_id[:8]}"

    def due(self, epoch: int) -> float:
        """time.time() at which `epoch` (1-based) ends."""
        return self.started_at + epoch * self.duration / self.epochs


class SimulatedBackend:
    name = "simulated"
    remote = False
    poll_seconds = 0.5  # as local trials

    def __init__(self, duration: float = 20.0, epochs: int = 10, threads: int = 4):
        self.duration = duration
        self.epochs = epochs  # unless the trial's own `epochs` parameter says otherwise
        self.threads = threads
        self.calls = 0  # observations, like the local backend's process checks
        self.requests = 0  # tracking requests the simulated trials sent...
        self.failed_requests = 0  # ...of which failed (the epoch is tried again RETRY_S later)
        self.lateness: list[float] = []  # seconds each epoch was logged after it was due
        self.cpu_seconds = 0.0  # the worker threads' CPU time, once they stopped (close)
        self.thread_ids: list[int] = []  # the worker threads' native ids (for a CPU sampler)
        self.launched: list[SimulatedTrial] = []  # every trial launched or adopted
        self.in_flight = self.max_in_flight = 0
        self._heap: list = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._closed = False
        self._uri = None
        self.on_end = None  # the controller's: called as a trial ends by itself

    # -- the backend interface ----------------------------------------------------------
    def prepare(self, console) -> None:
        pass

    def run_tags(self, trial) -> dict[str, str]:
        return {}

    def launch(self, trial, experiment_id: str, tracking_uri: str) -> SimulatedTrial:
        epochs = int(trial.params.get("epochs", self.epochs))
        handle = SimulatedTrial(trial.run_id, dict(trial.params), time.time(), self.duration,
                                epochs)
        self._start(handle, tracking_uri)
        return handle

    def launched_tags(self, handle: SimulatedTrial) -> dict[str, str]:
        return {}  # the trial writes its ADOPT_TAG itself (_next_epoch)

    @staticmethod
    def adopt_tag(handle: SimulatedTrial) -> RunTag:
        return RunTag(ADOPT_TAG, f"{handle.started_at:.3f} {handle.duration} {handle.epochs}")

    def adopt(self, trial, run) -> SimulatedTrial | None:
        try:
            started_at, duration, epochs = run.data.tags[ADOPT_TAG].split()
            handle = SimulatedTrial(trial.run_id, dict(trial.params), float(started_at),
                                    float(duration), int(epochs))
        except (KeyError, ValueError):
            return None
        self._start(handle, self._uri or MlflowClient().tracking_uri)
        return handle

    def observe(self, trials) -> dict[int, Observation]:
        self.calls += 1
        return {t.index: Observation(t.handle.state, t.handle.reason,
                                     0 if t.handle.state == TrialState.FINISHED else None)
                for t in trials}

    def cancel(self, handle: SimulatedTrial) -> None:
        with handle.lock:  # waits for a log under way; nothing is logged after this
            if not handle.state.ended:
                self._ended(handle, TrialState.KILLED)

    def cancel_all(self, handles) -> None:
        for handle in handles:
            self.cancel(handle)

    def release(self, handle: SimulatedTrial) -> None:
        pass

    def logs(self, handle: SimulatedTrial) -> str:
        return (f"simulated trial: {handle.logged}/{handle.epochs} epochs of "
                f"{handle.duration / handle.epochs:.2f}s logged; {handle.state}"
                + (f": {handle.reason}" if handle.reason else "") + "\n")

    def close(self) -> None:
        """Stop the worker threads (pending epochs are dropped) and add up their CPU time."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        for worker in self._workers:
            worker.join(timeout=30)

    # -- the clock ----------------------------------------------------------------------
    def _start(self, handle: SimulatedTrial, tracking_uri: str) -> None:
        with self._wake:
            if not self._workers:
                self._uri = tracking_uri
                self._workers = [threading.Thread(target=self._work, daemon=True,
                                                  name=f"simulated-{i}")
                                 for i in range(self.threads)]
                for worker in self._workers:
                    worker.start()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.launched.append(handle)
        self._schedule(handle, handle.due(1))

    def _schedule(self, handle: SimulatedTrial, at: float) -> None:
        with self._wake:
            heapq.heappush(self._heap, (at, next(self._order), handle))
            self._wake.notify()

    def _count_request(self, failed: bool = False) -> None:
        with self._wake:
            self.failed_requests += failed
            self.requests += not failed

    def _ended(self, handle: SimulatedTrial, state: TrialState, reason: str = "") -> None:
        """(Holding the handle's lock.)"""
        handle.state, handle.reason = state, reason
        with self._wake:
            self.in_flight -= 1

    def _work(self) -> None:
        with self._wake:
            self.thread_ids.append(threading.get_native_id())
        client = MlflowClient(self._uri)
        try:
            while True:
                with self._wake:
                    while not self._closed and (not self._heap or
                                                self._heap[0][0] > time.time()):
                        self._wake.wait(self._heap[0][0] - time.time() if self._heap else None)
                    if self._closed:
                        return
                    _, _, handle = heapq.heappop(self._heap)
                self._next_epoch(client, handle)
        finally:
            with self._wake:
                self.cpu_seconds += time.thread_time()

    def _next_epoch(self, client: MlflowClient, handle: SimulatedTrial) -> None:
        with handle.lock:
            if handle.state.ended:  # cancelled
                return
            ended = self._log_next_epoch(client, handle)
        if ended and self.on_end is not None:  # (not while holding the trial's lock)
            self.on_end()

    def _log_next_epoch(self, client: MlflowClient, handle: SimulatedTrial) -> bool:
        """Log the next epoch (and the end, after the last one); True when the trial ended.
        (Holding the handle's lock.)"""
        epoch = handle.logged + 1
        due = handle.due(epoch)
        self.lateness.append(time.time() - due)
        try:
            self._count_request()
            client.log_batch(handle.run_id, metrics=[
                Metric(name, value, round(due * 1000), epoch - 1)
                for name, value in epoch_metrics(handle.params, epoch, handle.epochs).items()],
                tags=[self.adopt_tag(handle)] if epoch == 1 else [])
            if epoch == handle.epochs:
                self._count_request()
                client.set_terminated(handle.run_id, "FINISHED", end_time=round(due * 1000))
        except Exception as error:  # noqa: BLE001 - a real trial retries too
            self._count_request(failed=True)
            handle.errors += 1
            if handle.errors < MAX_ERRORS:
                self._schedule(handle, time.time() + RETRY_S)
                return False
            self._ended(handle, TrialState.FAILED, f"logging failed: {error}")
            return True
        handle.errors, handle.logged = 0, epoch
        if epoch < handle.epochs:
            self._schedule(handle, handle.due(epoch + 1))
            return False
        self._ended(handle, TrialState.FINISHED)
        return True


def epoch_metrics(params: dict, epoch: int, epochs: int) -> dict[str, float]:
    """A trial's metrics at the end of `epoch` (1-based of `epochs`): val_accuracy rises from
    0.5 towards a ceiling that is highest (0.99) at learning_rate 1e-3 and falls off with
    log10 distance from it; the other parameters shift it by at most +-0.01."""
    try:
        rate = float(params.get("learning_rate", 0.001))
    except ValueError:
        rate = 0.001
    distance = math.log10(max(rate, 1e-12)) + 3
    ceiling = 0.5 + 0.49 * math.exp(-distance * distance / 2)
    others = ",".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "learning_rate")
    offset = (zlib.crc32(others.encode()) % 201 - 100) / 10_000
    progress = 1 - math.exp(-3 * epoch / epochs)
    val_accuracy = min(1.0, max(0.0, 0.5 + (ceiling - 0.5) * progress + offset))
    val_loss = 0.7 * (1 - val_accuracy) / 0.5 + 0.05
    return {"val_accuracy": round(val_accuracy, 4), "val_loss": round(val_loss, 4),
            "accuracy": round(min(1.0, val_accuracy + 0.01), 4),
            "loss": round(val_loss * 0.9, 4)}
