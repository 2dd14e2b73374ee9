"""The tracking server image's entrypoint (k8s/server/start.py): the auth app's configuration
as MLflow itself reads it, passwords read from their mounted files, and `mlflow server` started
with none of them in its environment."""

import os
import stat
import subprocess
import sys

import pytest

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


def _secret_files(tmp_path) -> tuple[dict[str, str], dict[str, str]]:
    """(the pod's environment as k8s/tracking/mlflow-deployment.yaml sets it, the secrets' values)."""
    entrypoint = server_entrypoint()
    values = {entrypoint.DATABASE_PASSWORD_FILE: "db:pass\\word",
              entrypoint.ADMIN_PASSWORD_FILE: "admin-password-" + "a" * 20,
              entrypoint.TRAINER_PASSWORD_FILE: "trainer-password-" + "t" * 20,
              entrypoint.FLASK_SECRET_KEY_FILE: "flask-key-" + "f" * 20}
    env = {"PGHOST": "postgres", "PGPORT": "5432", "PGUSER": "mlflow", "PGDATABASE": "mlflow",
           "PGPASSFILE": str(tmp_path / "run" / "pgpass"), "MLFLOW_AUTH_DATABASE": "mlflow_auth",
           "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_TRAINER_USERNAME": "trainer",
           "POD_NAMESPACE": "team-a", "PATH": os.environ["PATH"]}
    for variable, value in values.items():
        path = tmp_path / "secrets" / variable.lower()
        path.parent.mkdir(exist_ok=True)
        path.write_text(value + "\n")  # as an editor would leave it: the newline is dropped
        env[variable] = str(path)
    return env, values


def test_the_server_starts_with_no_password_in_its_environment(tmp_path, monkeypatch):
    """main() as in the pod: users synced with the files' passwords, libpq's password file
    written, and `mlflow server` exec'd with no password, no secret file's path, only the Flask
    key MLflow needs from its environment."""
    entrypoint = server_entrypoint()
    env, values = _secret_files(tmp_path)
    monkeypatch.setattr(os, "environ", dict(env, MLFLOW_AUTH_ADMIN_PASSWORD="stale-value"))
    monkeypatch.setattr(entrypoint, "AUTH_CONFIG_PATH", tmp_path / "auth" / "basic_auth.ini")
    synced, executed = [], []
    monkeypatch.setattr(entrypoint, "sync_users", lambda uri, users: synced.extend(users))
    monkeypatch.setattr(os, "execvpe", lambda file, argv, environment:
                        executed.append((argv, environment)))

    entrypoint.main(["--port", "5000"])

    assert synced == [("admin", values[entrypoint.ADMIN_PASSWORD_FILE], True),
                      ("trainer", values[entrypoint.TRAINER_PASSWORD_FILE], False)]
    ((argv, server_env),) = executed
    assert argv[:2] == ["mlflow", "server"] and argv[-2:] == ["--port", "5000"]
    assert not any(value in " ".join(argv) for value in values.values())
    flask_key = values[entrypoint.FLASK_SECRET_KEY_FILE]
    assert server_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == flask_key
    leaked = {key for key, value in server_env.items()
              if key != "MLFLOW_FLASK_SERVER_SECRET_KEY"
              and (value in values.values() or value in {env[v] for v in values}
                   or value == "stale-value")}
    assert leaked == set()
    assert not {"MLFLOW_AUTH_ADMIN_PASSWORD", "PGPASSWORD", "MLFLOW_TRAINER_PASSWORD"} & set(server_env)
    assert server_env["PGPASSFILE"] == env["PGPASSFILE"]
    assert server_env["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "auth" / "basic_auth.ini")
    pgpass = tmp_path / "run" / "pgpass"
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    assert pgpass.read_text() == "*:*:*:mlflow:db\\:pass\\\\word\n"
    assert values[entrypoint.ADMIN_PASSWORD_FILE] not in (tmp_path / "auth" / "basic_auth.ini").read_text()


def _pgpass_fields(line: str) -> list[str]:
    """libpq's reading of one password-file line (backslash escapes the next character)."""
    fields, field, escaped = [], "", False
    for character in line.rstrip("\n"):
        if escaped:
            field, escaped = field + character, False
        elif character == "\\":
            escaped = True
        elif character == ":":
            fields.append(field)
            field = ""
        else:
            field += character
    return fields + [field]


@pytest.mark.parametrize("password", ["plain", "with:colon", "back\\slash", "both\\:x:"])
def test_the_password_file_gives_libpq_the_password_unchanged(tmp_path, password):
    path = tmp_path / "pgpass"
    server_entrypoint().write_pgpass(path, "mlflow", password)
    assert _pgpass_fields(path.read_text()) == ["*", "*", "*", "mlflow", password]


@pytest.mark.parametrize("problem, message", [
    ("unset", "MLFLOW_AUTH_ADMIN_PASSWORD_FILE is not set"),
    ("missing", "cannot read"),
    ("empty", "is empty"),
])
def test_a_missing_secret_file_stops_the_start_with_one_line(tmp_path, problem, message):
    entrypoint = server_entrypoint()
    env, _ = _secret_files(tmp_path)
    path = env[entrypoint.ADMIN_PASSWORD_FILE]
    if problem == "unset":
        del env[entrypoint.ADMIN_PASSWORD_FILE]
    elif problem == "missing":
        os.remove(path)
    else:
        open(path, "w").close()
    with pytest.raises(SystemExit) as exit_info:
        entrypoint.read_secret(env, entrypoint.ADMIN_PASSWORD_FILE)
    assert message in str(exit_info.value) and "\n" not in str(exit_info.value)
