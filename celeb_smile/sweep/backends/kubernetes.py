"""Kubernetes trials: one Job per trial, from job_template.yaml, on the training image that
`prepare` builds and pushes once per sweep (or finds in the registry with --no-build).

The driver creates the Jobs itself, as MLflow's kubernetes backend would (same template, same
entry-point command, same MLFLOW_* variables), but with a name derived from the run id, so a
retried submission never makes a second Job, and with labels that list a whole sweep's Jobs and
pods in one call.

On a tracking server with authentication, the trials log as the sweep's trial user
(celeb_smile.sweep.access): its credentials are a Secret of the sweep, `celeb-smile-<user>`,
which the controller creates (never reads) when the sweep starts and deletes when it ends, and
whose `credentials` item (MLflow's credentials file) each Job mounts read-only at
~/.mlflow/credentials instead of the Job template's (the legacy `trainer`'s): MLflow's client
reads that file on every request, so no password sits in a process's environment. A single
`mlflow run` through scripts/tracking.py gets a trial user and Secret of its own the same way
(celeb_smile.sweep.single_run, which reuses the Secret helpers and `use_credentials` below).
"""

import copy
import json
import re
import urllib.request
from pathlib import Path

import yaml

from celeb_smile.constants import (COMPONENT_LABEL, EXIT_TERMINATED, JOB_TAG, RUN_LABEL,
                                   SWEEP_ENV, SWEEP_LABEL, TRIAL_USER_TAG, TrialState)
from celeb_smile.deploy import mlflow_credentials_file
from celeb_smile.sweep.backends import (LaunchError, Observation, PreparationError,
                                        entry_point_argv, run_docker)
from celeb_smile.sweep.spec import PROJECT_DIR, project

REQUEST_TIMEOUT = (5, 15)  # connect, read (seconds) on every Kubernetes API call
TRIAL_COMPONENT = "training"  # job_template.yaml's component label
CREDENTIALS_COMPONENT = "trial-credentials"  # a sweep's trial-user Secret
# Variables a pod must not have: they would win over the mounted credentials file.
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# job_template.yaml's volume of the credentials Secret, mounted at ~/.mlflow (HOME is the image's
# /home/trainer, an emptyDir); the Secret's key CREDENTIALS_KEY becomes the file `credentials`.
CREDENTIALS_VOLUME = "mlflow-credentials"
CREDENTIALS_DIR = "/home/trainer/.mlflow"
CREDENTIALS_KEY = "credentials"
CREDENTIALS_MODE = 0o440  # root:fsGroup (10001), read-only: the trainer reads it by its group
DATA_VOLUMES = ("tfds-data",)  # mounted only by trials that read CelebA
# Waiting reasons that do not resolve by themselves. ErrImagePull is not among them: a pull
# can fail once and then succeed; Kubernetes moves to ImagePullBackOff when it keeps failing.
STUCK_REASONS = ("ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError")
DIGEST_PATTERN = re.compile(r"digest: (sha256:[0-9a-f]{64})")


class KubernetesTrial:
    def __init__(self, run_id: str, namespace: str, job_name: str):
        self.run_id = run_id
        self.namespace = namespace
        self.job_name = job_name
        self.pods_seen: set[str] = set()
        self.stuck = False
        self.disruption_counted = False  # its pod vanished and that was counted already

    def describe(self) -> str:
        return f"job {self.job_name}"


