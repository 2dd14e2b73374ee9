"""What a platform team checks before letting the stack into a shared cluster: every pod (the
server's, the database's, the trials', a detached sweep's controller and `make data`'s) meets Pod
Security "restricted" with a read-only root file system, the NetworkPolicies (ingress and egress)
select the pods they are meant for, only the controller holds a service-account token, the
namespace's ResourceQuota fits the stack and a sweep, no generated secret is in git, anonymous
requests get nothing, and the trainer identity may log to its experiments and do nothing
else."""

import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from celeb_smile import deploy
from celeb_smile.sweep import detach
from celeb_smile.sweep.access import grant_trainer
from tests.cluster.conftest import LABEL_KEY, kube_environment, kubectl
from tests.conftest import PROJECT_DIR
from tests.helpers.auth_checks import (
    TRAINER_MAY, TRAINER_MAY_NOT, anonymous_answers, create_fixture_objects,
    representative_routes, trainer_outcomes, unauthenticated_with,
)
from tests.helpers.pod_security import pod_specs, restricted_violations
from tests.helpers.requirements import missing


NAMESPACE = "security-check"  # a deployment's tracking namespace
SWEEPS = deploy.sweeps_namespace(NAMESPACE)
NAMESPACE_KEY = "(namespace)"  # where _pods_by_component and _policies keep each one's namespace


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    """`make deploy`'s overlay for a scratch namespace, rendered by kubectl's kustomize (no
    cluster needed), plus that namespace's Job template as MLflow submits it, a detached
    sweep's controller Job and `make data`'s Job."""
    env, _ = kube_environment()
    directory = tmp_path_factory.mktemp("overlay")
    overlay = deploy.render(NAMESPACE, "registry.example:5000", directory=directory)
    try:
        result = subprocess.run(["kubectl", "kustomize", str(directory)], env=env,
                                capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        missing("kubectl is not installed: cannot render the manifests")
    assert result.returncode == 0, result.stderr
    manifests = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    controller = detach.controller_job(SWEEPS, "0123456789ab",
                                       "registry.example:5000/celeb-smile-controller:0.1.0",
                                       "1", "someone")
    data_job = yaml.safe_load((PROJECT_DIR / "k8s" / "data" / "prepare-celeba-job.yaml").read_text())
    data_job["metadata"]["namespace"] = SWEEPS  # `make data` applies it there
    return manifests + [yaml.safe_load(overlay.job_template.read_text()), controller, data_job]


def test_every_pod_meets_the_restricted_profile(rendered):
    specs = pod_specs(rendered)
    assert set(specs) == {"Deployment/postgres", "Deployment/mlflow",
                          "Job/{replaced with MLflow Project name}",
                          "Job/celeb-smile-0123456789ab-controller", "Job/prepare-celeba"}
    assert {name: restricted_violations(spec) for name, spec in specs.items()} == \
        dict.fromkeys(specs, [])


def test_every_container_has_a_read_only_root_file_system(rendered):
    writable = [f"{name}: {container['name']}" for name, spec in pod_specs(rendered).items()
                for container in spec["containers"] + spec.get("initContainers", [])
                if container.get("securityContext", {}).get("readOnlyRootFilesystem") is not True]
    assert writable == []


def test_only_the_controller_pod_gets_a_service_account_token(rendered):
    """A pod's automountServiceAccountToken wins over its ServiceAccount's; both default true."""
    accounts = {m["metadata"]["name"]: m.get("automountServiceAccountToken", True)
                for m in rendered if m["kind"] == "ServiceAccount"}
    mounted = {}
    for manifest in rendered:
        if manifest["kind"] in ("Deployment", "Job"):
            pod = manifest["spec"]["template"]["spec"]
            account = pod.get("serviceAccountName", "default")
            assert account in accounts, f"{account} is not shipped"
            mounted[manifest["spec"]["template"]["metadata"]["labels"][LABEL_KEY]] = \
                pod.get("automountServiceAccountToken", accounts[account])
    assert mounted == {"postgres": False, "mlflow": False, "training": False,
                       "controller": True, "data": False}
    assert {name for name, automount in accounts.items() if automount} == \
        {"celeb-smile-controller"}


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
    """Each pod's labels by component, with its namespace under NAMESPACE_KEY."""
    labels = {}
    for manifest in rendered:
        if manifest["kind"] in ("Deployment", "Job"):
            pod_labels = manifest["spec"]["template"]["metadata"]["labels"]
            labels[pod_labels[LABEL_KEY]] = {**pod_labels,
                                             NAMESPACE_KEY: manifest["metadata"]["namespace"]}
    return labels


def _namespace_labels(rendered) -> dict[str, dict]:
    return {m["metadata"]["name"]: m["metadata"]["labels"] for m in rendered
            if m["kind"] == "Namespace"}


def _peers(rendered, policy_namespace: str, peer: dict) -> set[str]:
    """The components a policy's peer (podSelector, with or without namespaceSelector) selects:
    pods of the policy's namespace, or of the namespaces the namespaceSelector matches."""
    assert set(peer) <= {"podSelector", "namespaceSelector"}, f"unexpected peer {peer}"
    if "namespaceSelector" in peer:
        namespaces = {name for name, labels in _namespace_labels(rendered).items()
                      if _selects(peer["namespaceSelector"], labels)}
    else:
        namespaces = {policy_namespace}
    return {name for name, labels in _pods_by_component(rendered).items()
            if labels[NAMESPACE_KEY] in namespaces
            and _selects(peer.get("podSelector", {}), labels)}


def _keyed_policies(manifests) -> dict[str, dict]:
    """Each NetworkPolicy manifest by name; those of k8s/namespace-defaults, in both namespaces
    alike, by name in the tracking namespace and name@<sweeps namespace> in the other."""
    policies = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    namespaces = {}
    for manifest in policies:
        namespaces.setdefault(manifest["metadata"]["name"], set()).add(
            manifest["metadata"]["namespace"])
    keyed = {}
    for manifest in policies:
        name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        shared = len(namespaces[name]) > 1
        keyed[f"{name}@{namespace}" if shared and namespace == SWEEPS else name] = manifest
    return keyed


def _policies(rendered) -> dict[str, dict]:
    """Each NetworkPolicy's spec (_keyed_policies' keys), its namespace under NAMESPACE_KEY."""
    return {key: {**manifest["spec"], NAMESPACE_KEY: manifest["metadata"]["namespace"]}
            for key, manifest in _keyed_policies(rendered).items()}


KUBE_DNS_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                       "kube-system"}},
                 "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}


