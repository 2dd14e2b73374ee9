"""Raw HTTP requests against a tracking server with MLflow's basic-auth app: which routes answer
without credentials, and what the trainer identity may do. Shared by the local auth tests and
the cluster's security tests."""

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    kind: str  # rest, ajax, artifacts, registry, traces, jobs, ui
    method: str
    path: str
    body: dict | None = None

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
        Route("traces", "POST", "/v1/traces", {}),
        Route("jobs", "POST", "/ajax-api/3.0/jobs/search", {}),
        Route("jobs", "GET", "/ajax-api/3.0/jobs/1"),
        Route("users", "GET", "/api/2.0/mlflow/users/get?username=admin"),
        Route("ui", "GET", "/"),
        Route("ui", "POST", "/graphql", {"query": "{ mlflowSearchRuns(input: {}) { runs { info { runId } } } }"}),
    ]


def request(base_uri: str, route: Route, credentials: tuple[str, str] | None = None,
            data: bytes | None = None) -> tuple[int, bytes]:
    headers = {}
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
