"""What a training pod's identity may do on the tracking server: MLflow's basic auth, then the
rules of a trial's job, which MLflow's per-experiment permissions cannot express.

MLflow grants per experiment: EDIT on an experiment writes every run in it (the sweep's parent,
the other trials), and any signed-in user may create experiments, registered models, gateway
secrets and endpoints, list users or change its own password. A training pod needs none of
that. This module is the auth app's `authorization_function` (MLflow's documented extension
point; k8s/server/start.py names it in the auth ini and puts this directory on PYTHONPATH):
`authenticate_request()` authenticates exactly as MLflow's basic auth does, then answers 403
(one plain-text line, "Permission denied: <rule>") to whatever a *trial identity* asks beyond
a training run. MLflow's own permission checks run afterwards as always: these rules only take
away. MLflow calls the function for Flask routes and, through its bridge, for the routes it
serves with FastAPI (artifacts, gateway, OTLP, jobs); the bridge passes no request body, so
those routes are judged on their path alone.

Trial identities: users named `trial-...` (one per sweep, `trial-<experiment id>-<sweep id>`:
the sweep driver creates it when the sweep starts and deletes it when it ends, see
sweep_trial_users.py, which also lets a non-admin who manages the experiment do that) and the
legacy shared user `trainer` (kept for `mlflow run --backend kubernetes`). Any other user is left
to MLflow alone. A `trial-...` user that no longer exists is refused (401) at once, even while a
worker still remembers its verified password.

A trial identity may, on a run it may write:
  - read the run and its metric history; log metrics, params, tags, inputs and outputs; update
    its status (runs/get, log-metric, log-parameter, log-batch, set-tag, log-inputs, outputs,
    update, metrics/get-history);
  - list, download and upload the run's artifacts, never overwriting one except under
    `checkpoint/` (a training run replaces its last checkpoint every epoch);
  - create the run's logged models (MLflow 3's `log_model`), read and finalize them, log their
    params and tags, upload (never overwrite) their artifacts;
  - read the experiment such a run is in, and search its logged models (MLflow's client does,
    to list a run's artifacts).
Nothing else: no creating experiments or runs, renaming or tagging experiments, deleting
anything, model registry, gateway, users and permissions, traces, jobs, UI.

Which runs it may write: a `trial-...` user only runs tagged `celeb_smile.trial_user` = its
name (the driver tags each trial's run when it creates it); the legacy `trainer` runs without
that tag (or tagged for it), as far as its MLflow grants reach. No trial identity may set or
delete that tag.

The server image has no `celeb_smile` package: TRIAL_USER_PREFIX, TRIAL_USER_TAG and
LEGACY_TRAINER are copies of the project's names (tests/test_trial_rules.py keeps them equal).
This module imports only the standard library at import time; Flask and MLflow's server are
imported when a request is judged.
"""

import json
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

TRIAL_USER_PREFIX = "trial-"  # celeb_smile.constants.TRIAL_USER_PREFIX
TRIAL_USER_TAG = "celeb_smile.trial_user"  # celeb_smile.constants.TRIAL_USER_TAG
LEGACY_TRAINER = "trainer"  # celeb_smile.sweep.access.TRAINER_USERNAME
CHECKPOINT_DIRECTORY = "checkpoint"  # celeb_smile.checkpoint.CHECKPOINT_DIR

# Every spelling MLflow's handlers accept for a field (proto name, JSON name, legacy alias).
RUN_ID_FIELDS = ("run_id", "runId", "run_uuid", "runUuid")
EXPERIMENT_ID_FIELDS = ("experiment_id", "experimentId")
EXPERIMENT_IDS_FIELDS = ("experiment_ids", "experimentIds")
EXPERIMENT_NAME_FIELDS = ("experiment_name", "experimentName")
SOURCE_RUN_FIELDS = ("source_run_id", "sourceRunId")


def is_trial_identity(username: str) -> bool:
    return username == LEGACY_TRAINER or username.startswith(TRIAL_USER_PREFIX)


class Refused(Exception):
    """A trial identity asked for something a training run does not do: the one-line why."""


@dataclass(frozen=True)
class RunRecord:
    experiment_id: str
    trial_user: str | None  # the TRIAL_USER_TAG's value, None when untagged


@dataclass(frozen=True)
class LoggedModelRecord:
    experiment_id: str
    source_run_id: str | None


class Lookups(Protocol):
    """What the rules need to know about the tracking server's contents."""

    def run(self, run_id: str) -> RunRecord | None: ...

    def logged_model(self, model_id: str) -> LoggedModelRecord | None: ...

    def experiment_id_by_name(self, name: str) -> str | None: ...

    def has_run_of(self, experiment_id: str, trial_user: str) -> bool: ...

    def artifact_exists(self, path: str) -> bool: ...


