"""Sweeps that outlive the laptop: `driver.py --backend kubernetes --detach` prepares the sweep
as always (image, validation, experiment, trial-user check), then hands it to a controller that
runs as a Kubernetes Job in the sweep's namespace, and exits.

The controller is this same driver (`driver.py --run-detached DIR`) on the controller image
(k8s/controller/Dockerfile: the driver's code and dependencies, no TensorFlow). What it is
handed, all owned by its Job (deleting the Job deletes them):
  ConfigMap celeb-smile-<sweep>-controller, mounted at SWEEP_DIR:
      sweep.json           the sweep's definition (hence the same sweep id)
      options.json         the driver's other settings, the training image by digest, the
                           code version the laptop built it from, who started the sweep
      kubernetes_config.json, job_template.yaml   the trials' Job template, as given
  Secret celeb-smile-<sweep>-controller, mounted at CREDENTIALS_DIR (only this pod mounts it):
      the MLflow username and password of the person who started the sweep, read once at
      start: the controller acts on the tracking server as they would.
It talks to the tracking server by the Service's DNS name (in the tracking namespace), to the
Kubernetes API as the ServiceAccount celeb-smile-controller (k8s/sweeps/controller-role.yaml: a
namespaced Role with only the verbs it uses). Its state is MLflow's, as on the laptop: when its pod is deleted or its node
goes away, the Job starts another pod, which takes over the lease and adopts the trials.
"""

import dataclasses
import getpass
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from celeb_smile.constants import COMPONENT_LABEL, SWEEP_LABEL
from celeb_smile.sweep.spec import SweepSpec, describe, spec_from_data

COMPONENT = "controller"
SERVICE_ACCOUNT = "celeb-smile-controller"  # k8s/sweeps/controller-serviceaccount.yaml
IMAGE_NAME = "celeb-smile-controller"  # beside the training image, in the same registry
SWEEP_DIR = "/etc/celeb-smile/sweep"
CREDENTIALS_DIR = "/etc/celeb-smile/mlflow"
WORK_DIR = "/work"  # plots and logs the report writes (an emptyDir: the root is read-only)
EXPERIMENT_ANNOTATION = "celeb-smile/experiment-id"
STARTED_BY_ANNOTATION = "celeb-smile/started-by"
CONTROLLER_USER = 10003  # k8s/controller/Dockerfile
# A crashed controller is started again this often; one that ended its sweep exits 0.
BACKOFF_LIMIT = 4
# On SIGTERM the controller hands over (it releases its lease and leaves the trials running).
GRACE_SECONDS = 30
BACKEND_CONFIG_FILE = "kubernetes_config.json"
TEMPLATE_FILE = "job_template.yaml"


@dataclass
class ControllerOptions:
    """Everything the laptop's command line decided besides the sweep's definition."""

    tracking_uri: str  # the tracking server as pods reach it (the Service's DNS name)
    image_ref: str  # the training image, by digest
    code_version: str  # of the code the training image was built from
    started_by: str  # who, for the record
    rerun: bool = False
    promote: bool = False
    warm_start: bool = False
    pending_timeout: float = 900.0
    outage_timeout: float = 300.0
    poll_seconds: float | None = None
    max_disruptions: int = 3

    # The fields the driver's own flags set (args.<name>), handed over as they were given.
    FROM_FLAGS = ("rerun", "promote", "warm_start", "pending_timeout", "outage_timeout",
                  "poll_seconds", "max_disruptions")

    @classmethod
    def from_args(cls, args, **fields) -> "ControllerOptions":
        return cls(**fields, **{name: getattr(args, name) for name in cls.FROM_FLAGS})

    def apply_to(self, args) -> None:
        """Set the flags on `args` as the laptop's command line had them."""
        for name in self.FROM_FLAGS:
            setattr(args, name, getattr(self, name))


def controller_job_name(sweep_id: str) -> str:
    return f"celeb-smile-{sweep_id}-{COMPONENT}"


