"""A sweep's controller: it runs trials on an executor (a backend: local processes or
Kubernetes Jobs), at most `max_parallel` at once, and carries out what the policy decides.

    observe the trials in flight -> end those that ended, ask the policy what to stop and
    whether the sweep is done -> submit new trials while there is room -> wait for the next poll,
    launching each new trial as soon as its run exists (and filling a free slot as soon as the
    search's suggestion for it is ready); a backend that learns of a trial's end as it happens
    (a local process's exit) calls the poll at once

Submitting never holds up a poll: the runs of new trials are created on threads beside the
loop, and the loop launches each trial (this thread only: no Job is ever created behind a
second Ctrl-C's clean-up) when its run is created.

MLflow is the sweep's only state (record.py): a controller that starts again, on the same
machine or in a pod, adopts the trials still in flight, takes the others' outcomes from their
runs and goes on; a lease on the parent run keeps a second controller out. The controller does
not know which search or stopping rule runs (policy.py), nor where trials run (backends/).
"""

import json
import signal
import sys
import threading
import time
from concurrent.futures import Future

from celeb_smile.constants import (ATTEMPT_TAG, CANCEL_TAG, DISRUPTIONS_TAG, ERROR_TAG,
                                   EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED,
                                   EXIT_TRIAL_FAILED, OUTAGE_PATIENCE_S, PAUSE_TAG, PAUSED_TAG,
                                   STOPPED_TAG, SWEEP_RUN_TAG, TrialState)
from celeb_smile.retry import Unavailable, retrying
from celeb_smile.sweep import report
from celeb_smile.sweep.access import (AccessError, close_trial_user, has_users, open_trial_user,
                                      trial_username)
from celeb_smile.sweep.backends import LaunchError
from celeb_smile.sweep.backends import code_version as current_code_version
from celeb_smile.sweep.policy import Policy
from celeb_smile.sweep.progress import Progress
from celeb_smile.sweep.record import SweepRecord
from celeb_smile.sweep.recorder import Recorder, beside
from celeb_smile.sweep.result import SweepResult
from celeb_smile.sweep.spec import ADAPTIVE
from celeb_smile.sweep.suggester import Suggester
from celeb_smile.sweep.tracking import Tracking
from celeb_smile.sweep.trial import Trial

S = TrialState
LEASE_RENEW_SECONDS = 30
LEASE_WAIT_POLL_S = 5  # how often a controller waiting for a lease reads it again
LAUNCH_PATIENCE_S = 120  # a submission is retried this long before its trial fails
NOTE_EVERY_S = 30  # the parent's description is rewritten at most this often while trials run
FINISHING_POLL_S = 0.5  # the poll interval while a trial is past its last epoch (ends soon)
END_POLL_GAP_S = 0.1  # a reported end is polled for this long after the last poll at the soonest:
# ends close together share one poll (at 50 in flight of 20-s trials, one ends every 0.4 s)
MAX_DISRUPTIONS = 3  # lost pods or processes a trial resumes from before it fails
# Runs of a round created at the same time (each: its run, then its tags and parameters). More
# only queue on the server: 50 at once on a 2-worker server on 2 loaded cores hit the client's
# timeout and were retried with backoff, and the first trial started 13-45 s late.
RUN_CREATIONS_AT_ONCE = 4


class HardStop(BaseException):
    """A second Ctrl-C: leave now (Jobs are still deleted)."""


