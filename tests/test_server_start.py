"""The tracking server image's entrypoint (k8s/server/start.py): the auth app's configuration
as MLflow itself reads it."""

import stat

from mlflow.server.auth.config import read_auth_config

from tests.helpers.auth_server import server_entrypoint


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
