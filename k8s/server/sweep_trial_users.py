"""A sweep's trial user, made and removed by whoever runs the sweep: MLflow's basic-auth app lets
only admins create and delete users, and a person running sweeps is no admin.

One MLflow user per sweep, `trial-<experiment id>-<sweep id>`, logs its trials' runs (the sweep
driver creates it when the sweep starts and deletes it when the sweep ends; trial_rules.py keeps
it to a trial's job). This module, called by trial_rules.authenticate_request (the auth app's
`authorization_function`, MLflow's documented extension point) for users who are neither
admins nor trial identities, answers two of MLflow's own routes itself:

  POST   /api/2.0/mlflow/users/create {"username": "trial-<E>-<S>", "password": ...}
  DELETE /api/2.0/mlflow/users/delete {"username": "trial-<E>-<S>"}

when the sender may MANAGE experiment <E> (MLflow's own permission lookup: it created the
experiment, or was granted MANAGE on it): the sweep's trial user can then be granted EDIT on
that experiment by the same sender, through MLflow's ordinary permission routes, and nothing
else. The user is never an admin (the request's other fields are ignored). Any other user name,
and any sender who may not manage <E>, is left to MLflow, which refuses non-admins; a refusal
of a trial user name says why in one line. MLflow's handler is not run: this answer, with the
values checked here, is the request's answer.

A deleted trial user's credentials stop at once: trial_rules checks that a `trial-...` user
still exists on each of its requests (MLflow remembers a verified password for
auth_cache_ttl_seconds, per worker process).
"""

import re
from dataclasses import dataclass

from trial_rules import TRIAL_USER_PREFIX

API = r"/(?:api|ajax-api)/2\.0/mlflow/users"
ROUTES = {("POST", re.compile(f"{API}/create")): "create",
          ("DELETE", re.compile(f"{API}/delete")): "delete"}
# celeb_smile.sweep.access.trial_username: the experiment's id, then the sweep's.
SWEEP_TRIAL_USER = re.compile(rf"{re.escape(TRIAL_USER_PREFIX)}(?P<experiment_id>[0-9]{{1,19}})"
                              r"-(?P<sweep_id>[0-9a-z]{1,40})")


@dataclass(frozen=True)
class UserRequest:
    action: str  # create, delete
    username: str  # the user to create or delete
    password: str | None  # the new user's (create)


def user_request(method: str, path: str, read_body) -> UserRequest | None:
    """The create or delete of a `trial-...` user this request asks for, None for any other
    request (MLflow decides). `read_body()`: the JSON body, read only for those two routes."""
    action = next((name for (verb, pattern), name in ROUTES.items()
                   if verb == method and pattern.fullmatch(path)), None)
    if action is None:
        return None
    body = read_body()
    if not isinstance(body, dict):
        return None
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not username.startswith(TRIAL_USER_PREFIX):
        return None
    return UserRequest(action, username, password if isinstance(password, str) else None)


def refusal(sender: str, asked: UserRequest, may_manage) -> str | None:
    """Why `sender` may not create or delete `asked.username`; None when it may.
    `may_manage(sender, experiment_id)`: MLflow's answer to "may it MANAGE the experiment"."""
    found = SWEEP_TRIAL_USER.fullmatch(asked.username)
    if found is None:
        return (f"only an admin may {asked.action} user {asked.username!r}: a sweep's trial user "
                f"is named {TRIAL_USER_PREFIX}<experiment id>-<sweep id>")
    experiment_id = found["experiment_id"]
    if not may_manage(sender, experiment_id):
        return (f"{sender!r} may not {asked.action} user {asked.username!r}: it needs MANAGE on "
                f"experiment {experiment_id}")
    if asked.action == "create" and not asked.password:
        return "a trial user needs a password"
    return None


# -- in the server (Flask's request context, MLflow's auth store) ----------------------------
def answer(sender: str):
    """The response to the current request when it creates or deletes a sweep's trial user,
    or None to leave the request to MLflow (and to trial_rules)."""
    from flask import request

    asked = user_request(request.method, request.path, lambda: request.get_json(silent=True))
    if asked is None or _is_admin(sender):
        return None
    reason = refusal(sender, asked, _may_manage)
    if reason is not None:
        return _text(403, f"Permission denied: {reason}")
    return _carry_out(asked)


def _is_admin(username: str) -> bool:
    from mlflow.server.auth import store

    return store.get_user(username).is_admin


def _may_manage(username: str, experiment_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth import _get_experiment_permission

    try:
        return _get_experiment_permission(experiment_id, username).can_manage
    except MlflowException:  # no such experiment
        return False


def _carry_out(asked: UserRequest):
    """As MLflow's create_user / delete_user handlers answer (their JSON, their errors)."""
    from flask import Response, jsonify
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth import store

    try:
        if asked.action == "create":
            return jsonify({"user": store.create_user(asked.username, asked.password).to_json()})
        store.delete_user(asked.username)
    except MlflowException as error:
        return Response(error.serialize_as_json(), status=error.get_http_status_code(),
                        mimetype="application/json")
    _forget_cached_password(asked.username)
    return jsonify({})


def _forget_cached_password(username: str) -> None:
    """This worker's remembered password (the others: trial_rules' existence check)."""
    from mlflow.server.auth import _invalidate_user_auth_cache

    _invalidate_user_auth_cache(username)


def _text(status: int, line: str):
    from flask import Response

    return Response(line, status=status, mimetype="text/plain")


def still_exists(username: str) -> bool:
    from mlflow.server.auth import store

    return store.has_user(username)
