"""Run a sweep: a parent MLflow run, one nested child run per trial, at most `max_parallel`
in flight, resumable (finished combinations are skipped) and cancellable (Ctrl-C / SIGTERM)."""

import json
import signal
import time
from dataclasses import dataclass, field

import mlflow
from mlflow import MlflowClient

from celeb_smile.cli import ERROR_TAG
from celeb_smile.sweep import report
from celeb_smile.sweep.backends import TERMINAL
from celeb_smile.sweep.progress import Progress
from celeb_smile.sweep.spec import SweepSpec, describe, resolved

SWEEP_ID_TAG = "celeb_smile.sweep_id"
REASON_TAG = "celeb_smile.failure_reason"
EXIT_OK, EXIT_TRIAL_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class Trial:
    index: int
    params: dict[str, str]  # as given by the sweep
    resolved: dict[str, str]  # every MLproject parameter, as train.py logs them
    state: str = "PENDING"  # PENDING, SCHEDULED, RUNNING, FINISHED, FAILED, KILLED, SKIPPED
    reason: str = ""
    run_id: str | None = None
    handle: object = None
    started: float | None = None
    ended: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    epochs_done: int = 0

    @property
    def name(self) -> str:
        return f"trial-{self.index:02d}"

    @property
    def in_flight(self) -> bool:
        return self.state in ("SCHEDULED", "RUNNING")

    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.monotonic()) - self.started


