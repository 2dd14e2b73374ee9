"""The k8s/ stack on a real cluster, deployed by `make deploy` into the tests' own namespaces
(the tracking namespace: server and PostgreSQL; the sweeps namespace: trials): it becomes Ready, PostgreSQL runs as non-root with MLflow as a role that owns only its databases,
no process of the server or the database holds a password in its environment, their root file
systems are read-only and they hold no service-account token, the namespace's quota admits a
pod that declares no resources, and the manifests (and the namespace's training Job template)
pass the API server's validation."""

import json

import pytest
import yaml

from tests.cluster.conftest import LABEL_KEY, http_status, kubectl
from tests.conftest import PROJECT_DIR

pytestmark = pytest.mark.cluster

K8S_DIR = PROJECT_DIR / "k8s"


def test_stack_becomes_ready(cluster_stack):
    for name in ("postgres", "mlflow"):
        deployment = json.loads(cluster_stack.tracking_kubectl("get", "deployment", name, "-o",
                                                               "json").stdout)
        assert deployment["status"].get("readyReplicas") == 1, deployment["status"]
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
    phases = {}
    for kubectl_in in (cluster_stack.tracking_kubectl, cluster_stack.kubectl):
        pvcs = json.loads(kubectl_in("get", "pvc", "-o", "json").stdout)["items"]
        phases |= {pvc["metadata"]["name"]: pvc["status"]["phase"] for pvc in pvcs}
    assert {"postgres-data", "mlflow-artifacts", "tfds-data"} <= phases.keys()
    assert all(phase == "Bound" for phase in phases.values()), phases
    pods = json.loads(cluster_stack.tracking_kubectl(
        "get", "pods", "-l", f"{LABEL_KEY} in (postgres,mlflow)", "-o", "json").stdout)["items"]
    running = [pod for pod in pods if pod["status"]["phase"] == "Running"
               and not pod["metadata"].get("deletionTimestamp")]
    assert {pod["metadata"]["labels"][LABEL_KEY] for pod in running} == {"postgres", "mlflow"}
    for pod in running:
        assert all(status["ready"] for status in pod["status"]["containerStatuses"]), pod["status"]


@pytest.mark.parametrize("which", ["tracking_namespace", "namespace"])
def test_namespace_enforces_the_restricted_pod_security_profile(cluster_stack, which):
    name = getattr(cluster_stack, which)
    namespace = json.loads(kubectl(cluster_stack.env, "get", "namespace", name,
                                   "-o", "json").stdout)
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert labels["kubernetes.io/metadata.name"] == name  # what the policies select by


def test_server_answers_through_port_forward_and_service_host_names(cluster_stack):
    admin = cluster_stack.overlay.admin_credentials()
    api = f"{cluster_stack.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(f"{cluster_stack.tracking_uri}/health") == 200  # open for probes
    assert http_status(api) == 401  # anonymous
    assert http_status(api, credentials=(admin[0], "wrong-password")) == 401
    # The Host headers clients send: port-forward users, and pods via the Service's DNS name
    # in this namespace.
    assert http_status(api, credentials=admin) == 200
    assert http_status(api, host="localhost:5000", credentials=admin) == 200
    in_cluster_host = cluster_stack.in_cluster_tracking_uri.removeprefix("http://")
    assert http_status(api, host=in_cluster_host, credentials=admin) == 200
    # Anything else is refused (MLflow's DNS-rebinding protection stays on), also the
    # default namespace's name when the stack runs elsewhere.
    assert http_status(api, host="attacker.example:5000", credentials=admin) == 403
    assert http_status(api, host="mlflow.celeb-smile.svc.cluster.local:5000",
                       credentials=admin) == 403


def _psql(stack, database: str, query: str) -> str:
    """As the superuser over the pod's local socket (the only way in for it)."""
    return stack.tracking_kubectl("exec", "deployment/postgres", "--", "psql", "-U", "postgres",
                                  "-d", database, "-Atc", query).stdout.strip()


def test_server_stores_runs_and_users_in_postgres(cluster_stack):
    assert int(_psql(cluster_stack, "mlflow", "select count(*) from experiments")) >= 1
    users = set(_psql(cluster_stack, "mlflow_auth", "select username from users").split())
    assert {"admin", "trainer"} <= users


