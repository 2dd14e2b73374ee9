"""Shared fixtures: a small training configuration and a real MLflow tracking server."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 60.0, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process serving {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (sqlite store, served artifacts) on a free port; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    host = "0.0.0.0"  # also reachable from containers on the host network
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [str(BIN_DIR / "mlflow"), "server", "--host", host, "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", timeout=90, process=process)
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def sweep_runs(client, experiment: str):
    """(parent sweep runs, trial runs) of an experiment."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    parents = [r for r in runs if "celeb_smile.sweep_id" in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
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
