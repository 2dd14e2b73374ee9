"""A local `mlflow server --app-name basic-auth` configured like the cluster's: its ini written
by the server image's own entrypoint (k8s/server/start.py), its authorization function
(k8s/server/trial_rules.py) imported from the PYTHONPATH the entrypoint sets, an admin from the
environment."""

import contextlib
import importlib.util
import os
import secrets
from pathlib import Path

from celeb_smile import local_server
from tests.conftest import PROJECT_DIR

SERVER_DIRECTORY = PROJECT_DIR / "k8s" / "server"


def server_module(name: str, as_name: str):
    """k8s/server/<name>.py as a module (the server image's files, not a package)."""
    spec = importlib.util.spec_from_file_location(as_name, SERVER_DIRECTORY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def server_entrypoint():
    return server_module("start", "mlflow_server_start")


def trial_rules():
    return server_module("trial_rules", "mlflow_server_trial_rules")


def sweep_trial_users():
    """k8s/server/sweep_trial_users.py, which imports trial_rules as the server does (from the
    PYTHONPATH the entrypoint sets)."""
    import sys

    if str(SERVER_DIRECTORY) not in sys.path:
        sys.path.append(str(SERVER_DIRECTORY))
    return server_module("sweep_trial_users", "mlflow_server_sweep_trial_users")


@contextlib.contextmanager
def basic_auth_server(root: Path):
    """Yield (uri, admin credentials); the `trainer` user is created by the caller."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "basic_auth.ini"
    entrypoint = server_entrypoint()
    entrypoint.write_auth_config(config, f"sqlite:///{root}/auth.db", "admin")
    admin = ("admin", secrets.token_urlsafe(24))
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
           "PYTHONPATH": entrypoint.with_server_modules(os.environ.get("PYTHONPATH")),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(24),
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with local_server.mlflow_server(f"sqlite:///{root}/mlflow.db", root, app_name="basic-auth",
                                    env=env) as uri:
        yield uri, admin
