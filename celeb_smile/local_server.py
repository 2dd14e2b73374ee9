"""A throwaway `mlflow server` on a free loopback port, for tests and benchmarks."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 60.0, process=None) -> None:
    """Until `url` answers; raise if `process` (its server) exits first or time runs out."""
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


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, root: Path, workers: int = 1,
                  app_name: str | None = None, env: dict[str, str] | None = None):
    """Serve `backend_store_uri` (artifacts under `root`, served by the server); yield its URI.
    `app_name` (e.g. "basic-auth") and `env` (its settings) are passed on to `mlflow server`.
    The server and its workers are stopped together afterwards."""
    root = Path(root)
    port = free_port()
    log_path = root / f"mlflow-server-{port}.log"
    mlflow_cli = Path(sys.executable).parent / "mlflow"  # the running environment's MLflow
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(mlflow_cli), "server", "--host", LOOPBACK, "--port", str(port),
             "--backend-store-uri", backend_store_uri, "--serve-artifacts",
             "--artifacts-destination", str(root / "artifacts"), "--workers", str(workers),
             *(["--app-name", app_name] if app_name else [])],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})})
    uri = f"http://{LOOPBACK}:{port}"
    try:
        try:
            wait_for_http(f"{uri}/health", timeout=180, process=process)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; server log:\n{log_path.read_text()[-3000:]}") from None
        yield uri
    finally:
        _stop_group(process)


def _stop_group(process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
