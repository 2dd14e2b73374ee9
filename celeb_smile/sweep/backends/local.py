"""Local trials: each one `python train.py ...` in its own process group, output in a log
file, reporting to the run the driver created (MLFLOW_RUN_ID)."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from celeb_smile.constants import (EXIT_TERMINATED, PID_TAG, SWEEP_ENV, TRAINER_HTTP_ENV,
                                   TrialState)
from celeb_smile.sweep.backends import Observation, entry_point_argv
from celeb_smile.sweep.processes import alive
from celeb_smile.sweep.spec import PROJECT_DIR

GRACE_SECONDS = 10  # a cancelled trial's processes get this long to exit on SIGTERM


class LocalTrial:
    def __init__(self, run_id: str, pid: int, log_path: Path, process=None):
        self.run_id = run_id
        self.pid = pid  # also the process group: each trial leads its own
        self.log_path = log_path
        self.process = process  # None when adopted from an earlier driver

    def describe(self) -> str:
        return f"pid {self.pid}"


class LocalBackend:
    name = "local"
    remote = False
    # A poll is a process check and a query or two: cheap, so twice a second (a trial that early
    # stopping rules out trains for at most about half a second more).
    poll_seconds = 0.5

    def __init__(self, work_dir: Path):
        self.log_dir = Path(work_dir) / "logs"
        self.calls = 0  # listing calls, for the sweep-overhead benchmark
        self.on_end = None  # the controller's: called as a trial's process exits

    def prepare(self, console) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def run_tags(self, trial) -> dict[str, str]:
        return {}

    def launch(self, trial, experiment_id: str, tracking_uri: str) -> LocalTrial:
        log_path = self.log_dir / f"trial-{trial.index:02d}-{trial.run_id[:8]}.log"
        env = dict(os.environ, MLFLOW_RUN_ID=trial.run_id, MLFLOW_EXPERIMENT_ID=experiment_id,
                   **{SWEEP_ENV: trial.sweep_id},
                   MLFLOW_TRACKING_URI=tracking_uri, **TRAINER_HTTP_ENV)
        argv = entry_point_argv(trial.params)
        argv[0] = sys.executable if argv[0] == "python" else argv[0]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, cwd=PROJECT_DIR, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.report_exit(process)
        return LocalTrial(trial.run_id, process.pid, log_path, process)

    def report_exit(self, process: subprocess.Popen) -> None:
        """Call `on_end` as `process` exits (a thread waits for it; `observe` still reads its
        exit code: Popen's own lock keeps the two apart)."""
        def wait_then_report():
            process.wait()
            if self.on_end is not None:
                self.on_end()

        threading.Thread(target=wait_then_report, daemon=True,
                         name=f"trial-exit-{process.pid}").start()

    def launched_tags(self, handle: LocalTrial) -> dict[str, str]:
        return {PID_TAG: str(handle.pid)}

    def observe(self, trials) -> dict[int, Observation]:
        self.calls += 1
        return {trial.index: self._observe(trial.handle) for trial in trials}

    def _observe(self, handle: LocalTrial) -> Observation:
        if handle.process is not None:
            code = handle.process.poll()
            if code is None:
                return Observation(TrialState.RUNNING)
            if code == 0:
                return Observation(TrialState.FINISHED, exit_code=0)
            if code == EXIT_TERMINATED:  # stopped by someone else's SIGTERM: not its failure
                return Observation(TrialState.SCHEDULED, relaunch=True, disrupted=(
                    f"process {handle.pid} terminated (SIGTERM, exit code 143)"))
            return Observation(TrialState.FAILED, self._reason(handle, code), exit_code=code)
        if _runs_trial(handle.pid, handle.run_id):
            return Observation(TrialState.RUNNING)
        # Adopted and gone: its exit code is lost; the run's own status tells the outcome.
        return Observation(TrialState.FINISHED, "process ended while no driver watched")

    def _reason(self, handle: LocalTrial, code: int) -> str:
        errors = [line for line in self.logs(handle).splitlines() if line.startswith("error: ")]
        return f"exit code {code}" + (f": {errors[-1]}" if errors else "")

    def adopt(self, trial, run) -> LocalTrial | None:
        pid = run.data.tags.get(PID_TAG)
        log_path = self.log_dir / f"trial-{trial.index:02d}-{trial.run_id[:8]}.log"
        if pid and pid.isdigit():
            return LocalTrial(trial.run_id, int(pid), log_path)
        return None

    def cancel(self, handle: LocalTrial) -> None:
        """SIGTERM the trial's whole process group, SIGKILL what outlives the grace period."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(handle.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while alive(handle.pid, group=True) and time.monotonic() < deadline + GRACE_SECONDS:
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(handle.pid, signal.SIGKILL)
            if handle.process is not None:
                handle.process.poll()  # reap the leader so the group can disappear
            time.sleep(0.2)

    def cancel_all(self, handles) -> None:
        for handle in handles:
            self.cancel(handle)

    def release(self, handle: LocalTrial) -> None:
        pass

    def logs(self, handle: LocalTrial) -> str:
        path = handle.log_path
        return path.read_text(errors="replace") if path.exists() else ""



def _runs_trial(pid: int, run_id: str) -> bool:
    """Is `pid` alive and the training process of `run_id` (not a recycled pid)?"""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"MLFLOW_RUN_ID={run_id}".encode() in environ.split(b"\0")
