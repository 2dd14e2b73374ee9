"""A detached sweep's controller Job, with no cluster: what the laptop hands over comes back
as the same sweep, the pod meets Pod Security "restricted", and the controller's Role grants
exactly the Kubernetes calls its code makes."""

import inspect
import json

import pytest
import yaml

from celeb_smile.constants import COMPONENT_LABEL, SWEEP_LABEL
from celeb_smile.sweep import detach
from celeb_smile.sweep.backends import kubernetes
from celeb_smile.sweep.cli import build_parser, sweep_spec_from_args
from tests.conftest import PROJECT_DIR
from tests.helpers.pod_security import restricted_violations
from tests.helpers.rbac import calls_in, granted

OPTIONS = detach.ControllerOptions(
    tracking_uri="http://mlflow.ns.svc.cluster.local:5000",
    image_ref="localhost:5001/celeb-smile-train:0.1.0@sha256:" + "0" * 64,
    code_version="abc123def456", started_by="alice@laptop", promote=True,
    pending_timeout=60.0)


def test_what_the_laptop_hands_over_is_the_same_sweep_with_the_same_settings(tmp_path):
    spec = sweep_spec_from_args(build_parser().parse_args(
        ["--sweep", str(PROJECT_DIR / "sweeps" / "tpe-asha.yaml"), "--max-parallel", "3"]))
    config = {"kube-job-template-path": "/somewhere/job_template.yaml",
              "repository-uri": "localhost:5001/celeb-smile-train", "kube-context": "mine"}
    files = detach.handover_files(spec, OPTIONS, "kind: Job\n", config)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    handed, options, config_path = detach.load_handover(tmp_path)
    assert handed == spec and handed.sweep_id() == spec.sweep_id()
    assert options == OPTIONS
    assert json.loads(config_path.read_text()) == {
        "kube-job-template-path": "job_template.yaml",  # beside it, in the pod
        "repository-uri": "localhost:5001/celeb-smile-train"}  # the laptop's context stays
    assert kubernetes.read_backend_config(config_path)["kube-job-template-path"] == \
        str(tmp_path / "job_template.yaml")


def test_the_flags_of_the_laptops_command_line_reach_the_controllers():
    laptop = build_parser().parse_args(["--promote", "--rerun", "--pending-timeout", "60",
                                        "--max-disruptions", "5", "--poll-seconds", "2"])
    options = detach.ControllerOptions.from_args(
        laptop, tracking_uri="http://mlflow:5000", image_ref="i", code_version="c",
        started_by="alice@laptop")
    in_the_pod = build_parser().parse_args([])
    options.apply_to(in_the_pod)
    for name in detach.ControllerOptions.FROM_FLAGS:
        assert getattr(in_the_pod, name) == getattr(laptop, name), name


def controller_job() -> dict:
    return detach.controller_job("ns", "0123456789ab", "localhost:5001/c@sha256:" + "1" * 64,
                                 "7", "alice@laptop")


def test_the_controller_job_is_labelled_annotated_and_restarts_a_crashed_pod():
    job = controller_job()
    assert job["metadata"]["name"] == "celeb-smile-0123456789ab-controller"
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels == {COMPONENT_LABEL: "controller", SWEEP_LABEL: "0123456789ab"}
    assert job["metadata"]["annotations"] == {detach.EXPERIMENT_ANNOTATION: "7",
                                              detach.STARTED_BY_ANNOTATION: "alice@laptop"}
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] >= 1 and pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "celeb-smile-controller"
    container = pod["containers"][0]
    assert container["args"] == ["--run-detached", detach.SWEEP_DIR]
    assert {"requests", "limits"} <= set(container["resources"])


def test_the_controller_pod_meets_pod_security_restricted_with_a_read_only_root():
    pod = controller_job()["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_only_the_controller_pod_mounts_the_credentials_secret():
    job = controller_job()
    secrets = [v["secret"]["secretName"] for v in job["spec"]["template"]["spec"]["volumes"]
               if "secret" in v]
    assert secrets == [job["metadata"]["name"]]
    template = yaml.safe_load((PROJECT_DIR / "job_template.yaml").read_text())
    trial_volumes = template["spec"]["template"]["spec"]["volumes"]
    assert not any("secret" in volume for volume in trial_volumes)
    # A trial mounts its MLflow login only (the template's: the legacy trainer's; a sweep's
    # Jobs: their trial user's), never a controller's Secret.
    mounted = [source["secret"]["name"] for volume in trial_volumes
               for source in volume.get("projected", {}).get("sources", []) if "secret" in source]
    assert mounted == ["mlflow-trainer"]


def test_the_controller_image_sits_beside_the_training_image():
    assert detach.controller_image("registry.example:5000/ml/celeb-smile-train",
                                   "registry.example:5000/ml/celeb-smile-train:0.1.0") == \
        "registry.example:5000/ml/celeb-smile-controller:0.1.0"


# -- the controller's Role: exactly the calls its code makes ---------------------------------
def test_the_controller_role_grants_exactly_the_verbs_its_code_uses():
    """The controller's code: the Kubernetes backend (trials), and its lease check."""
    used = calls_in(inspect.getsource(kubernetes)) | calls_in(inspect.getsource(
        detach.pod_alive))
    assert granted(PROJECT_DIR / "k8s" / "sweeps" / "controller-role.yaml") == used


def test_the_controller_role_is_bound_to_its_service_account_in_the_namespace_only():
    binding = yaml.safe_load((PROJECT_DIR / "k8s" / "sweeps" / "controller-rolebinding.yaml")
                             .read_text())
    assert binding["kind"] == "RoleBinding"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "celeb-smile-controller"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": detach.SERVICE_ACCOUNT}]
    kustomization = yaml.safe_load((PROJECT_DIR / "k8s" / "sweeps" / "kustomization.yaml")
                                   .read_text())
    assert {"controller-serviceaccount.yaml", "controller-role.yaml",
            "controller-rolebinding.yaml"} <= set(kustomization["resources"])


def test_a_namespace_one_may_not_list_jobs_in_stops_the_sweep_in_one_line():
    from kubernetes.client.rest import ApiException

    from celeb_smile.sweep.backends import PreparationError

    class RefusingBatch:
        def list_namespaced_job(self, namespace, **_):
            error = ApiException(status=403, reason="Forbidden")
            error.body = json.dumps({"message": f'jobs.batch is forbidden in "{namespace}"'})
            raise error

    with pytest.raises(PreparationError) as refused:
        detach.controller_jobs(RefusingBatch(), "elsewhere", "0123456789ab")
    assert str(refused.value).startswith(
        "cannot list Jobs in namespace 'elsewhere' (403 Forbidden): jobs.batch is forbidden")
    assert "\n" not in str(refused.value)