@dataclass
class Call:
    """One request: its method, its path and, read only when a rule needs them, its fields (the
    query's and the JSON body's top level, each name with every value it was given)."""

    method: str
    path: str
    read_fields: Callable[[], dict[str, list]] = dict

    @cached_property
    def fields(self) -> dict[str, list]:
        return self.read_fields()

    def named(self, names: tuple[str, ...]) -> list[str]:
        """The non-empty values of a field under any of its spellings."""
        values = [value for name in names for value in self.fields.get(name, [])]
        if not all(isinstance(value, str) for value in values):
            raise Refused(f"malformed request: {'/'.join(names)} is not a string")
        return [value for value in values if value]


@dataclass(frozen=True)
class Identity:
    username: str
    lookups: Lookups

    @property
    def is_legacy(self) -> bool:
        return self.username == LEGACY_TRAINER

    def writable_run(self, run_id: str) -> RunRecord:
        run = self.lookups.run(run_id)
        if run is None:
            raise Refused(f"run {run_id} does not exist")
        if not self._may_write(run.trial_user):
            raise Refused(self._not_its_run(run_id, run.trial_user))
        return run

    def _may_write(self, trial_user: str | None) -> bool:
        if self.is_legacy:
            return trial_user in (None, self.username)
        return trial_user == self.username

    def _not_its_run(self, run_id: str, trial_user: str | None) -> str:
        if self.is_legacy:
            return f"run {run_id} is trial user {trial_user!r}'s"
        return (f"{self.username!r} may only use runs tagged {TRIAL_USER_TAG}={self.username}, "
                f"and run {run_id} is not one")

    def readable_experiment(self, experiment_id: str) -> None:
        """The legacy trainer's reads are its MLflow grants' business."""
        if not self.is_legacy and not self.lookups.has_run_of(experiment_id, self.username):
            raise Refused(f"{self.username!r} may only read an experiment holding a run tagged "
                          f"{TRIAL_USER_TAG}={self.username}, and experiment {experiment_id} "
                          f"holds none")


# -- what each allowed route checks ----------------------------------------------------------
def runs_named(identity: Identity, call: Call, _: dict) -> None:
    run_ids = call.named(RUN_ID_FIELDS)
    if not run_ids:
        raise Refused("the request names no run")
    for run_id in run_ids:
        identity.writable_run(run_id)


def runs_named_without_trial_user_tag(identity: Identity, call: Call, path: dict) -> None:
    runs_named(identity, call, path)
    batch = [tag.get("key") for tags in call.fields.get("tags", []) if isinstance(tags, list)
             for tag in tags if isinstance(tag, dict)]
    if TRIAL_USER_TAG in call.named(("key",)) + batch:
        raise Refused(f"only the sweep driver sets the tag {TRIAL_USER_TAG}")


def experiments_named(identity: Identity, call: Call, _: dict) -> None:
    experiment_ids = call.named(EXPERIMENT_ID_FIELDS)
    if not experiment_ids:
        raise Refused("the request names no experiment")
    for experiment_id in experiment_ids:
        identity.readable_experiment(experiment_id)


def experiments_searched(identity: Identity, call: Call, _: dict) -> None:
    """A search's experiment_ids is a list: each one must be readable."""
    lists = [value if isinstance(value, list) else [value] for name in EXPERIMENT_IDS_FIELDS
             for value in call.fields.get(name, [])]
    experiment_ids = [experiment_id for values in lists for experiment_id in values]
    if not experiment_ids or not all(isinstance(value, str) for value in experiment_ids):
        raise Refused("a trial identity searches only experiments named one by one")
    for experiment_id in experiment_ids:
        identity.readable_experiment(experiment_id)


def experiments_named_by_name(identity: Identity, call: Call, _: dict) -> None:
    if identity.is_legacy:
        return
    names = call.named(EXPERIMENT_NAME_FIELDS)
    if not names:
        raise Refused("the request names no experiment")
    for name in names:
        experiment_id = identity.lookups.experiment_id_by_name(name)
        if experiment_id is None:
            raise Refused(f"experiment {name!r} does not exist")
        identity.readable_experiment(experiment_id)


def new_logged_model(identity: Identity, call: Call, _: dict) -> None:
    run_ids = call.named(SOURCE_RUN_FIELDS)
    if not run_ids:
        raise Refused("a trial identity's logged model needs a source run of its own")
    for run_id in run_ids:
        experiment_id = identity.writable_run(run_id).experiment_id
        if any(other != experiment_id for other in call.named(EXPERIMENT_ID_FIELDS)):
            raise Refused(f"a logged model of run {run_id} belongs in experiment "
                          f"{experiment_id}")


def logged_model_in_path(identity: Identity, _: Call, path: dict) -> None:
    logged_model_source(identity, path["model_id"])


