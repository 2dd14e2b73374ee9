"""The tracking server image's entrypoint (k8s/server/start.py): the auth app's configuration
as MLflow itself reads it."""

import os
import stat
import subprocess
import sys

from mlflow.server.auth.config import read_auth_config

from tests.helpers.auth_server import SERVER_DIRECTORY, server_entrypoint


def test_the_auth_config_denies_by_default_and_caches_verified_passwords(tmp_path, monkeypatch):
    path = tmp_path / "auth" / "basic_auth.ini"
    server_entrypoint().write_auth_config(path, "postgresql://mlflow@db:5432/auth", "admin")
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    config = read_auth_config()
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.admin_username == "admin"
    assert config.database_uri == "postgresql://mlflow@db:5432/auth"
    assert 0 < config.auth_cache_ttl_seconds <= 300
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.authorization_function == "trial_rules:authenticate_request"


def test_mlflow_finds_the_authorization_function_on_the_path_the_entrypoint_sets(tmp_path):
    """As the server does: MLflow's own loader, the entrypoint's PYTHONPATH, no project."""
    entrypoint = server_entrypoint()
    assert entrypoint.with_server_modules("/opt/x") == f"{SERVER_DIRECTORY}{os.pathsep}/opt/x"
    code = ("import sys; sys.modules['celeb_smile'] = None\n"
            "from mlflow.server.auth import get_auth_func\n"
            f"function = get_auth_func({entrypoint.AUTHORIZATION_FUNCTION!r})\n"
            "print(sys.modules[function.__module__].__file__)")
    env = dict(os.environ, PYTHONPATH=entrypoint.with_server_modules(None))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(SERVER_DIRECTORY / "trial_rules.py")
