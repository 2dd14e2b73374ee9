"""train.py's entry point: bad input becomes one line on stderr and exit code 2.

Every call to the tracking server goes through `patiently`: a server restarting mid-training
delays the run, it does not fail it.

SIGTERM (the trial's Job or pod deleted, the pod evicted or preempted, the driver cancelling
a local trial) stops training within one step and the process exits 143. The run ends KILLED
with the reason, unless whoever sent the signal already ended it (then it is left exactly as
they left it), or a sweep's controller watches the trial (CELEB_SMILE_SWEEP_ID): then the run
is left to the controller, which records how the trial ended (cancelled, stopped, failed, or
disrupted and resumed from its checkpoint), so no two writers race. As a container's PID 1,
Python would otherwise ignore SIGTERM until the SIGKILL that follows it.
"""

import os
import signal
import sys

from celeb_smile.constants import (ERROR_TAG, EXIT_BAD_INPUT, EXIT_TERMINATED, EXIT_TRIAL_FAILED,
                                   REASON_TAG, SWEEP_ENV)
from celeb_smile.retry import Refused

TERMINATED_REASON = ("terminated by SIGTERM (its Job or pod was deleted, or the pod evicted "
                     "or preempted)")
# The run's end is written within this long after a SIGTERM: well inside the Job template's
# terminationGracePeriodSeconds (30), after which Kubernetes sends SIGKILL.
TERMINATION_PATIENCE_S = 15


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM: not an Exception, so no handler on the way
    mistakes it for a training error."""


def fail(message: str, exit_code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr)
    return exit_code


def train_main(argv=None) -> int:
    from celeb_smile.config import parse_args

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        try:
            cfg = parse_args(argv)
        except ValueError as error:
            _record_failure_on_launched_run(str(error))
            return fail(str(error))
        return _train_and_record(cfg)
    except Terminated:
        _end_terminated()
    except Refused as error:  # the run's end would be refused too: whoever launched it ends it
        fail(str(error))
        _leave(EXIT_TRIAL_FAILED)


def _train_and_record(cfg) -> int:
    import mlflow

    from celeb_smile.retry import patiently
    from celeb_smile.training import train

    print("config: " + " ".join(f"{k}={v}" for k, v in cfg.as_params().items()), flush=True)
    # Read once: mlflow.start_run takes MLFLOW_RUN_ID out of the environment before its first
    # request, and a retry without it would create another run.
    launched_run = os.environ.get("MLFLOW_RUN_ID")
    run_id = patiently("open the run", lambda: mlflow.start_run(run_id=launched_run)).info.run_id
    client = mlflow.MlflowClient()
    try:
        train(cfg)
    except Refused:
        raise
    except Exception as error:
        message = str(error) if isinstance(error, ValueError) else \
            f"{type(error).__name__}: {error}"[:5000]
        patiently("record the error", lambda: client.set_tag(run_id, ERROR_TAG, message))
        _end_run(client, run_id, "FAILED")
        if isinstance(error, ValueError):  # e.g. the dataset is not where data_dir says
            return fail(message, exit_code=EXIT_TRIAL_FAILED)
        raise
    _end_run(client, run_id, "FINISHED")
    return 0


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _end_terminated():
    """End the run KILLED with the reason if it is still RUNNING, then leave at once."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM cuts nothing short
    print(f"error: {TERMINATED_REASON}", file=sys.stderr, flush=True)
    if os.environ.get(SWEEP_ENV):
        print(f"the run is left to sweep {os.environ[SWEEP_ENV]}'s controller", file=sys.stderr,
              flush=True)
        _leave(EXIT_TERMINATED)
    try:
        _end_run_unless_ended(_current_run_id(), "KILLED", TERMINATED_REASON)
    except Exception as error:  # noqa: BLE001 - leaving anyway; the driver records the end
        print(f"the run's end was not recorded: {type(error).__name__}: {error}",
              file=sys.stderr, flush=True)
    _leave(EXIT_TERMINATED)


def _leave(exit_code: int):
    """Exit now, skipping interpreter-exit handlers: MLflow's would end the active run
    FINISHED."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def _current_run_id() -> str | None:
    import mlflow

    active = mlflow.active_run()
    return active.info.run_id if active else os.environ.get("MLFLOW_RUN_ID")


def _end_run_unless_ended(run_id: str | None, status: str, reason: str) -> None:
    """Whoever ended the run first (the driver cancelling, stopping or failing the trial) has
    the last word: a run no longer RUNNING keeps its status and tags."""
    if not run_id:
        return
    from mlflow import MlflowClient

    from celeb_smile.retry import patiently

    client = MlflowClient()
    current = patiently("read the run", lambda: client.get_run(run_id),
                        patience_s=TERMINATION_PATIENCE_S).info.status
    if current != "RUNNING":
        print(f"run {run_id} already ended {current}: left as it is", file=sys.stderr,
              flush=True)
        return
    patiently("record the reason", lambda: client.set_tag(run_id, REASON_TAG, reason),
              patience_s=TERMINATION_PATIENCE_S)
    patiently("end the run", lambda: client.set_terminated(run_id, status),
              patience_s=TERMINATION_PATIENCE_S)


def _end_run(client, run_id: str, status: str) -> None:
    import mlflow

    from celeb_smile.retry import patiently, tracking_transient

    try:
        mlflow.end_run(status)  # forgets the active run, then terminates it on the server
    except Exception as error:
        if not tracking_transient(error):
            raise
        patiently("end the run", lambda: client.set_terminated(run_id, status))


def _record_failure_on_launched_run(message: str) -> None:
    """Under `mlflow run` the run exists before this process starts: end it FAILED with the
    reason, since nothing else would (the kubernetes backend never updates a run's status)."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    from celeb_smile.retry import patiently

    tags = [RunTag(ERROR_TAG, message), RunTag("mlflow.note.content", f"Rejected: {message}")]
    client = MlflowClient()
    patiently("record the rejection", lambda: client.log_batch(run_id, tags=tags))
    patiently("end the run", lambda: client.set_terminated(run_id, "FAILED"))
