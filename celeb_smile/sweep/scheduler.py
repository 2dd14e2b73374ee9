"""Run a sweep: a parent MLflow run, one nested run per trial, at most `max_parallel` in flight.

MLflow is the single record. A restarted driver (same command) finds its sweep there: trials
still running are adopted and watched, those that ended meanwhile are reconciled, the rest
continue; a lease on the parent run keeps a second driver out. The scheduler does not know
which search strategy or stopping rule runs: it asks the search for parameters, tells it
outcomes (through the trials), and carries out the rule's decisions.
"""

import json
import signal
import sys
import threading
import time
from concurrent.futures import Future

import mlflow

from celeb_smile.config import config_from_params
from celeb_smile.constants import (CODE_VERSION_TAG, ERROR_TAG, EXIT_BAD_INPUT,
                                   EXIT_INTERRUPTED, EXIT_OK, EXIT_TRIAL_FAILED,
                                   OUTAGE_PATIENCE_S, PARAMS_TAG, REASON_TAG, STOPPED_TAG, SWEEP_ID_TAG, SWEEP_RUN_TAG,
                                   TRIAL_INDEX_TAG, TrialState)
from celeb_smile.retry import Unavailable, retrying
from celeb_smile.sweep import report
from celeb_smile.sweep.access import AccessError, grant_trainer
from celeb_smile.sweep.backends import LaunchError, code_version
from celeb_smile.sweep.progress import Progress
from celeb_smile.sweep.recorder import Recorder
from celeb_smile.sweep.search import make_search
from celeb_smile.sweep.spec import describe
from celeb_smile.sweep.stopping import make_stopping_rule
from celeb_smile.sweep.tracking import Tracking
from celeb_smile.sweep.trial import Trial

S = TrialState
LEASE_RENEW_SECONDS = 30
LAUNCH_PATIENCE_S = 120  # a submission is retried this long before its trial fails
NOTE_EVERY_S = 30  # the parent's description is rewritten at most this often while trials run
FINISHING_POLL_S = 0.5  # the poll interval while a trial is past its last epoch (ends soon)


class HardStop(BaseException):
    """A second Ctrl-C: leave now (Jobs are still deleted)."""


