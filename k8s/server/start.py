"""The tracking server's entrypoint: MLflow's basic-auth app on PostgreSQL, configured from the
pod's environment (k8s/tracking/mlflow-deployment.yaml fills it from the Secrets `make deploy`
generates).

Before `mlflow server` starts it
  - writes the auth app's ini (mode 600, on the pod's /tmp): users and grants live in their own
    PostgreSQL database, so they survive restarts; anonymous users get no permission at all;
    requests are authenticated by trial_rules.py (beside this file, put on PYTHONPATH), which
    authenticates as MLflow's basic auth does and keeps trial identities to a trial's job;
  - makes the `admin` and `trainer` users' passwords those of the Secrets (creating the users on
    first start), so the Secrets stay the one source of truth and rotating one is a redeploy;
  - derives from the pod's namespace the Host headers the server answers (--allowed-hosts).
Passwords come from the Secrets mounted as files (`<NAME>_FILE` names each one's path), read when
needed, never from environment variables. The database password goes into a libpq password
file (PGPASSFILE, mode 600, on a memory-backed volume), never into a URI or the environment.
`mlflow server` is started with an environment that holds no password and no secret file's path;
only the Flask key is passed in it, because MLflow reads that key from nowhere else.
Arguments are passed on to `mlflow server`.
"""

import os
import sys
from pathlib import Path

AUTH_CONFIG_PATH = Path("/tmp/mlflow-auth/basic_auth.ini")
AUTH_CACHE_TTL_S = 60
# MLflow's extension point for authentication: the module beside this file (trial_rules.py).
AUTHORIZATION_FUNCTION = "trial_rules:authenticate_request"
SERVER_MODULES_DIRECTORY = Path(__file__).resolve().parent
# Each secret's file (k8s/tracking/mlflow-deployment.yaml mounts the Secrets and names the files).
ADMIN_PASSWORD_FILE = "MLFLOW_AUTH_ADMIN_PASSWORD_FILE"
TRAINER_PASSWORD_FILE = "MLFLOW_TRAINER_PASSWORD_FILE"
DATABASE_PASSWORD_FILE = "MLFLOW_DATABASE_PASSWORD_FILE"
FLASK_SECRET_KEY_FILE = "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE"
FLASK_SECRET_KEY = "MLFLOW_FLASK_SERVER_SECRET_KEY"
# Never passed on to `mlflow server`: the admin needs no password there (start.py has made the
# user; MLflow reads MLFLOW_AUTH_ADMIN_PASSWORD only to create a missing admin), and libpq
# reads the database password from PGPASSFILE.
SECRET_VARIABLES = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRAINER_PASSWORD", "PGPASSWORD",
                    ADMIN_PASSWORD_FILE, TRAINER_PASSWORD_FILE, DATABASE_PASSWORD_FILE,
                    FLASK_SECRET_KEY_FILE)


def database_uri(database: str) -> str:
    return f"postgresql://{os.environ['PGUSER']}@{os.environ['PGHOST']}:{os.environ['PGPORT']}/{database}"


def allowed_hosts(namespace: str) -> str:
    service = f"mlflow.{namespace}"
    names = [f"{service}.svc.cluster.local:5000", f"{service}.svc.cluster.local",
             f"{service}.svc:5000", f"{service}:5000", "mlflow:5000",
             "localhost:*", "localhost", "127.0.0.1:*", "127.0.0.1"]
    return ",".join(names)


def read_secret(env, variable: str) -> str:
    """The secret in the file named by `variable` (a trailing newline dropped, as Docker's
    *_FILE convention does); an error naming the variable when it is unset, missing or empty."""
    path = env.get(variable)
    if not path:
        raise SystemExit(f"error: {variable} is not set (the path of a mounted Secret's file)")
    try:
        value = Path(path).read_text().rstrip("\r\n")
    except OSError as error:
        raise SystemExit(f"error: {variable}: cannot read {path}: {error.strerror}") from None
    if not value:
        raise SystemExit(f"error: {variable}: {path} is empty")
    return value


def write_pgpass(path: Path, username: str, password: str) -> None:
    """libpq's password file (host:port:database:user:password, ':' and '\\' escaped), mode 600:
    libpq ignores a file that others may read."""
    def escape(field: str) -> str:
        return field.replace("\\", "\\\\").replace(":", "\\:")

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"*:*:*:{escape(username)}:{escape(password)}\n")


def server_environment(env, flask_secret_key: str) -> dict[str, str]:
    """What `mlflow server` and its workers get: no password, no secret file's path; the Flask
    key only because MLflow reads it from MLFLOW_FLASK_SERVER_SECRET_KEY alone."""
    server_env = {key: value for key, value in env.items() if key not in SECRET_VARIABLES}
    server_env[FLASK_SECRET_KEY] = flask_secret_key
    return server_env


def write_auth_config(path: Path, auth_database_uri: str, admin_username: str) -> None:
    """No password in the file: start.py creates the admin user (sync_users) before MLflow."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = (
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {auth_database_uri}\n"
        f"admin_username = {admin_username}\n"
        f"authorization_function = {AUTHORIZATION_FUNCTION}\n"
        "grant_default_workspace_access = false\n"
        # A verified password is remembered (per process, keyed by an HMAC) for a minute
        # instead of re-running scrypt on every request: ~0.1 s of CPU each, which made every
        # tracking call of a sweep 0.5-1 s on a loaded node. The passwords are random tokens
        # from the Secrets and rotating one restarts the pods, so no stale entry outlives it.
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n"
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def with_server_modules(pythonpath: str | None) -> str:
    """PYTHONPATH with this directory first, so that MLflow's server imports trial_rules."""
    return os.pathsep.join([str(SERVER_MODULES_DIRECTORY), *filter(None, [pythonpath])])


def sync_users(auth_database_uri: str, users: list[tuple[str, str, bool]]) -> None:
    """Create each (username, password, is_admin) or set its password to the Secret's."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(auth_database_uri)  # creates or migrates the auth tables
    for username, password, is_admin in users:
        if not store.has_user(username):
            store.create_user(username, password, is_admin=is_admin)
            print(f"created MLflow user {username!r}", flush=True)
        elif not store.authenticate_user(username, password):
            store.update_user(username, password=password)
            print(f"MLflow user {username!r}: password set from its Secret", flush=True)
        if store.get_user(username).is_admin != is_admin:
            store.update_user(username, is_admin=is_admin)


def main(args: list[str]) -> None:
    env = os.environ
    write_pgpass(Path(env["PGPASSFILE"]), env["PGUSER"], read_secret(env, DATABASE_PASSWORD_FILE))
    auth_uri = database_uri(env["MLFLOW_AUTH_DATABASE"])
    admin = env["MLFLOW_AUTH_ADMIN_USERNAME"]
    write_auth_config(AUTH_CONFIG_PATH, auth_uri, admin)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(AUTH_CONFIG_PATH)
    env["PYTHONPATH"] = with_server_modules(env.get("PYTHONPATH"))
    sync_users(auth_uri, [(admin, read_secret(env, ADMIN_PASSWORD_FILE), True),
                          (env["MLFLOW_TRAINER_USERNAME"], read_secret(env, TRAINER_PASSWORD_FILE),
                           False)])
    command = ["mlflow", "server", "--app-name", "basic-auth",
               f"--backend-store-uri={database_uri(env['PGDATABASE'])}",
               f"--allowed-hosts={allowed_hosts(env['POD_NAMESPACE'])}", *args]
    os.execvpe(command[0], command,
               server_environment(env, read_secret(env, FLASK_SECRET_KEY_FILE)))


if __name__ == "__main__":
    main(sys.argv[1:])
