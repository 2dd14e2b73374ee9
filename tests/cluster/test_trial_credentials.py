"""A sweep's trial-user Secret on the cluster, made and deleted as the controller's
ServiceAccount (k8s/sweeps/controller-*.yaml) would: its Role lets it create and delete Secrets and
never read one. No image is built: only the Role, its binding and the Secret calls of
celeb_smile/sweep/backends/kubernetes.py, in a namespace of the test's own."""

import base64
import json
import secrets

import pytest

from celeb_smile.constants import COMPONENT_LABEL, SWEEP_LABEL
from celeb_smile.deploy import mlflow_credentials_file
from celeb_smile.sweep.backends.kubernetes import (CREDENTIALS_COMPONENT, create_trial_secret,
                                                   delete_trial_secret, trial_secret_name)
from celeb_smile.sweep.detach import SERVICE_ACCOUNT
from tests.cluster.conftest import NAMESPACE_PREFIX, kubectl
from tests.conftest import PROJECT_DIR

pytestmark = pytest.mark.cluster

CONTROLLER_FILES = ("controller-serviceaccount.yaml", "controller-role.yaml",
                    "controller-rolebinding.yaml")
USERNAME = "trial-7-0123456789ab"


@pytest.fixture(scope="module")
def namespace(kube_env):
    name = f"{NAMESPACE_PREFIX}cred-{secrets.token_hex(3)}"
    kubectl(kube_env, "create", "namespace", name)
    try:
        for file in CONTROLLER_FILES:
            kubectl(kube_env, "apply", "-n", name, "-f",
                    str(PROJECT_DIR / "k8s" / "sweeps" / file))
        yield name
    finally:
        kubectl(kube_env, "delete", "namespace", name, "--ignore-not-found", "--wait=false",
                check=False)


def controller(namespace: str) -> str:
    return f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"


@pytest.fixture
def as_controller(kube_env, namespace, monkeypatch):
    """A CoreV1Api that acts as the controller's ServiceAccount (impersonated)."""
    from kubernetes import client, config

    monkeypatch.setenv("KUBECONFIG", kube_env["KUBECONFIG"])
    api = config.new_client_from_config(config_file=kube_env["KUBECONFIG"])
    api.set_default_header("Impersonate-User", controller(namespace))
    return client.CoreV1Api(api)


def can_i(kube_env, namespace: str, verb: str) -> bool:
    result = kubectl(kube_env, "auth", "can-i", verb, "secrets", "-n", namespace,
                     f"--as={controller(namespace)}", check=False)
    return result.stdout.strip() == "yes"


def test_the_controller_may_create_and_delete_secrets_and_never_read_one(kube_env, namespace):
    answers = {verb: can_i(kube_env, namespace, verb)
               for verb in ("create", "delete", "get", "list", "watch", "update", "patch")}
    assert answers == {"create": True, "delete": True, "get": False, "list": False,
                       "watch": False, "update": False, "patch": False}


def test_a_sweeps_trial_secret_is_made_once_found_by_a_dry_run_and_deleted(kube_env, namespace,
                                                                          as_controller):
    def secret():
        found = kubectl(kube_env, "get", "secret", "-n", namespace,
                        trial_secret_name(USERNAME), "-o", "json", check=False)
        return json.loads(found.stdout) if found.returncode == 0 else None

    assert create_trial_secret(as_controller, namespace, "0123456789ab", USERNAME, "",
                               dry_run=True) is True
    assert secret() is None  # a dry run makes nothing
    assert create_trial_secret(as_controller, namespace, "0123456789ab", USERNAME, "s3cret")
    made = secret()
    data = {key: base64.b64decode(value).decode() for key, value in made["data"].items()}
    assert data == {"username": USERNAME, "password": "s3cret",
                    "credentials": mlflow_credentials_file(USERNAME, "s3cret")}
    assert made["metadata"]["labels"] == {SWEEP_LABEL: "0123456789ab",
                                          COMPONENT_LABEL: CREDENTIALS_COMPONENT}
    # An earlier controller's Secret: found by a dry run, kept as it is.
    assert create_trial_secret(as_controller, namespace, "0123456789ab", USERNAME, "",
                               dry_run=True) is False
    assert create_trial_secret(as_controller, namespace, "0123456789ab", USERNAME,
                               "other") is False
    assert base64.b64decode(secret()["data"]["password"]).decode() == "s3cret"

    delete_trial_secret(as_controller, namespace, USERNAME)
    assert secret() is None
    delete_trial_secret(as_controller, namespace, USERNAME)  # already gone: fine


def test_cancel_deletes_the_trial_user_and_secret_a_dead_controller_left(
        kube_env, namespace, tmp_path, monkeypatch):
    """Its controller ended the sweep but could not delete them (e.g. the tracking server was
    away): `driver.py --cancel SWEEP_ID` does, as the person who ran the sweep (no admin)."""
    import io
    import threading
    import uuid

    from kubernetes import client, config
    from mlflow import MlflowClient
    from rich.console import Console

    from celeb_smile.constants import EXIT_OK, SWEEP_ID_TAG
    from celeb_smile.sweep.access import open_trial_user, trial_username
    from celeb_smile.sweep.steer import Steering
    from celeb_smile.sweep.tracking import Tracking
    from tests.helpers.auth_checks import Route, create_user, grant, request
    from tests.helpers.auth_server import basic_auth_server

    sweep_id = secrets.token_hex(6)
    with basic_auth_server(tmp_path / "server") as (uri, admin):
        person = ("alice", uuid.uuid4().hex)
        create_user(uri, admin, *person)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
        experiment_id = MlflowClient(uri).create_experiment(f"cancel-{sweep_id}")
        grant(uri, admin, person[0], "experiment", experiment_id, "MANAGE")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", person[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", person[1])
        tracking = MlflowClient(uri)
        parent = tracking.create_run(experiment_id, tags={SWEEP_ID_TAG: sweep_id})
        tracking.set_terminated(parent.info.run_id, "FAILED")
        username = trial_username(experiment_id, sweep_id)
        password = open_trial_user(uri, username, experiment_id)
        api = config.new_client_from_config(config_file=kube_env["KUBECONFIG"])
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        assert create_trial_secret(core, namespace, sweep_id, username, password)

        steering = Steering(core, batch, namespace, Tracking(uri, threading.Event()),
                            Console(file=io.StringIO()))
        assert steering.cancel(sweep_id) == EXIT_OK
        assert create_trial_secret(core, namespace, sweep_id, username, "", dry_run=True)
        status, _ = request(uri, Route("rest", "GET", "/api/2.0/mlflow/users/get?username="
                                       + username), admin)
        assert status == 404

