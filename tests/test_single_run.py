"""celeb_smile.sweep.single_run: one `mlflow run --backend kubernetes` with a trial user of its
own. Against a real basic-auth server configured as on the cluster (tests/helpers/auth_server):
the trial user is made, can write the run MLflow created once it is handed over, and is gone
afterwards; a person who may not manage the experiment is refused before anything is made.
Kubernetes and `mlflow run` itself are in-process doubles (FakeKube, FakeMlflowRun) that do what
MLflow's kubernetes backend and the kubelet do with the backend config they are given."""

import json
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml
from kubernetes.client.rest import ApiException
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from celeb_smile.constants import EXIT_BAD_INPUT, TRIAL_USER_TAG
from celeb_smile.sweep import single_run
from celeb_smile.sweep.backends.kubernetes import CREDENTIAL_ENV, CREDENTIALS_VOLUME
from celeb_smile.sweep.single_run import (SINGLE_RUN_LABEL, SingleRun, last_error_line,
                                          mlflow_run_args)
from tests.conftest import PROJECT_DIR
from tests.helpers.auth_server import basic_auth_server

CONFIG = str(PROJECT_DIR / "kubernetes_config.json")
MLFLOW_DIR = "/home/trainer/.mlflow"  # ~/.mlflow in the training image: MLflow's credentials
MLFLOW_RUN = ["mlflow", "run", ".", "--backend", "kubernetes", "--backend-config", CONFIG,
              "-P", "epochs=2"]


# -- which commands are wrapped ------------------------------------------------------------
@pytest.mark.parametrize("command, args", [
    (MLFLOW_RUN, MLFLOW_RUN[2:]),
    ([".venv/bin/mlflow", "run", "."], ["."]),
    (["python", "-m", "mlflow", "run", ".", "-b", "kubernetes"], [".", "-b", "kubernetes"]),
    (["mlflow", "ui"], None),
    (["python", "driver.py", "run"], None),
    ([], None),
])
def test_only_mlflow_run_is_recognised(command, args):
    assert mlflow_run_args(command) == args


@pytest.mark.parametrize("args, wrapped", [
    (MLFLOW_RUN[2:], True),
    ([".", "-b", "kubernetes", "--backend-config", CONFIG], True),
    ([".", "-P", "epochs=2"], False),  # the local backend
    ([".", "--backend", "kubernetes"], False),  # no backend config: MLflow says so itself
])
def test_mlflows_own_parser_decides_whether_it_runs_on_kubernetes(args, wrapped):
    assert (single_run._kubernetes_params(args) is not None) is wrapped