def _egress(rendered) -> dict[str, set[tuple[str, str, int]]]:
    """Per pod (by component), where it may connect: (peer, protocol, port), the peer being a
    pod of this namespace (its component), "kube-dns", or "anywhere" (a rule with no `to`).
    A pod that no Egress policy selects maps to {"unrestricted"}."""
    pods = _pods_by_component(rendered)
    allowed = {name: set() for name in pods}
    isolated = set()
    for policy in _policies(rendered).values():
        if "Egress" not in policy["policyTypes"]:
            assert "egress" not in policy
            continue
        selected = {name for name, labels in pods.items()
                    if labels[NAMESPACE_KEY] == policy[NAMESPACE_KEY]
                    and _selects(policy["podSelector"], labels)}
        isolated |= selected
        for rule in policy.get("egress", []):
            peers = set()
            for peer in rule.get("to", [{}]):
                if peer == {}:
                    peers.add("anywhere")
                elif peer == KUBE_DNS_PEER:
                    peers.add("kube-dns")
                else:
                    peers |= _peers(rendered, policy[NAMESPACE_KEY], peer)
            ports = {(port["protocol"], port["port"]) for port in rule["ports"]}
            for name in selected:
                allowed[name] |= {(peer, *port) for peer in peers for port in ports}
    return {name: allowed[name] if name in isolated else {"unrestricted"} for name in pods}


