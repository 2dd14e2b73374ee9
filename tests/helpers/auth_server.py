"""A local `mlflow server --app-name basic-auth` configured like the cluster's: its ini written
by the server image's own entrypoint (k8s/server/start.py), an admin from the environment."""

import contextlib
import importlib.util
import secrets
from pathlib import Path

from celeb_smile import local_server
from tests.conftest import PROJECT_DIR


def server_entrypoint():
    """k8s/server/start.py as a module (it is the server image's script, not a package)."""
    spec = importlib.util.spec_from_file_location("mlflow_server_start",
                                                  PROJECT_DIR / "k8s" / "server" / "start.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def basic_auth_server(root: Path):
    """Yield (uri, admin credentials); the `trainer` user is created by the caller."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "basic_auth.ini"
    server_entrypoint().write_auth_config(config, f"sqlite:///{root}/auth.db", "admin")
    admin = ("admin", secrets.token_urlsafe(24))
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(24),
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with local_server.mlflow_server(f"sqlite:///{root}/mlflow.db", root, app_name="basic-auth",
                                    env=env) as uri:
        yield uri, admin
