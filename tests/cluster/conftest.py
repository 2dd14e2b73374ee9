"""Fixtures for the cluster tests: a reachable Kubernetes cluster, the k8s/ stack deployed on
it into namespaces of the tests' own (with its own generated secrets), a port-forward to the
tracking server, a sweep user's credentials, and clean-up of the training Jobs a test starts.

The cluster is whatever the kubeconfig points at ($KUBECONFIG, ~/.kube/config, or the
k8s-local env file); its registry must be localhost:5001 (kind's local-registry recipe).
Without a reachable cluster the tests skip LOUDLY, and fail when CI=true.
The tests never touch a user's deployment: the session deploys into the namespaces
$CELEB_SMILE_TEST_NAMESPACE_PREFIX<random> (default prefix celeb-smile-test-) and its -sweeps,
and deletes both, with .deploy/<namespace>/, at the end, whatever happened.
"""

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from celeb_smile import deploy
from celeb_smile.local_server import free_port, wait_for_http
from tests.conftest import BIN_DIR, PROJECT_DIR
from tests.helpers.requirements import missing

NAMESPACE_PREFIX = os.environ.get("CELEB_SMILE_TEST_NAMESPACE_PREFIX", "celeb-smile-test-")
LABEL_KEY = "app.kubernetes.io/component"  # the one label key of k8s/ and job_template.yaml
TRAINING_SELECTOR = f"{LABEL_KEY}=training"
K8S_LOCAL_ENV_FILE = Path("/var/lib/k8s-local/env.sh")
NO_CLUSTER = (
    "NO KUBERNETES CLUSTER REACHABLE: cluster tests skipped. Start one (README: kind with the "
    "localhost:5001 registry, or `source \"$(../shared/k8s-local/up)\"`) and set KUBECONFIG."
)


def _env_from_file(path: Path) -> dict[str, str]:
    """The environment after `source path` (a shell file of exports, like k8s-local's env.sh)."""
    result = subprocess.run(["bash", "-c", 'source "$1" >/dev/null && env -0', "bash", str(path)],
                            capture_output=True, check=True, timeout=30)
    pairs = (item.split("=", 1) for item in result.stdout.decode().split("\0") if "=" in item)
    return dict(pairs)


def kube_environment() -> tuple[dict[str, str], str]:
    """(env for subprocesses, where its kubeconfig came from)."""
    env = dict(os.environ)
    if env.get("KUBECONFIG"):
        return env, "$KUBECONFIG"
    if Path("~/.kube/config").expanduser().is_file():
        return env, "~/.kube/config"
    if K8S_LOCAL_ENV_FILE.is_file():
        sourced = _env_from_file(K8S_LOCAL_ENV_FILE)
        env.update({key: sourced[key] for key in ("KUBECONFIG", "PATH") if key in sourced})
        return env, str(K8S_LOCAL_ENV_FILE)
    return env, ""


@pytest.fixture(scope="session")
def kube_env() -> dict[str, str]:
    """Environment for subprocesses in which `kubectl` (and MLflow's kubernetes client) reach
    the cluster. Skips loudly without a cluster; fails instead when CI=true."""
    env, source = kube_environment()
    problem = None
    if not source:
        problem = "no kubeconfig ($KUBECONFIG, ~/.kube/config, /var/lib/k8s-local/env.sh)"
    elif shutil.which("kubectl", path=env.get("PATH")) is None:
        problem = f"kubectl is not on PATH (kubeconfig from {source})"
    else:
        try:
            nodes = subprocess.run(["kubectl", "get", "nodes", "--request-timeout=15s"], env=env,
                                   capture_output=True, text=True, timeout=30)
            if nodes.returncode != 0:
                last_line = (nodes.stderr.strip().splitlines() or ["no output"])[-1]
                problem = f"`kubectl get nodes` failed (kubeconfig from {source}): {last_line}"
        except subprocess.TimeoutExpired:
            problem = f"`kubectl get nodes` timed out (kubeconfig from {source})"
    if problem:
        missing(f"{NO_CLUSTER}\n  reason: {problem}")
    return env


