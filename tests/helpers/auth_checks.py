"""Raw HTTP requests against a tracking server with MLflow's basic-auth app: which routes answer
without credentials, what the trainer identity may do, and what no trial identity may do
(k8s/server/trial_rules.py). Shared by the local auth tests and the cluster's security tests."""

import base64
import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

from celeb_smile.constants import SWEEP_ID_TAG, SWEEP_RUN_TAG, TRIAL_USER_PREFIX, TRIAL_USER_TAG


@dataclass(frozen=True)
class Route:
    kind: str  # rest, ajax, artifacts, registry, traces, otlp, jobs, gateway, users, ui
    method: str
    path: str
    body: dict | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def changes_something(self) -> bool:
        return self.method in ("PUT", "DELETE") or any(
            word in self.path for word in ("delete", "alias", "log-metric", "/v1/traces"))


def representative_routes(experiment_id: str, run_id: str) -> list[Route]:
    """One or more routes of each kind that reads or writes runs, artifacts, models, traces or
    jobs, including those in which MLflow's auth app once missed a check (artifact proxy,
    ajax, OTLP, logged models, get-artifact)."""
    artifact = f"{experiment_id}/{run_id}/artifacts/auth-check.txt"
    return [
        Route("rest", "GET", "/api/2.0/mlflow/experiments/search?max_results=5"),
        Route("rest", "GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}"),
        Route("rest", "POST", "/api/2.0/mlflow/runs/log-metric",
              {"run_id": run_id, "key": "anonymous", "value": 1, "timestamp": 0}),
        Route("rest", "POST", "/api/2.0/mlflow/runs/delete", {"run_id": run_id}),
        Route("rest", "POST", "/api/2.0/mlflow/experiments/delete",
              {"experiment_id": experiment_id}),
        Route("rest", "POST", "/api/2.0/mlflow/logged-models/search",
              {"experiment_ids": [experiment_id]}),
        Route("ajax", "POST", "/ajax-api/2.0/mlflow/runs/search",
              {"experiment_ids": [experiment_id]}),
        Route("ajax", "GET", f"/ajax-api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"),
        Route("ajax", "GET", f"/get-artifact?path=auth-check.txt&run_uuid={run_id}"),
        Route("artifacts", "GET", f"/api/2.0/mlflow-artifacts/artifacts/{artifact}"),
        Route("artifacts", "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{artifact}"),
        Route("artifacts", "DELETE", f"/api/2.0/mlflow-artifacts/artifacts/{artifact}"),
        Route("artifacts", "GET", f"/ajax-api/2.0/mlflow-artifacts/artifacts/{artifact}"),
        Route("artifacts", "GET", f"/api/2.0/mlflow/artifacts/list?run_id={run_id}"),
        Route("registry", "GET", "/api/2.0/mlflow/registered-models/search"),
        Route("registry", "POST", "/api/2.0/mlflow/registered-models/alias",
              {"name": "celeb-smile", "alias": "champion", "version": "1"}),
        Route("registry", "GET", "/ajax-api/2.0/mlflow/model-versions/search"),
        Route("traces", "GET", f"/api/3.0/mlflow/traces?experiment_ids={experiment_id}"),
        Route("traces", "POST", "/api/3.0/mlflow/traces/search",
              {"locations": [{"type": "MLFLOW_EXPERIMENT",
                              "mlflow_experiment": {"experiment_id": experiment_id}}]}),
        Route("otlp", "POST", "/v1/traces", {}),
        Route("jobs", "POST", "/ajax-api/3.0/jobs/search", {}),
        Route("jobs", "GET", "/ajax-api/3.0/jobs/1"),
        Route("gateway", "GET", "/api/3.0/mlflow/gateway/secrets/list"),
        Route("gateway", "GET", "/gateway/mlflow/v1/models"),
        Route("users", "GET", "/api/2.0/mlflow/users/get?username=admin"),
        Route("ui", "GET", "/"),
        Route("ui", "POST", "/graphql", {"query": "{ mlflowSearchRuns(input: {}) { runs { info { runId } } } }"}),
    ]


