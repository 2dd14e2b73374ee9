"""celeb_smile.sweep.access against real MLflow servers: one with the basic-auth app configured
as on the cluster (nobody may do anything by default), one without authentication."""

import io
import os
import subprocess
import uuid

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.server import get_app_client
from rich.console import Console

from celeb_smile.constants import EXIT_BAD_INPUT, EXIT_TRIAL_FAILED
from celeb_smile.sweep.access import (AccessError, close_trial_user, grant_trainer,
                                      open_trial_user, trial_username)
from celeb_smile.sweep.controller import SweepController
from celeb_smile.sweep.spec import SweepSpec
from tests.helpers.auth_checks import (
    TRAINER_MAY, TRAINER_MAY_NOT, anonymous_answers, create_fixture_objects,
    representative_routes, trainer_outcomes, unauthenticated_with,
)
from tests.helpers.auth_server import basic_auth_server
from tests.conftest import PROJECT_DIR
from tests.helpers.fake_backend import FakeBackend
from tests.helpers.project import train_argv

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """(uri, admin credentials, trainer credentials)."""
    with basic_auth_server(tmp_path_factory.mktemp("auth-server")) as (uri, admin):
        trainer = ("trainer", uuid.uuid4().hex)
        with pytest.MonkeyPatch.context() as patch:
            _login(patch, admin)
            get_app_client("basic-auth", tracking_uri=uri).create_user(*trainer)
        yield uri, admin, trainer


def _login(patch, credentials) -> None:
    patch.setenv("MLFLOW_TRACKING_USERNAME", credentials[0])
    patch.setenv("MLFLOW_TRACKING_PASSWORD", credentials[1])


def test_anonymous_requests_are_refused_on_every_kind_of_route(auth_server):
    uri, admin, _ = auth_server
    objects = create_fixture_objects(uri, admin, f"anonymous-{uuid.uuid4().hex[:8]}")
    routes = representative_routes(objects["experiment_id"], objects["run_id"])
    assert anonymous_answers(uri, routes) == {}
    assert unauthenticated_with(uri, routes, admin) == {}  # the routes exist and admit the admin


def test_granted_trainer_logs_but_cannot_delete_promote_or_read_others(auth_server,
                                                                         monkeypatch):
    uri, admin, trainer = auth_server
    objects = create_fixture_objects(uri, admin, f"grant-{uuid.uuid4().hex[:8]}")
    before = trainer_outcomes(uri, trainer, objects)
    assert {action: before[action] for action in TRAINER_MAY} == dict.fromkeys(TRAINER_MAY, 403)

    _login(monkeypatch, admin)
    grant_trainer(uri, objects["experiment_id"])
    grant_trainer(uri, objects["experiment_id"])  # idempotent
    after = trainer_outcomes(uri, trainer, objects)
    assert {action: after[action] for action in TRAINER_MAY} == dict.fromkeys(TRAINER_MAY, 200)
    assert {action: after[action] for action in TRAINER_MAY_NOT} == \
        dict.fromkeys(TRAINER_MAY_NOT, 403)


def test_grant_replaces_another_permission_of_the_trainer_by_edit(auth_server, monkeypatch):
    uri, admin, trainer = auth_server
    objects = create_fixture_objects(uri, admin, f"regrant-{uuid.uuid4().hex[:8]}")
    _login(monkeypatch, admin)
    admin_client = get_app_client("basic-auth", tracking_uri=uri)
    admin_client.grant_user_permission(trainer[0], "experiment", objects["experiment_id"],
                                       "READ")
    grant_trainer(uri, objects["experiment_id"])
    assert admin_client.get_user_permission(trainer[0], "experiment",
                                            objects["experiment_id"]).permission == "EDIT"


def test_grant_by_a_user_who_may_not_manage_the_experiment_fails_in_one_line(auth_server,
                                                                               monkeypatch):
    uri, admin, trainer = auth_server
    objects = create_fixture_objects(uri, admin, f"refused-{uuid.uuid4().hex[:8]}")
    _login(monkeypatch, trainer)
    with pytest.raises(AccessError, match="cannot grant 'trainer' EDIT on experiment"):
        grant_trainer(uri, objects["experiment_id"])