def kubectl(env, *args, check=True, timeout=180, input=None) -> subprocess.CompletedProcess:
    """Run kubectl; on failure (check=True) fail the test with its output."""
    result = subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True,
                            timeout=timeout, input=input)
    if check and result.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} exited {result.returncode}:\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}", pytrace=False)
    return result


def make(env, target: str, timeout: float, **variables: str) -> None:
    command = ["make", target, *(f"{name}={value}" for name, value in variables.items())]
    result = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` exited {result.returncode}:\n"
                    f"{result.stdout[-6000:]}\n{result.stderr[-4000:]}", pytrace=False)


class PortForward:
    """`kubectl port-forward service/mlflow PORT:5000`, restartable: a port-forward to a
    Service is bound to one pod and dies with it, so after a server restart call reconnect()."""

    def __init__(self, env, namespace: str, log_path: Path):
        self.env = env
        self.namespace = namespace
        self.log_path = log_path
        self.port = free_port()
        self.process = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.stop()
            log = open(self.log_path, "a")
            self.process = subprocess.Popen(
                ["kubectl", "-n", self.namespace, "port-forward", "service/mlflow", f"{self.port}:5000"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            try:
                wait_for_http(f"{self.uri}/health", timeout=20, process=self.process)
                return
            except (RuntimeError, TimeoutError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"port-forward to service/mlflow never answered:\n"
                                         f"{self.log_path.read_text()[-2000:]}")
                time.sleep(2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass
class ClusterStack:
    """The stack in the tests' namespaces. `env` (for kubectl, drivers and `mlflow run`) carries
    the admin's MLFLOW_TRACKING_USERNAME/PASSWORD; so does this process's environment.
    `sweep_user_env` is `env` with the kubeconfig of a sweep user (a ServiceAccount bound to the
    shipped Roles celeb-smile-sweep-user and nothing else): the drivers run with it."""
    env: dict
    port_forward: PortForward
    overlay: deploy.Overlay
    sweep_user_env: dict = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        """The sweeps namespace: trials, controllers, their Secrets."""
        return self.overlay.sweeps_namespace

    @property
    def tracking_namespace(self) -> str:
        """The server's and PostgreSQL's."""
        return self.overlay.namespace

    @property
    def in_cluster_tracking_uri(self) -> str:
        return self.overlay.tracking_uri

    @property
    def backend_config(self) -> Path:
        return self.overlay.backend_config

    @property
    def tracking_uri(self) -> str:
        return self.port_forward.uri

    def kubectl(self, *args, **kwargs) -> subprocess.CompletedProcess:
        """kubectl (as the cluster's admin) in the sweeps namespace."""
        return kubectl(self.env, "-n", self.namespace, *args, **kwargs)

    def tracking_kubectl(self, *args, **kwargs) -> subprocess.CompletedProcess:
        """kubectl (as the cluster's admin) in the tracking namespace."""
        return kubectl(self.env, "-n", self.tracking_namespace, *args, **kwargs)

    def wait_ready(self, timeout: int = 300) -> None:
        for deployment in ("postgres", "mlflow"):
            self.tracking_kubectl("rollout", "status", f"deployment/{deployment}",
                                  f"--timeout={timeout}s", timeout=timeout + 30)

    def reconnect(self) -> None:
        """Wait for the server to be ready again and restart the port-forward (same port)."""
        self.wait_ready()
        self.port_forward.start(timeout=120)


@pytest.fixture(scope="session")
def cluster_stack(kube_env, tmp_path_factory):
    """`make images`, then `make deploy` into a new namespace, a port-forward to its tracking
    server, and the admin's credentials in the environment. The namespace (and its generated
    secrets) are deleted afterwards, even when a test or the deploy failed."""
    make(kube_env, "images", timeout=1800)
    namespace = f"{NAMESPACE_PREFIX}{secrets.token_hex(3)}"
    overlay = deploy.Overlay(namespace, deploy.DEFAULT_REGISTRY, deploy.deploy_dir(namespace))
    stack = None
    with pytest.MonkeyPatch.context() as patch:
        try:
            make(kube_env, "deploy", timeout=700, NAMESPACE=namespace)
            username, password = overlay.admin_credentials()
            for key, value in (("MLFLOW_TRACKING_USERNAME", username),
                               ("MLFLOW_TRACKING_PASSWORD", password)):
                patch.setenv(key, value)
            env = dict(kube_env, MLFLOW_TRACKING_USERNAME=username,
                       MLFLOW_TRACKING_PASSWORD=password)
            log_path = tmp_path_factory.mktemp("port-forward") / "port-forward.log"
            kubeconfig = tmp_path_factory.mktemp("sweep-user") / "kubeconfig"
            stack = ClusterStack(env, PortForward(env, namespace, log_path), overlay,
                                 sweep_user_env(env, overlay, kubeconfig))
            stack.port_forward.start(timeout=120)
            yield stack
        finally:
            if stack is not None:
                stack.port_forward.stop()
            kubectl(kube_env, "delete", "namespace", overlay.sweeps_namespace, namespace,
                    "--ignore-not-found", "--wait=true", "--timeout=300s", check=False,
                    timeout=330)
            shutil.rmtree(overlay.directory, ignore_errors=True)


SWEEP_USER = "sweep-user"  # a ServiceAccount of the sweeps namespace, made by the tests
SWEEP_USER_ROLE = "celeb-smile-sweep-user"  # k8s/{tracking,sweeps}/sweep-user-role.yaml


def sweep_user_env(env: dict, overlay: deploy.Overlay, kubeconfig: Path) -> dict:
    """`env` with KUBECONFIG set to a kubeconfig (written to `kubeconfig`) of the ServiceAccount
    SWEEP_USER, bound in both namespaces to the shipped Role SWEEP_USER_ROLE and nothing else."""
    account = f"{overlay.sweeps_namespace}:{SWEEP_USER}"
    kubectl(env, "-n", overlay.sweeps_namespace, "create", "serviceaccount", SWEEP_USER)
    for namespace in (overlay.namespace, overlay.sweeps_namespace):
        kubectl(env, "-n", namespace, "create", "rolebinding", f"{SWEEP_USER}-test",
                f"--role={SWEEP_USER_ROLE}", f"--serviceaccount={account}")
    token = _service_account_token(env, overlay.sweeps_namespace, SWEEP_USER)
    admin = json.loads(kubectl(env, "config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = admin["clusters"][0]
    config = {"apiVersion": "v1", "kind": "Config", "current-context": SWEEP_USER,
              "clusters": [cluster],
              "users": [{"name": SWEEP_USER, "user": {"token": token}}],
              "contexts": [{"name": SWEEP_USER, "context": {
                  "cluster": cluster["name"], "user": SWEEP_USER,
                  "namespace": overlay.sweeps_namespace}}]}
    kubeconfig.write_text(json.dumps(config))
    kubeconfig.chmod(0o600)
    return dict(env, KUBECONFIG=str(kubeconfig))


def _service_account_token(env: dict, namespace: str, account: str) -> str:
    """A token of the ServiceAccount: `kubectl create token` (1.24+), else the token Secret
    that Kubernetes makes for it before 1.24 (read as the admin)."""
    created = kubectl(env, "-n", namespace, "create", "token", account, "--duration=6h",
                      check=False)
    if created.returncode == 0:
        return created.stdout.strip()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        names = kubectl(env, "-n", namespace, "get", "serviceaccount", account,
                        "-o", "jsonpath={.secrets[*].name}").stdout.split()
        if names:
            data = kubectl(env, "-n", namespace, "get", "secret", names[0],
                           "-o", "jsonpath={.data.token}").stdout
            if data:
                return base64.b64decode(data).decode()
        time.sleep(1)
    pytest.fail(f"no token for ServiceAccount {namespace}/{account}", pytrace=False)


# --- training Jobs ----------------------------------------------------------------------------

JOB_NAME_PATTERN = re.compile(r"=== Creating Job (\S+) ===")
RUN_ID_PATTERN = re.compile(r"Run \(ID '([0-9a-f]{32})'\)")


@dataclass
class TrainingJobs:
    """The Jobs one test created; cleanup() deletes them with their pods and asserts that none
    are left. Jobs are tracked by name (from MLflow's output) rather than deleted by label, so
    a test never removes the Jobs of anyone else using the cluster."""

    stack: ClusterStack
    names: list = field(default_factory=list)

    def track_output(self, output: str) -> list[str]:
        found = JOB_NAME_PATTERN.findall(output)
        self.names.extend(name for name in found if name not in self.names)
        return found

    def remaining(self) -> list[str]:
        if not self.names:
            return []
        jobs = self.stack.kubectl("get", "jobs", "-l", TRAINING_SELECTOR, "-o", "name").stdout.split()
        pods = self.stack.kubectl("get", "pods", "-l", f"job-name in ({','.join(self.names)})",
                                  "-o", "name").stdout.split()
        return [job for job in jobs if job.split("/", 1)[1] in self.names] + pods

    def cleanup(self) -> None:
        if not self.names:
            return
        self.stack.kubectl("delete", "jobs", *self.names, "--ignore-not-found", "--wait=true",
                           "--timeout=120s", check=False, timeout=150)
        self.stack.kubectl("delete", "pods", "-l", f"job-name in ({','.join(self.names)})",
                           "--ignore-not-found", "--wait=true", "--timeout=120s", check=False,
                           timeout=150)
        deadline = time.monotonic() + 60
        while (left := self.remaining()) and time.monotonic() < deadline:
            time.sleep(2)
        assert not left, f"training Jobs/pods left behind after clean-up: {left}"


@pytest.fixture
def training_jobs(cluster_stack):
    """Track the Jobs a test starts (jobs.track_output(mlflow_output)); deleted afterwards."""
    jobs = TrainingJobs(cluster_stack)
    try:
        yield jobs
    finally:
        jobs.cleanup()


@dataclass
class ProjectRun:
    returncode: int
    output: str
    run_id: str | None
    job_names: list


def mlflow_run_on_cluster(stack: ClusterStack, jobs: TrainingJobs, params: dict[str, str],
                          experiment_id: str, timeout: float = 600) -> ProjectRun:
    """`mlflow run . --backend kubernetes --backend-config .deploy/<ns>/kubernetes_config.json
    -P ...`, as a user would, waiting for the Job. The run is created through the
    port-forward (as the admin); the pod reports to the in-cluster address (as the trainer)."""
    command = [str(BIN_DIR / "mlflow"), "run", str(PROJECT_DIR), "--backend", "kubernetes",
               "--backend-config", str(stack.backend_config),
               "--experiment-id", experiment_id]
    for name, value in params.items():
        command += ["-P", f"{name}={value}"]
    env = dict(stack.env, MLFLOW_TRACKING_URI=stack.tracking_uri,
               KUBE_MLFLOW_TRACKING_URI=stack.in_cluster_tracking_uri)
    try:
        result = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                                timeout=timeout)
        output, returncode = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode() + (error.stderr or b"").decode()
        jobs.track_output(output)
        raise AssertionError(f"mlflow run did not finish within {timeout}s:\n{output[-4000:]}")
    job_names = jobs.track_output(output)
    run_ids = RUN_ID_PATTERN.findall(output)
    return ProjectRun(returncode, output, run_ids[-1] if run_ids else None, job_names)


def job_pod_logs(stack: ClusterStack, job_name: str) -> str:
    return stack.kubectl("logs", f"job/{job_name}", "--tail=60", check=False).stdout


def job_pods(stack: ClusterStack, job_name: str) -> list[dict]:
    result = stack.kubectl("get", "pods", "-l", f"job-name={job_name}", "-o", "json")
    return json.loads(result.stdout)["items"]


def http_status(url: str, host: str | None = None, credentials: tuple[str, str] | None = None
                ) -> int:
    headers = {"Host": host} if host else {}
    if credentials:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
