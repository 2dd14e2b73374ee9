"""The trial-identity rules (k8s/server/trial_rules.py) in a real `mlflow server --app-name
basic-auth` configured by the server image's own entrypoint: what the legacy `trainer` and a
`trial-...` user, each granted EDIT on its sweep's experiment, may no longer do, on every kind of
route (Flask's and FastAPI's); what MLflow alone would have let them do; and a whole training
run (`python train.py`) that still works."""

import json
import os
import subprocess
import uuid

import pytest
from mlflow import MlflowClient

from celeb_smile.constants import (EPOCH_METRICS, EXIT_TRIAL_FAILED, FINAL_METRICS,
                                   TRIAL_USER_PREFIX)
from tests.conftest import PROJECT_DIR
from tests.helpers.auth_checks import (Route, create_sweep_objects, create_user, grant,
                                       outcomes, representative_routes, request,
                                       trial_identity_refusals, trial_user_refusals)
from tests.helpers.auth_server import basic_auth_server
from tests.helpers.project import train_argv

pytestmark = pytest.mark.integration

LEGACY = "trainer"
TRIAL = f"{TRIAL_USER_PREFIX}s1-{uuid.uuid4().hex[:8]}"
OTHER_TRIAL = f"{TRIAL_USER_PREFIX}s1-{uuid.uuid4().hex[:8]}"
ANALYST = f"analyst-{uuid.uuid4().hex[:6]}"  # no trial identity: MLflow's rules alone
IDENTITIES = [LEGACY, TRIAL]
# Refused by MLflow itself to a user with EDIT on the experiment (deleting takes MANAGE).
REFUSED_BY_MLFLOW_TOO = {"create a user", "grant itself MANAGE", "delete an artifact",
                         "delete the run", "delete the run (ajax)", "delete the experiment"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(uri, admin credentials, {username: credentials})."""
    with basic_auth_server(tmp_path_factory.mktemp("rules-server")) as (uri, admin):
        users = {name: (name, uuid.uuid4().hex) for name in (LEGACY, TRIAL, OTHER_TRIAL, ANALYST)}
        for credentials in users.values():
            create_user(uri, admin, *credentials)
        yield uri, admin, users


def _objects_for(server, identity: str) -> dict:
    uri, admin, _ = server
    return create_sweep_objects(uri, admin, identity, OTHER_TRIAL)


def _refusals(objects, credentials, for_trial_user: bool) -> dict:
    routes = trial_identity_refusals(objects, *credentials)
    if for_trial_user:
        routes = {**trial_user_refusals(objects), **routes}  # before anything is deleted
    return routes


@pytest.mark.parametrize("identity", IDENTITIES, ids=["trainer", "trial user"])
def test_a_trial_identity_is_refused_what_a_trial_does_not_need(server, identity):
    uri, _, users = server
    objects = _objects_for(server, identity)
    routes = _refusals(objects, users[identity], identity.startswith(TRIAL_USER_PREFIX))
    answers = outcomes(uri, users[identity], routes)
    not_refused = {name: answer for name, answer in answers.items() if answer[0] != 403}
    assert not_refused == {}
    # Refused by the rules (their one line), on Flask's routes and FastAPI's alike.
    unexplained = {name: body for name, (_, body) in answers.items()
                   if not body.startswith("Permission denied: ") or "\n" in body}
    assert unexplained == {}


def test_without_the_rules_mlflow_lets_a_user_with_edit_do_all_of_it(server):
    """The same requests by a user who is no trial identity: only MLflow's rules apply, and
    they let (nearly) all of it through — so each refusal above is the trial rules' doing."""
    uri, _, users = server
    objects = _objects_for(server, ANALYST)
    answers = outcomes(uri, users[ANALYST], _refusals(objects, users[ANALYST], True))
    refused = {name for name, (status, _) in answers.items() if status in (401, 403)}
    assert refused == REFUSED_BY_MLFLOW_TOO, answers


def test_the_legacy_trainer_may_still_write_untagged_runs_as_its_grants_allow(server):
    uri, _, users = server
    objects = _objects_for(server, LEGACY)
    answers = outcomes(uri, users[LEGACY], trial_user_refusals(objects))
    assert {name: status for name, (status, _) in answers.items()} == \
        dict.fromkeys(answers, 200)


def test_a_trial_user_may_not_use_another_trial_users_run(server):
    """EDIT on the experiment is not enough: the run must be tagged for it."""
    uri, admin, users = server
    objects = _objects_for(server, OTHER_TRIAL)  # OTHER_TRIAL's run
    grant(uri, admin, TRIAL, "experiment", objects["experiment_id"])
    run_id = objects["run_id"]
    routes = {
        "read it": Route("rest", "GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}"),
        "log a metric": Route("rest", "POST", "/api/2.0/mlflow/runs/log-metric",
                              {"run_id": run_id, "key": "loss", "value": 1, "timestamp": 0}),
        "end it": Route("rest", "POST", "/api/2.0/mlflow/runs/update",
                        {"run_id": run_id, "status": "FINISHED"}),
        "upload an artifact": Route("artifacts", "PUT", "/api/2.0/mlflow-artifacts/artifacts/"
                                    f"{objects['experiment_id']}/{run_id}/artifacts/new.txt"),
    }
    statuses = {name: status for name, (status, _) in outcomes(uri, users[TRIAL],
                                                               routes).items()}
    assert statuses == dict.fromkeys(routes, 403)
    statuses = {name: status for name, (status, _) in outcomes(uri, users[OTHER_TRIAL],
                                                               routes).items()}
    assert statuses == dict.fromkeys(routes, 200)


def test_every_kind_of_route_refuses_a_trial_user_what_is_not_its_runs(server):
    """The shared representative routes (rest, ajax, artifacts, registry, traces, OTLP, jobs,
    gateway, users, UI) aimed at the trial user's own run: only its reads and writes pass."""
    uri, _, users = server
    objects = _objects_for(server, TRIAL)
    routes = representative_routes(objects["experiment_id"], objects["run_id"])
    its_own = {("GET", "/runs/get?"), ("POST", "/runs/log-metric"), ("GET", "/experiments/get?"),
               ("GET", "/get-artifact?"), ("GET", "/mlflow-artifacts/artifacts/"),
               ("PUT", "/mlflow-artifacts/artifacts/"), ("GET", "/mlflow/artifacts/list?"),
               ("POST", "/logged-models/search")}
    def name(route):
        return f"{route.kind} {route.method} {route.path}"
    answers = {name(route): request(uri, route, users[TRIAL])[0] for route in routes}
    allowed = {route for route, status in answers.items() if status != 403}
    assert allowed == {name(route) for route in routes if any(
        route.method == method and part in route.path for method, part in its_own)}, answers
    assert {route.kind for route in routes} >= {"rest", "ajax", "artifacts", "registry",
                                                 "traces", "otlp", "jobs", "gateway"}


# -- a whole training run --------------------------------------------------------------------
def _train(uri, objects, credentials, small_params, run_id=None):
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_RUN_ID=run_id or objects["run_id"],
               MLFLOW_EXPERIMENT_ID=objects["experiment_id"],
               MLFLOW_TRACKING_USERNAME=credentials[0], MLFLOW_TRACKING_PASSWORD=credentials[1])
    return subprocess.run(train_argv(small_params), cwd=PROJECT_DIR, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("identity", IDENTITIES, ids=["trainer", "trial user"])
def test_a_trial_identity_still_does_a_whole_training_run(server, identity, small_params,
                                                          monkeypatch, tmp_path):
    uri, admin, users = server
    objects = _objects_for(server, identity)
    result = _train(uri, objects, users[identity], small_params)
    assert result.returncode == 0, result.stderr[-3000:]

    # As the trial's pod could, after training: its log, a checkpoint replaced, not the log.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", identity)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", users[identity][1])
    as_trial = MlflowClient(uri)
    as_trial.log_text(objects["run_id"], result.stdout, "logs/trial-pod.log")
    for epoch in range(2):
        as_trial.log_text(objects["run_id"], f"epoch {epoch}", "checkpoint/last.txt")
    with pytest.raises(Exception, match="403"):
        as_trial.log_text(objects["run_id"], "again", "logs/trial-pod.log")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
    client = MlflowClient(uri)
    run = client.get_run(objects["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == small_params["epochs"]
    assert {metric: [point.step for point in client.get_metric_history(run.info.run_id, metric)]
            for metric in EPOCH_METRICS} == dict.fromkeys(EPOCH_METRICS, [0, 1])
    assert set(FINAL_METRICS) <= set(run.data.metrics)
    artifacts = {info.path for directory in ("logs", "checkpoint")
                 for info in client.list_artifacts(run.info.run_id, directory)}
    assert {"logs/trial-pod.log", "checkpoint/last.txt"} <= artifacts
    assert client.download_artifacts(run.info.run_id, "checkpoint/last.txt", str(tmp_path)) \
        and (tmp_path / "last.txt").read_text() == "epoch 1"
    models = client.search_logged_models(experiment_ids=[objects["experiment_id"]])
    assert [(model.source_run_id, model.status) for model in models] == \
        [(run.info.run_id, "READY")]
    files = {info.path for info in client.list_logged_model_artifacts(models[0].model_id)}
    assert {"MLmodel", "data"} <= files


def test_training_on_another_trials_run_is_refused_at_once(server, small_params):
    uri, admin, users = server
    objects = _objects_for(server, TRIAL)
    result = _train(uri, objects, users[TRIAL], small_params, run_id=objects["other_run_id"])
    assert result.returncode == EXIT_TRIAL_FAILED, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"user '{TRIAL}' may not open the run (403" in errors[0], errors
    other_run = Route("rest", "GET", f"/api/2.0/mlflow/runs/get?run_id={objects['other_run_id']}")
    status, payload = request(uri, other_run, admin)
    assert status == 200
    run = json.loads(payload)["run"]
    assert run["info"]["status"] == "RUNNING" and "params" not in run["data"]