class Sweep:
    def __init__(self, spec: SweepSpec, backend, console, rerun=False, poll_seconds=3.0):
        self.spec = spec
        self.backend = backend
        self.console = console
        self.rerun = rerun
        self.poll_seconds = poll_seconds
        self.client = MlflowClient()
        self.trials = [Trial(i + 1, params, resolved(params))
                       for i, params in enumerate(spec.trials())]
        self.stopping = False
        self.progress = Progress(console, self.trials, spec.varying(), spec.objective.metric)

    # -- the whole sweep ------------------------------------------------------------------
    def run(self) -> int:
        experiment_id = _experiment_id(self.spec.experiment)
        if not self.rerun:
            self._skip_finished(experiment_id)
        todo = [t for t in self.trials if t.state == "PENDING"]
        self.console.print(f"sweep {self.spec.sweep_id()}: {len(self.trials)} combinations, "
                           f"{len(todo)} to run, {len(self.trials) - len(todo)} finished earlier; "
                           f"backend {self.backend.name}, at most {self.spec.max_parallel} at once")
        if todo:  # before the parent run: a sweep that cannot start leaves no trace
            self.backend.prepare(self.console)
        with self._parent_run(experiment_id) as parent:
            with _signals_set(self._request_stop):
                self._run_trials(experiment_id)
            status = self._final_status()
            report.finish(self, parent.info.run_id)
            mlflow.end_run(status=status)
        return {"FINISHED": EXIT_OK, "FAILED": EXIT_TRIAL_FAILED}.get(status, EXIT_INTERRUPTED)

    def _parent_run(self, experiment_id: str):
        """Resume the parent run of this exact sweep if there is one, else start it."""
        sweep_id = self.spec.sweep_id()
        earlier = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}'",
            max_results=1, order_by=["attributes.start_time DESC"])
        if earlier:
            self.client.update_run(earlier[0].info.run_id, status="RUNNING")
            return mlflow.start_run(run_id=earlier[0].info.run_id)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=f"sweep-{sweep_id}",
                               tags={SWEEP_ID_TAG: sweep_id})
        mlflow.log_params({"backend": self.backend.name, "combinations": len(self.trials),
                           "max_parallel": self.spec.max_parallel,
                           "objective": f"{self.spec.objective.direction} "
                                        f"{self.spec.objective.metric}"})
        mlflow.log_text(json.dumps(describe(self.spec), indent=2), "sweep.json")
        return run

    def _skip_finished(self, experiment_id: str) -> None:
        """Combinations with a FINISHED run in the experiment (same parameters) are done."""
        finished = self.client.search_runs(
            [experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=5000)
        for trial in self.trials:
            for run in finished:
                if _same_params(trial.resolved, run.data.params):
                    trial.state, trial.run_id, trial.reason = "SKIPPED", run.info.run_id, \
                        "finished earlier"
                    trial.metrics = dict(run.data.metrics)
                    break

    # -- submission and monitoring --------------------------------------------------------
    def _run_trials(self, experiment_id: str) -> None:
        with self.progress:
            while True:
                self._poll_in_flight()
                if self.stopping:
                    break
                self._submit_while_room(experiment_id)
                if not any(t.in_flight for t in self.trials):
                    break
                self.progress.refresh()
                time.sleep(self.poll_seconds)
            if self.stopping:
                self._cancel_in_flight()
            self.progress.refresh()

    def _submit_while_room(self, experiment_id: str) -> None:
        while not self.stopping and not self._too_many_failures():
            pending = [t for t in self.trials if t.state == "PENDING"]
            if not pending or sum(t.in_flight for t in self.trials) >= self.spec.max_parallel:
                return
            self._submit(pending[0], experiment_id)

    def _submit(self, trial: Trial, experiment_id: str) -> None:
        trial.started = time.monotonic()
        try:
            trial.handle = self.backend.submit(trial.params, experiment_id, trial.name)
        except Exception as error:  # a submission that fails is a failed trial, not a crash
            self._end(trial, "FAILED", f"submission failed: {error}")
            return
        trial.run_id = trial.handle.run_id
        trial.state = "SCHEDULED"
        self.progress.event(trial, f"submitted ({trial.handle.describe()})")

    def _poll_in_flight(self) -> None:
        for trial in [t for t in self.trials if t.in_flight]:
            try:
                observed = trial.handle.poll()
            except Exception as error:  # the cluster or server hiccuped: try again next round
                self.progress.event(trial, f"could not poll: {error}")
                continue
            self._read_metrics(trial)
            if observed.state in TERMINAL:
                self._end(trial, observed.state, observed.reason)
            elif observed.state != trial.state:
                trial.state = observed.state
                self.progress.event(trial, observed.state)

    def _read_metrics(self, trial: Trial) -> None:
        try:
            run = self.client.get_run(trial.run_id)
            trial.metrics = dict(run.data.metrics)
            if self.spec.objective.metric in trial.metrics:
                trial.epochs_done = len(self.client.get_metric_history(
                    trial.run_id, self.spec.objective.metric))
        except Exception:
            pass  # progress only: the next poll tries again

    def _end(self, trial: Trial, state: str, reason: str = "") -> None:
        trial.ended = time.monotonic()
        trial.state, trial.reason = state, reason
        if trial.run_id:
            run = self.client.get_run(trial.run_id)
            trial.metrics = dict(run.data.metrics)
            if state == "FINISHED" and run.info.status == "FAILED":  # exited 0, run failed
                trial.state = "FAILED"
            if trial.state != "FINISHED":
                trial.reason = self._record_failure(trial, run, reason)
        self.progress.event(trial, trial.state + (f": {trial.reason}" if trial.reason else ""))

    def _record_failure(self, trial: Trial, run, reason: str) -> str:
        """Put the reason and the log tail on the trial's run and end it FAILED or KILLED."""
        message = run.data.tags.get(ERROR_TAG)
        reason = reason + (f" ({message})" if message and message not in reason else "")
        self.client.set_tag(trial.run_id, REASON_TAG, reason[:5000])
        try:
            tail = trial.handle.log_tail()
            if tail:
                self.client.log_text(trial.run_id, tail, "logs/tail.txt")
        except Exception as error:
            self.progress.event(trial, f"no log tail: {error}")
        trial.handle.release()
        if run.info.status not in TERMINAL:
            self.client.set_terminated(trial.run_id, "KILLED" if trial.state == "KILLED"
                                       else "FAILED")
        return reason

    def _cancel_in_flight(self) -> None:
        for trial in [t for t in self.trials if t.in_flight]:
            self.progress.event(trial, "cancelling")
            trial.handle.cancel()
            self._end(trial, "KILLED", "sweep interrupted")

    # -- bookkeeping ------------------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:
        if not self.stopping:
            self.console.print(f"[yellow]{signal.Signals(signum).name}: no more submissions; "
                               "cancelling the trials in flight...[/]")
        self.stopping = True

    def failures(self) -> int:
        return sum(t.state == "FAILED" for t in self.trials)

    def _too_many_failures(self) -> bool:
        limit = self.spec.max_failures
        return limit is not None and self.failures() > limit

    def _final_status(self) -> str:
        if self.stopping:
            return "KILLED"
        return "FAILED" if self.failures() else "FINISHED"


def _experiment_id(name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else mlflow.create_experiment(name)


def _same_params(expected: dict[str, str], logged: dict[str, str]) -> bool:
    try:
        return resolved({k: logged[k] for k in expected}) == expected
    except (KeyError, ValueError):
        return False


class _signals_set:
    """Route SIGINT and SIGTERM to `handler` inside the block."""

    def __init__(self, handler):
        self.handler = handler

    def __enter__(self):
        self.saved = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc):
        for sig, previous in self.saved.items():
            signal.signal(sig, previous)