class Sweep:
    def __init__(self, spec, backend, console, *, tracking_uri: str, rerun=False,
                 poll_seconds=None, promote=False, warm_start=False,
                 pending_timeout=900.0, outage_seconds=OUTAGE_PATIENCE_S, stats_path=None):
        self.spec = spec
        self.backend = backend
        self.console = console
        self.tracking_uri = tracking_uri
        self.rerun = rerun
        self.poll_seconds = backend.poll_seconds if poll_seconds is None else poll_seconds
        self.promote = promote
        self.warm_start = warm_start
        self.pending_timeout = pending_timeout
        self.stats_path = stats_path  # JSON lines of per-poll API calls (benchmarks)
        self.interrupted = threading.Event()  # first Ctrl-C: no more submissions, cancel
        self.hard_stop = threading.Event()  # second Ctrl-C
        self.tracking = Tracking(self.interrupted, outage_seconds, on_retry=self._retrying)
        self.client = self.tracking.client
        self.sweep_id = spec.sweep_id()
        self.search = make_search(spec)
        self.rule = make_stopping_rule(spec)
        self.code_version = code_version()
        self.trials: list[Trial] = []
        self.warm: list[Trial] = []  # earlier sweeps' runs that seed an adaptive search
        self.status = None  # the parent's final status
        self.ended_because = ""  # goal reached, budget spent, too many failures...
        self.experiment_id = self.parent_id = None
        self.seconds_before = 0.0  # wall time of earlier drivers of this sweep
        self.started = time.monotonic()
        self._finished_elsewhere: dict | None = None
        # Trials that ended and whose end is not on their run yet: index -> (tags to add, the
        # run's status when the trial ended, whether its series are read to the last epoch).
        # The recorder writes them while the loop goes on.
        self._unrecorded: dict[int, tuple[dict, str, bool]] = {}
        self.recorder = Recorder()
        self._snapshots: dict = {}  # run id -> the run as this poll read it
        self._note_written = 0.0  # time.monotonic() of the last rewrite of the parent's note
        self.lost = ""  # why the sweep gave up on the tracking server
        self._unreachable: dict[str, float] = {}  # what is unreachable, since when
        self._lease_renewed = 0.0
        self.progress = Progress(console, self.trials, spec.varying(), spec.objective.metric,
                                 spec.objective.direction)

    # == the whole sweep =========================================================================
    def run(self) -> int:
        self._stat(started=True)
        self.experiment_id = self.tracking.experiment_id(self.spec.experiment)
        parent, runs = self.tracking.sweep_runs(self.experiment_id, self.sweep_id)
        if parent is not None and (holder := self.tracking.lease_holder(parent)):
            return self._refuse(holder)
        self.backend.prepare(self.console)  # before the parent run: a failure leaves no trace
        try:
            self._grant_trainer()
        except AccessError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if holder := self._open_parent(parent):
            return self._refuse(holder)
        try:
            with _signals_routed(self._on_signal):
                self._load(runs)
                self._load_warm_start()
                self._announce()
                self._run_trials()
        except HardStop:
            return self._hard_exit()
        self.status = self._final_status()
        try:
            self._close_parent()
        except Unavailable as error:
            print(f"error: the sweep's record is incomplete: {error}", file=sys.stderr)
            return EXIT_TRIAL_FAILED
        return {"FINISHED": EXIT_OK, "FAILED": EXIT_TRIAL_FAILED}.get(self.status,
                                                                     EXIT_INTERRUPTED)

    def _open_parent(self, parent) -> str | None:
        """Create or resume the parent run and take its lease; the winner's name if another
        driver took it first."""
        report.prepare_experiment(self.client, self.experiment_id)
        if parent is None:
            run = self.tracking.patient("create the sweep run", lambda: self.client.create_run(
                self.experiment_id, run_name=f"sweep-{self.sweep_id}",
                tags={SWEEP_ID_TAG: self.sweep_id, CODE_VERSION_TAG: self.code_version}))
            self.parent_id = run.info.run_id
            holder = self.tracking.take_lease(  # the settings logged while the lease settles
                self.parent_id, meanwhile=lambda: self.tracking.patient(
                    "log the sweep's settings", self._log_settings))
        else:
            self.parent_id = parent.info.run_id
            self.seconds_before = parent.data.metrics.get("sweep_seconds", 0.0)
            self.tracking.patient("resume the sweep run", lambda: self.client.update_run(
                self.parent_id, status="RUNNING"))
            holder = self.tracking.take_lease(self.parent_id)
        if holder:  # another driver wrote its lease at the same moment, and won
            return holder
        self._lease_renewed = time.monotonic()
        mlflow.start_run(run_id=self.parent_id)  # the report logs to the active run
        return None

    def _refuse(self, holder: str) -> int:
        print(f"error: sweep {self.sweep_id} is being run by another driver ({holder}); "
              "wait for it to end, or for its lease to expire after it died", file=sys.stderr)
        return EXIT_BAD_INPUT

    def _log_settings(self) -> None:
        spec = self.spec
        mlflow.MlflowClient().log_batch(self.parent_id, params=[
            mlflow.entities.Param(k, str(v)) for k, v in {
                "backend": self.backend.name, "search": spec.strategy(),
                "max_parallel": spec.max_parallel,
                "objective": f"{spec.objective.direction} {spec.objective.metric}"}.items()])
        self.client.log_text(self.parent_id, json.dumps(describe(spec), indent=2, default=str),
                             "sweep.json")

    def _grant_trainer(self) -> None:
        """On a server with authentication, the training pods' identity may log to runs of
        this experiment (and nothing else)."""
        if self.backend.remote:
            grant_trainer(self.tracking_uri, self.experiment_id)

    def _close_parent(self) -> None:
        try:
            report.finish(self, self.parent_id)
        except Unavailable:
            raise
        except Exception as error:  # noqa: BLE001 - a report bug must not lose the sweep's end
            self.console.print(f"report failed: {type(error).__name__}: {error}", style="red",
                               highlight=False, markup=False)
        self._record_wall_time()
        self.tracking.release_lease(self.parent_id)
        self.tracking.end_run(self.parent_id, self.status)
        mlflow.end_run(status=self.status)

    def _announce(self) -> None:
        planned = self.search.planned()
        counts = {state: sum(t.state == state for t in self.trials) for state in S}
        self.console.print(
            f"sweep {self.sweep_id}: {self.spec.strategy()} search, "
            f"{planned if planned is not None else '?'} trials planned; "
            f"{counts[S.FINISHED] + counts[S.STOPPED]} done before, "
            f"{counts[S.SKIPPED]} finished earlier, {counts[S.SCHEDULED]} adopted in flight; "
            f"backend {self.backend.name}, at most {self.spec.max_parallel} at once",
            highlight=False)

    # == picking up where an earlier driver left off =============================================
    def _load(self, runs) -> None:
        """This sweep's trials as MLflow recorded them: the latest attempt of each index."""
        latest: dict[int, object] = {}
        for run in runs:
            index = run.data.tags.get(TRIAL_INDEX_TAG, "")
            if index.isdigit() and (int(index) not in latest or
                                    run.info.start_time > latest[int(index)].info.start_time):
                latest[int(index)] = run
        for index in sorted(latest):
            self.trials.append(self._trial_from_run(index, latest[index]))
        ended_meanwhile = [t for t in self.trials if t.state.in_flight and t.handle is None]
        for trial in ended_meanwhile:
            self._end(trial, S.FAILED, "its Job/process could not be found again")

    def _trial_from_run(self, index: int, run) -> Trial:
        trial = Trial(index, self._spec_params(run.data.params), sweep_id=self.sweep_id,
                      run_id=run.info.run_id, metrics=dict(run.data.metrics),
                      sweep_run_id=run.data.tags.get(SWEEP_RUN_TAG))
        status, tags = run.info.status, run.data.tags
        same_code = tags.get(CODE_VERSION_TAG) == self.code_version
        if status == "FINISHED" and same_code:
            trial.state = S.FINISHED
        elif status == "KILLED" and STOPPED_TAG in tags:
            trial.state, trial.reason = S.STOPPED, tags[STOPPED_TAG]
        elif status in ("RUNNING", "SCHEDULED"):
            trial.state, trial.handle = S.SCHEDULED, self.backend.adopt(trial, run)
            trial.started = time.monotonic()
        else:  # failed, interrupted, or made by other code: run it again
            trial.state, trial.run_id, trial.metrics = S.PENDING, None, {}
        if trial.state in (S.FINISHED, S.STOPPED):
            for watch in self._series_kept():
                self._read_series([trial], watch)
        return trial

    def _spec_params(self, logged: dict[str, str]) -> dict[str, str]:
        """A run's parameters restricted to those the sweep sets (train.py logs them all)."""
        keys = set(self.spec.params) | set(self.spec.varying())
        return {k: v for k, v in logged.items() if k in keys}

    def _load_warm_start(self) -> None:
        if not self.warm_start:
            return
        runs = self.tracking.runs(self.experiment_id, self._same_code_finished())
        mine = {t.run_id for t in self.trials}
        for run in runs:
            if run.info.run_id in mine or "mlflow.parentRunId" not in run.data.tags:
                continue  # this sweep's own, or a sweep's parent run
            # Every logged parameter: the search checks the run solved the same problem.
            self.warm.append(Trial(0, dict(run.data.params), state=S.FINISHED,
                                   run_id=run.info.run_id, metrics=dict(run.data.metrics),
                                   warm_start=True))
        self.console.print(f"warm start: {len(self.warm)} finished runs of the same code")

    def _same_code_finished(self) -> str:
        return (f"attributes.status = 'FINISHED' and "
                f"tags.`{CODE_VERSION_TAG}` = '{self.code_version}'")

    def _finished_earlier(self, params: dict[str, str]):
        """A FINISHED run of these parameters by the same code, in any sweep (resume)."""
        if self._finished_elsewhere is None:
            self._finished_elsewhere = {}
            for run in self.tracking.runs(self.experiment_id, self._same_code_finished()):
                key = _params_key(run.data.params)
                if key is not None:
                    self._finished_elsewhere.setdefault(key, run)
        return self._finished_elsewhere.get(_params_key(params))

    # == the loop ================================================================================
    def _run_trials(self) -> None:
        with self.progress:
            try:
                self._loop()
                self.recorder.drain()
                self.recorder.check()
            except Unavailable as error:
                self._give_up(error)
            self.progress.refresh()

    def _loop(self) -> None:
        while True:
            polled = time.monotonic()
            self._poll()
            if self.interrupted.is_set():
                break
            self._submit_while_room()
            self.recorder.check()
            self._rewrite_note_now_and_then()
            if not any(t.state.in_flight for t in self.trials):
                break
            self._keep_lease()
            self.progress.refresh()
            self.interrupted.wait(self._until_next_poll(time.monotonic() - polled))
        if self.interrupted.is_set():
            self._cancel_in_flight("sweep interrupted", S.KILLED)

    def _poll_interval(self) -> float:
        """Seconds from one poll's start to the next: `poll_seconds`, shorter while a trial has
        logged its last epoch: it ends within seconds (test evaluation, the model's upload),
        and its slot is refilled when it does."""
        finishing = any(t.state == S.RUNNING and t.past_last_epoch for t in self.trials)
        return min(self.poll_seconds, FINISHING_POLL_S) if finishing else self.poll_seconds

    def _until_next_poll(self, elapsed: float) -> float:
        """What is left of the poll interval once a poll (and the submissions after it) took
        `elapsed` seconds."""
        return max(0.0, self._poll_interval() - elapsed)

    def _give_up(self, error: Unavailable) -> None:
        """The tracking server stayed away too long: stop every Job, fail their trials, and
        record that as soon as the server answers again (within one more outage window)."""
        self.lost = f"gave up after an outage of over {self.tracking.outage_seconds:.0f}s: {error}"
        self.console.print(f"[red]{self.lost}; cancelling every trial[/]", highlight=False)
        in_flight = [t for t in self.trials if t.state.in_flight and t.handle is not None]
        try:
            self._retry_backend("cancel the trials", lambda: self.backend.cancel_all(
                [t.handle for t in in_flight]), patience=60)
        except Unavailable as cancel_error:
            self.console.print(f"[red]could not cancel the trials: {cancel_error}[/]")
        for trial in in_flight:
            trial.state, trial.reason, trial.ended = S.FAILED, self.lost, time.monotonic()
            self._unrecorded[trial.index] = ({}, "RUNNING", False)
        self.tracking.stop = self.hard_stop
        self.recorder.discard_queued()  # this thread records them below
        self.recorder.drain()  # the write under way ends
        self.recorder.forgive()
        try:
            self._record_ended()
        except Unavailable:
            pass
        unrecorded = [t.run_id for t in self.trials if t.index in self._unrecorded]
        if unrecorded:
            self.console.print(f"[red]runs left RUNNING ({', '.join(unrecorded)}): run the "
                               "same command again once the server is back to record them[/]")

    def _poll(self) -> None:
        """One round: the backend's view of every trial in flight (one listing), their runs'
        latest metrics (one query) and new epochs' values (one query; a second when the stopping
        rule judges another metric), then decisions."""
        in_flight = [t for t in self.trials if t.state.in_flight and t.handle is not None]
        if not in_flight:
            return
        calls_before, started = self.backend.calls + self.tracking.calls, time.monotonic()
        if self.backend.remote:  # the cluster and the tracking server answer at the same time
            observing = _beside(lambda: self._observe(in_flight), "sweep-observe")
            self._read_metrics(in_flight)
            observed = observing.result()
        else:  # a local observation is a process check
            observed = self._observe(in_flight)
            self._read_metrics(in_flight)
        self._stat(in_flight=len(in_flight),
                   api_calls=self.backend.calls + self.tracking.calls - calls_before,
                   poll_s=round(time.monotonic() - started, 3),
                   interval_s=self._poll_interval())
        for trial in in_flight:
            seen = observed.get(trial.index)
            if seen is None:
                continue
            if seen.state.ended:
                self._end(trial, seen.state, seen.reason)
            elif self._run_finished(trial):  # its pod or process only has to exit
                self._end(trial, S.FINISHED)
            else:
                self._update(trial, seen)
        self._apply_stopping_rule()
        self._check_goal()

    def _run_finished(self, trial: Trial) -> bool:
        snapshot = self._snapshots.get(trial.run_id)
        return snapshot is not None and snapshot.status == "FINISHED"

    def _observe(self, trials) -> dict:
        try:
            observed = self._retry_backend("watch the trials",
                                           lambda: self.backend.observe(trials),
                                           patience=min(30.0, self.tracking.outage_seconds))
            self._unreachable.pop("cluster", None)
            return observed
        except Unavailable as error:
            self._note_unreachable("cluster", error)
            return {}

    def _read_metrics(self, trials) -> None:
        self._snapshots = {}
        try:
            snapshots = self.tracking.snapshots(self.experiment_id, [t.run_id for t in trials])
            self._snapshots = snapshots
            for trial in trials:
                if trial.run_id in snapshots:
                    trial.metrics = snapshots[trial.run_id].metrics
            for watch in self._series_kept():
                self._read_series([t for t in trials if t.run_id in snapshots and
                                   self._behind(t, snapshots[t.run_id], watch)], watch)
            self._unreachable.pop("tracking server", None)
        except Unavailable as error:
            self._note_unreachable("tracking server", error)

    def _series_kept(self) -> list[str | None]:
        """The per-epoch series each trial keeps: the objective's (None) and, when the stopping
        rule judges another metric, that one's."""
        return [None] + ([self.rule.watch] if self.rule is not None and self.rule.watch else [])

    def _behind(self, trial: Trial, run, watch: str | None) -> bool:
        """Whether `run` (a RunSnapshot) logged epochs of the series that `trial` has not read."""
        metric = watch or self.spec.objective.metric
        return run.steps.get(metric, -1) + 1 > len(trial.series(watch))

    def _read_series(self, trials: list[Trial], watch: str | None) -> None:
        """Read the series `watch` of `trials` anew (one request for all of them)."""
        if not trials:
            return
        histories = self.tracking.histories([t.run_id for t in trials],
                                            watch or self.spec.objective.metric)
        for trial in trials:
            trial.set_series(watch, histories.get(trial.run_id, trial.series(watch)))

    def _note_unreachable(self, what: str, error: Unavailable) -> None:
        """Keep going through a short outage; give up after `outage_seconds` of it."""
        since = self._unreachable.setdefault(what, time.monotonic())
        if time.monotonic() - since > self.tracking.outage_seconds:
            raise Unavailable(f"{what} unreachable since {time.monotonic() - since:.0f}s "
                              f"ago: {error}")
        self.console.print(f"[yellow]{what} unreachable ({error}); retrying[/]",
                           highlight=False)

    def _update(self, trial: Trial, seen) -> None:
        changed = seen.state != trial.state or seen.reason != trial.reason
        trial.state, trial.reason = seen.state, seen.reason
        if changed:
            self.progress.event(trial, str(seen.state) + (f" ({seen.reason})" if seen.reason
                                                          else ""))
        elapsed = trial.elapsed() or 0
        if trial.state == S.SCHEDULED and elapsed > self.pending_timeout:
            self._cancel(trial, S.FAILED, f"pending for {elapsed:.0f}s (--pending-timeout)"
                         + (f": {trial.reason}" if trial.reason else ""))

    # -- submission ------------------------------------------------------------------------------
    def _submit_while_room(self) -> None:
        while not self._submissions_closed():
            room = self.spec.max_parallel - sum(t.state.in_flight for t in self.trials)
            batch: list[Trial] = []
            while len(batch) < room:
                trial = self._next_trial(batch)
                if trial is None:
                    break
                if trial.state == S.PENDING:
                    batch.append(trial)
            if not batch:
                return
            self._submit(batch)

    def _next_trial(self, chosen: list[Trial]) -> Trial | None:
        """A trial to run again (failed or interrupted before), else the search's next one;
        never one of those already `chosen` for this round."""
        pending = [t for t in self.trials if t.state == S.PENDING and t not in chosen]
        if pending:
            return pending[0]
        suggestions = self.search.get_suggestions(self.trials + self.warm, 1)
        if not suggestions:
            return None
        trial = Trial(max((t.index for t in self.trials), default=0) + 1, suggestions[0],
                      sweep_id=self.sweep_id)
        self.trials.append(trial)
        earlier = None if self.rerun else self._finished_earlier(trial.params)
        if earlier is not None:
            trial.state, trial.run_id = S.SKIPPED, earlier.info.run_id
            trial.metrics = dict(earlier.data.metrics)
            trial.sweep_run_id = earlier.data.tags.get(SWEEP_RUN_TAG)
            trial.reason = f"finished earlier (run {earlier.info.run_id[:8]})"
            self.progress.event(trial, "SKIPPED: " + trial.reason)
        return trial

    def _submit(self, trials: list[Trial]) -> None:
        """Create the trials' runs at the same time (tracking calls, on threads), then launch
        them one by one from this thread: a wave of P trials does not wait for P submissions
        in a row, and no Job is ever created behind a second Ctrl-C's clean-up."""
        creating = [(trial, _beside(lambda t=trial: self._create_run(t), f"sweep-{trial.name}"))
                    for trial in trials]
        for trial, created in creating:
            try:
                created.result()
            except Unavailable as error:
                self._end(trial, S.FAILED, f"submission failed: {error}")
                continue
            if self.interrupted.is_set():
                self._end(trial, S.KILLED, "sweep interrupted before its Job was created")
                continue
            self._launch(trial)

    def _create_run(self, trial: Trial) -> None:
        trial.started, trial.ended = time.monotonic(), None
        trial.sweep_run_id, trial.history, trial.watched = self.parent_id, [], {}
        trial.run_id = self.tracking.create_run(self.experiment_id, trial.name,
                                                self._trial_tags(trial))
        self.tracking.log_tags(trial.run_id, self.backend.run_tags(trial), trial.params)

    def _launch(self, trial: Trial) -> None:
        try:
            trial.handle = self._retry_backend(
                f"launch {trial.name}", lambda: self.backend.launch(
                    trial, self.experiment_id, self.tracking_uri), patience=LAUNCH_PATIENCE_S)
            self.tracking.log_tags(trial.run_id, self.backend.launched_tags(trial.handle))
        except (Unavailable, LaunchError) as error:
            self._end(trial, S.FAILED, f"submission failed: {error}")
            return
        trial.state, trial.reason = S.SCHEDULED, ""
        self._stat(submit_s=round(time.monotonic() - trial.started, 3))
        self.progress.event(trial, f"submitted ({trial.handle.describe()})")

    def _trial_tags(self, trial: Trial) -> dict[str, str]:
        return {"mlflow.parentRunId": self.parent_id, SWEEP_ID_TAG: self.sweep_id,
                SWEEP_RUN_TAG: self.parent_id, TRIAL_INDEX_TAG: str(trial.index),
                CODE_VERSION_TAG: self.code_version,
                PARAMS_TAG: report.params_label(trial.params, self.spec.varying()),
                "mlflow.source.type": "PROJECT", "mlflow.source.name": "celeb-smile",
                "mlflow.project.entryPoint": "main",
                "mlflow.project.backend": self.backend.name}

    def _submissions_closed(self) -> bool:
        if self.interrupted.is_set() or self.ended_because:
            return True
        limit = self.spec.max_failures
        if limit is not None and self.failures() > limit:
            self.ended_because = f"more than {limit} trials failed (max_failures)"
        elif (reason := self._budget_spent()):
            self.ended_because = reason
        if self.ended_because:
            self.console.print(f"no more trials: {self.ended_because}", highlight=False)
        return bool(self.ended_because)

    def _budget_spent(self) -> str:
        budget = self.spec.budget
        epochs = sum(t.epochs_done for t in self.trials if t.state != S.SKIPPED)
        if budget.trial_epochs is not None and epochs >= budget.trial_epochs:
            return f"budget of {budget.trial_epochs} trial-epochs spent ({epochs})"
        seconds = self.wall_seconds()
        if budget.wall_seconds is not None and seconds >= budget.wall_seconds:
            return f"budget of {budget.wall_seconds:.0f}s wall-clock spent"
        return ""

    def wall_seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    # -- early stopping and the goal ---------------------------------------------------------------
    def _apply_stopping_rule(self) -> None:
        if self.rule is None or not any(t.state == S.RUNNING for t in self.trials):
            return
        by_index = {t.index: t for t in self.trials if t.state == S.RUNNING}
        for decision in self.rule.decide(self.trials):
            trial = by_index.get(decision.trial_index)
            if trial is not None and trial.state == S.RUNNING:
                self._cancel(trial, S.STOPPED, decision.explanation,
                             {STOPPED_TAG: decision.explanation})

    def _check_goal(self) -> None:
        goal = self.spec.goal
        if goal is None or self.ended_because:
            return
        objective = self.spec.objective
        for trial in self.trials:
            value = trial.objective(objective.metric)
            if trial.state == S.FINISHED and value is not None and \
                    (value == goal or objective.better(value, goal)):
                self.ended_because = f"goal {objective.metric}={goal} reached by {trial.name}"
                self.console.print(self.ended_because, highlight=False)
                self._cancel_in_flight(f"sweep goal reached by {trial.name}", S.STOPPED)
                return

    # -- ending trials -------------------------------------------------------------------------------
    def _cancel(self, trial: Trial, state: TrialState, reason: str, tags=None) -> None:
        self.progress.event(trial, "stopping")
        try:
            self._retry_backend(f"cancel {trial.name}", lambda: self.backend.cancel(trial.handle),
                                patience=60)
        except Unavailable as error:
            reason += f" (cancel failed: {error})"
        self._end(trial, state, reason, tags=tags)

    def _cancel_in_flight(self, reason: str, state: TrialState) -> None:
        for trial in [t for t in self.trials if t.state.in_flight and t.handle is not None]:
            self._cancel(trial, state, reason)

    def _end(self, trial: Trial, state: TrialState, reason: str = "", tags=None) -> None:
        """Settle how a trial ended, from its run as this poll read it, and free its slot.
        Recording that on the run (log, tags, status, the Job deleted) is the recorder's."""
        trial.ended = time.monotonic()
        trial.state, trial.reason = state, reason
        self._stat(ended=trial.index)
        if trial.run_id:
            run = self._snapshots.get(trial.run_id) or self.tracking.snapshot(trial.run_id)
            self._settle(trial, run)
            read = not any(self._behind(trial, run, w) for w in self._series_kept())
            self._unrecorded[trial.index] = (tags or {}, run.status, read)
            self.recorder.submit(lambda: self._record_if_unrecorded(trial))
        self.progress.event(trial, str(trial.state) + (f": {trial.reason}" if trial.reason
                                                       else ""))

    def _settle(self, trial: Trial, run) -> None:
        """A trial's final state and reason given its run (a RunSnapshot). A run that
        FINISHED trained to its end and saved its model: whatever happened to its Job or
        process afterwards, or whatever was decided meanwhile, the trial finished."""
        trial.metrics = dict(run.metrics)
        if run.status == "FINISHED":
            trial.state, trial.reason = S.FINISHED, ""
        elif trial.state == S.FINISHED and run.status == "FAILED":  # exited 0, run failed
            trial.state, trial.reason = S.FAILED, run.tags.get(ERROR_TAG, "run FAILED")
        elif trial.state == S.FINISHED and run.status != "FINISHED" and trial.reason:
            trial.state = S.FAILED  # gone while no driver watched, and it never ended its run
        elif trial.state == S.FINISHED:
            trial.reason = ""
        message = run.tags.get(ERROR_TAG)
        if trial.state == S.FAILED and message and message not in trial.reason:
            trial.reason += f" ({message})"

    def _record_ended(self) -> None:
        """Put every ended trial's end on its run, in this thread. Unavailable: the rest stay
        in `_unrecorded`."""
        for trial in [t for t in self.trials if t.index in self._unrecorded]:
            self._record_if_unrecorded(trial)

    def _record_if_unrecorded(self, trial: Trial) -> None:
        entry = self._unrecorded.get(trial.index)
        if entry is not None:
            self._record_end(trial, *entry)
            del self._unrecorded[trial.index]

    def _record_end(self, trial: Trial, tags: dict, run_status: str, history_read: bool) -> None:
        self._save_log(trial)
        if trial.state != S.FINISHED:
            self.tracking.log_tags(trial.run_id, {REASON_TAG: trial.reason, **tags})
        if trial.handle is not None:
            self._retry_backend("clean up", lambda: self.backend.release(trial.handle),
                                patience=30)
        if run_status != trial.state.mlflow_status:  # e.g. KILLED by its pod's SIGTERM
            self.tracking.end_run(trial.run_id, trial.state.mlflow_status)
        if not history_read:
            for watch in self._series_kept():
                self._read_series([trial], watch)
        trial.handle = None

    def _rewrite_note_now_and_then(self) -> None:
        """The parent run's description, by the recorder, at most every NOTE_EVERY_S while
        trials run."""
        if time.monotonic() - self._note_written >= NOTE_EVERY_S:
            self.recorder.submit(lambda: report.update_note(self, self.parent_id))
            self._note_written = time.monotonic()

    def _save_log(self, trial: Trial) -> None:
        if trial.handle is None:
            return
        try:
            text = self._retry_backend("read the log", lambda: self.backend.logs(trial.handle),
                                       patience=30)
        except Unavailable as error:
            text = f"(log unavailable: {error})"
        if text:
            self.tracking.log_text(trial.run_id, text, "logs/trial.log")

    # == interruption ==============================================================================
    def _on_signal(self, signum, frame) -> None:
        if self.interrupted.is_set():
            self.hard_stop.set()
            raise HardStop()
        self.console.print(f"[yellow]{signal.Signals(signum).name}: no more submissions; "
                           "cancelling the trials in flight (again to quit at once)...[/]")
        self.interrupted.set()
        self.tracking.stop = self.hard_stop  # writes still go through while cancelling

    def _hard_exit(self) -> int:
        handles = [t.handle for t in self.trials if t.state.in_flight and t.handle is not None]
        try:
            self.backend.cancel_all(handles)
            print(f"quit at once: {len(handles)} trials' Jobs/processes deleted; their runs "
                  "stay RUNNING until the same command runs again", file=sys.stderr)
        except Exception as error:  # noqa: BLE001 - leaving anyway
            print(f"quit at once; could not delete every Job: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED

    # == bookkeeping ================================================================================
    def _retry_backend(self, what: str, call, patience: float):
        return retrying(call, what=what, patience_s=patience, stop=self.hard_stop,
                        transient=_backend_transient, on_retry=self._retrying)

    def _retrying(self, what: str, error: BaseException, delay: float) -> None:
        self.console.print(f"[yellow]{what} failed ({type(error).__name__}); "
                           f"retrying in {delay:.0f}s[/]", highlight=False)

    def _keep_lease(self) -> None:
        if time.monotonic() - self._lease_renewed < LEASE_RENEW_SECONDS:
            return
        try:
            self.tracking.renew_lease(self.parent_id)
            self._record_wall_time()
            self._lease_renewed = time.monotonic()
        except Unavailable:
            pass

    def _record_wall_time(self) -> None:
        self.tracking.patient("record the sweep's time", lambda: self.client.log_metric(
            self.parent_id, "sweep_seconds", self.wall_seconds()))

    def _stat(self, **figures) -> None:
        if self.stats_path:
            with open(self.stats_path, "a") as stats:
                stats.write(json.dumps({"t": round(time.time(), 3), **figures}) + "\n")

    def failures(self) -> int:
        return sum(t.state == S.FAILED for t in self.trials)

    def _final_status(self) -> str:
        if self.lost:
            return "FAILED"
        if self.interrupted.is_set():
            return "KILLED"
        return "FAILED" if self.failures() else "FINISHED"


def _params_key(params: dict[str, str]):
    try:
        return frozenset(config_from_params(params, check_paths=False).as_params().items())
    except ValueError:
        return None


def _beside(call, name: str) -> Future:
    """`call` on a daemon thread (a second Ctrl-C never waits for it); the future's result()
    is its value or raises its error in the caller's thread."""
    future: Future = Future()

    def work():
        try:
            future.set_result(call())
        except BaseException as error:  # noqa: BLE001 - raised again by result()
            future.set_exception(error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


def _backend_transient(error: BaseException) -> bool:
    if isinstance(error, LaunchError):
        return False
    status = getattr(error, "status", None)  # kubernetes ApiException
    if status is not None:
        return status in (0, 429) or status >= 500
    return True


class _signals_routed:
    """Route SIGINT and SIGTERM to `handler` inside the block."""

    def __init__(self, handler):
        self.handler = handler

    def __enter__(self):
        self.saved = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc):
        for sig, previous in self.saved.items():
            signal.signal(sig, previous)