def logged_model_source(identity: Identity, model_id: str) -> RunRecord:
    model = identity.lookups.logged_model(model_id)
    if model is None or not model.source_run_id:
        raise Refused(f"logged model {model_id} has no source run")
    return identity.writable_run(model.source_run_id)


# -- artifacts: <experiment>/<run>/artifacts/... and <experiment>/models/<model>/artifacts/... -
INSIDE = r"artifacts(?:/(?P<inside>.+))?"
RUN_ARTIFACTS = re.compile(rf"(?P<experiment_id>[^/]+)/(?P<run_id>[^/]+)/{INSIDE}")
MODEL_ARTIFACTS = re.compile(rf"(?P<experiment_id>[^/]+)/models/(?P<model_id>[^/]+)/{INSIDE}")


@dataclass(frozen=True)
class ArtifactPath:
    path: str
    inside: str  # the path within the run's or logged model's artifacts ("" for their root)
    of_run: bool  # a run's artifact (else a logged model's)


def writable_artifact_path(identity: Identity, path: str) -> ArtifactPath:
    """`path` when it lies in the artifacts of a run (or of a logged model of a run) the
    identity may write, in that run's experiment."""
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        raise Refused(f"artifact path {path!r} is not a plain path")
    if found := MODEL_ARTIFACTS.fullmatch(path):
        run, of_run = logged_model_source(identity, found["model_id"]), False
    elif found := RUN_ARTIFACTS.fullmatch(path):
        run, of_run = identity.writable_run(found["run_id"]), True
    else:
        raise Refused(f"artifact path {path!r} is not in a run's or logged model's artifacts")
    if found["experiment_id"] != run.experiment_id:
        raise Refused(f"artifact path {path!r} is not in its run's experiment")
    return ArtifactPath(path, found["inside"] or "", of_run)


def artifact_download(identity: Identity, _: Call, path: dict) -> None:
    writable_artifact_path(identity, path["artifact_path"])


def artifact_listing(identity: Identity, call: Call, _: dict) -> None:
    paths = call.named(("path",))
    if not paths:
        raise Refused("a trial identity lists only its runs' artifacts")
    for path in paths:
        writable_artifact_path(identity, path.rstrip("/"))


def artifact_upload(identity: Identity, _: Call, path: dict) -> None:
    artifact = writable_artifact_path(identity, path["artifact_path"])
    if not artifact.inside:
        raise Refused("an artifact needs a name")
    if identity.lookups.artifact_exists(artifact.path) and not is_checkpoint(artifact):
        raise Refused(f"artifact {artifact.path} exists: a trial identity overwrites only "
                      f"artifacts under {CHECKPOINT_DIRECTORY}/ of its run")


def is_checkpoint(artifact: ArtifactPath) -> bool:
    return artifact.of_run and artifact.inside.startswith(f"{CHECKPOINT_DIRECTORY}/")


# -- the routes a training run uses; any other is refused to a trial identity ----------------
@dataclass(frozen=True)
class Rule:
    method: str
    pattern: re.Pattern
    check: Callable[[Identity, Call, dict], None]


API = r"/(?:api|ajax-api)/2\.0"
MLFLOW = f"{API}/mlflow"
LOGGED_MODEL = f"{MLFLOW}/logged-models/(?P<model_id>[^/]+)"
ARTIFACT = f"{API}/mlflow-artifacts/artifacts/(?P<artifact_path>.+)"
ROUTES = (
    ("GET", f"{MLFLOW}/runs/get", runs_named),
    ("POST", f"{MLFLOW}/runs/update", runs_named),
    ("POST", f"{MLFLOW}/runs/log-metric", runs_named),
    ("POST", f"{MLFLOW}/runs/log-parameter", runs_named),
    ("POST", f"{MLFLOW}/runs/log-batch", runs_named_without_trial_user_tag),
    ("POST", f"{MLFLOW}/runs/set-tag", runs_named_without_trial_user_tag),
    ("POST", f"{MLFLOW}/runs/log-inputs", runs_named),
    ("POST", f"{MLFLOW}/runs/outputs", runs_named),
    ("GET", f"{MLFLOW}/metrics/get-history", runs_named),
    ("GET", f"{MLFLOW}/artifacts/list", runs_named),
    ("GET", "/get-artifact", runs_named),
    ("GET", f"{MLFLOW}/experiments/get", experiments_named),
    ("GET", f"{MLFLOW}/experiments/get-by-name", experiments_named_by_name),
    ("POST", f"{MLFLOW}/logged-models", new_logged_model),
    # MLflow's client lists a run's artifacts with those of its logged model of the same name.
    ("POST", f"{MLFLOW}/logged-models/search", experiments_searched),
    ("GET", LOGGED_MODEL, logged_model_in_path),
    ("PATCH", LOGGED_MODEL, logged_model_in_path),  # finalize
    ("POST", f"{LOGGED_MODEL}/params", logged_model_in_path),
    ("PATCH", f"{LOGGED_MODEL}/tags", logged_model_in_path),
    ("GET", f"{API}/mlflow-artifacts/artifacts", artifact_listing),
    ("GET", ARTIFACT, artifact_download),
    ("PUT", ARTIFACT, artifact_upload),
)
RULES = tuple(Rule(method, re.compile(pattern), check) for method, pattern, check in ROUTES)


