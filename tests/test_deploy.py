"""celeb_smile.deploy: the per-namespace overlay `make deploy` writes, and its secrets."""

import json
import subprocess

import pytest
import yaml

from celeb_smile import deploy
from tests.conftest import PROJECT_DIR


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
    kustomization = json.loads((tmp_path / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "team-a"
    assert kustomization["images"] == [{"name": "celeb-smile-mlflow",
                                        "newName": "registry.example:5000/ml/celeb-smile-mlflow"}]
    namespace = json.loads((tmp_path / "namespace.yaml").read_text())
    assert namespace["metadata"]["name"] == "team-a"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert json.loads(overlay.backend_config.read_text()) == {
        "kube-job-template-path": str(overlay.job_template.resolve()),
        "repository-uri": "registry.example:5000/ml/celeb-smile-train"}
    template = overlay.job_template.read_text()
    assert "  namespace: team-a\n" in template and "celeb-smile\n" not in template
    assert overlay.tracking_uri == "http://mlflow.team-a.svc.cluster.local:5000"


def test_secret_values_reach_kustomize_only_through_files(tmp_path):
    overlay = deploy.render("team-a", directory=tmp_path)
    generated = "".join(path.read_text() for path in tmp_path.glob("*.*"))
    assert not any(overlay.secret(name) in generated for name in deploy.SECRET_FILES)


def test_a_changed_secret_changes_the_rollout_annotation(tmp_path):
    deploy.render("team-a", directory=tmp_path)
    before = (tmp_path / "secrets-checksum-mlflow.yaml").read_text()
    (tmp_path / "secrets" / "trainer-password").write_text("rotated-" + "x" * 40)
    deploy.render("team-a", directory=tmp_path)
    assert (tmp_path / "secrets-checksum-mlflow.yaml").read_text() != before


@pytest.mark.parametrize("argv, message", [
    (["--namespace", "Team_A"], "error: NAMESPACE must be a DNS-1123 label"),
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
    kustomization = deploy.kustomization("team-a", "localhost:5001", PROJECT_DIR, tmp_path)
    generated = {(secret["name"], entry.split("=", 1)[0])
                 for secret in kustomization["secretGenerator"]
                 for entry in secret.get("files", []) + secret.get("literals", [])}
    passwords = {(secret["name"], entry.split("=", 1)[0])
                 for secret in kustomization["secretGenerator"] for entry in secret["files"]}
    references = {}
    for name in deploy.DEPLOYMENTS:
        manifest = yaml.safe_load((PROJECT_DIR / "k8s" / f"{name}-deployment.yaml").read_text())
        references[name] = _secret_references(manifest)
        assert references[name] <= generated, name
    # Each generated password or key reaches a pod (as a file: test_security checks the env).
    assert passwords <= references["mlflow"] | references["postgres"]