def controller_image(repository_uri: str, training_image: str) -> str:
    """The controller image beside the training image: same registry, same tag."""
    registry = repository_uri.rsplit("/", 1)[0]
    tag = training_image.rsplit(":", 1)[1]
    return f"{registry}/{IMAGE_NAME}:{tag}"


def who() -> str:
    """The person starting or cancelling a sweep: their MLflow user, and where they are."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


# -- the laptop's side --------------------------------------------------------------------------
def handover_files(spec: SweepSpec, options: ControllerOptions, template_text: str,
                   backend_config: dict) -> dict[str, str]:
    config = {key: value for key, value in backend_config.items() if key != "kube-context"}
    config["kube-job-template-path"] = TEMPLATE_FILE  # beside it in SWEEP_DIR
    return {"sweep.json": json.dumps(describe(spec), indent=2, default=str),
            "options.json": json.dumps(dataclasses.asdict(options), indent=2),
            BACKEND_CONFIG_FILE: json.dumps(config, indent=2),
            TEMPLATE_FILE: template_text}


def controller_job(namespace: str, sweep_id: str, image_ref: str, experiment_id: str,
                   started_by: str) -> dict:
    name = controller_job_name(sweep_id)
    labels = {COMPONENT_LABEL: COMPONENT, SWEEP_LABEL: sweep_id}
    drop_all = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    container = {
        "name": COMPONENT, "image": image_ref, "imagePullPolicy": "IfNotPresent",
        "args": ["--run-detached", SWEEP_DIR], "workingDir": WORK_DIR,
        "env": [{"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"}],
        "resources": {"requests": {"cpu": "100m", "memory": "384Mi"},
                      "limits": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": drop_all,
        "volumeMounts": [{"name": "sweep", "mountPath": SWEEP_DIR, "readOnly": True},
                         {"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True},
                         {"name": "work", "mountPath": WORK_DIR},
                         {"name": "tmp", "mountPath": "/tmp"}]}
    pod = {"metadata": {"labels": labels},
           "spec": {"serviceAccountName": SERVICE_ACCOUNT, "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": CONTROLLER_USER,
                                        "runAsGroup": CONTROLLER_USER,
                                        "fsGroup": CONTROLLER_USER,  # reads the Secret
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "sweep", "configMap": {"name": name}},
                                {"name": "credentials",
                                 "secret": {"secretName": name, "optional": True,
                                            "defaultMode": 0o440}},
                                {"name": "work", "emptyDir": {}},
                                {"name": "tmp", "emptyDir": {}}]}}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "annotations": {EXPERIMENT_ANNOTATION: experiment_id,
                                         STARTED_BY_ANNOTATION: started_by}},
            "spec": {"backoffLimit": BACKOFF_LIMIT, "template": pod}}


def submit(core, batch, namespace: str, job: dict, files: dict[str, str],
           credentials: tuple[str, str] | None) -> None:
    """Create the controller's Job, then its ConfigMap and Secret owned by it (its pod waits
    for them to mount). Nothing is left behind if a step fails."""
    from kubernetes.client import V1ConfigMap, V1ObjectMeta, V1OwnerReference, V1Secret

    from celeb_smile.sweep.backends.kubernetes import REQUEST_TIMEOUT

    name = job["metadata"]["name"]
    created = batch.create_namespaced_job(namespace, job, _request_timeout=REQUEST_TIMEOUT)
    owner = V1OwnerReference(api_version="batch/v1", kind="Job", name=name,
                             uid=created.metadata.uid, block_owner_deletion=False)
    meta = V1ObjectMeta(name=name, labels=job["metadata"]["labels"], owner_references=[owner])
    try:
        core.create_namespaced_config_map(namespace, V1ConfigMap(metadata=meta, data=files),
                                          _request_timeout=REQUEST_TIMEOUT)
        if credentials is not None:
            username, password = credentials
            core.create_namespaced_secret(namespace, V1Secret(
                metadata=meta, type="Opaque",
                string_data={"username": username, "password": password}),
                _request_timeout=REQUEST_TIMEOUT)
    except Exception:
        delete_job(batch, namespace, name)
        raise


def delete_job(batch, namespace: str, name: str) -> None:
    """Delete a Job with its pods (and what it owns); a Job already gone is fine."""
    from kubernetes.client import V1DeleteOptions
    from kubernetes.client.rest import ApiException

    from celeb_smile.sweep.backends.kubernetes import REQUEST_TIMEOUT

    try:
        batch.delete_namespaced_job(name, namespace, _request_timeout=REQUEST_TIMEOUT,
                                    body=V1DeleteOptions(propagation_policy="Background"))
    except ApiException as error:
        if error.status != 404:
            raise


def controller_jobs(batch, namespace: str, sweep_id: str | None = None) -> list:
    """The namespace's controller Jobs (of one sweep when `sweep_id` is given). A namespace
    one may not list Jobs in (a sweep user sees a missing one so too) is a PreparationError."""
    from kubernetes.client.rest import ApiException

    from celeb_smile.sweep.backends import PreparationError
    from celeb_smile.sweep.backends.kubernetes import REQUEST_TIMEOUT, api_message

    selector = f"{COMPONENT_LABEL}={COMPONENT}"
    if sweep_id:
        selector += f",{SWEEP_LABEL}={sweep_id}"
    try:
        return batch.list_namespaced_job(namespace, label_selector=selector,
                                         _request_timeout=REQUEST_TIMEOUT).items
    except ApiException as error:
        if error.status in (401, 403, 404):
            raise PreparationError(
                f"cannot list Jobs in namespace {namespace!r} ({error.status} {error.reason}): "
                f"{api_message(error)}; does it exist, and may you run sweeps there (Role "
                f"celeb-smile-sweep-user)?") from None
        raise


def job_active(job) -> bool:
    """Not Complete or Failed: its pod runs, or will be started (again)."""
    return not any(c.status == "True" and c.type in ("Complete", "Failed")
                   for c in job.status.conditions or [])


# -- the controller's side (in its pod) ---------------------------------------------------------
def load_handover(directory: Path) -> tuple[SweepSpec, ControllerOptions, Path]:
    """(the sweep, the options, the backend config's path) as the laptop handed them over."""
    directory = Path(directory)
    spec = spec_from_data(json.loads((directory / "sweep.json").read_text()))
    options = ControllerOptions(**json.loads((directory / "options.json").read_text()))
    return spec, options, directory / BACKEND_CONFIG_FILE


def log_in_from(directory: Path = Path(CREDENTIALS_DIR)) -> bool:
    """The MLflow credentials of the person who started the sweep, from the mounted Secret,
    for this process's client; False when there are none (a server without authentication)."""
    directory = Path(directory)
    if not (directory / "username").is_file():
        return False
    os.environ["MLFLOW_TRACKING_USERNAME"] = (directory / "username").read_text()
    os.environ["MLFLOW_TRACKING_PASSWORD"] = (directory / "password").read_text()
    return True


def pod_alive(core, namespace: str, sweep_id: str):
    """A check of a lease holder's host: False when it is an earlier pod of this sweep's
    controller Job that is gone or has exited (its successor need not wait for the lease to
    expire); a pod still shutting down hands over and releases the lease itself. Any other
    holder is presumed alive until its lease expires."""
    from kubernetes.client.rest import ApiException

    from celeb_smile.sweep.backends.kubernetes import REQUEST_TIMEOUT

    def alive(host: str) -> bool:
        if not host.startswith(controller_job_name(sweep_id) + "-"):
            return True
        try:
            pod = core.read_namespaced_pod(host, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            return error.status != 404
        return pod.status.phase not in ("Succeeded", "Failed")

    return alive
