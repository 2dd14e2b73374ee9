"""Detached sweeps, watched and steered from any machine with the user's MLflow credentials and
kubeconfig: `driver.py --status`, `--attach SWEEP_ID`, `--cancel SWEEP_ID`, `--pause SWEEP_ID`,
`--resume SWEEP_ID`, `--logs SWEEP_ID`.

Everything is read from where it already is: the namespace's controller Jobs (which sweeps,
which pods) and MLflow (how each sweep and its trials stand). Attaching only reads; cancelling
asks the controller through its parent run (CANCEL_TAG, which it reads with every poll) and,
should no controller answer, does the controller's part itself.
"""

import json
import time

from celeb_smile.constants import (CANCEL_TAG, CODE_VERSION_TAG, COMPONENT_LABEL,
                                   EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TRIAL_FAILED,
                                   PAUSE_TAG, REASON_TAG, SWEEP_LABEL, TrialState)
from celeb_smile.sweep import detach, report
from celeb_smile.sweep.access import AccessError, close_trial_user, trial_username
from celeb_smile.sweep.backends.kubernetes import (REQUEST_TIMEOUT, TRIAL_COMPONENT, JobWatch,
                                                   delete_trial_secret, trial_secret_name)
from celeb_smile.sweep.progress import Progress, counted
from celeb_smile.sweep.record import SweepRecord
from celeb_smile.sweep.spec import spec_from_data

S = TrialState
ATTACH_POLL_S = 3.0
CANCEL_WAIT_S = 120  # for the controller to cancel the trials, before doing it here
PODS_GONE_WAIT_S = 90
EXIT_CODES = {"FINISHED": EXIT_OK, "FAILED": EXIT_TRIAL_FAILED, "KILLED": EXIT_INTERRUPTED}


class SweepNotFound(LookupError):
    pass


