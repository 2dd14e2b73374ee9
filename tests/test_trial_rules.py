"""The tracking server's rules for trial identities (k8s/server/trial_rules.py) without a server:
which routes a training run may use, on which runs, and every other route refused."""

import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from celeb_smile import checkpoint, constants, deploy
from celeb_smile.sweep import access
from tests.helpers.auth_server import SERVER_DIRECTORY, sweep_trial_users, trial_rules

rules = trial_rules()
TAG = constants.TRIAL_USER_TAG
TRIAL = "trial-sweep1-abc"
OTHER_TRIAL = "trial-sweep1-def"
LEGACY = "trainer"
EXPERIMENT = "7"
OWN_RUN, OTHER_RUN, PARENT_RUN, LEGACY_RUN = "a" * 32, "b" * 32, "c" * 32, "d" * 32
OWN_MODEL, OTHER_MODEL = "m-" + "1" * 32, "m-" + "2" * 32


@dataclass
class FakeLookups:
    """The contents of a tracking server with one sweep in experiment 7."""

    existing_artifacts: set[str] = field(default_factory=set)
    runs: dict = field(default_factory=lambda: {
        OWN_RUN: rules.RunRecord(EXPERIMENT, TRIAL),
        OTHER_RUN: rules.RunRecord(EXPERIMENT, OTHER_TRIAL),
        PARENT_RUN: rules.RunRecord(EXPERIMENT, None),
        LEGACY_RUN: rules.RunRecord(EXPERIMENT, LEGACY),
    })
    models: dict = field(default_factory=lambda: {
        OWN_MODEL: rules.LoggedModelRecord(EXPERIMENT, OWN_RUN),
        OTHER_MODEL: rules.LoggedModelRecord(EXPERIMENT, OTHER_RUN),
    })

    def run(self, run_id):
        return self.runs.get(run_id)

    def logged_model(self, model_id):
        return self.models.get(model_id)

    def experiment_id_by_name(self, name):
        return {"sweep": EXPERIMENT, "other": "8"}.get(name)

    def has_run_of(self, experiment_id, trial_user):
        return any(run.experiment_id == experiment_id and run.trial_user == trial_user
                   for run in self.runs.values())

    def artifact_exists(self, path):
        return path in self.existing_artifacts


def refusal(username, method, path, lookups=None, /, **fields):
    """The refusal for a request whose query/body fields are `fields` (values: lists)."""
    call = rules.Call(method, path, lambda: {name: list(values) for name, values in
                                             fields.items()})
    return rules.refusal(username, call, lookups or FakeLookups())


def run_artifact(run_id, inside, experiment=EXPERIMENT):
    return f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run_id}/artifacts/{inside}"


# -- one definition of the shared names --------------------------------------------------------
def test_the_server_module_uses_the_projects_names():
    assert rules.TRIAL_USER_PREFIX == constants.TRIAL_USER_PREFIX
    assert rules.TRIAL_USER_TAG == constants.TRIAL_USER_TAG
    assert rules.LEGACY_TRAINER == access.TRAINER_USERNAME == deploy.TRAINER_USERNAME


def test_the_overwritable_directory_is_the_one_training_checkpoints_to():
    assert rules.CHECKPOINT_DIRECTORY == checkpoint.CHECKPOINT_DIR


