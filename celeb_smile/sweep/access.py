"""What a sweep's training pods may do on the tracking server.

Training pods log to MLflow as the `trainer` user (job_template.yaml, Secret mlflow-trainer),
which starts with no permission at all. The driver, authenticated as the person running it
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), grants it EDIT on the sweep's
experiment: enough to log params, metrics, tags and artifacts to its runs, not to delete runs,
experiments or artifacts, nor to touch registered models or their aliases.
"""

from mlflow.exceptions import MlflowException, RestException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response

TRAINER_USERNAME = "trainer"
TRAINER_PERMISSION = "EDIT"
# MLflow 3.17's basic-auth app (mlflow/server/auth/routes.py: GRANT_USER_PERMISSION, ...).
PERMISSIONS_API = "/api/3.0/mlflow/users/permissions"


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
