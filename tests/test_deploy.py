"""celeb_smile.deploy: the per-namespace overlay `make deploy` writes, and its secrets."""

import inspect
import json
import subprocess

import pytest
import yaml

from celeb_smile import deploy
from tests.conftest import PROJECT_DIR
from tests.helpers.rbac import calls_in, granted


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--ignored=no"], cwd=PROJECT_DIR,
                          capture_output=True, text=True, check=True).stdout


def test_first_render_generates_private_random_secrets_and_later_ones_reuse_them(tmp_path):
    first = deploy.render("team-a", directory=tmp_path / "a")
    values = {name: first.secret(name) for name in deploy.SECRET_FILES}
    assert len(set(values.values())) == len(deploy.SECRET_FILES)
    assert all(len(value) >= 40 for value in values.values())  # 32 random bytes, URL-safe
    assert oct(first.secrets_dir.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in first.secrets_dir.iterdir()} == {"0o600"}

    again = deploy.render("team-a", directory=tmp_path / "a")
    assert {name: again.secret(name) for name in deploy.SECRET_FILES} == values
    other = deploy.render("team-b", directory=tmp_path / "b")
    assert not {other.secret(name) for name in deploy.SECRET_FILES} & set(values.values())


def test_namespace_and_registry_flow_everywhere_and_nothing_tracked_changes(tmp_path):
    before = _git_status()
    overlay = deploy.render("team-a", "registry.example:5000/ml", directory=tmp_path)
    assert _git_status() == before
    assert json.loads((tmp_path / "kustomization.yaml").read_text())["bases"] == \
        ["tracking", "sweeps"]
    tracking = json.loads((tmp_path / "tracking" / "kustomization.yaml").read_text())
    sweeps = json.loads((tmp_path / "sweeps" / "kustomization.yaml").read_text())
    assert (tracking["namespace"], sweeps["namespace"]) == ("team-a", "team-a-sweeps")
    assert tracking["images"] == [{"name": "celeb-smile-mlflow",
                                   "newName": "registry.example:5000/ml/celeb-smile-mlflow"}]
    for part, name in (("tracking", "team-a"), ("sweeps", "team-a-sweeps")):
        namespace = json.loads((tmp_path / part / "namespace.yaml").read_text())
        assert namespace["metadata"]["name"] == name
        labels = namespace["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert labels["kubernetes.io/metadata.name"] == name
    assert json.loads(overlay.backend_config.read_text()) == {
        "kube-job-template-path": str(overlay.job_template.resolve()),
        "repository-uri": "registry.example:5000/ml/celeb-smile-train",
        "tracking-namespace": "team-a"}
    template = overlay.job_template.read_text()
    assert "  namespace: team-a-sweeps\n" in template
    assert "namespace: celeb-smile" not in template
    assert overlay.tracking_uri == "http://mlflow.team-a.svc.cluster.local:5000"


def test_secret_values_reach_kustomize_only_through_files(tmp_path):
    overlay = deploy.render("team-a", directory=tmp_path)
    generated = [path for path in tmp_path.rglob("*") if path.is_file()]
    secret_files = [path for path in generated if path.parent.name == "secrets"]
    text = "".join(path.read_text() for path in generated if path not in secret_files)
    assert not any(overlay.secret(name) in text for name in deploy.SECRET_FILES)
    # Each overlay's copies (kustomize reads no file outside an overlay) are private too.
    assert {path.relative_to(tmp_path).parent.as_posix() for path in secret_files} == \
        {"secrets", "tracking/secrets", "sweeps/secrets"}
    assert {oct(path.stat().st_mode & 0o777) for path in secret_files} == {"0o600"}
    assert {path.name for path in (tmp_path / "sweeps" / "secrets").iterdir()} == \
        {"trainer-password", "trainer-credentials"}


def _read_credentials_file(text: str) -> tuple[str, str]:
    """As MLflow's client reads ~/.mlflow/credentials (mlflow.utils.credentials)."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read_string(text)
    return (parser["mlflow"]["mlflow_tracking_username"],
            parser["mlflow"]["mlflow_tracking_password"])


def test_the_legacy_trainers_secret_in_the_sweeps_namespace_has_its_credentials_file(tmp_path):
    """job_template.yaml mounts mlflow-trainer's `credentials`: the sweeps overlay generates
    it from a private file written on every render; the tracking overlay's stays as it was."""
    overlay = deploy.render("team-a", directory=tmp_path)
    sweeps = json.loads((tmp_path / "sweeps" / "kustomization.yaml").read_text())
    (trainer,) = [s for s in sweeps["secretGenerator"] if s["name"] == "mlflow-trainer"]
    assert trainer["files"] == ["password=secrets/trainer-password",
                                "credentials=secrets/trainer-credentials"]
    assert trainer["literals"] == ["username=trainer"]
    path = tmp_path / "sweeps" / "secrets" / "trainer-credentials"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert _read_credentials_file(path.read_text()) == overlay.trainer_credentials()
    assert not (overlay.secrets_dir / "trainer-credentials").exists()  # made, never kept
    tracking = json.loads((tmp_path / "tracking" / "kustomization.yaml").read_text())
    (tracked,) = [s for s in tracking["secretGenerator"] if s["name"] == "mlflow-trainer"]
    assert tracked["files"] == ["password=secrets/trainer-password"]

    path.chmod(0o644)  # a file left readable: made private again by the next render
    (overlay.secrets_dir / "trainer-password").write_text("rotated%-" + "x" * 40)
    deploy.render("team-a", directory=tmp_path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert _read_credentials_file(path.read_text()) == ("trainer", "rotated%-" + "x" * 40)


@pytest.mark.parametrize("password", ["plain", "100%", "%(x)s", "a=b:c #d ;e", "[mlflow]"])
def test_a_credentials_file_reads_back_to_its_values(password):
    assert _read_credentials_file(deploy.mlflow_credentials_file("trial-1-ab", password)) == \
        ("trial-1-ab", password)


@pytest.mark.parametrize("password", ["two\nlines", " padded", "cr\r"])
def test_a_password_a_credentials_file_cannot_hold_is_refused(password):
    with pytest.raises(ValueError, match="line breaks or leading or trailing whitespace"):
        deploy.mlflow_credentials_file("trainer", password)


def test_a_changed_secret_changes_the_rollout_annotation(tmp_path):
    deploy.render("team-a", directory=tmp_path)
    before = (tmp_path / "tracking" / "secrets-checksum-mlflow.yaml").read_text()
    (tmp_path / "secrets" / "trainer-password").write_text("rotated-" + "x" * 40)
    deploy.render("team-a", directory=tmp_path)
    assert (tmp_path / "tracking" / "secrets-checksum-mlflow.yaml").read_text() != before
    assert (tmp_path / "sweeps" / "secrets" / "trainer-password").read_text() == \
        "rotated-" + "x" * 40


@pytest.mark.parametrize("argv, message", [
    (["--namespace", "Team_A"], "error: NAMESPACE must be a DNS-1123 label"),
    (["--namespace", "a" * 57], "error: NAMESPACE must be a DNS-1123 label"),
    (["--registry", "http://registry:5000"], "error: REGISTRY must be host[:port][/path]"),
])
def test_bad_input_exits_2_with_one_line_and_creates_nothing(argv, message, capsys):
    assert deploy.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(message) and error.count("\n") == 1
    assert not (PROJECT_DIR / ".deploy" / "Team_A").exists()


def _secret_references(manifest: dict) -> set[tuple[str, str]]:
    """(Secret, key) pairs a Deployment's pod reads: env secretKeyRefs and projected files."""
    pod = manifest["spec"]["template"]["spec"]
    references = {(item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
                  for container in pod["containers"] for item in container.get("env", [])
                  if "secretKeyRef" in item.get("valueFrom", {})}
    for volume in pod.get("volumes", []):
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                references |= {(source["secret"]["name"], item["key"])
                               for item in source["secret"]["items"]}
    return references


def test_every_secret_file_the_pods_mount_is_one_the_overlay_generates(tmp_path):
    kustomization = deploy.tracking_kustomization("team-a", "localhost:5001", PROJECT_DIR,
                                                  tmp_path)
    generated = {(secret["name"], entry.split("=", 1)[0])
                 for secret in kustomization["secretGenerator"]
                 for entry in secret.get("files", []) + secret.get("literals", [])}
    passwords = {(secret["name"], entry.split("=", 1)[0])
                 for secret in kustomization["secretGenerator"] for entry in secret["files"]}
    references = {}
    for name in deploy.DEPLOYMENTS:
        manifest = yaml.safe_load((PROJECT_DIR / "k8s" / "tracking" / f"{name}-deployment.yaml")
                                  .read_text())
        references[name] = _secret_references(manifest)
        assert references[name] <= generated, name
    # Each generated password or key reaches a pod (as a file: test_security checks the env).
    assert passwords <= references["mlflow"] | references["postgres"]


# -- who may do what: the sweep user's Roles -----------------------------------------------------
SWEEPS_DIR = PROJECT_DIR / "k8s" / "sweeps"
TRACKING_DIR = PROJECT_DIR / "k8s" / "tracking"
# Read-only views a person watching a sweep uses (kubectl get -w, describe) beyond the driver's.
KUBECTL_VIEWS = {("batch", "jobs", "get"), ("batch", "jobs", "watch"), ("", "pods", "watch"),
                 ("", "events", "list"), ("", "events", "watch")}


def test_the_sweep_user_may_do_what_the_driver_does_in_the_sweeps_namespace_and_no_more():
    """The driver on a laptop: the Kubernetes backend (trials), a detached sweep's hand-over
    and its steering (--status, --logs, --cancel); a single `mlflow run --backend kubernetes`
    (MLflow's backend, and our wrapper that gives it a trial user)."""
    from mlflow.projects import kubernetes as mlflow_backend

    from celeb_smile.sweep import detach, single_run, steer
    from celeb_smile.sweep.backends import kubernetes

    used = set().union(*(calls_in(inspect.getsource(module))
                         for module in (kubernetes, detach, steer, single_run, mlflow_backend)))
    role = granted(SWEEPS_DIR / "sweep-user-role.yaml")
    assert role == used | KUBECTL_VIEWS
    assert not {verb for group, resource, verb in role if resource == "secrets"} & \
        {"get", "list", "watch"}


def test_the_sweep_user_may_only_reach_the_server_in_the_tracking_namespace():
    from celeb_smile.sweep import connect

    role = granted(TRACKING_DIR / "sweep-user-role.yaml")
    port_forward = {("", "pods/portforward", "create"), ("", "pods/portforward", "get"),
                    ("", "pods", "get"), ("", "pods", "list")}  # kubectl's lookup of the pod
    assert role == calls_in(inspect.getsource(connect)) | port_forward
    rules = yaml.safe_load((TRACKING_DIR / "sweep-user-role.yaml").read_text())["rules"]
    (named,) = [rule for rule in rules if "services" in rule["resources"]]
    assert named["resourceNames"] == ["mlflow"]


def test_the_sweep_users_group_is_bound_in_both_namespaces_to_their_role_only():
    binding = yaml.safe_load((PROJECT_DIR / "k8s" / "namespace-defaults" /
                              "sweep-user-rolebinding.yaml").read_text())
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "celeb-smile-sweep-user"}
    for part in (SWEEPS_DIR, TRACKING_DIR):
        kustomization = yaml.safe_load((part / "kustomization.yaml").read_text())
        assert "sweep-user-role.yaml" in kustomization["resources"]
        assert kustomization["bases"] == ["../namespace-defaults"]
