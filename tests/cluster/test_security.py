"""What a platform team checks before letting the stack into a shared cluster: every pod (the
server's, the database's, the trials' and a detached sweep's controller) meets Pod Security
"restricted", the NetworkPolicies select the pods they are meant for, no generated
secret is in git, anonymous requests get nothing, and the trainer identity may log to its
experiments and do nothing else."""

import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from celeb_smile import deploy
from celeb_smile.sweep import detach
from celeb_smile.sweep.access import grant_trainer
from tests.cluster.conftest import LABEL_KEY, kube_environment
from tests.conftest import PROJECT_DIR
from tests.helpers.auth_checks import (
    TRAINER_MAY, TRAINER_MAY_NOT, anonymous_answers, create_fixture_objects,
    representative_routes, trainer_outcomes, unauthenticated_with,
)
from tests.helpers.pod_security import pod_specs, restricted_violations
from tests.helpers.requirements import missing


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    """`make deploy`'s overlay for a scratch namespace, rendered by kubectl's kustomize (no
    cluster needed), plus that namespace's Job template as MLflow submits it."""
    env, _ = kube_environment()
    directory = tmp_path_factory.mktemp("overlay")
    overlay = deploy.render("security-check", "registry.example:5000", directory=directory)
    try:
        result = subprocess.run(["kubectl", "kustomize", str(directory)], env=env,
                                capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        missing("kubectl is not installed: cannot render the manifests")
    assert result.returncode == 0, result.stderr
    manifests = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    controller = detach.controller_job("security-check", "0123456789ab",
                                       "registry.example:5000/celeb-smile-controller:0.1.0",
                                       "1", "someone")
    return manifests + [yaml.safe_load(overlay.job_template.read_text()), controller]


def test_every_pod_meets_the_restricted_profile(rendered):
    specs = pod_specs(rendered)
    assert set(specs) == {"Deployment/postgres", "Deployment/mlflow",
                          "Job/{replaced with MLflow Project name}",
                          "Job/celeb-smile-0123456789ab-controller"}
    assert {name: restricted_violations(spec) for name, spec in specs.items()} == \
        dict.fromkeys(specs, [])


@pytest.mark.parametrize("change, expected", [
    (lambda pod: pod["securityContext"].pop("runAsNonRoot"), "runAsNonRoot is not true"),
    (lambda pod: pod["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
     "allowPrivilegeEscalation is not false"),
    (lambda pod: pod["containers"][0]["securityContext"]["capabilities"].update(add=["CHOWN"]),
     "adds capabilities ['CHOWN']"),
    (lambda pod: pod["securityContext"].pop("seccompProfile"), "seccompProfile None"),
    (lambda pod: pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
     "volume host: type ['hostPath'] not allowed"),
    (lambda pod: pod.update(hostNetwork=True), "hostNetwork is true"),
    (lambda pod: pod["containers"][0].setdefault("ports", []).append({"containerPort": 1,
                                                                      "hostPort": 80}),
     "hostPort 80"),
])
def test_the_check_catches_each_violation(rendered, change, expected):
    import copy

    pod = copy.deepcopy(pod_specs(rendered)["Deployment/mlflow"])
    change(pod)
    assert any(expected in problem for problem in restricted_violations(pod)), \
        restricted_violations(pod)


def _selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels, and matchExpressions with In, NotIn, Exists)."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}
    matched = all(labels.get(key) == value
                  for key, value in selector.get("matchLabels", {}).items())
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        assert operator in ("In", "NotIn", "Exists"), operator
        present = key in labels
        if operator == "Exists":
            matched &= present
        elif operator == "In":
            matched &= present and labels[key] in expression["values"]
        else:
            matched &= labels.get(key) not in expression["values"]
    return matched


def _pods_by_component(rendered) -> dict[str, dict]:
    labels = {}
    for manifest in rendered:
        if manifest["kind"] in ("Deployment", "Job"):
            pod_labels = manifest["spec"]["template"]["metadata"]["labels"]
            labels[pod_labels[LABEL_KEY]] = pod_labels
    return labels


def test_network_policies_select_the_pods_they_are_meant_for(rendered):
    pods = _pods_by_component(rendered)
    assert set(pods) == {"postgres", "mlflow", "training", "controller"}
    policies = {m["metadata"]["name"]: m["spec"] for m in rendered if m["kind"] == "NetworkPolicy"}

    def selected(selector):
        return {name for name, labels in pods.items() if _selects(selector, labels)}

    def allowed_from(policy):
        (rule,) = policy["ingress"]
        peers = rule["from"]
        assert all(set(peer) == {"podSelector"} for peer in peers), "same-namespace pods only"
        return set().union(*(selected(peer["podSelector"]) for peer in peers)), rule["ports"]

    deny = policies["default-deny-ingress"]
    assert selected(deny["podSelector"]) == set(pods) and "ingress" not in deny
    assert deny["policyTypes"] == ["Ingress"]
    postgres = policies["postgres-from-mlflow"]
    assert selected(postgres["podSelector"]) == {"postgres"}
    assert allowed_from(postgres) == ({"mlflow"}, [{"protocol": "TCP", "port": 5432}])
    mlflow = policies["mlflow-from-training"]
    assert selected(mlflow["podSelector"]) == {"mlflow"}
    assert allowed_from(mlflow) == ({"training", "controller"},
                                    [{"protocol": "TCP", "port": 5000}])
    assert set(policies) == {"default-deny-ingress", "postgres-from-mlflow", "mlflow-from-training"}


def _tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_DIR, capture_output=True,
                            check=True).stdout.decode().split("\0")
    return [PROJECT_DIR / name for name in listed if name and (PROJECT_DIR / name).is_file()]