def test_the_server_module_imports_without_the_project_package():
    """The server image has no celeb_smile: importing it from there must fail the test."""
    code = ("import sys; sys.modules['celeb_smile'] = None; "
            f"sys.path.insert(0, {str(SERVER_DIRECTORY)!r}); import trial_rules, start; "
            "print(start.AUTHORIZATION_FUNCTION)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    module, function = result.stdout.strip().split(":")
    assert module == "trial_rules" and callable(getattr(rules, function))


# -- who is a trial identity ----------------------------------------------------------------------
@pytest.mark.parametrize("username, trial", [
    (TRIAL, True), (LEGACY, True), ("trial-", True),
    ("admin", False), ("analyst", False), ("trial", False), ("Trial-x", False),
    ("trainer2", False), ("my-trial-x", False),
])
def test_trial_identities_are_trainer_and_the_trial_prefix(username, trial):
    assert rules.is_trial_identity(username) is trial


def test_other_users_are_left_to_mlflow_whatever_they_ask():
    for path in ("/api/2.0/mlflow/experiments/create", "/api/2.0/mlflow/users/list",
                 "/api/2.0/mlflow/runs/delete"):
        assert refusal("analyst", "POST", path, run_id=[OTHER_RUN]) is None


# -- every route MLflow serves: refused unless a training run uses it ------------------------------
ALLOWED_ROUTES = {
    ("GET", "/mlflow/runs/get"), ("POST", "/mlflow/runs/update"),
    ("POST", "/mlflow/runs/log-metric"), ("POST", "/mlflow/runs/log-parameter"),
    ("POST", "/mlflow/runs/log-batch"), ("POST", "/mlflow/runs/set-tag"),
    ("POST", "/mlflow/runs/log-inputs"), ("POST", "/mlflow/runs/outputs"),
    ("GET", "/mlflow/metrics/get-history"), ("GET", "/mlflow/artifacts/list"),
    ("GET", "/get-artifact"),
    ("GET", "/mlflow/experiments/get"), ("GET", "/mlflow/experiments/get-by-name"),
    ("POST", "/mlflow/logged-models"), ("POST", "/mlflow/logged-models/search"),
    ("GET", "/mlflow/logged-models/<model_id>"),
    ("PATCH", "/mlflow/logged-models/<model_id>"),
    ("POST", "/mlflow/logged-models/<model_id>/params"),
    ("PATCH", "/mlflow/logged-models/<model_id>/tags"),
    ("GET", "/mlflow-artifacts/artifacts"),
    ("GET", "/mlflow-artifacts/artifacts/<path:artifact_path>"),
    ("PUT", "/mlflow-artifacts/artifacts/<path:artifact_path>"),
}
# Routes MLflow serves outside its handler table: the UI's and FastAPI's own.
OTHER_ROUTES = [
    ("GET", "/"), ("POST", "/graphql"), ("POST", "/v1/traces"),
    ("POST", "/ajax-api/3.0/jobs/search"), ("GET", "/ajax-api/3.0/jobs/1"),
    ("POST", "/gateway/chat/mlflow/invocations"), ("POST", "/gateway/mlflow/v1/chat/completions"),
]


def _mlflow_routes() -> list[tuple[str, str]]:
    """Every (method, path template) of MLflow's handlers and of its auth app."""
    from mlflow.server.auth import routes as auth_routes
    from mlflow.server.handlers import get_endpoints

    served = [(method, path) for path, _, methods in get_endpoints(lambda request: request)
              for method in methods]
    auth = [(method, path) for name, path in vars(auth_routes).items()
            if name.isupper() and isinstance(path, str) and path.startswith("/")
            for method in ("GET", "POST", "PATCH", "DELETE")]
    return served + auth + OTHER_ROUTES


def _route_name(path: str) -> str:
    return re.sub(r"^/(?:api|ajax-api)/2\.0", "", path)


@pytest.mark.parametrize("username, run_id", [(TRIAL, OWN_RUN), (LEGACY, PARENT_RUN)],
                         ids=["trial user", "legacy trainer"])
def test_every_route_but_a_training_runs_is_refused(username, run_id):
    """Each request names a run the identity may write (and a logged model of it, its
    experiment, a new artifact of it): what is refused is the route itself."""
    lookups = FakeLookups()
    lookups.models["m-mine"] = rules.LoggedModelRecord(EXPERIMENT, run_id)
    artifacts = f"{EXPERIMENT}/{run_id}/artifacts"
    placeholders = {"model_id": "m-mine", "path:artifact_path": f"{artifacts}/new.txt"}
    fields = {"run_id": [run_id], "source_run_id": [run_id], "experiment_id": [EXPERIMENT],
              "experiment_ids": [[EXPERIMENT]], "experiment_name": ["sweep"],
              "path": [artifacts]}
    allowed = set()
    for method, template in _mlflow_routes():
        path = re.sub(r"<([^>]+)>", lambda found: placeholders.get(found[1], "1"), template)
        if refusal(username, method, path, lookups, **fields) is None:
            allowed.add((method, _route_name(template)))
    assert allowed == ALLOWED_ROUTES


def test_a_refused_route_is_named_in_one_line():
    reason = refusal(TRIAL, "POST", "/api/2.0/mlflow/experiments/create", name=["x"])
    assert reason == (f"'{TRIAL}' is a trial identity: POST /api/2.0/mlflow/experiments/create "
                      "is not part of a training run")


@pytest.mark.parametrize("method, path", [
    ("POST", "/api/2.0/mlflow/experiments/create"), ("POST", "/api/2.0/mlflow/experiments/update"),
    ("POST", "/api/2.0/mlflow/registered-models/create"),
    ("POST", "/api/2.0/mlflow/model-versions/create"),
    ("POST", "/api/3.0/mlflow/gateway/secrets/create"),
    ("POST", "/api/3.0/mlflow/gateway/endpoints/create"),
    ("GET", "/api/2.0/mlflow/users/list"), ("PATCH", "/api/2.0/mlflow/users/update-password"),
    ("POST", "/api/3.0/mlflow/users/permissions/grant"),
    ("POST", "/api/2.0/mlflow/runs/delete"), ("POST", "/api/2.0/mlflow/runs/delete-tag"),
    ("DELETE", run_artifact(OWN_RUN, "x.txt")), ("POST", "/api/2.0/mlflow/runs/create"),
    ("DELETE", f"/api/2.0/mlflow/logged-models/{OWN_MODEL}"),
    ("POST", "/api/3.0/mlflow/traces"), ("POST", "/v1/traces"),
    ("POST", "/ajax-api/3.0/jobs/search"), ("POST", "/ajax-api/2.0/mlflow/experiments/create"),
    ("HEAD", "/api/2.0/mlflow/runs/get"),
])
@pytest.mark.parametrize("username", [TRIAL, LEGACY])
def test_the_issues_refusals(username, method, path):
    assert refusal(username, method, path, run_id=[OWN_RUN], experiment_id=[EXPERIMENT],
                   name=["x"]) is not None


# -- which runs -----------------------------------------------------------------------------------
RUN_ROUTES = [("GET", "/api/2.0/mlflow/runs/get"), ("POST", "/api/2.0/mlflow/runs/update"),
              ("POST", "/api/2.0/mlflow/runs/log-metric"),
              ("POST", "/api/2.0/mlflow/runs/log-parameter"),
              ("POST", "/api/2.0/mlflow/runs/log-batch"), ("POST", "/api/2.0/mlflow/runs/set-tag"),
              ("POST", "/api/2.0/mlflow/runs/log-inputs"),
              ("POST", "/api/2.0/mlflow/runs/outputs"),
              ("GET", "/api/2.0/mlflow/metrics/get-history"),
              ("GET", "/api/2.0/mlflow/artifacts/list"), ("GET", "/get-artifact"),
              ("POST", "/ajax-api/2.0/mlflow/runs/log-metric")]


@pytest.mark.parametrize("method, path", RUN_ROUTES)
def test_a_trial_user_uses_only_runs_tagged_with_its_name(method, path):
    assert refusal(TRIAL, method, path, run_id=[OWN_RUN]) is None
    assert refusal(TRIAL, method, path, run_uuid=[OWN_RUN]) is None
    for run_id in (OTHER_RUN, PARENT_RUN, LEGACY_RUN, "no-such-run"):
        assert refusal(TRIAL, method, path, run_id=[run_id]) is not None, run_id
    assert refusal(TRIAL, method, path) == "the request names no run"


@pytest.mark.parametrize("method, path", RUN_ROUTES)
def test_the_legacy_trainer_uses_untagged_runs_and_its_own_not_a_trial_users(method, path):
    for run_id in (PARENT_RUN, LEGACY_RUN):
        assert refusal(LEGACY, method, path, run_id=[run_id]) is None
    for run_id in (OWN_RUN, OTHER_RUN):
        assert refusal(LEGACY, method, path, run_id=[run_id]) == \
            f"run {run_id} is trial user {FakeLookups().runs[run_id].trial_user!r}'s"


def test_the_rule_message_names_the_tag_a_trial_users_run_needs():
    assert refusal(TRIAL, "POST", "/api/2.0/mlflow/runs/log-metric", run_id=[PARENT_RUN]) == (
        f"'{TRIAL}' may only use runs tagged {TAG}={TRIAL}, and run {PARENT_RUN} is not one")


@pytest.mark.parametrize("fields", [
    {"run_id": [OWN_RUN], "runId": [OTHER_RUN]},  # MLflow's parser accepts the JSON name
    {"run_uuid": [OWN_RUN], "runUuid": [OTHER_RUN]},
    {"run_id": [OWN_RUN, OTHER_RUN]},  # in the query and in the body
    {"run_id": [OWN_RUN], "run_uuid": [PARENT_RUN]},
    {"run_id": [["list"]]},
])
def test_every_spelling_of_every_run_a_request_names_is_checked(fields):
    assert refusal(TRIAL, "POST", "/api/2.0/mlflow/runs/log-metric", **fields) is not None


@pytest.mark.parametrize("username", [TRIAL, LEGACY])
def test_no_trial_identity_sets_the_trial_user_tag(username):
    run_id = OWN_RUN if username == TRIAL else PARENT_RUN
    assert refusal(username, "POST", "/api/2.0/mlflow/runs/set-tag", run_id=[run_id],
                   key=[TAG], value=[username]) == f"only the sweep driver sets the tag {TAG}"
    batch = [{"key": "note", "value": "x"}, {"key": TAG, "value": username}]
    assert refusal(username, "POST", "/api/2.0/mlflow/runs/log-batch", run_id=[run_id],
                   tags=[batch]) is not None
    assert refusal(username, "POST", "/api/2.0/mlflow/runs/log-batch", run_id=[run_id],
                   tags=[batch[:1]]) is None
    assert refusal(username, "POST", "/api/2.0/mlflow/runs/delete-tag", run_id=[run_id],
                   key=[TAG]) is not None


# -- experiments -------------------------------------------------------------------------------
def test_a_trial_user_reads_only_an_experiment_holding_its_run():
    get, by_name = "/api/2.0/mlflow/experiments/get", "/api/2.0/mlflow/experiments/get-by-name"
    assert refusal(TRIAL, "GET", get, experiment_id=[EXPERIMENT]) is None
    assert refusal(TRIAL, "GET", get, experimentId=[EXPERIMENT]) is None
    assert refusal(TRIAL, "GET", get, experiment_id=["8"]) is not None
    assert refusal(TRIAL, "GET", get, experiment_id=[EXPERIMENT], experimentId=["8"]) is not None
    assert refusal(TRIAL, "GET", get) is not None
    assert refusal(TRIAL, "GET", by_name, experiment_name=["sweep"]) is None
    assert refusal(TRIAL, "GET", by_name, experiment_name=["other"]) is not None
    assert refusal(TRIAL, "GET", by_name, experiment_name=["missing"]) is not None


def test_a_trial_user_searches_logged_models_only_in_an_experiment_holding_its_run():
    search = "/api/2.0/mlflow/logged-models/search"
    assert refusal(TRIAL, "POST", search, experiment_ids=[[EXPERIMENT]]) is None
    assert refusal(TRIAL, "POST", search, experimentIds=[[EXPERIMENT]]) is None
    for fields in ({"experiment_ids": [[EXPERIMENT, "8"]]}, {"experiment_ids": [[]]},
                   {"experiment_ids": [[EXPERIMENT]], "experimentIds": [["8"]]}, {},
                   {"experiment_ids": [[7]]}):
        assert refusal(TRIAL, "POST", search, **fields) is not None, fields
    assert refusal(LEGACY, "POST", search, experiment_ids=[["8"]]) is None


def test_the_legacy_trainers_experiment_reads_are_left_to_its_grants():
    assert refusal(LEGACY, "GET", "/api/2.0/mlflow/experiments/get", experiment_id=["8"]) is None
    assert refusal(LEGACY, "GET", "/api/2.0/mlflow/experiments/get-by-name",
                   experiment_name=["other"]) is None


# -- logged models ---------------------------------------------------------------------------------
def test_a_trial_user_creates_logged_models_of_its_run_only():
    create = "/api/2.0/mlflow/logged-models"
    assert refusal(TRIAL, "POST", create, experiment_id=[EXPERIMENT],
                   source_run_id=[OWN_RUN]) is None
    assert refusal(TRIAL, "POST", create, experiment_id=["8"], source_run_id=[OWN_RUN]) == \
        f"a logged model of run {OWN_RUN} belongs in experiment {EXPERIMENT}"
    assert refusal(TRIAL, "POST", create, experiment_id=[EXPERIMENT],
                   source_run_id=[OTHER_RUN]) is not None
    assert refusal(TRIAL, "POST", create, experiment_id=[EXPERIMENT],
                   sourceRunId=[OTHER_RUN], source_run_id=[OWN_RUN]) is not None
    assert refusal(TRIAL, "POST", create, experiment_id=[EXPERIMENT]) is not None


@pytest.mark.parametrize("method, suffix", [("GET", ""), ("PATCH", ""), ("POST", "/params"),
                                            ("PATCH", "/tags")])
def test_a_trial_user_finalizes_and_tags_only_its_runs_logged_models(method, suffix):
    def path(model):
        return f"/api/2.0/mlflow/logged-models/{model}{suffix}"
    assert refusal(TRIAL, method, path(OWN_MODEL)) is None
    assert refusal(TRIAL, method, path(OTHER_MODEL)) is not None
    assert refusal(TRIAL, method, path("m-missing")) == "logged model m-missing has no source run"


def test_no_trial_identity_deletes_a_logged_model_or_its_tags():
    for path in (f"/api/2.0/mlflow/logged-models/{OWN_MODEL}",
                 f"/api/2.0/mlflow/logged-models/{OWN_MODEL}/tags/some.key"):
        assert refusal(TRIAL, "DELETE", path) is not None


# -- artifacts -----------------------------------------------------------------------------------
def test_a_trial_user_uploads_new_artifacts_to_its_run_and_its_models():
    model_file = f"/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/models/{OWN_MODEL}" \
                 "/artifacts/MLmodel"
    for path in (run_artifact(OWN_RUN, "logs/train.log"), run_artifact(OWN_RUN, "model.keras"),
                 run_artifact(OWN_RUN, "logs/train.log").replace("/api/", "/ajax-api/"),
                 model_file):
        assert refusal(TRIAL, "PUT", path) is None, path
    other_model = model_file.replace(OWN_MODEL, OTHER_MODEL)
    for path in (run_artifact(OTHER_RUN, "x.txt"), run_artifact(PARENT_RUN, "x.txt"),
                 other_model, run_artifact(OWN_RUN, "x.txt", experiment="8"),
                 f"/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/{OWN_RUN}/artifacts",
                 f"/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/{OWN_RUN}/x.txt",
                 f"/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/notes.txt"):
        assert refusal(TRIAL, "PUT", path) is not None, path


@pytest.mark.parametrize("inside", ["../../x.txt", "logs/../../x.txt", "./x.txt", "logs//x.txt"])
def test_artifact_paths_that_are_not_plain_are_refused(inside):
    assert "is not a plain path" in refusal(TRIAL, "PUT", run_artifact(OWN_RUN, inside))


@pytest.mark.parametrize("username, run_id", [(TRIAL, OWN_RUN), (LEGACY, PARENT_RUN)],
                         ids=["trial user", "legacy trainer"])
def test_an_existing_artifact_is_overwritten_only_under_checkpoint(username, run_id):
    existing = {f"{EXPERIMENT}/{run_id}/artifacts/{inside}"
                for inside in ("admin.txt", "checkpoint/model.keras", "logs/checkpoint/a")}
    lookups = FakeLookups(existing_artifacts=existing)
    assert refusal(username, "PUT", run_artifact(run_id, "checkpoint/model.keras"),
                   lookups) is None
    assert refusal(username, "PUT", run_artifact(run_id, "admin.txt"), lookups) == (
        f"artifact {EXPERIMENT}/{run_id}/artifacts/admin.txt exists: a trial identity "
        f"overwrites only artifacts under checkpoint/ of its run")
    assert refusal(username, "PUT", run_artifact(run_id, "logs/checkpoint/a"),
                   lookups) is not None


def test_a_logged_models_artifacts_are_never_overwritten():
    path = f"{EXPERIMENT}/models/{OWN_MODEL}/artifacts/checkpoint/x"
    lookups = FakeLookups(existing_artifacts={path})
    assert refusal(TRIAL, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{path}",
                   lookups) is not None


def test_a_trial_user_lists_and_downloads_only_its_runs_artifacts():
    listing = "/api/2.0/mlflow-artifacts/artifacts"
    assert refusal(TRIAL, "GET", listing, path=[f"{EXPERIMENT}/{OWN_RUN}/artifacts"]) is None
    assert refusal(TRIAL, "GET", listing, path=[f"{EXPERIMENT}/{OWN_RUN}/artifacts/logs"]) is None
    assert refusal(TRIAL, "GET", listing, path=[f"{EXPERIMENT}/{OTHER_RUN}/artifacts"]) is not None
    assert refusal(TRIAL, "GET", listing, path=[EXPERIMENT]) is not None
    assert refusal(TRIAL, "GET", listing) is not None
    assert refusal(TRIAL, "GET", run_artifact(OWN_RUN, "x.txt")) is None
    assert refusal(TRIAL, "GET", run_artifact(OTHER_RUN, "x.txt")) is not None


# -- a sweep's trial user, made by whoever manages the sweep's experiment (sweep_trial_users.py)
users = sweep_trial_users()
MANAGED = {("alice", "7")}


def may_manage(sender: str, experiment_id: str) -> bool:
    return (sender, experiment_id) in MANAGED


def asked(method: str, path: str, body):
    return users.user_request(method, path, lambda: body)


def test_only_the_two_routes_bodies_are_read():
    def unread():
        raise AssertionError("body read")

    assert users.user_request("PUT", "/api/2.0/mlflow-artifacts/artifacts/1/x/artifacts/a",
                              unread) is None


def test_the_driver_names_trial_users_as_the_server_expects():
    assert users.SWEEP_TRIAL_USER.fullmatch(access.trial_username("7", "0123456789ab"))


@pytest.mark.parametrize("method, path", [("POST", "/api/2.0/mlflow/users/create"),
                                          ("POST", "/ajax-api/2.0/mlflow/users/create"),
                                          ("DELETE", "/api/2.0/mlflow/users/delete")])
def test_a_user_who_manages_the_experiment_may_create_and_delete_its_sweeps_trial_user(
        method, path):
    request = asked(method, path, {"username": "trial-7-abc123", "password": "p" * 20})
    assert request is not None
    assert users.refusal("alice", request, may_manage) is None


@pytest.mark.parametrize("sender, username, why", [
    ("bob", "trial-7-abc123", "'bob' may not create user 'trial-7-abc123': it needs MANAGE on "
                              "experiment 7"),
    ("alice", "trial-8-abc123", "needs MANAGE on experiment 8"),
    ("alice", "trial-sweep1-abc", "only an admin may create user 'trial-sweep1-abc'"),
    ("alice", "trial-7-ABC", "only an admin may create"),
    ("alice", "trial-7-abc/../x", "only an admin may create"),
    ("alice", "trial-7-", "only an admin may create"),
])
def test_no_other_trial_user_name_and_no_other_experiment(sender, username, why):
    request = asked("POST", "/api/2.0/mlflow/users/create", {"username": username,
                                                              "password": "p" * 20})
    assert why in users.refusal(sender, request, may_manage)


def test_a_trial_user_needs_a_password():
    request = asked("POST", "/api/2.0/mlflow/users/create", {"username": "trial-7-abc123"})
    assert users.refusal("alice", request, may_manage) == "a trial user needs a password"


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/2.0/mlflow/users/create", {"username": "mallory", "password": "p" * 20}),
    ("DELETE", "/api/2.0/mlflow/users/delete", {"username": "admin"}),
    ("PATCH", "/api/2.0/mlflow/users/update-password", {"username": "trial-7-abc123",
                                                        "password": "p" * 20}),
    ("PATCH", "/api/2.0/mlflow/users/update-admin", {"username": "trial-7-abc123",
                                                     "is_admin": True}),
    ("GET", "/api/2.0/mlflow/users/create", {"username": "trial-7-abc123"}),
    ("POST", "/api/2.0/mlflow/users/create/x", {"username": "trial-7-abc123"}),
    ("POST", "/api/2.0/mlflow/users/create", ["trial-7-abc123"]),
    ("POST", "/api/2.0/mlflow/users/create", {"username": ["trial-7-abc123"]}),
])
def test_any_other_user_request_is_left_to_mlflow(method, path, body):
    """MLflow refuses them to non-admins: nothing here lets them through."""
    assert asked(method, path, body) is None
