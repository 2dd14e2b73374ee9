"""Where trials run: local `mlflow run` processes, or Kubernetes Jobs.

Each backend submits one trial through `mlflow.projects.run(..., synchronous=False)` and then
answers, for that trial: what state is it in and why, how to stop it, what did it print.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from celeb_smile.sweep.spec import ENTRY_POINT, PROJECT_DIR

TERMINAL = ("FINISHED", "FAILED", "KILLED")
LOG_TAIL_LINES = 60
GRACE_SECONDS = 10  # a cancelled local trial's processes get this long to exit on SIGTERM
# Pod waiting reasons that will not resolve by themselves: the trial has failed.
STUCK_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError")


@dataclass
class TrialState:
    state: str  # SCHEDULED, RUNNING, FINISHED, FAILED or KILLED
    reason: str = ""


class LocalBackend:
    """Each trial is an `mlflow run` process on this machine, its output in a log file.

    MLflow runs any project with a docker_env inside Docker, whatever --env-manager says; so
    local trials run a copy of the project without it (same entry point, same code).
    """

    name = "local"
    remote = False

    def __init__(self, work_dir: Path):
        self.log_dir = work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.project_dir = docker_free_project(work_dir / "project")
        # `mlflow run` must be the one from this environment, even if it is not activated.
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

    def prepare(self, console) -> None:
        pass

    def submit(self, params: dict[str, str], experiment_id: str, run_name: str):
        log_path = self.log_dir / f"{run_name}.log"
        with _output_to(log_path):  # the child inherits the redirected stdout/stderr
            submitted = mlflow.projects.run(
                str(self.project_dir), entry_point=ENTRY_POINT, parameters=params,
                experiment_id=experiment_id, backend="local", env_manager="local",
                synchronous=False, run_name=run_name)
        return LocalTrial(submitted, log_path)


class LocalTrial:
    def __init__(self, submitted, log_path: Path):
        self.submitted = submitted
        self.run_id = submitted.run_id
        self.log_path = log_path

    def poll(self) -> TrialState:
        state = self.submitted.get_status()
        if state == "FAILED":
            return TrialState(state, self._reason())
        return TrialState(state)

    def _reason(self) -> str:
        code = self.submitted.command_proc.returncode
        errors = [line for line in self.log_tail().splitlines() if line.startswith("error: ")]
        detail = errors[-1] if errors else ""
        return f"exit code {code}" + (f": {detail}" if detail else "")

    def cancel(self) -> None:
        """Stop the whole process group (`mlflow run` and the training under it): MLflow's
        cancel only waits for the group's leader, so wait for the rest, then kill it."""
        group = self.submitted.command_proc.pid  # `mlflow run` leads its own process group
        self.submitted.cancel()
        deadline = time.monotonic() + GRACE_SECONDS
        while _group_alive(group) and time.monotonic() < deadline + GRACE_SECONDS:
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            time.sleep(0.2)

    def release(self) -> None:
        pass  # the process has exited

    def log_tail(self) -> str:
        return _tail(self.log_path.read_text(errors="replace")) if self.log_path.exists() else ""

    def describe(self) -> str:
        return f"pid {self.submitted.command_proc.pid}"


class KubernetesBackend:
    """Each trial is a Kubernetes Job from job_template.yaml, on the training image that
    `prepare` builds and pushes once for the whole sweep."""

    name = "kubernetes"
    remote = True

    def __init__(self, backend_config: Path, cluster_tracking_uri: str, build: bool = True):
        self.backend_config = _read_backend_config(backend_config)
        self.cluster_tracking_uri = cluster_tracking_uri
        self.build = build
        self.image = _project_image()
        self._core = self._batch = None

    def prepare(self, console) -> None:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            config.load_kube_config(context=self.backend_config.get("kube-context"))
        except (ConfigException, OSError) as error:
            raise PreparationError(f"no usable kubeconfig (KUBECONFIG or ~/.kube/config): "
                                   f"{error}") from None
        self._core, self._batch = client.CoreV1Api(), client.BatchV1Api()
        # MLflow's kubernetes backend hands this to every pod as MLFLOW_TRACKING_URI.
        os.environ["KUBE_MLFLOW_TRACKING_URI"] = self.cluster_tracking_uri
        if self.build:
            with console.status(f"building and pushing {self.image} (once for the sweep)"):
                _docker("build", "-t", self.image, str(PROJECT_DIR))
                _docker("push", self.image)
            console.print(f"[green]image[/] {self.image} built and pushed")

    def submit(self, params: dict[str, str], experiment_id: str, run_name: str):
        submitted = mlflow.projects.run(
            str(PROJECT_DIR), entry_point=ENTRY_POINT, parameters=params,
            experiment_id=experiment_id, backend="kubernetes",
            backend_config=dict(self.backend_config), synchronous=False,
            build_image=False, run_name=run_name)
        # MLflow keeps the Job's coordinates private; they are all we need to watch it.
        return KubernetesTrial(submitted.run_id, submitted._job_name, submitted._job_namespace,
                               self._core, self._batch)