def test_the_server_and_database_are_in_one_namespace_and_everything_else_in_the_other(
        rendered):
    """Nobody who runs sweeps creates pods in the tracking namespace: none can mount its
    Secrets or pose as its server or database (their Services select that namespace's pods)."""
    namespaces = {name: labels[NAMESPACE_KEY] for name, labels in
                  _pods_by_component(rendered).items()}
    assert namespaces == {"postgres": NAMESPACE, "mlflow": NAMESPACE, "training": SWEEPS,
                          "controller": SWEEPS, "data": SWEEPS}
    secrets = {(m["metadata"]["namespace"], m["metadata"]["name"]) for m in rendered
               if m["kind"] == "Secret"}
    assert {name for namespace, name in secrets if namespace == SWEEPS} == {"mlflow-trainer"}
    assert {(m["metadata"]["namespace"], m["metadata"]["name"]) for m in rendered
            if m["kind"] == "Service"} == {(NAMESPACE, "mlflow"), (NAMESPACE, "postgres")}


def test_network_policies_select_the_pods_they_are_meant_for(rendered):
    pods = _pods_by_component(rendered)
    assert set(pods) == {"postgres", "mlflow", "training", "controller", "data"}
    policies = _policies(rendered)

    def selected(policy):
        return {name for name, labels in pods.items()
                if labels[NAMESPACE_KEY] == policy[NAMESPACE_KEY]
                and _selects(policy["podSelector"], labels)}

    def allowed_from(policy):
        (rule,) = policy["ingress"]
        peers = set().union(*(_peers(rendered, policy[NAMESPACE_KEY], peer)
                              for peer in rule["from"]))
        return peers, rule["ports"]

    for deny in (policies["default-deny-ingress"], policies[f"default-deny-ingress@{SWEEPS}"]):
        assert selected(deny) == {name for name, labels in pods.items()
                                  if labels[NAMESPACE_KEY] == deny[NAMESPACE_KEY]}
        assert "ingress" not in deny and deny["policyTypes"] == ["Ingress"]
    postgres = policies["postgres-from-mlflow"]
    assert selected(postgres) == {"postgres"}
    assert allowed_from(postgres) == ({"mlflow"}, [{"protocol": "TCP", "port": 5432}])
    mlflow = policies["mlflow-from-sweeps"]
    assert selected(mlflow) == {"mlflow"}
    assert allowed_from(mlflow) == ({"training", "controller"},
                                    [{"protocol": "TCP", "port": 5000}])
    ingress = {name for name, policy in policies.items() if "Ingress" in policy["policyTypes"]}
    assert ingress == {"default-deny-ingress", f"default-deny-ingress@{SWEEPS}",
                       "postgres-from-mlflow", "mlflow-from-sweeps"}