@pytest.mark.cluster
def test_no_generated_secret_is_in_a_tracked_file(cluster_stack):
    """The test namespace's secrets, and those of every other overlay on this machine."""
    values = {path.read_text() for path in (PROJECT_DIR / ".deploy").glob("*/secrets/*")}
    assert set(cluster_stack.overlay.secrets_dir.glob("*")) and values
    assert all(len(value) >= 32 for value in values)
    leaks = [f"{path.relative_to(PROJECT_DIR)}" for path in _tracked_files()
             for value in values if value in path.read_text(errors="replace")]
    assert leaks == []
    ignored = subprocess.run(["git", "check-ignore", "-q", str(cluster_stack.overlay.secrets_dir)],
                             cwd=PROJECT_DIR)
    assert ignored.returncode == 0
    modes = {oct(path.stat().st_mode & 0o777) for path in cluster_stack.overlay.secrets_dir.iterdir()}
    assert modes == {"0o600"}


@pytest.mark.cluster
def test_anonymous_requests_are_refused_on_every_kind_of_route(cluster_stack):
    admin = cluster_stack.overlay.admin_credentials()
    objects = create_fixture_objects(cluster_stack.tracking_uri, admin,
                                     f"anonymous-{uuid.uuid4().hex[:8]}")
    routes = representative_routes(objects["experiment_id"], objects["run_id"])
    assert anonymous_answers(cluster_stack.tracking_uri, routes) == {}
    assert unauthenticated_with(cluster_stack.tracking_uri, routes, admin) == {}


@pytest.mark.cluster
def test_trainer_logs_to_a_granted_experiment_and_does_nothing_else(cluster_stack):
    admin = cluster_stack.overlay.admin_credentials()
    trainer = cluster_stack.overlay.trainer_credentials()
    objects = create_fixture_objects(cluster_stack.tracking_uri, admin,
                                     f"trainer-{uuid.uuid4().hex[:8]}")
    before = trainer_outcomes(cluster_stack.tracking_uri, trainer, objects)
    assert {action: before[action] for action in TRAINER_MAY} == dict.fromkeys(TRAINER_MAY, 403)

    grant_trainer(cluster_stack.tracking_uri, objects["experiment_id"])  # as the admin (env)
    after = trainer_outcomes(cluster_stack.tracking_uri, trainer, objects)
    assert {action: after[action] for action in TRAINER_MAY} == dict.fromkeys(TRAINER_MAY, 200)
    assert {action: after[action] for action in TRAINER_MAY_NOT} == \
        dict.fromkeys(TRAINER_MAY_NOT, 403)