class KubernetesTrial:
    def __init__(self, run_id, job_name, namespace, core_api, batch_api):
        self.run_id = run_id
        self.job_name = job_name
        self.namespace = namespace
        self._core = core_api
        self._batch = batch_api
        self.stuck = False

    def describe(self) -> str:
        return f"job {self.job_name}"

    def release(self) -> None:
        """After a failure: a Job stuck on its image would retry forever, so delete it; a Job
        that ran keeps its pod (and log) until ttlSecondsAfterFinished."""
        if self.stuck:
            self.cancel()

    def poll(self) -> TrialState:
        job = self._batch.read_namespaced_job_status(self.job_name, self.namespace)
        for condition in job.status.conditions or []:
            if condition.status == "True" and condition.type == "Complete":
                return TrialState("FINISHED")
            if condition.status == "True" and condition.type == "Failed":
                if condition.reason == "DeadlineExceeded":
                    return TrialState("FAILED", f"DeadlineExceeded: {condition.message}")
                return TrialState("FAILED", self._pod_reason() or condition.reason or "Failed")
        for pod in self._pods():
            stuck = _stuck_reason(pod)
            if stuck:
                self.stuck = True
                return TrialState("FAILED", stuck)
            if pod.status.phase == "Running":
                return TrialState("RUNNING")
        return TrialState("SCHEDULED")

    def _pods(self):
        return self._core.list_namespaced_pod(
            self.namespace, label_selector=f"job-name={self.job_name}").items

    def _pod_reason(self) -> str:
        for pod in self._pods():
            for status in pod.status.container_statuses or []:
                ended = status.state.terminated
                if ended and (ended.exit_code != 0 or ended.reason == "OOMKilled"):
                    return f"{ended.reason or 'Error'}, exit code {ended.exit_code}"
        return ""

    def cancel(self) -> None:
        """Delete the Job and its pods (MLflow's own cancel leaves the pods behind)."""
        from kubernetes.client import V1DeleteOptions
        from kubernetes.client.rest import ApiException

        with contextlib.suppress(ApiException):
            self._batch.delete_namespaced_job(
                self.job_name, self.namespace,
                body=V1DeleteOptions(propagation_policy="Foreground", grace_period_seconds=0))
        with contextlib.suppress(ApiException):
            self._core.delete_collection_namespaced_pod(
                self.namespace, label_selector=f"job-name={self.job_name}",
                grace_period_seconds=0)

    def log_tail(self) -> str:
        from kubernetes.client.rest import ApiException

        tails = []
        for pod in self._pods():
            try:
                tails.append(self._core.read_namespaced_pod_log(
                    pod.metadata.name, self.namespace, tail_lines=LOG_TAIL_LINES))
            except ApiException as error:
                tails.append(f"(no log from pod {pod.metadata.name}: {error.reason})")
        return "\n".join(tails)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _stuck_reason(pod) -> str:
    for status in pod.status.container_statuses or []:
        waiting = status.state.waiting
        if waiting and waiting.reason in STUCK_REASONS:
            return f"{waiting.reason}: {waiting.message or status.image}"
    return ""


def docker_free_project(dest: Path, source: Path = PROJECT_DIR) -> Path:
    """`dest` as the project without its docker_env: MLproject rewritten, code linked."""
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((source / "MLproject").read_text())
    spec.pop("docker_env", None)
    (dest / "MLproject").write_text(yaml.safe_dump(spec, sort_keys=False))
    for name in ("train.py", "celeb_smile"):
        link = dest / name
        if not link.is_symlink():
            link.symlink_to(source / name)
    return dest


def _read_backend_config(path: Path) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"cannot read backend config {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"backend config {path} is not valid JSON: {error}") from None
    for key in ("kube-job-template-path", "repository-uri"):
        if key not in config:
            raise ValueError(f"backend config {path} lacks {key!r}")
    template = Path(config["kube-job-template-path"])
    if not template.is_absolute():  # relative to the config file, wherever the driver runs
        template = Path(path).resolve().parent / template
    if not template.is_file():
        raise ValueError(f"job template {template} (from {path}) does not exist")
    config["kube-job-template-path"] = str(template)
    return config


def _project_image() -> str:
    from mlflow.projects._project_spec import load_project

    return load_project(str(PROJECT_DIR)).docker_env["image"]


class PreparationError(RuntimeError):
    """The backend cannot start trials (no cluster access, the image does not build...)."""


def _docker(*args: str) -> None:
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise PreparationError("docker is not installed (needed to build the training image; "
                               "or pass --no-build)") from None
    if result.returncode != 0:
        raise PreparationError(
            f"docker {args[0]} failed: {_tail(result.stderr or result.stdout, 5)}")


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def _output_to(path: Path):
    """Point this process's stdout/stderr file descriptors at `path` while children start."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
