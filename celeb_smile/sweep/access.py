"""What a sweep's training pods may do on the tracking server.

Each sweep on a server with MLflow's basic-auth app has a trial user of its own,
`trial-<experiment id>-<sweep id>` (TRIAL_USER_PREFIX), made with a random password when the
sweep starts and deleted when it ends: the driver, authenticated as the person running it
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), who must MANAGE the sweep's experiment,
creates it (the server's k8s/server/sweep_trial_users.py lets such a user do that, no admin
needed) and grants it EDIT on the experiment: enough to log params, metrics, tags and artifacts
to the runs tagged for it (TRIAL_USER_TAG; k8s/server/trial_rules.py keeps it to a trial's job),
not to delete runs, experiments or artifacts, nor to touch registered models or their aliases.
Its password reaches the pods through a Secret of the sweep (backends/kubernetes.py).

A single `mlflow run --backend kubernetes` started through scripts/tracking.py gets a trial user
of its own the same way, `trial-<experiment id>-<random id>`, for that run only (single_run.py).
The shared `trainer` user (Secret mlflow-trainer), which the Job template names, is kept for a
plain `mlflow run` without the wrapper: `grant_trainer` gives it EDIT on one experiment.
"""

import secrets

from mlflow.exceptions import MlflowException, RestException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response

from celeb_smile.constants import TRIAL_USER_PREFIX

TRAINER_USERNAME = "trainer"
TRAINER_PERMISSION = "EDIT"  # the trainer's, and each sweep's trial user's
# MLflow 3.17's basic-auth app (mlflow/server/auth/routes.py: GRANT_USER_PERMISSION, ...).
PERMISSIONS_API = "/api/3.0/mlflow/users/permissions"
USERS_API = "/api/2.0/mlflow/users"  # CREATE_USER, DELETE_USER
TRIAL_PASSWORD_BYTES = 32


class AccessError(RuntimeError):
    """The grant was refused (e.g. the driver's user may not manage the experiment)."""


def grant_trainer(tracking_uri: str, experiment_id: str, username: str = TRAINER_USERNAME,
                  announce=print) -> None:
    """Give `username` EDIT on `experiment_id` (idempotent: a repeated grant changes nothing).
    Against a server without MLflow's basic-auth app (a local `mlflow server`, sqlite) there is
    nobody to grant anything to: says so through `announce` and returns."""
    if not tracking_uri.startswith(("http://", "https://")):
        announce(f"tracking store {tracking_uri} has no users: trainer access not needed")
        return
    client = _PermissionsClient(tracking_uri)
    experiment_id = str(experiment_id)
    try:
        _grant(client, username, experiment_id)
    except MlflowException as error:
        if _no_such_route(error):
            announce(f"tracking server {tracking_uri} has no authentication (no basic-auth "
                     f"app): trainer access not needed")
            return
        reason = error.message.splitlines()[0]
        raise AccessError(f"cannot grant {username!r} {TRAINER_PERMISSION} on experiment "
                          f"{experiment_id}: {reason}") from None


# -- a sweep's trial user -------------------------------------------------------------------
def trial_username(experiment_id: str, sweep_id: str) -> str:
    """The sweep's trial user (k8s/server/sweep_trial_users.py's SWEEP_TRIAL_USER)."""
    return f"{TRIAL_USER_PREFIX}{experiment_id}-{sweep_id}"


def has_users(tracking_uri: str) -> bool:
    """Whether the tracking store may have users at all (a server, not a file or a database)."""
    return tracking_uri.startswith(("http://", "https://"))


def open_trial_user(tracking_uri: str, username: str, experiment_id: str,
                    whose: str = "the sweep's") -> str | None:
    """Make `username` anew with a random password and EDIT on `experiment_id`; the password,
    or None when the server has no authentication (nobody to make). An earlier user of that
    name (a crashed sweep's) is deleted first, so no old password still works."""
    if not has_users(tracking_uri):
        return None
    users, password = _UsersClient(tracking_uri), secrets.token_urlsafe(TRIAL_PASSWORD_BYTES)
    try:
        users.create_anew(username, password)
        _grant(_PermissionsClient(tracking_uri), username, str(experiment_id))
    except MlflowException as error:
        if _no_such_route(error):
            return None
        raise AccessError(f"cannot make {whose} trial user {username!r}: "
                          f"{_reason(error)}") from None
    return password


