"""Shared fixtures: a small training configuration and a real MLflow tracking server (paths
and the CI flag beside them; helpers live in tests/helpers/)."""

import os
import sys
from pathlib import Path

import pytest

from celeb_smile import local_server

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
