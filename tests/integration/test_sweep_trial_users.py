"""A sweep's own trial user against a real `mlflow server --app-name basic-auth` configured by
the server image's entrypoint (k8s/server/start.py, trial_rules.py, sweep_trial_users.py): the
person running a sweep, no admin, makes it for the experiments it manages and nothing else; the
trial user does a trial's job and no more; its credentials stop when the sweep ends."""

import io
import json
import uuid

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.server import get_app_client
from rich.console import Console

from celeb_smile.constants import SWEEP_ID_TAG, TRIAL_USER_TAG
from celeb_smile.sweep.access import (AccessError, close_trial_user, open_trial_user,
                                      trial_username)
from celeb_smile.sweep.controller import SweepController
from celeb_smile.sweep.spec import SweepSpec
from tests.helpers.auth_checks import (Route, create_sweep_objects, create_user, grant, outcomes,
                                       request, trial_identity_refusals, trial_user_refusals)
from tests.helpers.auth_server import basic_auth_server
from tests.helpers.fake_backend import FakeBackend

pytestmark = pytest.mark.integration

SWEEP_ID = "0123456789ab"
SERVER_FILES = {}  # the module's server: its auth database's URI
USERS_API = "/api/2.0/mlflow/users"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(uri, admin, the sweep's person: a user with MANAGE on `experiment`, its experiment,
    another experiment it may only EDIT)."""
    root = tmp_path_factory.mktemp("trial-users")
    SERVER_FILES["auth database"] = f"sqlite:///{root}/auth.db"
    with basic_auth_server(root) as (uri, admin):
        person = (f"alice-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex)
        create_user(uri, admin, *person)
        experiment_id, other_id = (_experiment(uri, admin, name) for name in ("mine", "not-mine"))
        grant(uri, admin, person[0], "experiment", experiment_id, "MANAGE")
        grant(uri, admin, person[0], "experiment", other_id, "EDIT")
        yield uri, admin, person, experiment_id, other_id


def _experiment(uri, admin, name: str) -> str:
    route = Route("rest", "POST", "/api/2.0/mlflow/experiments/create",
                  {"name": f"{name}-{uuid.uuid4().hex[:8]}"})
    status, payload = request(uri, route, admin)
    assert status == 200, payload
    return json.loads(payload)["experiment_id"]


def _login(monkeypatch, credentials) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", credentials[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials[1])


def _admin_client(monkeypatch, uri, admin):
    _login(monkeypatch, admin)
    return get_app_client("basic-auth", tracking_uri=uri)


def _user_exists(uri, admin, username: str) -> bool:
    status, _ = request(uri, Route("users", "GET", f"{USERS_API}/get?username={username}"),
                        admin)
    return status == 200


def test_the_person_running_a_sweep_makes_its_trial_user_with_edit_on_its_experiment(
        server, monkeypatch):
    uri, admin, person, experiment_id, _ = server
    username = trial_username(experiment_id, SWEEP_ID)
    _login(monkeypatch, person)
    password = open_trial_user(uri, username, experiment_id)
    again = open_trial_user(uri, username, experiment_id)  # a crashed sweep's: made anew

    auth = _admin_client(monkeypatch, uri, admin)
    assert auth.get_user(username).is_admin is False
    assert auth.get_user_permission(username, "experiment", experiment_id).permission == "EDIT"
    current = Route("users", "GET", f"{USERS_API}/get?username={username}")
    assert request(uri, current, (username, password))[0] == 401  # the old password is gone
    assert request(uri, current, (username, again))[0] == 403  # known, and refused that route
    _login(monkeypatch, person)
    close_trial_user(uri, username)
    assert not _user_exists(uri, admin, username)


@pytest.mark.parametrize("body, why", [
    ({"username": "mallory", "password": "x" * 20}, "Permission denied"),
    ({"username": "trial-anything", "password": "x" * 20},
     "only an admin may create user 'trial-anything'"),
    ({"username": "trial-{other}-" + SWEEP_ID, "password": "x" * 20},
     "needs MANAGE on experiment {other}"),
    ({"username": "trial-99999-" + SWEEP_ID, "password": "x" * 20},
     "needs MANAGE on experiment 99999"),
], ids=["any user", "another trial name", "an experiment it may only edit",
        "no such experiment"])
def test_the_person_may_make_no_other_user(server, body, why):
    uri, admin, person, _, other = server
    body = {key: value.format(other=other) for key, value in body.items()}
    status, payload = request(uri, Route("users", "POST", f"{USERS_API}/create", body), person)
    assert (status, why.format(other=other) in payload.decode()) == (403, True), payload
    assert not _user_exists(uri, admin, body["username"])


def test_a_trial_user_made_by_the_person_is_never_an_admin(server, monkeypatch):
    uri, admin, person, experiment_id, _ = server
    username = trial_username(experiment_id, "f00d")
    body = {"username": username, "password": "x" * 20, "is_admin": True}
    assert request(uri, Route("users", "POST", f"{USERS_API}/create", body), person)[0] == 200
    assert _admin_client(monkeypatch, uri, admin).get_user(username).is_admin is False
    assert request(uri, Route("users", "DELETE", f"{USERS_API}/delete",
                              {"username": username}), person)[0] == 200


def test_the_person_may_delete_no_other_user(server, monkeypatch):
    uri, admin, person, _, other = server
    theirs = trial_username(other, SWEEP_ID)  # a sweep in an experiment it may only EDIT
    create_user(uri, admin, theirs, uuid.uuid4().hex)
    for username in ("admin", theirs):
        status, payload = request(uri, Route("users", "DELETE", f"{USERS_API}/delete",
                                             {"username": username}), person)
        assert status == 403, payload
        assert _user_exists(uri, admin, username)
    _login(monkeypatch, person)
    with pytest.raises(AccessError, match=f"cannot delete the sweep's trial user '{theirs}': "
                                          f"Permission denied: .* needs MANAGE on experiment"):
        close_trial_user(uri, theirs)


def test_the_trial_user_does_a_trials_job_and_is_refused_the_rest(server, monkeypatch):
    uri, admin, person, experiment_id, _ = server
    username = trial_username(experiment_id, "beef01")
    _login(monkeypatch, person)
    password = open_trial_user(uri, username, experiment_id)
    objects = create_sweep_objects(uri, admin, username, "trial-other", experiment_id)

    _login(monkeypatch, (username, password))  # as the trial's pod
    pod = MlflowClient(uri)
    run_id = objects["run_id"]
    pod.log_batch(run_id, metrics=[Metric("loss", 0.5, 0, 0)], params=[Param("epochs", "2")],
                  tags=[RunTag("phase", "training")])
    pod.log_metric(run_id, "val_accuracy", 0.75, step=1)
    pod.log_text(run_id, "weights", "checkpoint/last.txt")
    pod.log_text(run_id, "done", "logs/trial.log")
    pod.set_terminated(run_id, "FINISHED")
    run = pod.get_run(run_id)
    assert (run.info.status, run.data.params, run.data.tags["phase"]) == \
        ("FINISHED", {"epochs": "2"}, "training")
    assert {info.path for info in pod.list_artifacts(run_id, "logs")} == {"logs/trial.log"}

    routes = {**trial_user_refusals(objects),
              **trial_identity_refusals(objects, username, password)}
    answers = outcomes(uri, (username, password), routes)
    assert {name: answer for name, answer in answers.items() if answer[0] != 403} == {}
    assert {name: body for name, (_, body) in answers.items()
            if not body.startswith("Permission denied: ")} == {}


def _trial_user_that_has_read(server, sweep_id: str, monkeypatch):
    """A sweep's trial user that has read its run once, so the server now remembers its
    password: (username, password, the sweep's objects, that read)."""
    uri, admin, person, experiment_id, _ = server
    username = trial_username(experiment_id, sweep_id)
    _login(monkeypatch, person)
    password = open_trial_user(uri, username, experiment_id)
    objects = create_sweep_objects(uri, admin, username, "trial-other", experiment_id)
    read = Route("rest", "GET", f"/api/2.0/mlflow/runs/get?run_id={objects['run_id']}")
    assert request(uri, read, (username, password))[0] == 200
    return username, password, objects, read


def test_a_trial_users_credentials_stop_when_the_sweep_ends(server, monkeypatch):
    """At once, although the server remembers a verified password for a minute."""
    uri = server[0]
    username, password, objects, read = _trial_user_that_has_read(server, "cafe02", monkeypatch)

    close_trial_user(uri, username)
    assert request(uri, read, (username, password))[0] == 401
    log = Route("rest", "POST", "/api/2.0/mlflow/runs/log-metric",
                {"run_id": objects["run_id"], "key": "loss", "value": 1, "timestamp": 0})
    assert request(uri, log, (username, password))[0] == 401
    close_trial_user(uri, username)  # already gone: fine


def test_a_trial_user_deleted_by_another_server_process_is_refused_at_once(server,
                                                                          monkeypatch):
    """A server of several workers: the one that did not delete the user still remembers its
    password (auth_cache_ttl_seconds); the user's existence is checked on every request."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    uri = server[0]
    username, password, _, read = _trial_user_that_has_read(server, "dead03", monkeypatch)

    elsewhere = SqlAlchemyStore()  # as another worker's delete does: same database, not ours
    elsewhere.init_db(SERVER_FILES["auth database"])
    elsewhere.delete_user(username)
    assert request(uri, read, (username, password))[0] == 401


def test_a_remote_sweep_runs_as_its_own_trial_user_which_goes_when_it_ends(server,
                                                                            monkeypatch):
    """The controller with a remote backend (a fake one, whose Secrets are a dict): the
    sweep's trial user exists while it runs, its runs are tagged for it, and it is deleted
    with its Secret at the end."""
    uri, admin, person, experiment_id, _ = server
    experiment = MlflowClient(uri)
    _login(monkeypatch, admin)
    name = experiment.get_experiment(experiment_id).name
    seen = []

    def look(backend):
        seen.append((backend.trial_user, dict(backend.trial_credentials),
                     _user_exists(uri, admin, backend.trial_user)))

    _login(monkeypatch, person)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # the fake trials' client: an earlier test may have set another
    spec = SweepSpec(experiment=name, params={"epochs": "2"},
                     grid={"learning_rate": ["0.01", "0.02"]})
    backend = FakeBackend(remote=True, on_poll=look)
    sweep = SweepController(spec, backend, Console(file=io.StringIO()), tracking_uri=uri,
                            poll_seconds=0)
    assert sweep.run() == 0
    username = trial_username(experiment_id, spec.sweep_id())
    assert seen and all(user == username and set(secrets) == {username} and exists
                        for user, secrets, exists in seen), seen
    assert backend.trial_credentials == {}
    assert not _user_exists(uri, admin, username)
    runs = experiment.search_runs([experiment_id], f"tags.`{SWEEP_ID_TAG}` = '{sweep.sweep_id}'")
    trials = [run for run in runs if run.info.run_id != sweep.record.parent_id]
    assert trials and {run.data.tags.get(TRIAL_USER_TAG) for run in trials} == {username}
    parent = experiment.get_run(sweep.record.parent_id)
    assert TRIAL_USER_TAG not in parent.data.tags