def close_trial_user(tracking_uri: str, username: str) -> None:
    """Delete `username` (its grants go with it); one already gone, or a server without
    authentication, is fine."""
    if not has_users(tracking_uri):
        return
    try:
        _UsersClient(tracking_uri).delete(username)
    except MlflowException as error:
        if not _no_such_route(error):
            raise AccessError(f"cannot delete the sweep's trial user {username!r}: "
                              f"{_reason(error)}") from None


def _reason(error: MlflowException) -> str:
    """The server's own words: a refusal's plain-text line, or MLflow's message."""
    text = error.message
    if "Response body: " in text:
        text = text.split("Response body: ", 1)[1].strip("'\"")
    return text.splitlines()[0]


def _no_such_route(error: MlflowException) -> bool:
    """A server without the auth app answers its routes with a plain (non-JSON) 404; an
    unknown user or experiment is a JSON error (RestException) and a real failure."""
    if isinstance(error, RestException):
        return error.error_code == "ENDPOINT_NOT_FOUND"
    return "failed with error code 404" in error.message


def _grant(client, username: str, experiment_id: str) -> None:
    """The server refuses a second grant on the same experiment: an existing EDIT is kept,
    any other permission replaced by EDIT (the trainer needs no more, and no less)."""
    try:
        client.grant(username, experiment_id, TRAINER_PERMISSION)
    except RestException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if client.permission(username, experiment_id) != TRAINER_PERMISSION:
            client.revoke(username, experiment_id)
            client.grant(username, experiment_id, TRAINER_PERMISSION)


class _UsersClient:
    """MLflow's create-user and delete-user calls, as its AuthServiceClient makes them."""

    def __init__(self, tracking_uri: str):
        self.host = get_default_host_creds(tracking_uri)

    def create_anew(self, username: str, password: str) -> None:
        """Create the user; one of that name already there is deleted and created again."""
        try:
            self._create(username, password)
        except RestException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            self.delete(username)
            self._create(username, password)

    def _create(self, username: str, password: str) -> None:
        self._call("create", "POST", json={"username": username, "password": password})

    def delete(self, username: str) -> None:
        """A user that does not exist counts as deleted."""
        try:
            self._call("delete", "DELETE", json={"username": username})
        except RestException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

    def _call(self, action: str, method: str, **kwargs) -> None:
        endpoint = f"{USERS_API}/{action}"
        verify_rest_response(http_request(self.host, endpoint, method, **kwargs), endpoint)


class _PermissionsClient:
    """The experiment-permission calls of MLflow's AuthServiceClient, as it makes them, without
    importing `mlflow.server` for it: that loads the server's whole Flask app, 1.5 s of every
    sweep's start on 2 cores."""

    def __init__(self, tracking_uri: str):
        self.host = get_default_host_creds(tracking_uri)

    def grant(self, username: str, experiment_id: str, permission: str) -> None:
        self._call("grant", "POST", json={**self._target(username, experiment_id),
                                          "permission": permission})

    def revoke(self, username: str, experiment_id: str) -> None:
        self._call("revoke", "POST", json=self._target(username, experiment_id))

    def permission(self, username: str, experiment_id: str) -> str:
        return self._call("get", "GET", params=self._target(username, experiment_id))[
            "permission"]

    @staticmethod
    def _target(username: str, experiment_id: str) -> dict:
        return {"username": username, "resource_type": "experiment",
                "resource_id": experiment_id}

    def _call(self, action: str, method: str, **kwargs) -> dict:
        endpoint = f"{PERMISSIONS_API}/{action}"
        response = verify_rest_response(http_request(self.host, endpoint, method, **kwargs),
                                        endpoint)
        return response.json() if response.content else {}