def request(base_uri: str, route: Route, credentials: tuple[str, str] | None = None,
            data: bytes | None = None) -> tuple[int, bytes]:
    headers = dict(route.headers)
    if credentials:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    if route.body is not None:
        data = json.dumps(route.body).encode()
        headers["Content-Type"] = "application/json"
    elif route.method == "PUT":
        data = data if data is not None else b"written without credentials\n"
    http = urllib.request.Request(base_uri + route.path, method=route.method, data=data,
                                  headers=headers)
    try:
        with urllib.request.urlopen(http, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def anonymous_answers(base_uri: str, routes: list[Route]) -> dict[str, int]:
    """Every route that did NOT refuse an anonymous request (401/403), with its status."""
    answers = {}
    for route in routes:
        status, _ = request(base_uri, route)
        if status not in (401, 403):
            answers[f"{route.kind} {route.method} {route.path}"] = status
    return answers


def unauthenticated_with(base_uri: str, routes: list[Route], credentials) -> dict[str, int]:
    """Read-only routes that answer 401 even WITH valid credentials (so an anonymous 401 there
    would prove nothing)."""
    statuses = {f"{r.method} {r.path}": request(base_uri, r, credentials)[0]
                for r in routes if not r.changes_something}
    return {route: status for route, status in statuses.items() if status == 401}


def _post(base_uri, path, body, credentials):
    return request(base_uri, Route("rest", "POST", path, body), credentials)[0]


def _get(base_uri, path, credentials):
    return request(base_uri, Route("rest", "GET", path), credentials)[0]


def create_fixture_objects(base_uri: str, admin, name: str) -> dict[str, str]:
    """As the admin (the driver's role): an experiment and a run in it (to be granted to the
    trainer), an artifact of that run, a registered model version, another experiment."""
    def post(path, body):
        status, payload = request(base_uri, Route("rest", "POST", path, body), admin)
        assert status == 200, (path, status, payload[:500])
        return json.loads(payload or b"{}")

    experiment_id = post("/api/2.0/mlflow/experiments/create", {"name": name})["experiment_id"]
    other_id = post("/api/2.0/mlflow/experiments/create", {"name": f"{name}-other"})["experiment_id"]
    run_id = post("/api/2.0/mlflow/runs/create",
                  {"experiment_id": experiment_id, "start_time": 0})["run"]["info"]["run_id"]
    artifact = f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/admin.txt"
    status, _ = request(base_uri, Route("artifacts", "PUT", artifact), admin, data=b"by admin\n")
    assert status == 200, status
    post("/api/2.0/mlflow/registered-models/create", {"name": name})
    version = post("/api/2.0/mlflow/model-versions/create",
                   {"name": name, "source": f"runs:/{run_id}/model", "run_id": run_id})
    return {"experiment_id": experiment_id, "other_experiment_id": other_id, "run_id": run_id,
            "model": name, "version": version["model_version"]["version"]}


def trainer_outcomes(base_uri: str, trainer, objects: dict[str, str]) -> dict[str, int]:
    """The HTTP status of each thing a trainer might try, as the trainer."""
    run_id, experiment_id = objects["run_id"], objects["experiment_id"]
    artifacts = f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts"
    outcomes = {
        "log metric": _post(base_uri, "/api/2.0/mlflow/runs/log-metric",
                            {"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 1,
                             "step": 0}, trainer),
        "log param": _post(base_uri, "/api/2.0/mlflow/runs/log-parameter",
                           {"run_id": run_id, "key": "epochs", "value": "2"}, trainer),
        "read run": _get(base_uri, f"/api/2.0/mlflow/runs/get?run_id={run_id}", trainer),
        "upload artifact": request(base_uri, Route("artifacts", "PUT", f"{artifacts}/trainer.txt"),
                                   trainer, data=b"by trainer\n")[0],
        "delete artifact": request(base_uri, Route("artifacts", "DELETE", f"{artifacts}/admin.txt"),
                                   trainer)[0],
        "delete run": _post(base_uri, "/api/2.0/mlflow/runs/delete", {"run_id": run_id}, trainer),
        "delete experiment": _post(base_uri, "/api/2.0/mlflow/experiments/delete",
                                   {"experiment_id": experiment_id}, trainer),
        "set model alias": _post(base_uri, "/api/2.0/mlflow/registered-models/alias",
                                 {"name": objects["model"], "alias": "champion",
                                  "version": objects["version"]}, trainer),
        "read ungranted experiment": _get(
            base_uri, f"/api/2.0/mlflow/experiments/get?experiment_id="
                      f"{objects['other_experiment_id']}", trainer),
        "create run in ungranted experiment": _post(
            base_uri, "/api/2.0/mlflow/runs/create",
            {"experiment_id": objects["other_experiment_id"], "start_time": 0}, trainer),
    }
    return outcomes


TRAINER_MAY = ("log metric", "log param", "read run", "upload artifact")
TRAINER_MAY_NOT = ("delete artifact", "delete run", "delete experiment", "set model alias",
                   "read ungranted experiment", "create run in ungranted experiment")


# -- trial identities (k8s/server/trial_rules.py) ------------------------------------------------
def create_user(base_uri: str, admin, username: str, password: str) -> None:
    status, payload = request(base_uri, Route("users", "POST", "/api/2.0/mlflow/users/create",
                                              {"username": username, "password": password}),
                              admin)
    assert status == 200, (status, payload[:500])


def grant(base_uri: str, admin, username: str, resource_type: str, resource_id: str,
          permission: str = "EDIT") -> None:
    body = {"username": username, "resource_type": resource_type, "resource_id": resource_id,
            "permission": permission}
    status, payload = request(base_uri, Route("users", "POST",
                                              "/api/3.0/mlflow/users/permissions/grant", body),
                              admin)
    assert status == 200, (status, payload[:500])


def create_sweep_objects(base_uri: str, admin, identity: str, other_trial_user: str,
                         experiment_id: str | None = None) -> dict:
    """As the sweep driver would, for a trial logging as `identity`: an experiment it may EDIT
    (`experiment_id` when given: `identity` was granted it already), the sweep's parent run,
    the trial's run (tagged for `identity` if it is a trial user), another trial's run, an
    artifact the admin wrote in the trial's run, and a registered model `identity` may EDIT
    (so that MLflow alone would let it add a version)."""
    def post(path, body):
        status, payload = request(base_uri, Route("rest", "POST", path, body), admin)
        assert status == 200, (path, status, payload[:500])
        return json.loads(payload or b"{}")

    def create_run(tags):
        body = {"experiment_id": experiment_id, "start_time": 0,
                "tags": [{"key": key, "value": value} for key, value in tags.items()]}
        return post("/api/2.0/mlflow/runs/create", body)["run"]["info"]["run_id"]

    name = f"sweep-{uuid.uuid4().hex[:10]}"
    granted = experiment_id is not None
    if not granted:
        experiment_id = post("/api/2.0/mlflow/experiments/create",
                             {"name": name})["experiment_id"]
    parent = create_run({SWEEP_ID_TAG: name})
    owner = {TRIAL_USER_TAG: identity} if identity.startswith(TRIAL_USER_PREFIX) else {}
    run_id = create_run({SWEEP_ID_TAG: name, SWEEP_RUN_TAG: parent, **owner})
    other = create_run({SWEEP_ID_TAG: name, SWEEP_RUN_TAG: parent,
                        TRIAL_USER_TAG: other_trial_user})
    artifact = f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/admin.txt"
    status, _ = request(base_uri, Route("artifacts", "PUT", artifact), admin, data=b"by admin\n")
    assert status == 200, status
    post("/api/2.0/mlflow/registered-models/create", {"name": name})
    if not granted:
        grant(base_uri, admin, identity, "experiment", experiment_id)
    grant(base_uri, admin, identity, "registered_model", name)
    return {"name": name, "experiment_id": experiment_id, "parent_run_id": parent,
            "run_id": run_id, "other_run_id": other, "model": name}


def trial_identity_refusals(objects: dict, identity: str, password: str) -> dict[str, Route]:
    """What MLflow's per-experiment permissions let a user with EDIT on the sweep's experiment
    do, and no trial identity may: each names the identity's own run where it names one, so
    that the route, not the run, is refused. Destructive ones last."""
    experiment_id, run_id = objects["experiment_id"], objects["run_id"]
    artifacts = f"{experiment_id}/{run_id}/artifacts"
    api, ajax, v3 = "/api/2.0/mlflow", "/ajax-api/2.0/mlflow", "/api/3.0/mlflow"
    name = f"{objects['name']}-{identity}"
    return {
        "create an experiment": Route("rest", "POST", f"{api}/experiments/create",
                                      {"name": f"{name}-new"}),
        "create an experiment (ajax)": Route("ajax", "POST", f"{ajax}/experiments/create",
                                             {"name": f"{name}-new-ajax"}),
        "rename the experiment": Route("rest", "POST", f"{api}/experiments/update",
                                       {"experiment_id": experiment_id,
                                        "new_name": f"{name}-renamed"}),
        "tag the experiment": Route("rest", "POST", f"{api}/experiments/set-experiment-tag",
                                    {"experiment_id": experiment_id, "key": "k", "value": "v"}),
        "create a run": Route("rest", "POST", f"{api}/runs/create",
                              {"experiment_id": experiment_id, "start_time": 0}),
        "search runs": Route("ajax", "POST", f"{ajax}/runs/search",
                             {"experiment_ids": [experiment_id]}),
        "log a metric to another trial's run": Route(
            "rest", "POST", f"{api}/runs/log-metric",
            {"run_id": objects["other_run_id"], "key": "loss", "value": 9, "timestamp": 0}),
        "set the trial-user tag": Route("rest", "POST", f"{api}/runs/set-tag",
                                        {"run_id": run_id, "key": TRIAL_USER_TAG,
                                         "value": identity}),
        "log the trial-user tag in a batch": Route(
            "rest", "POST", f"{api}/runs/log-batch",
            {"run_id": run_id, "tags": [{"key": TRIAL_USER_TAG, "value": identity}]}),
        "overwrite the admin's artifact": Route("artifacts", "PUT",
                                                f"{api}-artifacts/artifacts/{artifacts}/admin.txt"),
        "overwrite the admin's artifact (ajax)": Route(
            "artifacts", "PUT", f"{ajax}-artifacts/artifacts/{artifacts}/admin.txt"),
        "start a multipart upload": Route(
            "artifacts", "POST", f"{api}-artifacts/mpu/create/{artifacts}/big.bin",
            {"path": "big.bin", "num_parts": 1}),
        "create a registered model": Route("registry", "POST", f"{api}/registered-models/create",
                                           {"name": f"{name}-model"}),
        "create a model version": Route("registry", "POST", f"{api}/model-versions/create",
                                        {"name": objects["model"], "run_id": run_id,
                                         "source": f"runs:/{run_id}/model"}),
        "search registered models": Route("registry", "GET", f"{api}/registered-models/search"),
        "create a gateway secret": Route("gateway", "POST", f"{v3}/gateway/secrets/create",
                                         {"secret_name": f"{name}-secret", "provider": "openai",
                                          "secret_value": {"api_key": "sk-test"}}),
        "create a gateway endpoint": Route("gateway", "POST", f"{v3}/gateway/endpoints/create",
                                           {"name": f"{name}-endpoint"}),
        "list gateway models": Route("gateway", "GET", "/gateway/mlflow/v1/models"),
        "list users": Route("users", "GET", f"{api}/users/list"),
        "list users (ajax)": Route("users", "GET", f"{ajax}/users/list"),
        "read its own user": Route("users", "GET", f"{api}/users/current"),
        "change its own password": Route("users", "PATCH", f"{api}/users/update-password",
                                         {"username": identity, "password": password}),
        "create a user": Route("users", "POST", f"{api}/users/create",
                               {"username": f"{name}-user", "password": "x" * 20}),
        "grant itself MANAGE": Route("users", "POST", f"{v3}/users/permissions/grant",
                                     {"username": identity, "resource_type": "experiment",
                                      "resource_id": experiment_id, "permission": "MANAGE"}),
        "search traces": Route("traces", "POST", f"{v3}/traces/search",
                               {"locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment":
                                               {"experiment_id": experiment_id}}]}),
        "export spans over OTLP": Route("otlp", "POST", "/v1/traces", {},
                                        (("x-mlflow-experiment-id", experiment_id),)),
        "search jobs": Route("jobs", "POST", "/ajax-api/3.0/jobs/search", {}),
        "open the UI": Route("ui", "GET", "/"),
        "query GraphQL": Route("ui", "POST", "/graphql",
                               {"query": "{ mlflowSearchRuns(input: {}) { runs { info "
                                         "{ runId } } } }"}),
        "delete a run's tag": Route("rest", "POST", f"{api}/runs/delete-tag",
                                    {"run_id": run_id, "key": SWEEP_ID_TAG}),
        "delete an artifact": Route("artifacts", "DELETE",
                                    f"{api}-artifacts/artifacts/{artifacts}/admin.txt"),
        "delete the run": Route("rest", "POST", f"{api}/runs/delete", {"run_id": run_id}),
        "delete the run (ajax)": Route("ajax", "POST", f"{ajax}/runs/delete", {"run_id": run_id}),
        "delete the experiment": Route("rest", "POST", f"{api}/experiments/delete",
                                       {"experiment_id": experiment_id}),
    }


def trial_user_refusals(objects: dict) -> dict[str, Route]:
    """What the legacy `trainer` may still do (MLflow's grants decide) and a trial user not:
    write the sweep's parent run, which is not tagged for it."""
    api = "/api/2.0/mlflow"
    parent = objects["parent_run_id"]
    return {
        "tag the sweep's parent run": Route("rest", "POST", f"{api}/runs/set-tag",
                                            {"run_id": parent, "key": "k", "value": "v"}),
        "log a metric to the sweep's parent run": Route(
            "rest", "POST", f"{api}/runs/log-metric",
            {"run_id": parent, "key": "loss", "value": 9, "timestamp": 0}),
        "read the sweep's parent run": Route("rest", "GET", f"{api}/runs/get?run_id={parent}"),
    }


def outcomes(base_uri: str, credentials, routes: dict[str, Route]) -> dict[str, tuple[int, str]]:
    """Each route's status and the first 200 characters of its answer, in order."""
    answers = {}
    for name, route in routes.items():
        status, payload = request(base_uri, route, credentials)
        answers[name] = (status, payload[:200].decode(errors="replace"))
    return answers