class KubernetesBackend:
    name = "kubernetes"
    remote = True
    poll_seconds = 3.0  # a poll is two list calls to the API server and one or two queries
    on_end = None  # never called: a poll's listing sees the ends

    def __init__(self, backend_config: Path, cluster_tracking_uri: str, sweep_id: str,
                 build: bool = True, image_ref: str | None = None):
        self.config = read_backend_config(backend_config)
        self.template_text = Path(self.config["kube-job-template-path"]).read_text()
        self.template = yaml.safe_load(self.template_text)
        self.namespace = self.template["metadata"].get("namespace", "default")
        self.cluster_tracking_uri = cluster_tracking_uri
        self.sweep_id = sweep_id
        self.build = build
        self.image = project_image(self.config["repository-uri"])
        self.image_ref = image_ref  # image@digest, once prepared (given: a detached controller)
        self.core = self.batch = None
        self.watch: JobWatch | None = None  # once prepared
        self.trial_user: str | None = None  # the sweep's trial user, once its Secret is there

    # -- set-up ------------------------------------------------------------------------------
    def prepare(self, console) -> None:
        """Clients and the image (found, or built and pushed); once: a second call does nothing."""
        if self.core is None:
            self.core, self.batch = kubernetes_clients(self.config.get("kube-context"))
            self.watch = JobWatch(self.core, self.batch, self.namespace, self.sweep_id)
        if self.image_ref is None:
            self.image_ref = pushed_image(console, self.image, PROJECT_DIR / "Dockerfile",
                                          build=self.build)

    def run_tags(self, trial) -> dict[str, str]:
        owner = {TRIAL_USER_TAG: self.trial_user} if self.trial_user else {}
        return {JOB_TAG: f"{self.namespace}/{job_name(self.sweep_id, trial)}",
                "mlflow.project.backend": "kubernetes", "mlflow.project.env": "docker",
                "mlflow.docker.image.uri": self.image_ref or self.image, **owner}

    # -- the sweep's trial user's credentials ------------------------------------------------
    def has_trial_credentials(self, username: str) -> bool:
        """Whether an earlier controller of the sweep left `username`'s Secret (its trials,
        still running, use it): asked by a dry-run create, so nothing reads a Secret."""
        return not create_trial_secret(self.core, self.namespace, self.sweep_id, username,
                                       "", dry_run=True)

    def keep_trial_credentials(self, username: str, password: str) -> None:
        create_trial_secret(self.core, self.namespace, self.sweep_id, username, password)

    def use_trial_credentials(self, username: str) -> None:
        """From now on, trials log as `username` (its Secret exists): their runs are tagged
        for it and their Jobs read its Secret."""
        self.trial_user = username

    def drop_trial_credentials(self, username: str) -> None:
        delete_trial_secret(self.core, self.namespace, username)

    def launched_tags(self, handle: KubernetesTrial) -> dict[str, str]:
        return {}  # the Job's name is known before it is created: run_tags has it

    # -- one trial ---------------------------------------------------------------------------
    def launch(self, trial, experiment_id: str, tracking_uri: str) -> KubernetesTrial:
        """Create the trial's Job; an existing Job of the same name (a retried call whose
        first attempt did go through) counts as created."""
        from kubernetes.client.rest import ApiException

        job = self.job_manifest(trial, experiment_id)
        try:
            self.batch.create_namespaced_job(self.namespace, job,
                                              _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status == 409:
                pass
            elif error.status in (400, 403, 404, 422):
                raise LaunchError(f"Job rejected ({error.status} {error.reason}): "
                                  f"{api_message(error)}") from None
            else:
                raise
        return KubernetesTrial(trial.run_id, self.namespace, job["metadata"]["name"])

    def job_manifest(self, trial, experiment_id: str) -> dict:
        job = copy.deepcopy(self.template)
        name = job_name(self.sweep_id, trial)
        labels = {SWEEP_LABEL: self.sweep_id, RUN_LABEL: trial.run_id,
                  COMPONENT_LABEL: TRIAL_COMPONENT}
        job["metadata"]["name"] = name
        job["metadata"].setdefault("labels", {}).update(labels)
        pod = job["spec"]["template"]
        pod.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
        container = pod["spec"]["containers"][0]
        container["name"] = "train"
        container["image"] = self.image_ref
        container["command"] = entry_point_argv(trial.params)
        container.setdefault("env", [])
        container["env"] += [{"name": k, "value": v} for k, v in {
            "MLFLOW_RUN_ID": trial.run_id, "MLFLOW_EXPERIMENT_ID": experiment_id,
            SWEEP_ENV: self.sweep_id,
            "MLFLOW_TRACKING_URI": self.cluster_tracking_uri}.items()]
        if self.trial_user:
            use_credentials(pod["spec"], trial_secret_name(self.trial_user))
        if trial.params.get("dataset") != "celeb_a":
            _drop_volumes(pod["spec"], DATA_VOLUMES)
        return job

    def adopt(self, trial, run) -> KubernetesTrial | None:
        where = run.data.tags.get(JOB_TAG, "")
        namespace, _, name = where.partition("/")
        return KubernetesTrial(trial.run_id, namespace, name) if name else None

    # -- watching, stopping, logs: see JobWatch ----------------------------------------------
    @property
    def calls(self) -> int:
        """List calls so far, for the sweep-overhead benchmark."""
        return self.watch.calls if self.watch else 0

    def observe(self, trials) -> dict[int, Observation]:
        return self.watch.observe(trials)

    def cancel(self, handle: KubernetesTrial) -> None:
        self.watch.cancel(handle)

    def cancel_all(self, handles) -> None:
        self.watch.cancel_all()

    def release(self, handle: KubernetesTrial) -> None:
        """After a failure: a Job stuck on its image would retry forever, so delete it; a Job
        that ran keeps its pod until ttlSecondsAfterFinished (its log is already saved)."""
        if handle.stuck:
            self.cancel(handle)

    def logs(self, handle: KubernetesTrial) -> str:
        return self.watch.logs(handle)



class JobWatch:
    """A sweep's Jobs and pods in one namespace: all observed in two list calls per poll,
    which select only the trials in flight (their run ids), so a poll reads as much after a
    thousand ended trials, whose Jobs are kept an hour, as at the first."""

    def __init__(self, core, batch, namespace: str, sweep_id: str):
        self._core, self._batch = core, batch
        self.namespace = namespace
        self.sweep_id = sweep_id
        self.calls = 0

    def observe(self, trials) -> dict[int, Observation]:
        if not trials:
            return {}
        selector = in_flight_selector(trials)
        jobs = self._batch.list_namespaced_job(self.namespace, label_selector=selector,
                                               _request_timeout=REQUEST_TIMEOUT).items
        pods = self._core.list_namespaced_pod(self.namespace, label_selector=selector,
                                              _request_timeout=REQUEST_TIMEOUT).items
        self.calls += 2
        jobs_by_name = {job.metadata.name: job for job in jobs}
        pods_by_job: dict[str, list] = {}
        for pod in pods:
            if pod.metadata.deletion_timestamp is None:
                pods_by_job.setdefault(pod.metadata.labels.get("job-name", ""), []).append(pod)
        return {trial.index: self._observe(trial.handle, jobs_by_name.get(trial.handle.job_name),
                                           pods_by_job.get(trial.handle.job_name, []))
                for trial in trials}

    def _observe(self, handle: KubernetesTrial, job, pods) -> Observation:
        if job is None or job.metadata.deletion_timestamp is not None:
            return Observation(TrialState.FAILED, f"Job {handle.job_name} deleted")
        for condition in job.status.conditions or []:
            if condition.status != "True":
                continue
            if condition.type == "Complete":
                return Observation(TrialState.FINISHED)
            if condition.type == "Failed":
                return self._failed(handle, condition, pods)
        if any(pod.status.phase == "Succeeded" for pod in pods):
            return Observation(TrialState.FINISHED)  # before the Job controller says Complete
        if getattr(job.spec, "suspend", None):  # queued (Kueue): no pod yet, none pending
            return Observation(TrialState.SCHEDULED, "suspended: waiting in its queue",
                               queued=True)
        names = {pod.metadata.name for pod in pods}
        vanished = handle.pods_seen - names
        handle.pods_seen = names
        if vanished:  # its Job starts another pod, which goes on from the last checkpoint
            handle.disruption_counted = True
            return Observation(TrialState.SCHEDULED, disrupted=f"pod {sorted(vanished)[0]} "
                               "deleted or evicted")
        for pod in pods:
            stuck = _stuck_reason(pod)
            if stuck:
                handle.stuck = True
                return Observation(TrialState.FAILED, stuck)
            if pod.status.phase == "Running":
                return Observation(TrialState.RUNNING)
        waiting = next(filter(None, (_waiting_reason(pod) for pod in pods)), "")
        return Observation(TrialState.SCHEDULED, waiting)

    @staticmethod
    def _failed(handle: KubernetesTrial, condition, pods) -> Observation:
        """A failed Job: the trial failed (its container's own exit code, its deadline), or
        its pod was lost to a disruption: then a new Job goes on from the last checkpoint."""
        if condition.reason == "DeadlineExceeded":
            return Observation(TrialState.FAILED, f"DeadlineExceeded: {condition.message}")
        disruption = _pod_disruption(pods)
        if not disruption and not pods:  # its pod deleted: counted when it vanished, or now
            disruption = "" if handle.disruption_counted else "pod deleted or evicted"
            return Observation(TrialState.SCHEDULED, disrupted=disruption, relaunch=True)
        if disruption:
            return Observation(TrialState.SCHEDULED, disrupted=disruption, relaunch=True)
        return Observation(TrialState.FAILED, _pod_failure(pods) or condition.reason or "Failed")

    def cancel(self, handle: KubernetesTrial) -> None:
        """Delete the Job and its pods (deleting a Job alone can leave its pod running)."""
        from kubernetes.client import V1DeleteOptions
        from kubernetes.client.rest import ApiException

        try:
            self._batch.delete_namespaced_job(
                handle.job_name, handle.namespace, _request_timeout=REQUEST_TIMEOUT,
                body=V1DeleteOptions(propagation_policy="Background", grace_period_seconds=0))
        except ApiException as error:
            if error.status != 404:
                raise
        self._core.delete_collection_namespaced_pod(
            handle.namespace, label_selector=f"job-name={handle.job_name}",
            grace_period_seconds=0, _request_timeout=REQUEST_TIMEOUT)

    def cancel_all(self) -> None:
        """Every trial Job and pod of this sweep, in two calls (the second Ctrl-C's fast path;
        a detached sweep's controller Job, labelled with the sweep too, is not a trial's)."""
        from kubernetes.client import V1DeleteOptions

        selector = f"{SWEEP_LABEL}={self.sweep_id},{COMPONENT_LABEL}={TRIAL_COMPONENT}"
        self._batch.delete_collection_namespaced_job(
            self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT,
            body=V1DeleteOptions(propagation_policy="Background", grace_period_seconds=0))
        self._core.delete_collection_namespaced_pod(
            self.namespace, label_selector=selector, grace_period_seconds=0,
            _request_timeout=REQUEST_TIMEOUT)

    def logs(self, handle: KubernetesTrial) -> str:
        from kubernetes.client.rest import ApiException

        pods = self._core.list_namespaced_pod(
            handle.namespace, label_selector=f"job-name={handle.job_name}",
            _request_timeout=REQUEST_TIMEOUT).items
        texts = []
        for pod in pods:
            try:
                # The raw body: kubernetes 36's decoding returns the repr of the bytes
                # ("b'...'", kubernetes-client/python#2596).
                response = self._core.read_namespaced_pod_log(
                    pod.metadata.name, handle.namespace, _preload_content=False,
                    _request_timeout=(5, 60))
                texts.append(response.data.decode("utf-8", errors="replace"))
            except ApiException as error:
                texts.append(f"(no log from pod {pod.metadata.name}: {error.reason})")
        return "\n".join(texts)



def trial_secret_name(username: str) -> str:
    return f"celeb-smile-{username}"


def create_trial_secret(core, namespace: str, sweep_id: str, username: str, password: str,
                        dry_run: bool = False) -> bool:
    """The sweep's Secret of `username`'s credentials (`username`, `password` and MLflow's
    credentials file `credentials`, which the pods mount); False when it exists already."""
    from kubernetes.client import V1ObjectMeta, V1Secret
    from kubernetes.client.rest import ApiException

    labels = {SWEEP_LABEL: sweep_id, COMPONENT_LABEL: CREDENTIALS_COMPONENT}
    secret = V1Secret(metadata=V1ObjectMeta(name=trial_secret_name(username), labels=labels),
                      type="Opaque", string_data={
                          "username": username, "password": password,
                          CREDENTIALS_KEY: mlflow_credentials_file(username, password)})
    try:
        core.create_namespaced_secret(namespace, secret, _request_timeout=REQUEST_TIMEOUT,
                                      **({"dry_run": "All"} if dry_run else {}))
    except ApiException as error:
        if error.status == 409:
            return False
        if error.status in (400, 403, 404, 422):  # e.g. no such namespace: before any run
            raise PreparationError(
                f"cannot create the sweep's credentials Secret in namespace {namespace!r} "
                f"({error.status} {error.reason}): {api_message(error)}") from None
        raise
    return True


def delete_trial_secret(core, namespace: str, username: str) -> None:
    """Delete `username`'s Secret; one already gone is fine."""
    from kubernetes.client.rest import ApiException

    try:
        core.delete_namespaced_secret(trial_secret_name(username), namespace,
                                      _request_timeout=REQUEST_TIMEOUT)
    except ApiException as error:
        if error.status != 404:
            raise


def credentials_volume(secret_name: str) -> dict:
    """job_template.yaml's volume of MLflow's credentials file from `secret_name` (projected,
    as the server's Secrets are: k8s/tracking)."""
    return {"name": CREDENTIALS_VOLUME, "projected": {
        "defaultMode": CREDENTIALS_MODE,
        "sources": [{"secret": {"name": secret_name,
                                "items": [{"key": CREDENTIALS_KEY, "path": CREDENTIALS_KEY}]}}]}}


def use_credentials(pod_spec: dict, secret_name: str) -> None:
    """The pod's MLflow credentials from `secret_name`'s credentials file, whatever the template
    named: its credentials volume repointed (added, with its mount, if the template has none)
    and no credential variable left in the first container's environment."""
    container = pod_spec["containers"][0]
    container["env"] = [v for v in container.get("env", []) if v["name"] not in CREDENTIAL_ENV]
    volume = credentials_volume(secret_name)
    pod_spec["volumes"] = [v if v["name"] != CREDENTIALS_VOLUME else volume
                           for v in pod_spec.get("volumes", [])]
    if volume not in pod_spec["volumes"]:
        pod_spec["volumes"].append(volume)
    mounts = container.setdefault("volumeMounts", [])
    if not any(mount["name"] == CREDENTIALS_VOLUME for mount in mounts):
        mounts.append({"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": True})


def in_flight_selector(trials) -> str:
    """A label selector matching exactly the Jobs and pods of `trials` (by their runs)."""
    return f"{RUN_LABEL} in ({','.join(sorted(t.handle.run_id for t in trials))})"


def job_name(sweep_id: str, trial) -> str:
    """DNS-1123 and unique per run and attempt: `celeb-smile-<sweep>-t<NN>-<run id prefix>`,
    then `-a<N>` for the Job launched after its (N-1)th disruption."""
    attempt = f"-a{trial.attempt}" if trial.attempt > 1 else ""
    return f"celeb-smile-{sweep_id}-t{trial.index:02d}-{trial.run_id[:8]}{attempt}"


def kubernetes_clients(context: str | None = None):
    """(CoreV1Api, BatchV1Api): in-cluster configuration first, the kubeconfig as fallback."""
    from kubernetes import client

    from celeb_smile.sweep.connect import TrackingConnectionError, kubernetes_configuration

    try:
        configuration, _ = kubernetes_configuration(context)
    except TrackingConnectionError as error:
        raise PreparationError(str(error)) from None
    api = client.ApiClient(configuration)
    return client.CoreV1Api(api), client.BatchV1Api(api)


def read_backend_config(path: Path) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"cannot read backend config {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"backend config {path} is not valid JSON: {error}") from None
    for key in ("kube-job-template-path", "repository-uri"):
        if key not in config:
            raise ValueError(f"backend config {path} lacks {key!r}")
    template = job_template_path(path, config["kube-job-template-path"])
    if not template.is_file():
        raise ValueError(f"job template {template} (from {path}) does not exist")
    config["kube-job-template-path"] = str(template)
    return config


def job_template_path(config_path: Path, named: str) -> Path:
    """The job template a backend config names: relative to the config file, wherever the
    driver runs."""
    template = Path(named)
    return template if template.is_absolute() else Path(config_path).resolve().parent / template


def project_image(repository_uri: str) -> str:
    """The backend config's repository with MLproject's image tag (as MLflow names it)."""
    image = project().docker_env["image"]
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
    return f"{repository_uri}:{tag}"


def pushed_image(console, image: str, dockerfile: Path, build: bool) -> str:
    """`image@digest` as the registry holds it: built from `dockerfile` and pushed (once for
    the sweep), or, without `build`, as already pushed (e.g. by `make images`)."""
    if not build:
        ref = f"{image}@{registry_digest(image)}"
        console.print(f"image {ref} (from the registry, not rebuilt)")
        return ref
    with console.status(f"building and pushing {image} (once for the sweep)"):
        run_docker("build", "-t", image, "-f", str(dockerfile), str(PROJECT_DIR))
        digest = DIGEST_PATTERN.findall(run_docker("push", image))
    if not digest:
        raise PreparationError(f"docker push {image} printed no digest")
    console.print(f"[green]image[/] {image}@{digest[-1]} built and pushed")
    return f"{image}@{digest[-1]}"


def registry_digest(image: str) -> str:
    """The digest the registry holds for `image` (host/repo:tag), via the registry API."""
    host, _, rest = image.partition("/")
    repository, _, tag = rest.rpartition(":")
    accept = ", ".join(["application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json",
                        "application/vnd.oci.image.index.v1+json"])
    errors = []
    for scheme in ("https", "http"):
        request = urllib.request.Request(f"{scheme}://{host}/v2/{repository}/manifests/{tag}",
                                         method="HEAD", headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                digest = response.headers.get("Docker-Content-Digest")
                if digest:
                    return digest
        except OSError as error:
            errors.append(f"{scheme}: {error}")
    raise PreparationError(f"image {image} not found in its registry ({'; '.join(errors)}); "
                           "push it with `make images` or drop --no-build")


def _drop_volumes(pod_spec: dict, names) -> None:
    pod_spec["volumes"] = [v for v in pod_spec.get("volumes", []) if v["name"] not in names]
    for container in pod_spec["containers"]:
        container["volumeMounts"] = [m for m in container.get("volumeMounts", [])
                                     if m["name"] not in names]


# A container killed by SIGKILL; the runtime does not always say OOMKilled when the kernel's
# OOM killer did it (it reports a plain Error when its OOM event comes after the exit).
SIGKILL_EXIT = 137


def _pod_failure(pods) -> str:
    for pod in pods:
        for status in pod.status.container_statuses or []:
            ended = status.state.terminated
            if ended and (ended.exit_code != 0 or ended.reason == "OOMKilled"):
                reason = f"{ended.reason or 'Error'}, exit code {ended.exit_code}"
                if ended.exit_code == SIGKILL_EXIT and ended.reason != "OOMKilled":
                    reason += " (SIGKILL: most likely out of memory)"
                elif ended.exit_code == EXIT_TERMINATED:
                    reason += " (SIGTERM: the pod was deleted, evicted or preempted)"
                return reason
    return ""


# Why a pod ends that is not its container's doing (Pod.status.reason).
DISRUPTION_REASONS = ("Evicted", "Preempting", "NodeLost", "Shutdown", "NodeShutdown",
                      "Terminated", "UnexpectedAdmissionError", "DeletionByTaintManager")


def _pod_disruption(pods) -> str:
    """Why a trial's pod was lost to its cluster rather than to its own failure: evicted,
    preempted, its node gone, or stopped by SIGTERM (exit 143: drained, deleted); '' else."""
    for pod in pods:
        if pod.status.reason in DISRUPTION_REASONS:
            return f"{pod.status.reason}: {pod.status.message or pod.metadata.name}"
        for status in pod.status.container_statuses or []:
            ended = status.state.terminated
            if ended and ended.exit_code == EXIT_TERMINATED:
                return f"pod {pod.metadata.name} terminated (SIGTERM, exit code 143)"
    return ""


def _stuck_reason(pod) -> str:
    for status in pod.status.container_statuses or []:
        waiting = status.state.waiting
        if waiting and waiting.reason in STUCK_REASONS:
            return f"{waiting.reason}: {waiting.message or status.image}"
    return ""


def _waiting_reason(pod) -> str:
    """Why a pod is not running yet: unschedulable, pulling its image..."""
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"{condition.reason}: {condition.message}"
    for status in pod.status.container_statuses or []:
        waiting = status.state.waiting
        if waiting and waiting.reason not in ("ContainerCreating", None):
            return f"{waiting.reason}: {waiting.message or ''}".strip(": ")
    return ""


def api_message(error) -> str:
    try:
        return json.loads(error.body).get("message", "")[:300]
    except (TypeError, ValueError):
        return str(error.body)[:300]