def test_grant_is_a_no_op_without_the_auth_app(mlflow_server):
    messages = []
    grant_trainer(mlflow_server, "0", announce=messages.append)
    assert messages == [f"tracking server {mlflow_server} has no authentication (no basic-auth "
                        "app): trainer access not needed"]


def test_no_trial_user_without_the_auth_app(mlflow_server):
    """A server without authentication has nobody to make: the sweep's Jobs keep the
    template's credentials (unused there) and no run is tagged for a trial user."""
    assert open_trial_user(mlflow_server, trial_username("0", "abc123"), "0") is None
    close_trial_user(mlflow_server, trial_username("0", "abc123"))
    assert open_trial_user("sqlite:///nowhere.db", "trial-0-abc123", "0") is None


def test_a_sweep_whose_user_may_not_make_its_trial_user_is_refused_with_nothing_created(
        auth_server, monkeypatch, capsys):
    uri, admin, _ = auth_server
    name = f"no-manage-{uuid.uuid4().hex[:8]}"
    objects = create_fixture_objects(uri, admin, name)
    analyst = ("analyst-" + uuid.uuid4().hex[:6], uuid.uuid4().hex)
    _login(monkeypatch, admin)
    admin_client = get_app_client("basic-auth", tracking_uri=uri)
    admin_client.create_user(*analyst)
    admin_client.grant_user_permission(analyst[0], "experiment", objects["experiment_id"], "EDIT")

    _login(monkeypatch, analyst)  # may log runs to the experiment, not manage who else may
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    spec = SweepSpec(experiment=name, params={"epochs": "3"}, grid={"learning_rate": ["0.01"]})
    sweep = SweepController(spec, FakeBackend(remote=True), Console(file=io.StringIO()), tracking_uri=uri,
                  poll_seconds=0)
    assert sweep.run() == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    trial_user = f"trial-{objects['experiment_id']}-{spec.sweep_id()}"
    assert error == (f"error: cannot make the sweep's trial user '{trial_user}': Permission "
                     f"denied: '{analyst[0]}' may not create user '{trial_user}': it needs MANAGE "
                     f"on experiment {objects['experiment_id']}\n"), error
    _login(monkeypatch, admin)
    runs = MlflowClient(uri).search_runs([objects["experiment_id"]])
    assert [r.info.run_id for r in runs] == [objects["run_id"]]  # no sweep run, no trial


def test_training_refused_by_the_server_ends_at_once_in_one_line(auth_server, small_params):
    """An ungranted trainer's 403 (the auth app's plain text, not MLflow's JSON) is not an
    outage to wait out for 5 minutes: train.py names the missing permission and exits 1."""
    uri, admin, trainer = auth_server
    objects = create_fixture_objects(uri, admin, f"ungranted-{uuid.uuid4().hex[:8]}")
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_RUN_ID=objects["run_id"],
               MLFLOW_EXPERIMENT_ID=objects["experiment_id"],
               MLFLOW_TRACKING_USERNAME=trainer[0], MLFLOW_TRACKING_PASSWORD=trainer[1])
    result = subprocess.run(train_argv(small_params), cwd=PROJECT_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_TRIAL_FAILED, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: user 'trainer' may not open the run (403 Permission denied): "
                      f"it needs EDIT on experiment {objects['experiment_id']}"]
    assert "retrying" not in result.stderr


def test_training_with_a_wrong_password_ends_at_once_in_one_line(auth_server, small_params):
    uri, admin, trainer = auth_server
    objects = create_fixture_objects(uri, admin, f"badpass-{uuid.uuid4().hex[:8]}")
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_RUN_ID=objects["run_id"],
               MLFLOW_TRACKING_USERNAME=trainer[0], MLFLOW_TRACKING_PASSWORD="wrong")
    result = subprocess.run(train_argv(small_params), cwd=PROJECT_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_TRIAL_FAILED, result.stderr[-3000:]
    assert "error: the tracking server does not accept user 'trainer''s credentials (401)" \
        in result.stderr and "retrying" not in result.stderr
