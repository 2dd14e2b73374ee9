"""train.py's entry point: bad input becomes one line on stderr and exit code 2.

Every call to the tracking server goes through `patiently`: a server restarting mid-training
delays the run, it does not fail it."""

import os
import sys

from celeb_smile.constants import ERROR_TAG, EXIT_BAD_INPUT, EXIT_TRIAL_FAILED


def fail(message: str, exit_code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr)
    return exit_code


def train_main(argv=None) -> int:
    from celeb_smile.config import parse_args

    try:
        cfg = parse_args(argv)
    except ValueError as error:
        _record_failure_on_launched_run(str(error))
        return fail(str(error))

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
