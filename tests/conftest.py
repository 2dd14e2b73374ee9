"""Shared fixtures: a small training configuration and a real MLflow tracking server."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celeb_smile import local_server
from celeb_smile.constants import SWEEP_ID_TAG

PROJECT_DIR = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent  # the venv running pytest: its mlflow, its python
IN_CI = os.environ.get("CI") == "true"

# Small enough for seconds per run, large enough that the synthetic set is learnable.
SMALL_PARAMS = {
    "epochs": "2",
    "training_samples": "64",
    "validation_samples": "32",
    "batch_size": "16",
    "convolutions": "1",
    "dataset": "synthetic",
}


@pytest.fixture
def small_params() -> dict[str, str]:
    return dict(SMALL_PARAMS)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (sqlite store, served artifacts) on a free port; yields its URI.
    Containers started with --network host reach it at the same address."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with local_server.mlflow_server(f"sqlite:///{root}/mlflow.db", root) as uri:
        yield uri


def sweep_runs(client, experiment: str):
    """(parent sweep runs, trial runs) of an experiment."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if SWEEP_ID_TAG in r.data.tags and r not in children]
    return parents, children


def interrupt_when_training(process, client, experiment: str, signum: int,
                            timeout: float) -> tuple[bool, str]:
    """Once a trial of `experiment` has logged an epoch, send `signum` to the driver process.
    Returns (whether a trial trained in time, everything the driver printed); a driver that
    never got there, or outlives the signal, is killed."""
    trained = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if any("loss" in r.data.metrics for r in runs):
            trained = True
            process.send_signal(signum)
            break
        time.sleep(1)
    try:
        output, _ = process.communicate(timeout=180 if trained else 1)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return trained, output or ""