class SweepController:
    def __init__(self, spec, backend, console, *, tracking_uri: str, rerun=False,
                 poll_seconds=None, promote=False, warm_start=False,
                 pending_timeout=900.0, outage_seconds=OUTAGE_PATIENCE_S, stats_path=None,
                 code_version: str | None = None, hand_over_on_sigterm=False,
                 lease_wait_s=0.0, max_disruptions=MAX_DISRUPTIONS):
        self.spec = spec
        self.backend = backend
        self.console = console
        self.rerun = rerun
        self.poll_seconds = backend.poll_seconds if poll_seconds is None else poll_seconds
        self.promote = promote
        self.warm_start = warm_start
        self.pending_timeout = pending_timeout
        self.max_disruptions = max_disruptions  # per trial, before it fails
        self.stats_path = stats_path  # JSON lines of per-poll API calls (benchmarks)
        self.interrupted = threading.Event()  # first Ctrl-C or --cancel: cancel, submit nothing
        self.hard_stop = threading.Event()  # second Ctrl-C
        # In a pod, SIGTERM (the pod deleted, its node drained) hands the sweep over to the
        # next controller: the lease is released and the trials keep running.
        self.hand_over_on_sigterm = hand_over_on_sigterm
        self.handing_over = threading.Event()
        self._wakeup = threading.Event()  # ends the wait for the next poll, or launches
        self._end_reported = threading.Event()  # a backend saw a trial end: poll now
        backend.on_end = self._on_end_reported
        self._creating: list[tuple[Trial, Future]] = []  # trials whose runs are being created
        self._creation_turns = threading.Semaphore(RUN_CREATIONS_AT_ONCE)
        self.lease_wait_s = lease_wait_s  # how long to wait for another holder's lease
        self.trial_user: str | None = None  # the sweep's trial user, while the sweep runs
        self.cancelled_by = ""  # who asked for the sweep's end (driver.py --cancel)
        self.paused_by = ""  # who paused it (driver.py --pause): nothing runs until --resume
        self.tracking = Tracking(tracking_uri, self.interrupted, outage_seconds,
                                 on_retry=self._retrying)
        self.client = self.tracking.client
        self.record = SweepRecord(self.tracking, spec, code_version or current_code_version())
        self.policy = Policy(spec)
        self.suggester = Suggester(self.policy, beside_the_loop=spec.strategy() in ADAPTIVE,
                                   on_ready=self._wakeup.set)
        self.trials: list[Trial] = []
        self.warm: list[Trial] = []  # earlier sweeps' runs that seed an adaptive search
        self.status = None  # the parent's final status
        self.ended_because = ""  # goal reached, budget spent, too many failures...
        self.started = time.monotonic()
        # Trials that ended and whose end is not on their run yet: index -> (tags to add, the
        # run's status and tags when the trial ended, whether its series are read to the last
        # epoch).
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

    @property
    def sweep_id(self) -> str:
        return self.record.sweep_id

    def result(self) -> SweepResult:
        return SweepResult(self.spec, self.trials, self.record.experiment_id,
                           self.record.parent_id, self.record.code_version, self.status,
                           self.promote, warm_start_runs=len(self.warm),
                           ended_because=self.ended_because)

    # == the whole sweep =========================================================================
    def run(self) -> int:
        self._stat(started=True)
        holder, parent, runs = self._wait_for_lease()
        if holder:
            return self._refuse(holder)
        self.backend.prepare(self.console)  # before the parent run: a failure leaves no trace
        try:
            self._open_trial_user()
        except AccessError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        report.prepare_experiment(self.client, self.record.experiment_id)
        if holder := self.record.open(parent, self._settings()):
            return self._refuse(holder)
        self._lease_renewed = time.monotonic()
        try:
            with _signals_routed(self._on_signal):
                self._resume(runs, parent)
                self._announce()
                self._run_trials()
        except HardStop:
            return self._ended(self._hard_exit())
        if self.handing_over.is_set():
            return self._hand_over()  # the trials keep running: so do their credentials
        return self._ended(self._close())

    def _wait_for_lease(self):
        """(another live holder of the sweep's lease or None, the parent run, the trial runs),
        waiting up to `lease_wait_s` for a holder's lease to end."""
        deadline = time.monotonic() + self.lease_wait_s
        while True:
            parent, runs = self.record.find()
            holder = self.record.holder(parent)
            if not holder or time.monotonic() >= deadline:
                return holder, parent, runs
            self.console.print(f"waiting for {holder}'s lease on the sweep to end",
                               highlight=False)
            time.sleep(LEASE_WAIT_POLL_S)

    def _hand_over(self) -> int:
        """Leave the sweep to the next controller: the trials keep running, their runs and
        the parent stay RUNNING, the lease is released so it need not wait for it."""
        self.recorder.drain()
        try:
            self.record.release(self.wall_seconds())
        except Unavailable as error:
            print(f"error: the lease was not released ({error}); the next controller waits "
                  "for it to expire", file=sys.stderr)
        in_flight = sum(t.state.in_flight for t in self.trials)
        self.console.print(f"handed over: {in_flight} trials in flight keep running; the next "
                           "controller adopts them", highlight=False)
        return EXIT_TERMINATED

    def _refuse(self, holder: str) -> int:
        print(f"error: sweep {self.sweep_id} is being run by another driver ({holder}); "
              "wait for it to end, or for its lease to expire after it died", file=sys.stderr)
        return EXIT_BAD_INPUT

    def _settings(self) -> dict[str, str]:
        objective = self.spec.objective
        return {"backend": self.backend.name, "search": self.spec.strategy(),
                "max_parallel": str(self.spec.max_parallel),
                "objective": f"{objective.direction} {objective.metric}"}

    # -- the sweep's trial user: its trials' only credentials, while the sweep runs -----------
    def _open_trial_user(self) -> None:
        """On a server with authentication, remote trials log as the sweep's own trial user,
        made now with EDIT on the experiment, its password in a Secret of the sweep; or, when
        an earlier controller of the sweep left that Secret (its trials may still run), as
        that one. Local trials log as whoever runs the sweep."""
        if not self.backend.remote or not has_users(self.tracking.tracking_uri):
            return
        username = trial_username(self.record.experiment_id, self.sweep_id)
        if not self.backend.has_trial_credentials(username):
            password = open_trial_user(self.tracking.tracking_uri, username,
                                       self.record.experiment_id)
            if password is None:
                self.console.print(f"tracking server {self.tracking.tracking_uri} has no "
                                   "authentication: the trials need no user of their own",
                                   highlight=False)
                return
            self.backend.keep_trial_credentials(username, password)
        self.backend.use_trial_credentials(username)
        self.trial_user = username

    def _ended(self, exit_code: int) -> int:
        """The sweep is over (finished, failed, cancelled, interrupted): its trial user and
        Secret go, the Secret first (a Secret always names an existing user)."""
        if self.trial_user is None:
            return exit_code
        try:
            self.backend.drop_trial_credentials(self.trial_user)
            close_trial_user(self.tracking.tracking_uri, self.trial_user)
        except Exception as error:  # noqa: BLE001 - the sweep's outcome stands
            print(f"error: the sweep's trial user {self.trial_user!r} may still exist ({error});"
                  f" `driver.py --cancel {self.sweep_id}` deletes it", file=sys.stderr)
        return exit_code

    def _close(self) -> int:
        self.status = self._final_status()
        try:
            try:
                report.finish(self.result(), self.client, self.console)
            except Unavailable:
                raise
            except Exception as error:  # noqa: BLE001 - a report bug must not lose the end
                self.console.print(f"report failed: {type(error).__name__}: {error}",
                                   style="red", highlight=False, markup=False)
            self.record.close(self.status, self.wall_seconds())
        except Unavailable as error:
            print(f"error: the sweep's record is incomplete: {error}", file=sys.stderr)
            return EXIT_TRIAL_FAILED
        return {"FINISHED": EXIT_OK, "FAILED": EXIT_TRIAL_FAILED}.get(self.status,
                                                                     EXIT_INTERRUPTED)

    def _announce(self) -> None:
        planned = self.policy.planned()
        counts = {state: sum(t.state == state for t in self.trials) for state in S}
        self.console.print(
            f"sweep {self.sweep_id}: {self.spec.strategy()} search, "
            f"{planned if planned is not None else '?'} trials planned; "
            f"{counts[S.FINISHED] + counts[S.STOPPED]} done before, "
            f"{counts[S.SKIPPED]} finished earlier, {counts[S.SCHEDULED]} adopted in flight; "
            f"backend {self.backend.name}, at most {self.spec.max_parallel} at once",
            highlight=False)

    # == picking up where an earlier controller left off =========================================
    def _resume(self, runs, parent) -> None:
        self.trials.extend(self.record.trials(runs, self.backend.adopt))
        self._take_up_a_pause(parent)
        for trial in self.trials:
            if trial.state in (S.FINISHED, S.STOPPED):
                for watch in self.policy.series_kept():
                    self._read_series([trial], watch)
        ended_meanwhile = [t for t in self.trials if t.state.in_flight and t.handle is None]
        for trial in ended_meanwhile:
            self._end(trial, S.FAILED, "its Job/process could not be found again")
        if self.warm_start:
            self.warm = self.record.warm_start_trials()
            self.console.print(f"warm start: {len(self.warm)} finished runs of the same code")

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
            self._end_reported.clear()  # this poll sees it; one reported during it calls another
            self._poll()
            if self.interrupted.is_set():
                break
            self._submit_while_room()
            self.recorder.check()
            self._rewrite_note_now_and_then()
            if not any(t.state.in_flight or t.state == S.PAUSED for t in self.trials) and \
                    not self.suggester.asking and not self._creating:
                break
            self._keep_lease()
            self.progress.refresh()
            self._submit_until_next_poll(polled)
            if self.handing_over.is_set():
                self._settle_creations()  # launched: the next controller adopts them
                return
        self._settle_creations()
        if self.interrupted.is_set():
            reason = f"sweep cancelled by {self.cancelled_by}" if self.cancelled_by else \
                "sweep interrupted"
            self._cancel_in_flight(reason, S.KILLED)

    def _submit_until_next_poll(self, polled: float) -> None:
        """Wait for the next poll, launching each trial as soon as its run is created and
        filling a free slot as soon as a suggestion for it is ready."""
        while not (self.interrupted.is_set() or self.handing_over.is_set()):
            left = self._until_next_poll(time.monotonic() - polled)
            if left <= 0:
                return
            self._wakeup.wait(left)
            self._wakeup.clear()  # the flags above say whether a signal set it
            self._submit_while_room()

    def _poll_interval(self) -> float:
        """Seconds from one poll's start to the next: `poll_seconds`, shorter while a trial has
        logged its last epoch (it ends within seconds: test evaluation, the model's upload, and
        its slot is refilled when it does), END_POLL_GAP_S once the backend reported an end."""
        if self._end_reported.is_set():
            return min(self.poll_seconds, END_POLL_GAP_S)
        finishing = any(t.state == S.RUNNING and t.past_last_epoch for t in self.trials)
        return min(self.poll_seconds, FINISHING_POLL_S) if finishing else self.poll_seconds

    def _until_next_poll(self, elapsed: float) -> float:
        """What is left of the poll interval once a poll (and the submissions after it) took
        `elapsed` seconds."""
        return max(0.0, self._poll_interval() - elapsed)

    def _on_end_reported(self) -> None:
        """Called by the backend, from any thread, when it learns that a trial ended."""
        self._end_reported.set()
        self._wakeup.set()

    # -- one poll ----------------------------------------------------------------------------------
    def _poll(self) -> None:
        """One round: the backend's view of every trial in flight (one listing), their runs'
        latest metrics (one query; a trial one epoch further is read from it) and the new epochs of
        trials further ahead (one query; a second when the stopping rule judges another
        metric), then the policy's decisions."""
        in_flight = [t for t in self.trials if t.state.in_flight and t.handle is not None]
        if not in_flight:
            if self.paused_by:  # only the parent: is the pause lifted, or the sweep cancelled?
                self._read_metrics([])
            return
        calls_before, started = self.backend.calls + self.tracking.calls, time.monotonic()
        if self.backend.remote:  # the cluster and the tracking server answer at the same time
            observing = beside(lambda: self._observe(in_flight), "sweep-observe")
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
            if seen is None or trial.handle is None:  # or paused by what the read found
                continue
            if seen.disrupted or seen.relaunch:
                self._disrupted(trial, seen)
            elif seen.state.ended:
                self._end(trial, seen.state, seen.reason)
            elif self._run_finished(trial):  # its pod or process only has to exit
                self._end(trial, S.FINISHED)
            else:
                self._update(trial, seen)
        self._decide()

    def _decide(self) -> None:
        """Carry out the policy: stop the trials its rule rules out, record the rungs the
        others passed, end the sweep once its goal is reached."""
        by_index = {t.index: t for t in self.trials}
        for decision in self.policy.stops(self.trials):
            trial = by_index[decision.trial_index]
            self._cancel(trial, S.STOPPED, decision.explanation,
                         {STOPPED_TAG: decision.explanation})
        for trial in self.trials:
            if trial.state == S.RUNNING and trial.rung_passed > trial.rung_recorded:
                trial.rung_recorded = trial.rung_passed
                self.recorder.submit(lambda run=trial.run_id, rung=trial.rung_passed:
                                     self.record.record_rung(run, rung))
        reached = None if self.ended_because else self.policy.goal_reached_by(self.trials)
        if reached is not None:
            goal = f"{self.spec.objective.metric}={self.spec.goal}"
            self.ended_because = f"goal {goal} reached by {reached.name}"
            self.console.print(self.ended_because, highlight=False)
            self._cancel_in_flight(f"sweep goal reached by {reached.name}", S.STOPPED)

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
        try:  # the parent run in the same query: it may carry a request to cancel
            snapshots = self.record.snapshots([t.run_id for t in trials] +
                                              [self.record.parent_id])
            self._check_steering(snapshots.pop(self.record.parent_id, None))
            self._snapshots = snapshots
            for trial in trials:
                if trial.run_id in snapshots:
                    trial.metrics = snapshots[trial.run_id].metrics
            for watch in self.policy.series_kept():
                behind = [t for t in trials if t.run_id in snapshots and
                          self._behind(t, snapshots[t.run_id], watch)]
                further = [t for t in behind
                           if not self._take_next_epoch(t, snapshots[t.run_id], watch)]
                self._read_series(further, watch)
            self._unreachable.pop("tracking server", None)
        except Unavailable as error:
            self._note_unreachable("tracking server", error)

    def _check_steering(self, parent) -> None:
        """What `driver.py --cancel`, `--pause` and `--resume` asked, on the parent run: cancel
        every trial in flight and end; stop them at their checkpoints and submit nothing; go
        on."""
        if parent is None:
            return
        asked = parent.tags.get(CANCEL_TAG)
        if asked and not self.interrupted.is_set():
            self.cancelled_by = asked
            self.ended_because = f"cancelled by {asked}"
            self.console.print(f"[yellow]{self.ended_because}: cancelling the trials in "
                               "flight[/]", highlight=False)
            self._interrupt()
        paused = parent.tags.get(PAUSE_TAG, "")
        if paused and not self.paused_by:
            self._pause(paused)
        elif not paused and self.paused_by:
            self.console.print(f"resumed (paused by {self.paused_by}): the paused trials go "
                               "on from their checkpoints", highlight=False)
            self.paused_by = ""

    def _take_up_a_pause(self, parent) -> None:
        """A controller taking over a paused sweep keeps it paused; the sweep's own command,
        run by a person, lifts the pause."""
        paused = parent.data.tags.get(PAUSE_TAG, "") if parent is not None else ""
        if not paused:
            return
        if self.hand_over_on_sigterm:
            self.paused_by = paused
            self.console.print(f"paused by {paused}: waiting for driver.py --resume",
                               highlight=False)
        else:
            self.tracking.patient("lift the pause", lambda: self.client.delete_tag(
                self.record.parent_id, PAUSE_TAG))

    def _pause(self, by: str) -> None:
        """Stop every trial in flight (its pod stops within a training step; its last
        checkpoint is its last completed epoch) and submit nothing until the pause is lifted."""
        self.paused_by = by
        in_flight = [t for t in self.trials if t.state.in_flight and t.handle is not None]
        self.console.print(f"[yellow]paused by {by}: {len(in_flight)} trials stop at their "
                           "last checkpoint; nothing new until driver.py --resume[/]",
                           highlight=False)
        for trial in in_flight:
            # Marked before its pod stops: the stopped training ends its run KILLED at once,
            # and whoever reads the run then (--pause waiting, --status) must see it paused.
            handle, trial.handle = trial.handle, None
            self._mark_paused(trial)
            try:
                self._retry_backend(f"pause {trial.name}",
                                    lambda: self.backend.cancel(handle), patience=60)
            except Unavailable as error:
                self.tracking.patient("unmark a trial not paused", lambda t=trial:
                                      self.client.delete_tag(t.run_id, PAUSED_TAG))
                trial.handle = handle
                self._end(trial, S.FAILED, f"could not be paused: {error}")

    def _mark_paused(self, trial: Trial) -> None:
        """A trial stopped (or never started) by the pause: it is launched again on the
        resume, from its run's last checkpoint."""
        trial.state, trial.reason = S.PAUSED, f"paused by {self.paused_by}"
        self.tracking.log_tags(trial.run_id, {PAUSED_TAG: "true"})
        self.progress.event(trial, "PAUSED")

    def _relaunch_paused(self, trial: Trial) -> None:
        self.tracking.patient("resume a paused trial", lambda: self.client.delete_tag(
            trial.run_id, PAUSED_TAG))
        trial.started = time.monotonic()
        self._launch_again(trial)

    def _behind(self, trial: Trial, run, watch: str | None) -> bool:
        """Whether `run` (a RunSnapshot) logged epochs of the series that `trial` has not read."""
        metric = watch or self.spec.objective.metric
        return run.steps.get(metric, -1) + 1 > len(trial.series(watch))

    def _take_next_epoch(self, trial: Trial, run, watch: str | None) -> bool:
        """When `run` (a RunSnapshot) logged exactly the next epoch of the series, its latest
        value is that epoch's: append it and say True, so the poll reads no history for it (at
        50 trials in flight nearly every trial read is one epoch ahead). False when it is
        further ahead."""
        metric = watch or self.spec.objective.metric
        series = trial.series(watch)
        if run.steps.get(metric) != len(series) or metric not in run.metrics:
            return False
        trial.set_series(watch, series + [run.metrics[metric]])
        return True

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
        now = time.monotonic()
        if seen.queued or trial.state != S.SCHEDULED:  # queued is waiting, not pending
            trial.pending_since = now
        waited = now - (trial.pending_since or trial.started or now)
        if trial.state == S.SCHEDULED and waited > self.pending_timeout:
            self._cancel(trial, S.FAILED, f"pending for {waited:.0f}s (--pending-timeout)"
                         + (f": {trial.reason}" if trial.reason else ""))

    def _disrupted(self, trial: Trial, seen) -> None:
        """Its pod or process was lost to something else than its own failure: it goes on
        from its last checkpoint, in the pod its Job starts or in a new Job for the same run,
        up to `max_disruptions` times."""
        if seen.disrupted:
            trial.disruptions.append(seen.disrupted)
            reasons = "\n".join(trial.disruptions)
            self.recorder.submit(lambda run=trial.run_id: self.tracking.log_tags(
                run, {DISRUPTIONS_TAG: reasons}))
        count = len(trial.disruptions)
        if count > self.max_disruptions:
            self._cancel(trial, S.FAILED, f"disrupted {count} times (--max-disruptions "
                                          f"{self.max_disruptions}): "
                         + "; ".join(trial.disruptions))
            return
        self.progress.event(trial, f"disrupted ({trial.disruptions[-1]}): resumes from its "
                                   f"last checkpoint ({count}/{self.max_disruptions})")
        trial.state, trial.reason = S.SCHEDULED, "resuming after a disruption"
        trial.pending_since = time.monotonic()
        if seen.relaunch:
            self._relaunch(trial)

    def _relaunch(self, trial: Trial) -> None:
        """A new Job (or process) for the trial's run, after the lost one is cleaned up."""
        try:
            self._retry_backend(f"clean up {trial.name}",
                                lambda: self.backend.cancel(trial.handle), patience=60)
        except Unavailable as error:
            self._end(trial, S.FAILED, f"could not clean up after a disruption: {error}")
            return
        try:
            self._launch_again(trial)
        except Unavailable as error:
            self._end(trial, S.FAILED, f"submission failed: {error}")

    def _launch_again(self, trial: Trial) -> None:
        """The next Job (or process) for a trial's run, which goes on from its checkpoint."""
        trial.attempt += 1
        self.tracking.log_tags(trial.run_id, {**self.backend.run_tags(trial),
                                              ATTEMPT_TAG: str(trial.attempt)})
        self._launch(trial)

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
        being_created = [trial for trial, _ in self._creating]  # never launched
        self._creating.clear()
        for trial in in_flight + being_created:
            trial.state, trial.reason, trial.ended = S.FAILED, self.lost, time.monotonic()
            if trial.run_id:
                self._unrecorded[trial.index] = ({}, "RUNNING", False, {})
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

    # -- submission ------------------------------------------------------------------------------
    def _submit_while_room(self) -> None:
        self._launch_created()
        if self.paused_by:
            return
        paused = [t for t in self.trials if t.state == S.PAUSED]
        for trial in paused[:max(0, self._room())]:
            self._relaunch_paused(trial)
        while not self._submissions_closed():
            room = self._room()
            # A few at a time: the first runs are being created while the next are asked for.
            wanted = min(room, RUN_CREATIONS_AT_ONCE)
            self.suggester.prepare(self.trials + self.warm, wanted)
            batch: list[Trial] = []
            while len(batch) < wanted:
                trial = self._next_trial(batch + [t for t, _ in self._creating])
                if trial is None:
                    break
                if trial.state == S.PENDING:
                    batch.append(trial)
            # The next suggestions, prepared while the loop polls (the next slot to free).
            self.suggester.prepare(self.trials + self.warm,
                                   min(max(1, room - len(batch)), RUN_CREATIONS_AT_ONCE))
            if not batch:
                return
            self._create_runs(batch)

    def _room(self) -> int:
        """Slots free: neither in flight nor taken by a trial whose run is being created."""
        return self.policy.room(self.trials) - len(self._creating)

    def _next_trial(self, chosen: list[Trial]) -> Trial | None:
        """A trial to run again (failed or interrupted before), else the search's next one;
        never one of those already `chosen` for this round."""
        pending = [t for t in self.trials if t.state == S.PENDING and t not in chosen]
        if pending:
            return pending[0]
        # Nothing in flight, nothing to poll or launch: then waiting for the ask delays nothing.
        idle = not any(t.state.in_flight for t in self.trials) and not self._creating
        params = self.suggester.take(self.trials + self.warm, wait=idle)
        if params is None:
            return None
        trial = Trial(max((t.index for t in self.trials), default=0) + 1, params,
                      sweep_id=self.sweep_id)
        self.trials.append(trial)
        earlier = None if self.rerun else self.record.finished_earlier(trial.params)
        if earlier is not None:
            trial.state, trial.run_id = S.SKIPPED, earlier.info.run_id
            trial.metrics = dict(earlier.data.metrics)
            trial.sweep_run_id = earlier.data.tags.get(SWEEP_RUN_TAG)
            trial.reason = f"finished earlier (run {earlier.info.run_id[:8]})"
            self.progress.event(trial, "SKIPPED: " + trial.reason)
        return trial

    def _create_runs(self, trials: list[Trial]) -> None:
        """Start creating the trials' runs on threads, RUN_CREATIONS_AT_ONCE at a time (a wave
        of P trials neither waits for P creations in a row nor piles P onto the server; no run
        once the sweep is interrupted). Each created run wakes the loop to launch its trial."""
        for trial in trials:
            created = beside(lambda t=trial: self._create_run_in_turn(t), f"sweep-{trial.name}")
            self._creating.append((trial, created))
            created.add_done_callback(lambda _: self._wakeup.set())

    def _create_run_in_turn(self, trial: Trial) -> None:
        with self._creation_turns:
            if not self.interrupted.is_set():
                self._create_run(trial)

    def _launch_created(self) -> None:
        """Launch the trials whose runs have been created, in the order they were chosen (a
        trial never starts before one suggested ahead of it)."""
        while self._creating and self._creating[0][1].done():
            self._launch_or_end(*self._creating.pop(0))

    def _settle_creations(self) -> None:
        """As the loop ends: wait for the runs still being created and launch their trials
        (or, interrupted, end them)."""
        while self._creating:
            trial, created = self._creating.pop(0)
            created.exception()  # waits
            self._launch_or_end(trial, created)

    def _launch_or_end(self, trial: Trial, created: Future) -> None:
        try:
            created.result()
        except Unavailable as error:
            self._end(trial, S.FAILED, f"submission failed: {error}")
            return
        if self.interrupted.is_set():
            self._end(trial, S.KILLED, "sweep interrupted before its Job was created")
            return
        if self.paused_by:  # paused while its run was created: it starts on the resume
            self._mark_paused(trial)
            return
        self._launch(trial)

    def _create_run(self, trial: Trial) -> None:
        trial.started, trial.ended = time.monotonic(), None
        trial.sweep_run_id, trial.history, trial.watched = self.record.parent_id, [], {}
        trial.rung_passed = trial.rung_recorded = 0
        trial.run_id = self.record.create_trial_run(trial, self.backend.name, {})
        self.tracking.log_tags(trial.run_id, self.backend.run_tags(trial), trial.params)

    def _launch(self, trial: Trial) -> None:
        try:
            trial.handle = self._retry_backend(
                f"launch {trial.name}", lambda: self.backend.launch(
                    trial, self.record.experiment_id, self.tracking.tracking_uri),
                patience=LAUNCH_PATIENCE_S)
            self.tracking.log_tags(trial.run_id, self.backend.launched_tags(trial.handle))
        except (Unavailable, LaunchError) as error:
            self._end(trial, S.FAILED, f"submission failed: {error}")
            return
        trial.state, trial.reason = S.SCHEDULED, ""
        trial.pending_since = time.monotonic()
        self._stat(submit_s=round(time.monotonic() - trial.started, 3))
        self.progress.event(trial, f"submitted ({trial.handle.describe()})")

    def _submissions_closed(self) -> bool:
        if self.interrupted.is_set() or self.ended_because:
            return True
        self.ended_because = self.policy.why_closed(self.trials, self.wall_seconds())
        if self.ended_because:
            self.console.print(f"no more trials: {self.ended_because}", highlight=False)
        return bool(self.ended_because)

    def wall_seconds(self) -> float:
        return self.record.seconds_before + time.monotonic() - self.started

    # -- ending trials ---------------------------------------------------------------------------
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
            read = not any(self._behind(trial, run, w) for w in self.policy.series_kept())
            self._unrecorded[trial.index] = (tags or {}, run.status, read, run.tags)
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
        elif trial.state == S.FINISHED and trial.reason:
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

    def _record_end(self, trial: Trial, tags: dict, run_status: str, history_read: bool,
                    run_tags: dict) -> None:
        self._save_log(trial)
        self.record.record_end(trial, run_status, tags, run_tags)
        if trial.handle is not None:
            self._retry_backend("clean up", lambda: self.backend.release(trial.handle),
                                patience=30)
        if not history_read:
            for watch in self.policy.series_kept():
                self._read_series([trial], watch)
        trial.handle = None

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

    def _rewrite_note_now_and_then(self) -> None:
        """The parent run's description, by the recorder, at most every NOTE_EVERY_S while
        trials run."""
        if time.monotonic() - self._note_written >= NOTE_EVERY_S:
            result = self.result()
            self.recorder.submit(lambda: report.update_note(result, self.client, self.console))
            self._note_written = time.monotonic()

    # == interruption ==============================================================================
    def _on_signal(self, signum, frame) -> None:
        if self.hand_over_on_sigterm and signum == signal.SIGTERM:
            if not self.handing_over.is_set():
                self.console.print("SIGTERM: handing the sweep over to the next controller")
                self.handing_over.set()
                self._wakeup.set()
            return
        if self.interrupted.is_set():
            self.hard_stop.set()
            raise HardStop()
        self.console.print(f"[yellow]{signal.Signals(signum).name}: no more submissions; "
                           "cancelling the trials in flight (again to quit at once)...[/]")
        self._interrupt()

    def _interrupt(self) -> None:
        self.interrupted.set()
        self._wakeup.set()
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

    # == bookkeeping ============================================================================
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
            self.record.renew_lease(self.wall_seconds())
            self._lease_renewed = time.monotonic()
        except Unavailable:
            pass

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