def test_other_commands_and_stores_without_users_run_unchanged(monkeypatch):
    ran = []
    monkeypatch.setattr(single_run, "_plain", lambda command: ran.append(command) or 0)
    monkeypatch.setattr(SingleRun, "prepare", lambda *a: pytest.fail("wrapped"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert single_run.run_command(["mlflow", "run", "."]) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///nowhere.db")
    assert single_run.run_command(MLFLOW_RUN) == 0
    assert ran == [["mlflow", "run", "."], MLFLOW_RUN]


def test_the_temporary_job_template_reads_the_trial_users_secret(tmp_path):
    from mlflow.projects import _parse_kubernetes_config  # what `mlflow run` reads

    run = _single_run(FakeKube(), experiment_id="7")
    config = json.loads(run._write_backend_config(tmp_path).read_text())
    parsed = _parse_kubernetes_config(dict(config))
    job = parsed["kube-job-template"]
    original = yaml.safe_load((PROJECT_DIR / "job_template.yaml").read_text())
    assert job["metadata"]["labels"] == dict(original["metadata"]["labels"],
                                             **{SINGLE_RUN_LABEL: run.single_run_id})
    container = job["spec"]["template"]["spec"]["containers"][0]
    secret = f"celeb-smile-{run.username}"
    assert run.username.startswith("trial-7-")
    assert not {item["name"] for item in container["env"]} & set(CREDENTIAL_ENV)
    assert {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]
            if mount.get("readOnly")}[MLFLOW_DIR] == CREDENTIALS_VOLUME
    pod, original_pod = job["spec"]["template"]["spec"], original["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    original_volumes = {volume["name"]: volume for volume in original_pod["volumes"]}
    assert json.dumps(volumes[CREDENTIALS_VOLUME]) == json.dumps(  # only repointed
        original_volumes[CREDENTIALS_VOLUME]).replace('"mlflow-trainer"', f'"{secret}"')
    assert "mlflow-trainer" in json.dumps(original_volumes[CREDENTIALS_VOLUME])
    assert dict(volumes, **{CREDENTIALS_VOLUME: None}) == \
        dict(original_volumes, **{CREDENTIALS_VOLUME: None})
    assert container == original_pod["containers"][0]  # its container unchanged
    assert dict(pod, volumes=None) == dict(original_pod, volumes=None)  # and the rest of its pod
    given = json.loads(Path(CONFIG).read_text())  # every other key as given
    assert {key: value for key, value in config.items() if key != "kube-job-template-path"} == \
        {key: value for key, value in given.items() if key != "kube-job-template-path"}


def test_a_failed_jobs_pod_is_explained_by_its_last_error_line():
    kube = FakeKube()
    kube.pod_logs["job-a"] = (b"config: epochs=2\nerror: user 'trial-0-ab' may not open the run "
                              b"(403 Permission denied): it needs EDIT on experiment 0\nbye\n")
    kube.pod_logs["job-b"] = (b"Traceback (most recent call last):\n  File x\n"
                              b"ValueError: bad\n")
    kube.pod_logs["job-c"] = b"just this\n"
    assert last_error_line(kube, "ns", "job-a") == ("error: user 'trial-0-ab' may not open the "
                                                    "run (403 Permission denied): it needs EDIT "
                                                    "on experiment 0")
    assert last_error_line(kube, "ns", "job-b") == "ValueError: bad"
    assert last_error_line(kube, "ns", "job-c") == "just this"
    assert last_error_line(kube, "ns", "job-none") == ""


# -- against a real basic-auth server ---------------------------------------------------------
@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """(uri, admin credentials)."""
    with basic_auth_server(tmp_path_factory.mktemp("auth-server")) as (uri, admin):
        yield uri, admin


@pytest.fixture
def person(auth_server, monkeypatch):
    """A user who is no admin, logged in, with an experiment of its own (MANAGE)."""
    uri, admin = auth_server
    credentials = (f"person-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex)
    _login(monkeypatch, admin)
    get_app_client("basic-auth", tracking_uri=uri).create_user(*credentials)
    _login(monkeypatch, credentials)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    experiment_id = MlflowClient(uri).create_experiment(f"single-{uuid.uuid4().hex[:8]}")
    return SimpleNamespace(uri=uri, admin=admin, credentials=credentials,
                           experiment_id=experiment_id)


def _login(monkeypatch, credentials) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", credentials[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials[1])


@pytest.mark.integration
def test_a_run_gets_a_trial_user_of_its_own_that_writes_it_and_is_gone_after(person, tmp_path,
                                                                               monkeypatch):
    kube = FakeKube()
    kube.on_secret = lambda secret: tags_when_secret.append(
        _as_admin(person, lambda client: client.get_run(mlflow_run.run_id).data.tags))
    tags_when_secret = []
    mlflow_run = FakeMlflowRun(kube, person.uri)
    monkeypatch.setattr(single_run.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    run = _prepare(person.uri, person.experiment_id, kube)

    assert run.execute(_command(run.experiment_id), popen=mlflow_run) == 0

    assert mlflow_run.trial_answers == [200, 200], mlflow_run.trial_answers
    assert tags_when_secret[0][TRIAL_USER_TAG] == run.username  # tagged before the Secret
    assert kube.created_secrets == [(run.namespace, f"celeb-smile-{run.username}")]
    finished = _as_admin(person, lambda client: client.get_run(mlflow_run.run_id))
    assert finished.data.metrics == {"val_accuracy": 0.75}
    assert finished.info.experiment_id == person.experiment_id
    assert kube.secrets == {}  # deleted
    assert not (tmp_path / "t").exists()
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|not found"):
        _as_admin(person, lambda client: None,
                  app=lambda app: app.get_user(run.username))
    assert _trial_status(person.uri, run.username, mlflow_run.password) == 401  # gone at once


@pytest.mark.integration
def test_a_failed_run_is_explained_and_its_credentials_removed_all_the_same(person, capsys):
    kube = FakeKube()
    mlflow_run = FakeMlflowRun(kube, person.uri, returncode=1,
                               log=b"error: user 'x' may not log the metrics (403 ...)\n")
    run = _prepare(person.uri, person.experiment_id, kube)
    assert run.execute(_command(run.experiment_id), popen=mlflow_run) == 1
    assert f"error: Job {mlflow_run.job_name} failed: error: user 'x' may not log the metrics " \
           f"(403 ...)" in capsys.readouterr().err
    assert kube.secrets == {}
    assert _trial_status(person.uri, run.username, mlflow_run.password) == 401


@pytest.mark.integration
def test_ctrl_c_removes_the_credentials_once_mlflow_has_cancelled_its_job(person):
    kube = FakeKube()
    mlflow_run = FakeMlflowRun(kube, person.uri, returncode=1, interrupt=True)
    run = _prepare(person.uri, person.experiment_id, kube)
    assert run.execute(_command(run.experiment_id), popen=mlflow_run) == 1
    assert mlflow_run.waits == 2  # waited for mlflow's own clean-up after the Ctrl-C
    assert kube.secrets == {}
    assert _trial_status(person.uri, run.username, mlflow_run.password) == 401


@pytest.mark.integration
def test_a_person_who_may_not_manage_the_experiment_is_refused_with_nothing_created(
        person, monkeypatch, capsys):
    admin_experiment = _as_admin(person, lambda client: client.create_experiment(
        f"admins-{uuid.uuid4().hex[:8]}"))
    _as_admin(person, None, app=lambda app: app.grant_user_permission(
        person.credentials[0], "experiment", admin_experiment, "EDIT"))
    kube = FakeKube()
    never = FakeMlflowRun(kube, person.uri)
    run = _prepare(person.uri, admin_experiment, kube)
    assert run.execute(_command(run.experiment_id), popen=never) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error == (f"error: cannot make the run's trial user '{run.username}': Permission "
                     f"denied: '{person.credentials[0]}' may not create user '{run.username}': "
                     f"it needs MANAGE on experiment {admin_experiment}\n"), error
    assert never.calls == 0 and kube.created_secrets == []
    assert _as_admin(person, lambda client: client.search_runs([admin_experiment])) == []


@pytest.mark.integration
def test_the_experiment_is_the_one_mlflow_run_would_use(person, monkeypatch):
    named = f"by-name-{uuid.uuid4().hex[:8]}"
    assert single_run._experiment_id({"experiment_name": None, "experiment_id": "5"},
                                     person.uri) == "5"
    created = single_run._experiment_id({"experiment_name": named, "experiment_id": None},
                                        person.uri)
    assert MlflowClient(person.uri).get_experiment_by_name(named).experiment_id == created
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", created)
    assert single_run._experiment_id({}, person.uri) == created
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    assert single_run._experiment_id({}, person.uri) == "0"  # Default


@pytest.mark.integration
def test_without_the_auth_app_the_command_runs_unchanged(mlflow_server, monkeypatch):
    ran = []
    monkeypatch.setattr(single_run, "_plain", lambda command: ran.append(command) or 0)
    kube = FakeKube()
    run = _prepare(mlflow_server, "0", kube)
    assert run.execute(_command("0"), popen=lambda argv: pytest.fail("wrapped")) == 0
    assert ran == [_command("0")] and kube.created_secrets == []


# -- helpers ------------------------------------------------------------------------------------
def _command(experiment_id: str) -> list[str]:
    return [*MLFLOW_RUN, "--experiment-id", experiment_id]


def _prepare(uri: str, experiment_id: str, kube) -> SingleRun:
    params = single_run._kubernetes_params(_command(experiment_id)[2:])
    return SingleRun.prepare(params, uri, clients=(kube, kube))


def _single_run(kube, experiment_id: str) -> SingleRun:
    config = single_run._backend_config(CONFIG)
    template = yaml.safe_load(Path(config["kube-job-template-path"]).read_text())
    return SingleRun("http://127.0.0.1:1", experiment_id, config, template, kube, kube)


def _as_admin(person, call, app=None):
    """`call(MlflowClient)` (or `app(auth client)`) as the admin, then as the person again."""
    import os

    saved = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = person.admin
    try:
        if app is not None:
            return app(get_app_client("basic-auth", tracking_uri=person.uri))
        return call(MlflowClient(person.uri))
    finally:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = saved


def _trial_status(uri: str, username: str, password: str) -> int:
    return requests.get(f"{uri}/api/2.0/mlflow/experiments/get?experiment_id=0",
                        auth=(username, password), timeout=10).status_code


def _attributes(value):
    """A manifest (dict) read like the Kubernetes client's objects: attributes, snake_case."""
    if isinstance(value, dict):
        fields = {key: _attributes(item) for key, item in value.items()}
        fields.setdefault("value", None)
        return SimpleNamespace(**fields)
    if isinstance(value, list):
        return [_attributes(item) for item in value]
    return value


class FakeKube:
    """CoreV1Api and BatchV1Api as single_run uses them: Jobs, Secrets, pod logs."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.secrets: dict[tuple[str, str], dict] = {}
        self.created_secrets: list[tuple[str, str]] = []
        self.pod_logs: dict[str, bytes] = {}
        self.on_secret = lambda secret: None

    def list_namespaced_job(self, namespace, label_selector, _request_timeout=None):
        key, _, value = label_selector.partition("=")
        return SimpleNamespace(items=[_attributes(job) for job in self.jobs.values()
                                      if job["metadata"]["labels"].get(key) == value])

    def delete_namespaced_job(self, name, namespace, **kwargs):
        self.jobs.pop(name, None)

    def create_namespaced_secret(self, namespace, secret, _request_timeout=None, dry_run=None):
        key = (namespace, secret.metadata.name)
        if key in self.secrets:
            raise ApiException(status=409, reason="Conflict")
        if dry_run:
            return
        self.on_secret(secret)
        self.created_secrets.append(key)
        self.secrets[key] = dict(secret.string_data)

    def delete_namespaced_secret(self, name, namespace, _request_timeout=None):
        if self.secrets.pop((namespace, name), None) is None:
            raise ApiException(status=404, reason="Not Found")

    def list_namespaced_pod(self, namespace, label_selector, _request_timeout=None):
        job = label_selector.partition("=")[2]
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name=f"{job}-p"))]
                               if job in self.pod_logs else [])

    def read_namespaced_pod_log(self, name, namespace, **kwargs):
        return SimpleNamespace(data=self.pod_logs[name.removesuffix("-p")])


class FakeMlflowRun:
    """`popen` for SingleRun.execute: what `mlflow run --backend kubernetes` and then the
    kubelet do. MLflow creates the run as the person (untagged) and the Job from the backend
    config it is given; the pod waits for the Secret its ~/.mlflow volume names, then logs as the
    credentials file in it (plain HTTP: this process's MLflow client is the person's)."""

    def __init__(self, kube: FakeKube, uri: str, returncode: int = 0, log: bytes = b"",
                 interrupt: bool = False):
        self.kube, self.uri = kube, uri
        self.returncode_after, self.log, self.interrupt = returncode, log, interrupt
        self.calls = self.waits = 0
        self.run_id = self.job_name = self.password = None
        self.trial_answers: list[int] = []
        self.returncode = None

    def __call__(self, argv):
        from mlflow.cli import run as mlflow_run
        from mlflow.projects import _parse_kubernetes_config, _resolve_experiment_id

        self.calls += 1
        params = mlflow_run.make_context("run", argv[2:], resilient_parsing=True).params
        config = _parse_kubernetes_config(json.loads(Path(params["backend_config"]).read_text()))
        experiment_id = _resolve_experiment_id(params["experiment_name"], params["experiment_id"])
        self.run_id = MlflowClient(self.uri).create_run(experiment_id).info.run_id
        job = json.loads(json.dumps(config["kube-job-template"]))
        self.job_name = f"celeb-smile-{uuid.uuid4().hex[:6]}"
        job["metadata"]["name"] = self.job_name
        container = job["spec"]["template"]["spec"]["containers"][0]
        container["env"] += [{"name": "MLFLOW_RUN_ID", "value": self.run_id},
                             {"name": "MLFLOW_EXPERIMENT_ID", "value": experiment_id}]
        self.kube.jobs[self.job_name] = job
        self.thread = threading.Thread(target=self._pod, args=(container, job), daemon=True)
        self.thread.start()
        return self

    def _pod(self, container, job) -> None:
        import configparser

        assert not {item["name"] for item in container["env"]} & set(CREDENTIAL_ENV)
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == MLFLOW_DIR]
        (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"]
                     if v["name"] == mount["name"]]
        (source,) = volume["projected"]["sources"]
        key = (job["metadata"]["namespace"], source["secret"]["name"])
        deadline = time.monotonic() + 60  # a hang guard, not a speed figure
        while key not in self.kube.secrets and time.monotonic() < deadline:
            time.sleep(0.05)
        assert key in self.kube.secrets, f"the trial's credentials Secret {key} never appeared"
        files = {item["path"]: self.kube.secrets[key][item["key"]]
                 for item in source["secret"]["items"]}
        parser = configparser.ConfigParser()  # what MLflow's client reads on every request
        parser.read_string(files["credentials"])
        auth = (parser["mlflow"]["mlflow_tracking_username"],
                parser["mlflow"]["mlflow_tracking_password"])
        credentials = {"password": auth[1]}
        self.password = credentials["password"]
        for path, body in (("runs/log-metric", {"run_id": self.run_id, "key": "val_accuracy",
                                                "value": 0.75, "timestamp": 1, "step": 0}),
                           ("runs/update", {"run_id": self.run_id, "status": "FINISHED"})):
            self.trial_answers.append(requests.post(f"{self.uri}/api/2.0/mlflow/{path}",
                                                    json=body, auth=auth, timeout=10).status_code)
        self.kube.pod_logs[self.job_name] = self.log

    def wait(self):
        self.waits += 1
        self.thread.join(timeout=30)
        if self.interrupt and self.waits == 1:
            raise KeyboardInterrupt
        self.returncode = self.returncode_after
        return self.returncode

    def terminate(self):
        pass
