"""Shared fixtures: a small training configuration, a real MLflow tracking server, and a fresh
sqlite tracking store per test (paths and the CI flag beside them; helpers live in
tests/helpers/)."""

import os
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

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


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """A migrated, empty sqlite store (creating one takes seconds: copy it per test)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(empty_store, tmp_path, monkeypatch):
    """A fresh sqlite tracking store for one test, as this process's and its children's
    (MLFLOW_TRACKING_URI); the test runs in its own directory (plots and logs land there)."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(uri)
    mlflow.end_run()
