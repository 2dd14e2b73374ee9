"""The Job a trial becomes (no cluster needed): labels that list a sweep in one call, the
entry point as an argv, the run's coordinates, the data volume only for CelebA trials, MLflow's
credentials as a mounted file from the sweep's Secret (never in the environment)."""

import re

import pytest
import yaml

from celeb_smile import deploy
from celeb_smile.constants import (COMPONENT_LABEL, RUN_LABEL, SWEEP_LABEL, TRAINER_HTTP_ENV,
                                   TRIAL_USER_TAG, TrialState)
from celeb_smile.sweep import access
from celeb_smile.sweep.backends.kubernetes import (CREDENTIAL_ENV, CREDENTIALS_COMPONENT,
                                                 CREDENTIALS_VOLUME, JobWatch,
                                                 KubernetesBackend, KubernetesTrial,
                                                 _pod_failure, create_trial_secret, job_name,
                                                 trial_secret_name, use_credentials)
from celeb_smile.sweep.trial import Trial
from tests.conftest import PROJECT_DIR

CONFIG = PROJECT_DIR / "kubernetes_config.json"


def manifest(params) -> dict:
    backend = KubernetesBackend(CONFIG, "http://mlflow.ns.svc.cluster.local:5000", "abc123")
    backend.image_ref = "localhost:5001/celeb-smile-train:0.1.0@sha256:" + "0" * 64
    trial = Trial(3, params, sweep_id="abc123", run_id="f" * 32)
    return backend.job_manifest(trial, experiment_id="7")


def container_env(job) -> dict:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_a_trial_job_is_named_labelled_and_pointed_at_its_run():
    job = manifest({"epochs": "2", "learning_rate": "0.001"})
    assert job["metadata"]["name"] == job_name("abc123", Trial(3, {}, run_id="f" * 32))
    assert len(job["metadata"]["name"]) <= 63
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels[SWEEP_LABEL] == "abc123" and labels[RUN_LABEL] == "f" * 32
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith("@sha256:" + "0" * 64)
    assert container["command"][:2] == ["python", "train.py"]
    assert container["command"][container["command"].index("--learning_rate") + 1] == "0.001"
    env = container_env(job)
    assert env["MLFLOW_RUN_ID"] == "f" * 32 and env["MLFLOW_EXPERIMENT_ID"] == "7"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ns.svc.cluster.local:5000"