@pytest.mark.parametrize("deployment", ["celeb-smile", "team-a"])
def test_each_cross_namespace_policy_names_its_own_deployments_other_namespace(
        tmp_path, deployment):
    """The overlay's peer namespaces: another deployment's sweeps do not reach this server."""
    env, _ = kube_environment()
    deploy.render(deployment, directory=tmp_path)
    result = subprocess.run(["kubectl", "kustomize", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    policies = {(m["metadata"]["namespace"], m["metadata"]["name"]): m["spec"]
                for m in yaml.safe_load_all(result.stdout) if m and m["kind"] == "NetworkPolicy"}
    name_label = "kubernetes.io/metadata.name"
    ingress = policies[(deployment, "mlflow-from-sweeps")]["ingress"][0]["from"][0]
    egress = policies[(f"{deployment}-sweeps", "training-to-mlflow")]["egress"][0]["to"][0]
    assert ingress["namespaceSelector"]["matchLabels"] == {name_label: f"{deployment}-sweeps"}
    assert egress["namespaceSelector"]["matchLabels"] == {name_label: deployment}


def test_egress_policies_let_each_pod_reach_only_what_it_needs(rendered):
    dns = {("kube-dns", "UDP", 53), ("kube-dns", "TCP", 53)}
    for namespace, name in ((NAMESPACE, "default-deny-egress"),
                            (SWEEPS, f"default-deny-egress@{SWEEPS}")):
        deny = _policies(rendered)[name]
        assert deny == {"podSelector": {}, "policyTypes": ["Egress"], NAMESPACE_KEY: namespace}
    assert _egress(rendered) == {
        "training": dns | {("mlflow", "TCP", 5000)},
        # ... and the Kubernetes API server, wherever the cluster puts it.
        "controller": dns | {("mlflow", "TCP", 5000), ("anywhere", "TCP", 443),
                             ("anywhere", "TCP", 6443)},
        "mlflow": dns | {("postgres", "TCP", 5432)},
        "postgres": set(),
        "data": dns | {("anywhere", "TCP", 443)},  # CelebA's download host
    }


@pytest.mark.parametrize("change, component", [
    # A policy that selects one pod too many, a peer too wide, a port too many: each is seen.
    (lambda p: p["training-to-mlflow"]["podSelector"]["matchExpressions"][0]["values"]
     .append("data"), "data"),
    (lambda p: p["mlflow-to-postgres"]["egress"][0].pop("to"), "mlflow"),
    (lambda p: p[f"dns-egress@{SWEEPS}"]["egress"][0]["ports"].append(
        {"protocol": "TCP", "port": 80}), "training"),
    (lambda p: p["default-deny-egress"]["podSelector"].update(
        matchLabels={LABEL_KEY: "training"}), "postgres"),
    # ... a peer in another namespace than meant.
    (lambda p: p["training-to-mlflow"]["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"]
     .update({"kubernetes.io/metadata.name": "somebody-else"}), "training"),
    (lambda p: p["training-to-mlflow"]["egress"][0]["to"][0].pop("namespaceSelector"),
     "controller"),
])
def test_the_egress_check_catches_a_wider_policy(rendered, change, component):
    import copy

    manifests = copy.deepcopy(rendered)
    change({key: manifest["spec"] for key, manifest in _keyed_policies(manifests).items()})
    assert _egress(manifests)[component] != _egress(rendered)[component]


def _quantity(value) -> float:
    """A Kubernetes quantity as a number (cores, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * factor
    return float(text)


def _containers_by_component(rendered, namespace: str) -> dict[str, list[dict]]:
    return {manifest["spec"]["template"]["metadata"]["labels"][LABEL_KEY]:
            manifest["spec"]["template"]["spec"]["containers"]
            for manifest in rendered if manifest["kind"] in ("Deployment", "Job")
            and manifest["metadata"]["namespace"] == namespace}


@pytest.mark.parametrize("namespace, counts", [
    # The server and PostgreSQL, each beside a successor still starting.
    (NAMESPACE, {"postgres": 2, "mlflow": 2}),
    # Trials still terminating beside their successors (a sweep of four), a controller
    # handing over, and `make data`.
    (SWEEPS, {"training": 2 * 4, "controller": 2, "data": 1}),
])
def test_each_namespaces_quota_fits_what_runs_there(rendered, namespace, counts):
    (quota,) = [m["spec"]["hard"] for m in rendered if m["kind"] == "ResourceQuota"
                and m["metadata"]["namespace"] == namespace]
    (limit_range,) = [m["spec"]["limits"] for m in rendered if m["kind"] == "LimitRange"
                      and m["metadata"]["namespace"] == namespace]
    (container_limits,) = [item for item in limit_range if item["type"] == "Container"]
    containers = _containers_by_component(rendered, namespace)
    # Every container declares both (none relies on the LimitRange's defaults) within its max.
    for component, items in containers.items():
        for container in items:
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    value = _quantity(container["resources"][kind][resource])
                    assert value <= _quantity(container_limits["max"][resource]), \
                        (component, kind, resource)
    assert set(counts) == set(containers)
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            total = sum(count * _quantity(container["resources"][kind][resource])
                        for component, count in counts.items()
                        for container in containers[component])
            assert total <= _quantity(quota[f"{kind}.{resource}"]), (kind, resource, total)
    assert sum(counts.values()) <= int(quota["pods"])
    claims = [m["spec"]["resources"]["requests"]["storage"] for m in rendered
              if m["kind"] == "PersistentVolumeClaim" and m["metadata"]["namespace"] == namespace]
    assert len(claims) <= int(quota["persistentvolumeclaims"])
    assert sum(map(_quantity, claims)) <= _quantity(quota["requests.storage"])
    assert quota["services.nodeports"] == quota["services.loadbalancers"] == "0"
    # A container that declares nothing still gets a request and a limit of each.
    for key in ("default", "defaultRequest"):
        assert set(container_limits[key]) == {"cpu", "memory"}
        assert all(_quantity(container_limits[key][r]) <= _quantity(container_limits["max"][r])
                   for r in ("cpu", "memory"))


def test_no_server_or_database_password_is_in_an_environment_variable(rendered):
    """The server and PostgreSQL read them from mounted files (*_FILE)."""
    for manifest in rendered:
        if manifest["kind"] != "Deployment":
            continue
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        from_secrets = {item["name"]: item["valueFrom"]["secretKeyRef"]["key"]
                        for item in container["env"] if "secretKeyRef" in item.get("valueFrom", {})}
        assert not {key for key in from_secrets.values() if "password" in key or "key" in key}, \
            (manifest["metadata"]["name"], from_secrets)
        files = {item["name"] for item in container["env"] if item["name"].endswith("_FILE")}
        assert files, manifest["metadata"]["name"]
        volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
        secret_mounts = [m for m in container["volumeMounts"] if "projected" in volumes[m["name"]]]
        assert secret_mounts and all(m["readOnly"] for m in secret_mounts)


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


def _sweep_user_may(stack, verb: str, resource: str, namespace: str | None) -> bool:
    """`kubectl auth can-i` as the stack's sweep user itself (a SelfSubjectAccessReview);
    `resource` is TYPE, TYPE/NAME or TYPE:SUBRESOURCE."""
    resource, _, subresource = resource.partition(":")
    where = (["-n", namespace] if namespace else []) + \
        ([f"--subresource={subresource}"] if subresource else [])
    result = kubectl(stack.sweep_user_env, "auth", "can-i", verb, resource, *where, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


@pytest.mark.cluster
def test_a_sweep_user_cannot_reach_the_servers_secrets_nor_pose_as_the_server(cluster_stack):
    """The shipped Roles, as a ServiceAccount bound to them sees them (its drivers run every
    cluster test's sweep end to end: test_driver_cluster.py, test_detached.py)."""
    tracking, sweeps = cluster_stack.tracking_namespace, cluster_stack.namespace
    refused = [(verb, resource, namespace)
               for namespace in (tracking, sweeps)
               for verb, resource in (("get", "secrets"), ("list", "secrets"),
                                      ("watch", "secrets"), ("get", "secrets/mlflow-admin"),
                                      ("create", "pods:exec"), ("create", "pods:attach"),
                                      ("create", "rolebindings"), ("create", "serviceaccounts"),
                                      ("create", "serviceaccounts:token"),
                                      ("patch", "networkpolicies"), ("patch", "pods"))]
    refused += [("create", "pods", tracking), ("create", "jobs.batch", tracking),
                ("create", "deployments.apps", tracking), ("create", "services", tracking),
                ("get", "services/postgres", tracking), ("get", "pods:log", tracking),
                ("patch", "namespaces", None), ("list", "namespaces", None)]
    allowed = [("create", "jobs.batch", sweeps), ("create", "secrets", sweeps),
               ("delete", "secrets", sweeps), ("create", "configmaps", sweeps),
               ("get", "pods:log", sweeps), ("create", "pods:portforward", tracking),
               ("get", "services/mlflow", tracking), ("get", "endpoints/mlflow", tracking)]
    assert [case for case in refused if _sweep_user_may(cluster_stack, *case)] == []
    assert [case for case in allowed if not _sweep_user_may(cluster_stack, *case)] == []
    read = kubectl(cluster_stack.sweep_user_env, "-n", tracking, "get", "secret", "mlflow-admin",
                   check=False)
    assert read.returncode != 0 and "Forbidden" in read.stderr
