"""train.py's entry point: bad input becomes one line on stderr and exit code 2."""

import os
import sys

EXIT_BAD_INPUT = 2
ERROR_TAG = "celeb_smile.error"  # set on a run that was rejected or crashed


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

    from celeb_smile.training import train

    print("config: " + " ".join(f"{k}={v}" for k, v in cfg.as_params().items()), flush=True)
    with mlflow.start_run():
        try:
            train(cfg)
        except ValueError as error:  # e.g. the dataset is not where data_dir says
            mlflow.set_tag(ERROR_TAG, str(error))
            mlflow.end_run("FAILED")
            return fail(str(error), exit_code=1)
        except Exception as error:
            mlflow.set_tag(ERROR_TAG, f"{type(error).__name__}: {error}"[:5000])
            raise
    return 0


def _record_failure_on_launched_run(message: str) -> None:
    """Under `mlflow run` the run exists before this process starts: end it FAILED with the
    reason, since nothing else would (the kubernetes backend never updates a run's status)."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, ERROR_TAG, message)
    client.set_tag(run_id, "mlflow.note.content", f"Rejected: {message}")
    client.set_terminated(run_id, "FAILED")
