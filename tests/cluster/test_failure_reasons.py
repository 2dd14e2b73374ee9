"""What the driver's Kubernetes watch sees of real Jobs, in one listing per poll: exit code,
OOMKilled, ImagePullBackOff, DeadlineExceeded, a deleted Job (a failure), a deleted pod (a
disruption: its Job starts another), an unschedulable pod (with its reason, still waiting),
and the full log (stand-in python image)."""

import time
import uuid
from dataclasses import dataclass

import pytest
from kubernetes import client, config

from celeb_smile.constants import COMPONENT_LABEL, RUN_LABEL, SWEEP_LABEL, TrialState
from celeb_smile.sweep.backends.kubernetes import JobWatch, KubernetesTrial

pytestmark = pytest.mark.cluster
PYTHON_IMAGE = "python:3.11-slim"
SWEEP = "reasons"


@dataclass
class Watched:
    index: int
    handle: KubernetesTrial


@pytest.fixture(scope="module")
def watch(kube_env):
    config.load_kube_config(config_file=kube_env["KUBECONFIG"])
    core, batch = client.CoreV1Api(), client.BatchV1Api()
    namespace = f"celeb-smile-reasons-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        yield JobWatch(core, batch, namespace, SWEEP)
    finally:
        core.delete_namespace(namespace)


def start_job(watch, index, name, command, image=PYTHON_IMAGE, memory="256Mi", cpu="500m",
              deadline=None) -> Watched:
    labels = {SWEEP_LABEL: SWEEP, RUN_LABEL: f"run-{index}", COMPONENT_LABEL: "training"}
    container = client.V1Container(
        name="main", image=image, command=command, image_pull_policy="IfNotPresent",
        resources=client.V1ResourceRequirements(requests={"cpu": cpu},
                                                limits={"memory": memory, "cpu": cpu}))
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1JobSpec(
            backoff_limit=0, active_deadline_seconds=deadline,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(restart_policy="Never", containers=[container],
                                      automount_service_account_token=False))))
    watch._batch.create_namespaced_job(watch.namespace, job)
    return Watched(index, KubernetesTrial(f"run-{index}", watch.namespace, name))


def observe_until(watch, trials, done, timeout=240) -> dict:
    """Poll like the scheduler (one listing for all) until `done(observations)`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = watch.calls
        seen = watch.observe(trials)
        assert watch.calls - calls == 2  # jobs + pods, whatever the number of trials
        if done(seen):
            return seen
        time.sleep(1)
    pytest.fail(f"not there within {timeout}s: {seen}")


def test_failure_reasons_from_kubernetes(watch):
    trials = {
        "exit": start_job(watch, 1, "exit-3",
                          ["python", "-c", "print('about to fail'); raise SystemExit(3)"]),
        "oom": start_job(watch, 2, "oom", ["python", "-c", "b = bytearray(512 * 2**20)"],
                         memory="64Mi"),
        "pull": start_job(watch, 3, "no-image", ["true"],
                          image="localhost:5001/celeb-smile-no-such-image:0"),
        "deadline": start_job(watch, 4, "deadline", ["sleep", "120"], deadline=5),
        "ok": start_job(watch, 5, "ok", ["python", "-c", "print('fine')"]),
    }
    ended = {}

    def all_ended(seen):
        for name, trial in trials.items():
            if seen[trial.index].state.ended:
                ended.setdefault(name, seen[trial.index])
        return len(ended) == len(trials)

    observe_until(watch, [t for t in trials.values()], all_ended)
    assert ended["ok"].state == TrialState.FINISHED
    assert ended["exit"].state == TrialState.FAILED and "exit code 3" in ended["exit"].reason
    assert "about to fail" in watch.logs(trials["exit"].handle)
    assert ended["oom"].state == TrialState.FAILED
    assert "OOMKilled" in ended["oom"].reason or "out of memory" in ended["oom"].reason, \
        ended["oom"].reason  # the runtime does not always name OOMKilled
    assert ended["pull"].reason.startswith("ImagePullBackOff")  # not at the first ErrImagePull
    assert ended["deadline"].reason.startswith("DeadlineExceeded")

    watch.cancel(trials["pull"].handle)  # a Job stuck on its image goes with its pods
    leftovers = lambda: watch._core.list_namespaced_pod(  # noqa: E731
        watch.namespace, label_selector="job-name=no-image").items
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and leftovers():
        time.sleep(1)
    assert leftovers() == []


def test_a_deleted_job_fails_its_trial_and_a_deleted_pod_is_replaced_by_its_job(watch):
    job = start_job(watch, 11, "job-goes", ["sleep", "300"])
    pod = start_job(watch, 12, "pod-goes", ["sleep", "300"])
    both = [job, pod]
    observe_until(watch, both, lambda seen: all(
        seen[t.index].state == TrialState.RUNNING for t in both))
    watch._batch.delete_namespaced_job("job-goes", watch.namespace,
                                       propagation_policy="Background")
    (pod_name,) = pod.handle.pods_seen
    watch._core.delete_namespaced_pod(pod_name, watch.namespace, grace_period_seconds=0)
    seen = watch.observe(both)
    assert seen[job.index].state == TrialState.FAILED
    assert seen[job.index].reason == "Job job-goes deleted"
    assert seen[pod.index].disrupted == f"pod {pod_name} deleted or evicted"
    assert not seen[pod.index].relaunch  # the Job starts another pod itself
    replaced = observe_until(watch, [pod], lambda seen: seen[pod.index].state ==
                             TrialState.RUNNING)
    assert replaced[pod.index].disrupted == "" and pod.handle.pods_seen != {pod_name}
    watch.cancel_all()


def test_an_unschedulable_pod_waits_with_its_reason(watch):
    trial = start_job(watch, 21, "too-big", ["true"], cpu="64")
    seen = observe_until(watch, [trial], lambda seen: seen[trial.index].reason)
    assert seen[trial.index].state == TrialState.SCHEDULED
    assert "Unschedulable" in seen[trial.index].reason
    assert "cpu" in seen[trial.index].reason.lower()
    watch.cancel(trial.handle)
