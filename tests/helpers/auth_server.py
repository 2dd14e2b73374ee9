"""A local `mlflow server --app-name basic-auth` configured like the cluster's (start.py): no
permission for anyone by default, an admin from the environment, a trainer user."""

import contextlib
import secrets
from pathlib import Path

from celeb_smile import local_server


@contextlib.contextmanager
def basic_auth_server(root: Path):
    """Yield (uri, admin credentials); the `trainer` user is created by the caller."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                      f"database_uri = sqlite:///{root}/auth.db\nadmin_username = admin\n")
    admin = ("admin", secrets.token_urlsafe(24))
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(24),
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with local_server.mlflow_server(f"sqlite:///{root}/mlflow.db", root, app_name="basic-auth",
                                    env=env) as uri:
        yield uri, admin