class Steering:
    """One namespace's detached sweeps, through the Kubernetes API and the tracking server."""

    def __init__(self, core, batch, namespace: str, tracking, console):
        self.core, self.batch, self.namespace = core, batch, namespace
        self.tracking = tracking  # celeb_smile.sweep.tracking.Tracking (None: the cluster's only)
        self.client = tracking.client if tracking is not None else None
        self.console = console

    # -- the controller Jobs ---------------------------------------------------------------
    def controller_alive(self, sweep_id: str) -> bool:
        """Whether the sweep's controller Job runs (or will start a pod again)."""
        return any(detach.job_active(job)
                   for job in detach.controller_jobs(self.batch, self.namespace, sweep_id))

    def forget_ended(self, sweep_id: str) -> None:
        """Delete the sweep's earlier controller Job, which ended (its name is reused)."""
        for job in detach.controller_jobs(self.batch, self.namespace, sweep_id):
            detach.delete_job(self.batch, self.namespace, job.metadata.name)
            self._wait_gone(job.metadata.name)

    def _wait_gone(self, job_name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
                job.metadata.name == job_name
                for job in detach.controller_jobs(self.batch, self.namespace)):
            time.sleep(1)

    # -- finding a sweep -------------------------------------------------------------------
    def find(self, sweep_id: str):
        """(experiment id, parent run) of a sweep: from its controller Job's annotation, else
        by searching every experiment."""
        jobs = detach.controller_jobs(self.batch, self.namespace, sweep_id)
        experiments = [job.metadata.annotations.get(detach.EXPERIMENT_ANNOTATION)
                       for job in jobs] or [e.experiment_id for e in self._experiments()]
        for experiment_id in filter(None, experiments):
            parent, _ = self.tracking.sweep_runs(experiment_id, sweep_id)
            if parent is not None:
                return experiment_id, parent
        raise SweepNotFound(f"no sweep {sweep_id} in namespace {self.namespace} or on the "
                            "tracking server (driver.py --status lists them)")

    def _experiments(self) -> list:
        return self.tracking.patient("list the experiments",
                                     lambda: self.client.search_experiments())

    def trials(self, experiment_id: str, sweep_id: str):
        """(parent run, its trials as the controller would load them, the spec)."""
        parent, runs = self.tracking.sweep_runs(experiment_id, sweep_id)
        spec = self._spec(parent)
        record = SweepRecord(self.tracking, spec, parent.data.tags.get(CODE_VERSION_TAG, ""))
        return parent, record.recorded_trials(runs), spec

    def _spec(self, parent):
        text = self.tracking.patient("read the sweep's definition", lambda: self.client
                                     .download_artifacts(parent.info.run_id, "sweep.json"))
        with open(text) as file:
            return spec_from_data(json.load(file))

    # -- driver.py --status ----------------------------------------------------------------
    def status(self) -> int:
        jobs = sorted(detach.controller_jobs(self.batch, self.namespace),
                      key=lambda job: job.metadata.creation_timestamp)
        if not jobs:
            self.console.print(f"no detached sweeps in namespace {self.namespace}")
            return EXIT_OK
        pods = self._controller_pods()
        for job in jobs:
            self.console.print(self._status_line(job, pods), highlight=False, soft_wrap=True)
        return EXIT_OK

    def _status_line(self, job, pods) -> str:
        sweep_id = job.metadata.labels[SWEEP_LABEL]
        experiment_id = job.metadata.annotations.get(detach.EXPERIMENT_ANNOTATION, "")
        pod = pods.get(sweep_id)
        where = f"pod {pod.metadata.name} {pod.status.phase}" if pod else "no pod"
        try:
            parent, trials, spec = self.trials(experiment_id, sweep_id)
        except Exception as error:  # noqa: BLE001 - one sweep's trouble, not the listing's
            return f"{sweep_id}  experiment {experiment_id}  (not readable: {error})  {where}"
        experiment = self.client.get_experiment(experiment_id).name
        in_flight = sum(t.state.in_flight for t in trials)
        done = counted(trials, (S.FINISHED, S.FAILED, S.STOPPED, S.KILLED, S.PAUSED))
        best = report.best_trial(trials, spec.objective)
        metric = spec.objective.metric
        best_text = f"best {metric}={best.metrics[metric]:.4f}" if best else "no best yet"
        state = "paused" if PAUSE_TAG in parent.data.tags else parent.info.status.lower()
        return (f"{sweep_id}  {experiment}  {state}  "
                f"{' · '.join(done + [f'{in_flight} in flight']) or 'no trials'}  "
                f"{best_text}  {where}")

    def _controller_pods(self) -> dict:
        """The newest controller pod of each sweep."""
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{COMPONENT_LABEL}={detach.COMPONENT}",
            _request_timeout=REQUEST_TIMEOUT).items
        newest = {}
        for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp):
            newest[pod.metadata.labels.get(SWEEP_LABEL)] = pod
        return newest

    # -- driver.py --attach SWEEP_ID -------------------------------------------------------
    def attach(self, sweep_id: str) -> int:
        """The sweep's live progress until it ends, then its summary. Reads only: Ctrl-C
        detaches and the sweep goes on."""
        experiment_id, _ = self.find(sweep_id)
        self.console.print(f"attached to sweep {sweep_id} (read-only; Ctrl-C detaches, the "
                           "sweep goes on)", highlight=False)
        shown: list = []
        parent = spec = None
        try:
            parent, trials, spec = self.trials(experiment_id, sweep_id)
            shown[:] = trials
            progress = Progress(self.console, shown, spec.varying(), spec.objective.metric,
                                spec.objective.direction)
            with progress:
                while parent.info.status == "RUNNING":
                    time.sleep(ATTACH_POLL_S)
                    parent, trials, _ = self.trials(experiment_id, sweep_id)
                    self._show_changes(progress, shown, trials)
        except KeyboardInterrupt:
            self.console.print(f"detached from sweep {sweep_id}; it goes on "
                               f"(driver.py --attach {sweep_id})", highlight=False)
            return EXIT_OK
        return self._summary(parent, shown, spec)

    @staticmethod
    def _show_changes(progress, shown: list, trials: list) -> None:
        before = {t.index: (t.state, t.reason) for t in shown}
        shown[:] = trials
        for trial in trials:
            if before.get(trial.index) != (trial.state, trial.reason):
                progress.event(trial, str(trial.state) + (f": {trial.reason}" if trial.reason
                                                          else ""))
        progress.refresh()

    def _summary(self, parent, trials, spec) -> int:
        rows = report.ranked(report.own_trials(trials), spec.objective)
        self.console.print(report.summary_table(rows, spec.varying(), spec.objective.metric))
        report.print_failures(self.console, rows)
        status = parent.info.status
        cancelled = parent.data.tags.get(CANCEL_TAG)
        self.console.print(f"sweep {spec.sweep_id()} ended {status}" +
                           (f" (cancelled by {cancelled})" if cancelled else ""),
                           highlight=False)
        return EXIT_CODES.get(status, EXIT_TRIAL_FAILED)

    # -- driver.py --cancel SWEEP_ID -------------------------------------------------------
    def cancel(self, sweep_id: str) -> int:
        experiment_id, parent = self.find(sweep_id)
        if parent.info.status != "RUNNING":
            self.console.print(f"sweep {sweep_id} already ended {parent.info.status}")
            self._forget_trial_user(experiment_id, sweep_id)  # a crashed controller's
            return EXIT_OK
        by = detach.who()
        self.tracking.patient("ask for the cancellation", lambda: self.client.set_tag(
            parent.info.run_id, CANCEL_TAG, by))
        self.console.print(f"asked sweep {sweep_id}'s controller to cancel its trials",
                           highlight=False)
        if not self._wait_for_end(parent.info.run_id):
            self.console.print(f"no controller answered within {CANCEL_WAIT_S}s: cancelling "
                               "here", highlight=False)
            self._cancel_here(experiment_id, sweep_id, parent.info.run_id, by)
        left = self._wait_for_no_trial_pods(sweep_id)
        self._forget_trial_user(experiment_id, sweep_id)
        killed = sum(t.state == S.KILLED for t in self.trials(experiment_id, sweep_id)[1])
        self.console.print(f"sweep {sweep_id} cancelled by {by}: {killed} trials KILLED; "
                           + (f"trial pods still there: {', '.join(left)}" if left
                              else "no trial pod left"), highlight=False)
        return EXIT_OK if not left else EXIT_TRIAL_FAILED

    def _forget_trial_user(self, experiment_id: str, sweep_id: str) -> None:
        """The sweep's trial user and its Secret, which its controller deletes when the sweep
        ends, unless it died first (already gone: nothing to do)."""
        from kubernetes.client.rest import ApiException

        username = trial_username(experiment_id, sweep_id)
        try:
            delete_trial_secret(self.core, self.namespace, username)
            close_trial_user(self.tracking.tracking_uri, username)
        except ApiException as error:
            self.console.print(f"error: the sweep's Secret {trial_secret_name(username)} and "
                               f"trial user were not deleted: {error.status} {error.reason}",
                               style="red", highlight=False, markup=False)
        except AccessError as error:
            self.console.print(f"error: {error}", style="red", highlight=False, markup=False)

    def _wait_for_end(self, parent_run_id: str) -> bool:
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            run = self.tracking.patient("read the sweep run",
                                        lambda: self.client.get_run(parent_run_id))
            if run.info.status != "RUNNING":
                return True
            time.sleep(2)
        return False

    def _cancel_here(self, experiment_id: str, sweep_id: str, parent_run_id: str,
                     by: str) -> None:
        """What the controller would have done: its Job first (so no pod of it starts the
        sweep again), the trials' Jobs and pods, then the runs."""
        detach.delete_job(self.batch, self.namespace, detach.controller_job_name(sweep_id))
        JobWatch(self.core, self.batch, self.namespace, sweep_id).cancel_all()
        _, runs = self.tracking.sweep_runs(experiment_id, sweep_id)
        for run in runs:
            if run.info.status in ("RUNNING", "SCHEDULED"):
                self.tracking.log_tags(run.info.run_id, {REASON_TAG: f"sweep cancelled by {by}"})
                self.tracking.end_run(run.info.run_id, "KILLED")
        self.tracking.end_run(parent_run_id, "KILLED")

    def _wait_for_no_trial_pods(self, sweep_id: str) -> list[str]:
        deadline = time.monotonic() + PODS_GONE_WAIT_S
        while True:
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector=f"{SWEEP_LABEL}={sweep_id},"
                                               f"{COMPONENT_LABEL}={TRIAL_COMPONENT}",
                _request_timeout=REQUEST_TIMEOUT).items
            left = [p.metadata.name for p in pods]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(2)

    # -- driver.py --pause / --resume SWEEP_ID ---------------------------------------------
    def pause(self, sweep_id: str) -> int:
        """Ask the sweep's controller to stop its trials at their last checkpoint; wait until
        none is in flight."""
        experiment_id, parent = self._running(sweep_id)
        if parent is None:
            return EXIT_BAD_INPUT
        self.tracking.patient("ask for the pause", lambda: self.client.set_tag(
            parent.info.run_id, PAUSE_TAG, detach.who()))
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            _, trials, _ = self.trials(experiment_id, sweep_id)
            if not any(t.state.in_flight for t in trials):
                paused = sum(t.state == S.PAUSED for t in trials)
                self.console.print(f"sweep {sweep_id} paused: {paused} trials stopped at their "
                                   f"last checkpoint; driver.py --resume {sweep_id} goes on",
                                   highlight=False)
                return EXIT_OK
            time.sleep(2)
        self.console.print(f"sweep {sweep_id}: asked to pause, but trials are still in flight "
                           f"after {CANCEL_WAIT_S}s (is its controller running? --status)")
        return EXIT_TRIAL_FAILED

    def resume(self, sweep_id: str) -> int:
        """Lift a pause: the controller relaunches each paused trial from its checkpoint."""
        experiment_id, parent = self.find(sweep_id)
        if PAUSE_TAG not in parent.data.tags:
            self.console.print(f"sweep {sweep_id} is not paused")
            return EXIT_OK
        self.tracking.patient("lift the pause", lambda: self.client.delete_tag(
            parent.info.run_id, PAUSE_TAG))
        alive = parent.info.status == "RUNNING" and self.tracking.lease_holder(parent)
        self.console.print(f"sweep {sweep_id} resumed: " + (
            "its controller relaunches the paused trials from their checkpoints" if alive else
            "no controller runs it now: run the sweep's own command to go on"),
            highlight=False)
        return EXIT_OK

    def _running(self, sweep_id: str):
        experiment_id, parent = self.find(sweep_id)
        if parent.info.status != "RUNNING":
            self.console.print(f"sweep {sweep_id} already ended {parent.info.status}")
            return experiment_id, None
        return experiment_id, parent

    # -- driver.py --logs SWEEP_ID ---------------------------------------------------------
    def logs(self, sweep_id: str) -> int:
        from kubernetes.client.rest import ApiException

        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{COMPONENT_LABEL}={detach.COMPONENT},"
                                           f"{SWEEP_LABEL}={sweep_id}",
            _request_timeout=REQUEST_TIMEOUT).items
        if not pods:
            print(f"error: no controller pod of sweep {sweep_id} in namespace "
                  f"{self.namespace}")
            return EXIT_BAD_INPUT
        for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp):
            print(f"== {pod.metadata.name} ({pod.status.phase})", flush=True)
            try:
                response = self.core.read_namespaced_pod_log(
                    pod.metadata.name, self.namespace, _preload_content=False,
                    _request_timeout=(5, 60))
                print(response.data.decode("utf-8", errors="replace"), end="", flush=True)
            except ApiException as error:
                print(f"(no log: {error.reason})")
        return EXIT_OK

