"""The k8s/ stack on a real cluster: it deploys, becomes Ready, and its manifests (and the
training Job template) pass the API server's validation."""

import json

import pytest
import yaml

from tests.cluster.conftest import (
    IN_CLUSTER_TRACKING_URI, LABEL_KEY, NAMESPACE, http_status, kubectl,
)
from tests.conftest import PROJECT_DIR

pytestmark = pytest.mark.cluster

K8S_DIR = PROJECT_DIR / "k8s"


def test_stack_becomes_ready(cluster_stack):
    for name in ("postgres", "mlflow"):
        deployment = json.loads(cluster_stack.kubectl("get", "deployment", name, "-o", "json").stdout)
        assert deployment["status"].get("readyReplicas") == 1, deployment["status"]
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pvcs = json.loads(cluster_stack.kubectl("get", "pvc", "-o", "json").stdout)["items"]
    phases = {pvc["metadata"]["name"]: pvc["status"]["phase"] for pvc in pvcs}
    assert {"postgres-data", "mlflow-artifacts", "tfds-data"} <= phases.keys()
    assert all(phase == "Bound" for phase in phases.values()), phases
    pods = json.loads(cluster_stack.kubectl(
        "get", "pods", "-l", f"{LABEL_KEY} in (postgres,mlflow)", "-o", "json").stdout)["items"]
    running = [pod for pod in pods if pod["status"]["phase"] == "Running"
               and not pod["metadata"].get("deletionTimestamp")]
    assert {pod["metadata"]["labels"][LABEL_KEY] for pod in running} == {"postgres", "mlflow"}
    for pod in running:
        assert all(status["ready"] for status in pod["status"]["containerStatuses"]), pod["status"]


def test_server_answers_through_port_forward_and_service_host_names(cluster_stack):
    api = f"{cluster_stack.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(f"{cluster_stack.tracking_uri}/health") == 200
    # The Host headers clients send: port-forward users, and pods via the Service's DNS name.
    assert http_status(api) == 200
    assert http_status(api, host="localhost:5000") == 200
    assert http_status(api, host=IN_CLUSTER_TRACKING_URI.removeprefix("http://")) == 200
    # Anything else is refused (MLflow's DNS-rebinding protection stays on).
    assert http_status(api, host="attacker.example:5000") == 403


def test_server_stores_runs_in_postgres(cluster_stack):
    tables = cluster_stack.kubectl(
        "exec", "deployment/postgres", "--", "sh", "-c",
        'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc "select count(*) from experiments"')
    assert int(tables.stdout.strip()) >= 1  # MLflow's schema, with the Default experiment


def test_manifests_pass_server_side_dry_run(kube_env):
    result = kubectl(kube_env, "apply", "--dry-run=server", "-k", str(K8S_DIR))
    assert f"namespace/{NAMESPACE}" in result.stdout


def test_job_template_passes_server_side_dry_run(kube_env, cluster_stack):
    job = yaml.safe_load((PROJECT_DIR / "job_template.yaml").read_text())
    # What MLflow's kubernetes backend fills in.
    job["metadata"]["name"] = "celeb-smile-dry-run"
    container = job["spec"]["template"]["spec"]["containers"][0]
    container.update(name="celeb-smile", image="localhost:5001/celeb-smile-train:0.1.0",
                     command=["python", "train.py", "--epochs", "1"])
    container["env"] = container.get("env", []) + [
        {"name": "MLFLOW_TRACKING_URI", "value": IN_CLUSTER_TRACKING_URI}]
    result = kubectl(kube_env, "create", "--dry-run=server", "-o", "json", "-f", "-",
                     input=json.dumps(job))
    created = json.loads(result.stdout)
    assert created["metadata"]["namespace"] == NAMESPACE
    assert created["spec"]["backoffLimit"] == 0


def test_job_template_matches_the_stack():
    """Static checks the dry run cannot make: one label key, the trainer identity, the data."""
    job = yaml.safe_load((PROJECT_DIR / "job_template.yaml").read_text())
    config = json.loads((PROJECT_DIR / "kubernetes_config.json").read_text())
    assert config == {"kube-job-template-path": "job_template.yaml",
                      "repository-uri": "localhost:5001/celeb-smile-train"}
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["template"]["metadata"]["labels"] == {LABEL_KEY: "training"}
    assert pod["serviceAccountName"] == "celeb-smile-trainer"
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    claims = {volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"]}
    resources = [yaml.safe_load(path.read_text()) for path in K8S_DIR.glob("*.yaml")
                 if path.name != "kustomization.yaml"]
    assert claims <= {r["metadata"]["name"] for r in resources if r["kind"] == "PersistentVolumeClaim"}
    label_keys = {key for r in resources for key in r["metadata"].get("labels", {})}
    assert label_keys == {LABEL_KEY}