def test_mlflow_connects_as_a_role_that_owns_only_its_databases(cluster_stack):
    role = _psql(cluster_stack, "postgres", "select rolsuper, rolcreaterole, rolcreatedb, "
                 "rolreplication, rolbypassrls from pg_roles where rolname = 'mlflow'")
    assert role == "f|f|f|f|f"
    owned = _psql(cluster_stack, "postgres", "select datname from pg_database d join pg_roles r "
                  "on d.datdba = r.oid where r.rolname = 'mlflow' order by datname")
    assert owned.split() == ["mlflow", "mlflow_auth"]
    clients = _psql(cluster_stack, "postgres", "select distinct usename from pg_stat_activity "
                    "where client_addr is not null")
    assert clients.split() == ["mlflow"]  # the tracking server's connections


def test_postgres_runs_as_its_non_root_user(cluster_stack):
    ids = cluster_stack.tracking_kubectl("exec", "deployment/postgres", "--", "id",
                                         "-u").stdout.split()
    assert ids == ["999"]
    status = cluster_stack.tracking_kubectl("exec", "deployment/postgres", "--", "grep", "-E",
                                   "^(CapEff|NoNewPrivs)", "/proc/1/status").stdout.split()
    assert status == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1"]


def _process_environments(stack, deployment: str) -> list[str]:
    """The environment of every process in the deployment's container, one string each."""
    script = 'for p in /proc/[0-9]*; do tr "\\0" "\\n" < "$p/environ" 2>/dev/null; echo "=="; done'
    output = stack.tracking_kubectl("exec", f"deployment/{deployment}", "--", "bash", "-c",
                                    script).stdout
    return [chunk for chunk in output.split("==\n") if chunk.strip()]


@pytest.mark.parametrize("deployment", ["mlflow", "postgres"])
def test_no_process_keeps_a_password_in_its_environment(cluster_stack, deployment):
    environments = _process_environments(cluster_stack, deployment)
    assert len(environments) >= 2  # the server (pid 1, after start.py's exec) and its workers
    secrets = {name: cluster_stack.overlay.secret(name) for name in
               ("postgres-superuser-password", "mlflow-db-password", "mlflow-admin-password",
                "trainer-password")}
    leaks = {name for name, value in secrets.items()
             for environment in environments if value in environment}
    assert leaks == set()
    assert not any("PASSWORD=" in line for environment in environments
                   for line in environment.splitlines())


def test_the_server_reads_the_database_password_from_a_private_file(cluster_stack):
    mode = cluster_stack.tracking_kubectl("exec", "deployment/mlflow", "--", "stat", "-c",
                                          "%a %u", "/run/mlflow/pgpass").stdout.split()
    assert mode == ["600", "10002"]


@pytest.mark.parametrize("deployment", ["mlflow", "postgres"])
def test_root_file_system_is_read_only_and_no_token_is_mounted(cluster_stack, deployment):
    write = cluster_stack.tracking_kubectl("exec", f"deployment/{deployment}", "--", "touch",
                                           "/probe", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    token = cluster_stack.tracking_kubectl("exec", f"deployment/{deployment}", "--", "ls",
                                           "/var/run/secrets/kubernetes.io/serviceaccount",
                                           check=False)
    assert token.returncode != 0


@pytest.mark.parametrize("which", ["tracking_namespace", "namespace"])
def test_quota_admits_a_pod_that_declares_no_resources_with_the_defaults(cluster_stack, which):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "quota-probe"},
           "spec": {"containers": [{"name": "probe", "image": "localhost:5001/x:0"}]}}
    namespace = getattr(cluster_stack, which)
    created = json.loads(kubectl(cluster_stack.env, "-n", namespace, "create",
                                 "--dry-run=server", "-o", "json", "-f", "-",
                                 input=json.dumps(pod)).stdout)
    resources = created["spec"]["containers"][0]["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    quota = json.loads(kubectl(cluster_stack.env, "-n", namespace, "get", "resourcequota",
                               "celeb-smile", "-o", "json").stdout)
    assert "pods" in quota["status"]["used"]  # the quota counts this namespace's pods
    assert int(quota["status"]["used"]["pods"]) <= int(quota["status"]["hard"]["pods"])