def test_only_celeb_a_trials_mount_the_data_volume():
    def volumes(job):
        return [v["name"] for v in job["spec"]["template"]["spec"].get("volumes", [])]

    synthetic, celeb_a = manifest({"dataset": "synthetic"}), manifest({"dataset": "celeb_a"})
    assert "tfds-data" not in volumes(synthetic)
    assert "tfds-data" in volumes(celeb_a)
    mounts = celeb_a["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["name"] == "tfds-data" for m in mounts)


def test_pods_retry_the_tracking_server_like_local_trials():
    template = yaml.safe_load((PROJECT_DIR / "job_template.yaml").read_text())
    env = {e["name"]: e.get("value")
           for e in template["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {k: env.get(k) for k in TRAINER_HTTP_ENV} == TRAINER_HTTP_ENV


def test_a_deploy_for_another_registry_and_namespace_reaches_the_submitted_job(tmp_path):
    overlay = deploy.render("team-a", "registry.example:5000/ml", directory=tmp_path)
    backend = KubernetesBackend(overlay.backend_config, overlay.tracking_uri, "abc123")
    assert backend.image == "registry.example:5000/ml/celeb-smile-train:0.1.0"
    assert backend.namespace == "team-a-sweeps"
    backend.image_ref = backend.image + "@sha256:" + "1" * 64
    job = backend.job_manifest(Trial(1, {}, sweep_id="abc123", run_id="e" * 32), "7")
    assert job["metadata"]["namespace"] == "team-a-sweeps"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("registry.example:5000/ml/celeb-smile-train:0.1.0@")
    assert container_env(job)["MLFLOW_TRACKING_URI"] == \
        "http://mlflow.team-a.svc.cluster.local:5000"


def test_no_kubeconfig_is_a_preparation_error(tmp_path, monkeypatch):
    from celeb_smile.sweep.backends import PreparationError
    from celeb_smile.sweep.backends.kubernetes import kubernetes_clients

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(PreparationError, match="no Kubernetes credentials: not in a pod"):
        kubernetes_clients()


def observed(job_conditions, pod_phase):
    from kubernetes.client import (V1Job, V1JobCondition, V1JobStatus, V1ObjectMeta, V1Pod,
                                   V1PodStatus)

    watch = JobWatch(core=None, batch=None, namespace="ns", sweep_id="abc123")
    job = V1Job(metadata=V1ObjectMeta(name="job-1"), status=V1JobStatus(conditions=[
        V1JobCondition(type=kind, status="True") for kind in job_conditions]))
    pod = V1Pod(metadata=V1ObjectMeta(name="job-1-x"), status=V1PodStatus(phase=pod_phase))
    return watch._observe(KubernetesTrial("r" * 32, "ns", "job-1"), job, [pod]).state


def test_a_succeeded_pod_ends_its_trial_before_the_job_is_marked_complete():
    assert observed([], "Succeeded") == TrialState.FINISHED
    assert observed(["Complete"], "Succeeded") == TrialState.FINISHED
    assert observed([], "Running") == TrialState.RUNNING
    assert observed([], "Pending") == TrialState.SCHEDULED


def pod_terminated(reason, exit_code):
    from kubernetes.client import (V1ContainerState, V1ContainerStateTerminated,
                                   V1ContainerStatus, V1ObjectMeta, V1Pod, V1PodStatus)

    state = V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=exit_code,
                                                                   reason=reason))
    status = V1ContainerStatus(name="t", image="i", image_id="", ready=False,
                               restart_count=0, state=state)
    return V1Pod(metadata=V1ObjectMeta(name="job-1-x"),
                 status=V1PodStatus(phase="Failed", container_statuses=[status]))


def test_a_killed_container_is_named_out_of_memory_also_when_the_runtime_says_error():
    assert _pod_failure([pod_terminated("OOMKilled", 137)]) == "OOMKilled, exit code 137"
    assert _pod_failure([pod_terminated("Error", 137)]) == \
        "Error, exit code 137 (SIGKILL: most likely out of memory)"
    assert _pod_failure([pod_terminated("Error", 3)]) == "Error, exit code 3"


class ListingApi:
    """Records the label selectors of list calls; lists nothing."""

    def __init__(self):
        self.selectors = []

    def list_namespaced_job(self, namespace, label_selector, **options):
        return self._listed(label_selector)

    def list_namespaced_pod(self, namespace, label_selector, **options):
        return self._listed(label_selector)

    def _listed(self, selector):
        from kubernetes.client import V1JobList

        self.selectors.append(selector)
        return V1JobList(items=[])


def test_a_poll_lists_only_the_jobs_and_pods_of_the_trials_in_flight():
    api = ListingApi()
    watch = JobWatch(core=api, batch=api, namespace="ns", sweep_id="abc123")
    in_flight = [Trial(i, {}, run_id=f"{i:032x}") for i in (7, 3)]
    for trial in in_flight:
        trial.handle = KubernetesTrial(trial.run_id, "ns", f"job-{trial.index}")
    watch.observe(in_flight)
    selector = f"{RUN_LABEL} in ({3:032x},{7:032x})"
    assert api.selectors == [selector, selector]
    assert watch.observe([]) == {} and len(api.selectors) == 2  # nothing in flight: no call


def test_a_container_stopped_by_sigterm_says_so():
    assert _pod_failure([pod_terminated("Error", 143)]) == \
        "Error, exit code 143 (SIGTERM: the pod was deleted, evicted or preempted)"


def failed_job():
    from kubernetes.client import (V1Job, V1JobCondition, V1JobSpec, V1JobStatus, V1ObjectMeta,
                                   V1PodTemplateSpec)

    return V1Job(metadata=V1ObjectMeta(name="job-1"), spec=V1JobSpec(template=V1PodTemplateSpec()),
                 status=V1JobStatus(conditions=[V1JobCondition(
                     type="Failed", status="True", reason="BackoffLimitExceeded")]))


def evicted_pod():
    from kubernetes.client import V1ObjectMeta, V1Pod, V1PodStatus

    return V1Pod(metadata=V1ObjectMeta(name="job-1-x"), status=V1PodStatus(
        phase="Failed", reason="Evicted", message="The node was low on resource: memory."))


def watch_and_handle():
    return (JobWatch(core=None, batch=None, namespace="ns", sweep_id="abc123"),
            KubernetesTrial("r" * 32, "ns", "job-1"))


def test_an_evicted_pod_is_a_disruption_that_a_new_job_resumes_not_a_failure():
    watch, handle = watch_and_handle()
    seen = watch._observe(handle, failed_job(), [evicted_pod()])
    assert (seen.state, seen.relaunch) == (TrialState.SCHEDULED, True)
    assert seen.disrupted == "Evicted: The node was low on resource: memory."
    sigterm = watch._observe(handle, failed_job(), [pod_terminated("Error", 143)])
    assert sigterm.relaunch and "SIGTERM" in sigterm.disrupted


def test_its_own_failure_still_fails_the_trial():
    watch, handle = watch_and_handle()
    for pod, reason in ((pod_terminated("OOMKilled", 137), "OOMKilled, exit code 137"),
                        (pod_terminated("Error", 1), "Error, exit code 1")):
        seen = watch._observe(handle, failed_job(), [pod])
        assert (seen.state, seen.reason, seen.disrupted) == (TrialState.FAILED, reason, "")


def test_a_deleted_pod_is_counted_once_whether_its_job_replaces_it_or_fails():
    from kubernetes.client import V1Job, V1JobSpec, V1JobStatus, V1ObjectMeta, V1PodTemplateSpec

    watch, handle = watch_and_handle()
    handle.pods_seen = {"job-1-x"}
    active = V1Job(metadata=V1ObjectMeta(name="job-1"), spec=V1JobSpec(template=V1PodTemplateSpec()),
                   status=V1JobStatus(active=1))
    vanished = watch._observe(handle, active, [])
    assert (vanished.disrupted, vanished.relaunch) == ("pod job-1-x deleted or evicted", False)
    then_failed = watch._observe(handle, failed_job(), [])  # Kubernetes 1.26+: deleted = failed
    assert (then_failed.disrupted, then_failed.relaunch) == ("", True)
    fresh = KubernetesTrial("r" * 32, "ns", "job-1")
    assert watch._observe(fresh, failed_job(), []).disrupted == "pod deleted or evicted"


def test_a_suspended_job_waits_in_its_queue():
    from kubernetes.client import V1Job, V1JobSpec, V1JobStatus, V1ObjectMeta, V1PodTemplateSpec

    watch, handle = watch_and_handle()
    suspended = V1Job(metadata=V1ObjectMeta(name="job-1"),
                      spec=V1JobSpec(template=V1PodTemplateSpec(), suspend=True), status=V1JobStatus())
    seen = watch._observe(handle, suspended, [])
    assert (seen.state, seen.queued) == (TrialState.SCHEDULED, True)


def test_a_relaunched_trials_job_has_a_name_of_its_own():
    first = Trial(3, {}, sweep_id="abc123", run_id="f" * 32)
    again = Trial(3, {}, sweep_id="abc123", run_id="f" * 32, attempt=2)
    assert job_name("abc123", again) == job_name("abc123", first) + "-a2"


# -- the sweep's trial user ------------------------------------------------------------------
def credentials_source(job) -> tuple[set, str, dict]:
    """(the credential variables in the pod's environment, the directory mounting the
    credentials volume, that volume's source)."""
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"] for e in container.get("env", [])} & set(CREDENTIAL_ENV)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == CREDENTIALS_VOLUME]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == CREDENTIALS_VOLUME]
    return env, mount["mountPath"], volume["projected"]


def mounted_from(secret_name: str) -> tuple[set, str, dict]:
    """No variable; MLflow's credentials file ~/.mlflow/credentials from `secret_name`'s key
    `credentials`, read-only for the trainer's group (the pod's fsGroup) only."""
    return set(), "/home/trainer/.mlflow", {"defaultMode": 0o440, "sources": [{"secret": {
        "name": secret_name, "items": [{"key": "credentials", "path": "credentials"}]}}]}


def test_without_a_trial_user_a_job_keeps_the_templates_credentials():
    """A server without authentication, or a single `mlflow run`: the template's `trainer`."""
    assert credentials_source(manifest({})) == mounted_from("mlflow-trainer")
    assert credentials_source(manifest({"dataset": "celeb_a"})) == mounted_from("mlflow-trainer")


def test_a_sweeps_jobs_log_as_its_trial_user_from_its_secret_and_runs_are_tagged_for_it():
    backend = KubernetesBackend(CONFIG, "http://mlflow.ns.svc.cluster.local:5000", "abc123")
    backend.image_ref = "localhost:5001/celeb-smile-train:0.1.0@sha256:" + "0" * 64
    backend.use_trial_credentials("trial-7-abc123")
    trial = Trial(3, {}, sweep_id="abc123", run_id="f" * 32)
    job = backend.job_manifest(trial, experiment_id="7")
    assert credentials_source(job) == mounted_from("celeb-smile-trial-7-abc123")
    pod = job["spec"]["template"]["spec"]
    assert not any(e["name"].startswith("MLFLOW_TRACKING_") and "value" not in e
                   for e in pod["containers"][0]["env"])  # no password in the environment
    names = [v["name"] for v in pod["volumes"]]
    assert len(names) == len(set(names))  # repointed, not added beside the template's
    assert backend.run_tags(trial)[TRIAL_USER_TAG] == "trial-7-abc123"
    assert TRIAL_USER_TAG not in KubernetesBackend(CONFIG, "http://x:5000", "abc123").run_tags(
        trial)


def test_a_template_with_credential_variables_and_no_credentials_volume_is_repointed_too():
    """An older template (the variables from a Secret): they would win over the file."""
    pod = {"containers": [{"env": [
        {"name": "TFDS_DATA_DIR", "value": "/data"},
        {"name": "MLFLOW_TRACKING_USERNAME",
         "valueFrom": {"secretKeyRef": {"name": "mlflow-trainer", "key": "username"}}},
        {"name": "MLFLOW_TRACKING_PASSWORD",
         "valueFrom": {"secretKeyRef": {"name": "mlflow-trainer", "key": "password"}}}],
        "volumeMounts": [{"name": "home", "mountPath": "/home/trainer"}]}],
        "volumes": [{"name": "home", "emptyDir": {}}]}
    use_credentials(pod, "celeb-smile-trial-7-abc123")
    assert pod["containers"][0]["env"] == [{"name": "TFDS_DATA_DIR", "value": "/data"}]
    job = {"spec": {"template": {"spec": pod}}}
    assert credentials_source(job) == mounted_from("celeb-smile-trial-7-abc123")
    use_credentials(pod, "celeb-smile-trial-8-abc123")  # again: still one volume, one mount
    assert credentials_source(job) == mounted_from("celeb-smile-trial-8-abc123")


class SecretsApi:
    """A CoreV1Api double that keeps the Secrets it is asked to create (409 when one exists)."""

    def __init__(self):
        self.secrets = {}

    def create_namespaced_secret(self, namespace, body, dry_run=None, **options):
        from kubernetes.client.rest import ApiException

        if (namespace, body.metadata.name) in self.secrets:
            raise ApiException(status=409, reason="AlreadyExists")
        if dry_run is None:
            self.secrets[namespace, body.metadata.name] = body


def test_a_trial_users_secret_holds_mlflows_credentials_file_beside_its_values():
    import configparser

    api = SecretsApi()
    password = "pa%ss" + "x" * 40
    assert create_trial_secret(api, "ns", "abc123", "trial-7-abc123", "", dry_run=True)
    assert api.secrets == {}
    assert create_trial_secret(api, "ns", "abc123", "trial-7-abc123", password)
    secret = api.secrets["ns", "celeb-smile-trial-7-abc123"]
    assert secret.metadata.labels == {SWEEP_LABEL: "abc123",
                                      COMPONENT_LABEL: CREDENTIALS_COMPONENT}
    assert set(secret.string_data) == {"username", "password", "credentials"}
    assert (secret.string_data["username"], secret.string_data["password"]) == \
        ("trial-7-abc123", password)
    parser = configparser.ConfigParser()  # as MLflow's client reads ~/.mlflow/credentials
    parser.read_string(secret.string_data["credentials"])
    assert dict(parser["mlflow"]) == {"mlflow_tracking_username": "trial-7-abc123",
                                      "mlflow_tracking_password": password}
    assert create_trial_secret(api, "ns", "abc123", "trial-7-abc123", "other") is False


def test_a_trial_users_secret_name_is_a_valid_kubernetes_name():
    name = trial_secret_name(access.trial_username("1234567890", "0123456789ab"))
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
