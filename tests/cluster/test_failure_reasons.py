"""The driver's Kubernetes trial handle names why a Job failed: exit code, OOMKilled,
ImagePullBackOff, DeadlineExceeded (real Jobs on the stand-in python image, in the tests'
namespace, as pods that meet its Pod Security "restricted" profile)."""

import time

import pytest
from kubernetes import client, config

from celeb_smile.sweep.backends import KubernetesTrial

pytestmark = pytest.mark.cluster
PYTHON_IMAGE = "python:3.11-slim"
JOB_NAMES = ("exit-3", "oom", "no-image", "deadline", "ok")
RESTRICTED = client.V1SecurityContext(
    allow_privilege_escalation=False, run_as_non_root=True, run_as_user=65534,
    capabilities=client.V1Capabilities(drop=["ALL"]),
    seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"))


@pytest.fixture(scope="module")
def apis(cluster_stack):
    """The Jobs live in the tests' namespace (deleted with it); each is deleted afterwards."""
    config.load_kube_config(config_file=cluster_stack.env["KUBECONFIG"])
    core, batch = client.CoreV1Api(), client.BatchV1Api()
    namespace = cluster_stack.namespace
    try:
        yield core, batch, namespace
    finally:
        for name in JOB_NAMES:
            cluster_stack.kubectl("delete", "job", name, "--ignore-not-found", "--wait=false",
                                  check=False)


def start_job(apis, name, image, command, memory="256Mi", deadline=None):
    core, batch, namespace = apis
    container = client.V1Container(
        name="main", image=image, command=command, image_pull_policy="IfNotPresent",
        security_context=RESTRICTED,
        resources=client.V1ResourceRequirements(limits={"memory": memory, "cpu": "500m"}))
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=0, active_deadline_seconds=deadline,
            template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
                restart_policy="Never", containers=[container],
                automount_service_account_token=False))))
    batch.create_namespaced_job(namespace, job)
    return KubernetesTrial("no-run", name, namespace, core, batch)


def wait_for_end(trial, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = trial.poll()
        if state.state in ("FINISHED", "FAILED"):
            return state
        time.sleep(1)
    pytest.fail(f"{trial.job_name} did not end within {timeout}s")


def test_failure_reasons_from_kubernetes(apis):
    trials = {
        "exit": start_job(apis, "exit-3", PYTHON_IMAGE,
                          ["python", "-c", "print('about to fail'); raise SystemExit(3)"]),
        "oom": start_job(apis, "oom", PYTHON_IMAGE,
                         ["python", "-c", "b = bytearray(512 * 2**20); print(len(b))"],
                         memory="64Mi"),
        "pull": start_job(apis, "no-image", "localhost:5001/celeb-smile-no-such-image:0",
                          ["true"]),
        "deadline": start_job(apis, "deadline", PYTHON_IMAGE, ["sleep", "120"], deadline=5),
        "ok": start_job(apis, "ok", PYTHON_IMAGE, ["python", "-c", "print('fine')"]),
    }
    ended = {name: wait_for_end(trial) for name, trial in trials.items()}
    assert ended["ok"].state == "FINISHED"
    assert ended["exit"].state == "FAILED" and "exit code 3" in ended["exit"].reason
    assert "about to fail" in trials["exit"].log_tail()
    assert ended["oom"].state == "FAILED" and "OOMKilled" in ended["oom"].reason
    assert ended["pull"].state == "FAILED"
    assert ended["pull"].reason.startswith(("ImagePullBackOff", "ErrImagePull"))
    assert ended["deadline"].state == "FAILED"
    assert ended["deadline"].reason.startswith("DeadlineExceeded")

    trials["pull"].release()  # a Job stuck on its image is deleted with its pods
    core, batch, namespace = apis
    def leftovers():
        jobs = [j.metadata.name for j in batch.list_namespaced_job(namespace).items]
        return trials["pull"]._pods() + (["job no-image"] if "no-image" in jobs else [])

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and leftovers():
        time.sleep(1)
    assert leftovers() == []
