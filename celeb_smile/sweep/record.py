"""A sweep's state, kept in MLflow and nowhere else: its parent run (settings, lease, wall
time), one run per trial attempt (its parameters, tags that find it again, the rung it passed,
how it ended), and the finished runs of the same code that a resumed or warm-started sweep
builds on. A controller that starts again, here or in another process, reads everything it
needs back from here.
"""

import json
import time

from mlflow.entities import Param

from celeb_smile.constants import (ATTEMPT_TAG, CANCEL_TAG, CODE_VERSION_TAG, DISRUPTIONS_TAG,
                                   PARAMS_TAG, PAUSED_TAG, REASON_TAG, RUNG_TAG, STOPPED_TAG,
                                   SWEEP_ID_TAG, SWEEP_RUN_TAG, TRIAL_INDEX_TAG, TrialState)
from celeb_smile.sweep.progress import params_label
from celeb_smile.sweep.search import combination
from celeb_smile.sweep.spec import SweepSpec, describe
from celeb_smile.sweep.tracking import RunSnapshot, Tracking
from celeb_smile.sweep.trial import Trial

S = TrialState
WALL_TIME_METRIC = "sweep_seconds"


class SweepRecord:
    def __init__(self, tracking: Tracking, spec: SweepSpec, code_version: str):
        self.tracking = tracking
        self.spec = spec
        self.sweep_id = spec.sweep_id()
        self.code_version = code_version
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.seconds_before = 0.0  # wall time of earlier controllers of this sweep
        self._finished_elsewhere: dict | None = None

    @property
    def client(self):
        return self.tracking.client

    # -- the parent run and its lease ------------------------------------------------------
    def find(self):
        """(the sweep's parent run or None, its trial runs); creates the experiment if new."""
        self.experiment_id = self.tracking.experiment_id(self.spec.experiment)
        return self.tracking.sweep_runs(self.experiment_id, self.sweep_id)

    def holder(self, parent) -> str | None:
        """Another live controller holding the sweep's lease, or None."""
        return None if parent is None else self.tracking.lease_holder(parent)

    def open(self, parent, settings: dict[str, str]) -> str | None:
        """Create or resume the parent run and take its lease; the winner's name if another
        controller took it first."""
        if parent is None:
            run = self.tracking.patient("create the sweep run", lambda: self.client.create_run(
                self.experiment_id, run_name=f"sweep-{self.sweep_id}",
                tags={SWEEP_ID_TAG: self.sweep_id, CODE_VERSION_TAG: self.code_version}))
            self.parent_id = run.info.run_id
            return self.tracking.take_lease(  # the settings logged while the lease settles
                self.parent_id, meanwhile=lambda: self.tracking.patient(
                    "log the sweep's settings", lambda: self._log_settings(settings)))
        self.parent_id = parent.info.run_id
        self.seconds_before = parent.data.metrics.get(WALL_TIME_METRIC, 0.0)
        if parent.info.status != "RUNNING" and CANCEL_TAG in parent.data.tags:
            # Started again after it ended: an old request to cancel is not this start's.
            self.tracking.patient("clear the old cancellation", lambda: self.client.delete_tag(
                self.parent_id, CANCEL_TAG))
        self.tracking.patient("resume the sweep run", lambda: self.client.update_run(
            self.parent_id, status="RUNNING"))
        return self.tracking.take_lease(self.parent_id)

    def _log_settings(self, settings: dict[str, str]) -> None:
        self.client.log_batch(self.parent_id, params=[Param(k, str(v))
                                                      for k, v in settings.items()])
        self.client.log_text(self.parent_id, json.dumps(describe(self.spec), indent=2,
                                                        default=str), "sweep.json")

    def renew_lease(self, wall_seconds: float) -> None:
        self.tracking.renew_lease(self.parent_id)
        self.record_wall_time(wall_seconds)

    def record_wall_time(self, wall_seconds: float) -> None:
        self.tracking.patient("record the sweep's time", lambda: self.client.log_metric(
            self.parent_id, WALL_TIME_METRIC, wall_seconds))

    def release(self, wall_seconds: float) -> None:
        self.record_wall_time(wall_seconds)
        self.tracking.release_lease(self.parent_id)

    def close(self, status: str, wall_seconds: float) -> None:
        self.release(wall_seconds)
        self.tracking.end_run(self.parent_id, status)

    # -- trials as recorded -----------------------------------------------------------------
    def trials(self, runs, adopt) -> list[Trial]:
        """This sweep's trials as a controller picks them up: the latest attempt of each
        index; `adopt(trial, run)` finds the Job or process of a run still in flight; a run
        that failed, was interrupted or ran other code is to run again (PENDING)."""
        return [self._trial_to_continue(self._trial(index, run), run, adopt)
                for index, run in _latest_attempts(runs)]

    def recorded_trials(self, runs) -> list[Trial]:
        """This sweep's trials as their latest runs stand, for watching it: nothing adopted,
        nothing to run again."""
        return [self._trial_as_recorded(self._trial(index, run), run)
                for index, run in _latest_attempts(runs)]

    def _trial(self, index: int, run) -> Trial:
        tags = run.data.tags
        trial = Trial(index, self._spec_params(run.data.params), sweep_id=self.sweep_id,
                      run_id=run.info.run_id, metrics=dict(run.data.metrics),
                      sweep_run_id=tags.get(SWEEP_RUN_TAG))
        trial.rung_passed = trial.rung_recorded = int(tags.get(RUNG_TAG, "0") or 0)
        trial.attempt = int(tags.get(ATTEMPT_TAG, "1") or 1)
        trial.disruptions = [d for d in tags.get(DISRUPTIONS_TAG, "").splitlines() if d]
        return trial

    def _trial_to_continue(self, trial: Trial, run, adopt) -> Trial:
        status, tags = run.info.status, run.data.tags
        if status == "FINISHED" and tags.get(CODE_VERSION_TAG) == self.code_version:
            trial.state = S.FINISHED
        elif tags.get(PAUSED_TAG) and status != "FINISHED":
            trial.state, trial.reason = S.PAUSED, "paused"
        elif status == "KILLED" and STOPPED_TAG in tags:
            trial.state, trial.reason = S.STOPPED, tags[STOPPED_TAG]
        elif status in ("RUNNING", "SCHEDULED"):
            trial.state, trial.handle = S.SCHEDULED, adopt(trial, run)
            trial.started = time.monotonic()
        else:  # failed, interrupted, or made by other code: run it again
            trial.state, trial.run_id, trial.metrics = S.PENDING, None, {}
        return trial

    @staticmethod
    def _trial_as_recorded(trial: Trial, run) -> Trial:
        status, tags = run.info.status, run.data.tags
        if tags.get(PAUSED_TAG) and status != "FINISHED":
            trial.state, trial.reason = S.PAUSED, "paused"
        elif status in ("RUNNING", "SCHEDULED"):
            trial.state = S.RUNNING if trial.metrics else S.SCHEDULED
        elif status == "KILLED" and STOPPED_TAG in tags:
            trial.state, trial.reason = S.STOPPED, tags[STOPPED_TAG]
        else:
            trial.state, trial.reason = S(status), tags.get(REASON_TAG, "")
        return trial

    def _spec_params(self, logged: dict[str, str]) -> dict[str, str]:
        """A run's parameters restricted to those the sweep sets (train.py logs them all)."""
        keys = set(self.spec.params) | set(self.spec.varying())
        return {k: v for k, v in logged.items() if k in keys}

    def warm_start_trials(self) -> list[Trial]:
        """FINISHED trial runs of the same code in the experiment, other than this sweep's:
        told to an adaptive search, never run here."""
        warm = []
        for run in self.tracking.runs(self.experiment_id, self._same_code_finished()):
            if run.data.tags.get(SWEEP_ID_TAG) == self.sweep_id or \
                    "mlflow.parentRunId" not in run.data.tags:
                continue  # this sweep's own, or a sweep's parent run
            # Every logged parameter: the search checks the run solved the same problem.
            warm.append(Trial(0, dict(run.data.params), state=S.FINISHED,
                              run_id=run.info.run_id, metrics=dict(run.data.metrics),
                              warm_start=True))
        return warm

    def finished_earlier(self, params: dict[str, str]):
        """A FINISHED run of these parameters by the same code, in any sweep (resume)."""
        if self._finished_elsewhere is None:
            self._finished_elsewhere = {}
            for run in self.tracking.runs(self.experiment_id, self._same_code_finished()):
                self._finished_elsewhere.setdefault(combination(run.data.params), run)
        return self._finished_elsewhere.get(combination(params))

    def _same_code_finished(self) -> str:
        return (f"attributes.status = 'FINISHED' and "
                f"tags.`{CODE_VERSION_TAG}` = '{self.code_version}'")

    # -- one trial's run --------------------------------------------------------------------
    def create_trial_run(self, trial: Trial, backend_name: str, backend_tags: dict) -> str:
        return self.tracking.create_run(self.experiment_id, trial.name, {
            "mlflow.parentRunId": self.parent_id, SWEEP_ID_TAG: self.sweep_id,
            SWEEP_RUN_TAG: self.parent_id, TRIAL_INDEX_TAG: str(trial.index),
            CODE_VERSION_TAG: self.code_version,
            PARAMS_TAG: params_label(trial.params, self.spec.varying()),
            "mlflow.source.type": "PROJECT", "mlflow.source.name": "celeb-smile",
            "mlflow.project.entryPoint": "main", "mlflow.project.backend": backend_name,
            **backend_tags})

    def record_rung(self, run_id: str, rung: int) -> None:
        """The rung a trial passed, so a restarted controller does not judge it there again."""
        self.tracking.log_tags(run_id, {RUNG_TAG: str(rung)})

    def record_end(self, trial: Trial, run_status: str, tags: dict, run_tags: dict) -> None:
        """How the trial ended, on its run: the reason (unless it finished: then a reason an
        earlier pod left, e.g. its SIGTERM handler's before a disruption, goes) and the
        status the trial's state maps to, written over whatever its process wrote, unless it
        is already that."""
        if trial.state != S.FINISHED:
            self.tracking.log_tags(trial.run_id, {REASON_TAG: trial.reason, **tags})
        elif REASON_TAG in run_tags:
            self.tracking.patient("clear an earlier pod's reason", lambda: self.client
                                  .delete_tag(trial.run_id, REASON_TAG))
        if run_status != trial.state.mlflow_status:
            self.tracking.end_run(trial.run_id, trial.state.mlflow_status)

    def snapshots(self, run_ids: list[str]) -> dict[str, RunSnapshot]:
        return self.tracking.snapshots(self.experiment_id, run_ids)


def _latest_attempts(runs) -> list[tuple[int, object]]:
    """(index, its latest run) of every trial, by index."""
    latest: dict[int, object] = {}
    for run in runs:
        index = run.data.tags.get(TRIAL_INDEX_TAG, "")
        if index.isdigit() and (int(index) not in latest or
                                run.info.start_time > latest[int(index)].info.start_time):
            latest[int(index)] = run
    return sorted(latest.items())