def test_manifests_pass_server_side_dry_run(cluster_stack):
    result = kubectl(cluster_stack.env, "apply", "--dry-run=server", "-k",
                     str(cluster_stack.overlay.directory))
    for name in ("default-deny-ingress", "postgres-from-mlflow", "mlflow-from-sweeps",
                 "default-deny-egress", "dns-egress", "training-to-mlflow", "mlflow-to-postgres",
                 "controller-to-kubernetes-api", "data-downloads"):
        assert f"networkpolicy.networking.k8s.io/{name}" in result.stdout
    assert "resourcequota/celeb-smile" in result.stdout
    assert "limitrange/celeb-smile" in result.stdout
    assert f"namespace/{cluster_stack.namespace}" in result.stdout
    assert f"namespace/{cluster_stack.tracking_namespace}" in result.stdout
    assert "role.rbac.authorization.k8s.io/celeb-smile-sweep-user" in result.stdout


def test_job_template_passes_server_side_dry_run(cluster_stack):
    job = yaml.safe_load(cluster_stack.overlay.job_template.read_text())
    # What MLflow's kubernetes backend fills in.
    job["metadata"]["name"] = "celeb-smile-dry-run"
    container = job["spec"]["template"]["spec"]["containers"][0]
    container.update(name="celeb-smile", image="localhost:5001/celeb-smile-train:0.1.0",
                     command=["python", "train.py", "--epochs", "1"])
    container["env"] = container.get("env", []) + [
        {"name": "MLFLOW_TRACKING_URI", "value": cluster_stack.in_cluster_tracking_uri}]
    result = kubectl(cluster_stack.env, "create", "--dry-run=server", "-o", "json", "-f", "-",
                     input=json.dumps(job))
    created = json.loads(result.stdout)
    assert created["metadata"]["namespace"] == cluster_stack.namespace
    assert created["spec"]["backoffLimit"] == 0
    # The Secret it mounts is there, its `credentials` MLflow's file of the trainer's values.
    import base64
    import configparser

    secret = json.loads(cluster_stack.kubectl("get", "secret", "mlflow-trainer", "-o",
                                              "json").stdout)
    parser = configparser.ConfigParser()
    parser.read_string(base64.b64decode(secret["data"]["credentials"]).decode())
    assert (parser["mlflow"]["mlflow_tracking_username"],
            parser["mlflow"]["mlflow_tracking_password"]) == \
        cluster_stack.overlay.trainer_credentials()


def test_job_template_matches_the_stack():
    """Static checks the dry run cannot make: one label key, the trainer identity, the data."""
    job = yaml.safe_load((PROJECT_DIR / "job_template.yaml").read_text())
    config = json.loads((PROJECT_DIR / "kubernetes_config.json").read_text())
    assert config == {"kube-job-template-path": "job_template.yaml",
                      "repository-uri": "localhost:5001/celeb-smile-train",
                      "tracking-namespace": "celeb-smile"}
    assert job["metadata"]["namespace"] == "celeb-smile-sweeps"
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["template"]["metadata"]["labels"] == {LABEL_KEY: "training"}
    assert pod["serviceAccountName"] == "celeb-smile-trainer"
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {item["name"] for item in pod["containers"][0]["env"]}
    assert not env & {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}  # a file instead
    mounts = {mount["name"]: mount for mount in pod["containers"][0]["volumeMounts"]}
    assert set(mounts) == {"tfds-data", "tmp", "home", "mlflow-credentials"}
    assert mounts["tfds-data"]["readOnly"] is True
    # MLflow's credentials file, ~/.mlflow/credentials, from the legacy trainer's Secret.
    assert mounts["mlflow-credentials"] == {"name": "mlflow-credentials", "readOnly": True,
                                            "mountPath": "/home/trainer/.mlflow"}
    assert mounts["home"]["mountPath"] == "/home/trainer"
    (credentials,) = [volume for volume in pod["volumes"] if volume["name"] == "mlflow-credentials"]
    assert credentials["projected"] == {"defaultMode": 0o440, "sources": [{"secret": {
        "name": "mlflow-trainer", "items": [{"key": "credentials", "path": "credentials"}]}}]}
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    claims = {volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"]
              if "persistentVolumeClaim" in volume}
    assert {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume} == {"tmp", "home"}
    resources = [yaml.safe_load(path.read_text()) for path in K8S_DIR.glob("*/*.yaml")
                 if path.name != "kustomization.yaml" and path.parent.name != "data"]
    assert claims <= {r["metadata"]["name"] for r in resources if r["kind"] == "PersistentVolumeClaim"}
    label_keys = {key for r in resources for key in r["metadata"].get("labels", {})}
    assert label_keys == {LABEL_KEY}