def refusal(username: str, call: Call, lookups: Lookups) -> str | None:
    """Why `username` may not make `call`, in one line; None when MLflow is left to decide."""
    if not is_trial_identity(username):
        return None
    for rule in RULES:
        if rule.method == call.method and (found := rule.pattern.fullmatch(call.path)):
            try:
                rule.check(Identity(username, lookups), call, found.groupdict())
            except Refused as refused:
                return str(refused)
            return None
    return (f"{username!r} is a trial identity: {call.method} {call.path} is not part of a "
            f"training run")


# -- the auth app's entry point (Flask's request context; MLflow's stores) --------------------
DECISION_ATTRIBUTE = "celeb_smile_trial_rules_decision"


def authenticate_request():
    """The auth ini's `authorization_function`. MLflow calls it again from its validators and
    after-request handlers of the same request: the first answer is kept for all of them (an
    upload must not be judged an overwrite of itself afterwards)."""
    from flask import g

    if not hasattr(g, DECISION_ATTRIBUTE):
        setattr(g, DECISION_ATTRIBUTE, _decide())
    return getattr(g, DECISION_ATTRIBUTE)


def _decide():
    from flask import Response, request
    from mlflow.server.auth import authenticate_request_basic_auth, make_basic_auth_response

    import sweep_trial_users  # beside this file; imports this module

    authorization = authenticate_request_basic_auth()
    if isinstance(authorization, Response):
        return authorization
    if not is_trial_identity(authorization.username):
        answered = sweep_trial_users.answer(authorization.username)
        return authorization if answered is None else answered
    if authorization.username != LEGACY_TRAINER and \
            not sweep_trial_users.still_exists(authorization.username):
        return make_basic_auth_response()  # deleted: its password may still be remembered
    call = Call(request.method, request.path, lambda: request_fields(request))
    reason = refusal(authorization.username, call, ServerLookups())
    if reason is None:
        return authorization
    return Response(f"Permission denied: {reason}", status=403, mimetype="text/plain")


def request_fields(request) -> dict[str, list]:
    """The query's fields and the JSON body's, as MLflow's handlers read them (a GET's body
    too, and a body sent as a JSON string)."""
    fields = {name: request.args.getlist(name) for name in request.args}
    body = request.get_json(force=True, silent=True)
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    for name, value in (body if isinstance(body, dict) else {}).items():
        fields.setdefault(name, []).append(value)
    return fields


class ServerLookups:
    """Lookups in the server's own tracking store and artifact repository."""

    def __init__(self):
        from mlflow.server.handlers import _get_tracking_store

        self.store = _get_tracking_store()

    def run(self, run_id: str) -> RunRecord | None:
        from mlflow.exceptions import MlflowException

        try:
            run = self.store.get_run(run_id)
        except MlflowException:
            return None
        return RunRecord(run.info.experiment_id, run.data.tags.get(TRIAL_USER_TAG))

    def logged_model(self, model_id: str) -> LoggedModelRecord | None:
        from mlflow.exceptions import MlflowException

        try:
            model = self.store.get_logged_model(model_id)
        except MlflowException:
            return None
        return LoggedModelRecord(model.experiment_id, model.source_run_id)

    def experiment_id_by_name(self, name: str) -> str | None:
        experiment = self.store.get_experiment_by_name(name)
        return experiment.experiment_id if experiment else None

    def has_run_of(self, experiment_id: str, trial_user: str) -> bool:
        from mlflow.entities import ViewType
        from mlflow.exceptions import MlflowException

        if "'" in trial_user or "\\" in trial_user:  # cannot be quoted in a filter
            return False
        try:
            return bool(self.store.search_runs(
                [experiment_id], f"tags.`{TRIAL_USER_TAG}` = '{trial_user}'", ViewType.ALL,
                max_results=1))
        except MlflowException:
            return False

    def artifact_exists(self, path: str) -> bool:
        from mlflow.server.handlers import _get_artifact_repo_mlflow_artifacts

        directory = posixpath.dirname(path)
        listing = _get_artifact_repo_mlflow_artifacts().list_artifacts(directory)
        return any(info.path == path for info in listing)
