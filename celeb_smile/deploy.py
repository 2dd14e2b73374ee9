"""`make deploy`'s generator: one kustomize overlay per namespace, never committed.

    python -m celeb_smile.deploy --namespace celeb-smile --registry localhost:5001

writes .deploy/<namespace>/ (git-ignored) and prints its path:
  secrets/                  random values made on first use (mode 600), reused afterwards
  kustomization.yaml        k8s/ + the namespace, the images' registry, the Secrets
  namespace.yaml            the Namespace, Pod Security "restricted" enforced
  secrets-checksum-*.yaml   a pod-template annotation: a changed secret rolls the Deployments
  job_template.yaml         ../../job_template.yaml for this namespace
  kubernetes_config.json    the backend config for `mlflow run` and the driver (this
                            namespace's Job template, the registry's training repository)
Standard library only (it runs before the venv exists). The overlay is written for kubectl's
built-in kustomize from 1.20 (v2.0.3) on, hence `bases:` and JSON (which is YAML).
"""

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from celeb_smile.sweep.connect import in_cluster_tracking_uri  # standard library only

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_NAMESPACE = "celeb-smile"
DEFAULT_REGISTRY = "localhost:5001"
LABEL_KEY = "app.kubernetes.io/component"
SERVER_IMAGE = "celeb-smile-mlflow"
TRAIN_IMAGE = "celeb-smile-train"
TRAINER_USERNAME = "trainer"
ADMIN_USERNAME = "admin"
DB_USERNAME = "mlflow"
# Each generated secret: its file in secrets/. Rotating one = replacing its file (README).
SECRET_FILES = ("postgres-superuser-password", "mlflow-db-password", "mlflow-admin-password",
                "flask-secret-key", "trainer-password")
NAMESPACE_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
REGISTRY_PATTERN = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?")
DEPLOYMENTS = ("postgres", "mlflow")
TEMPLATE_NAMESPACE_LINE = f"  namespace: {DEFAULT_NAMESPACE}\n"


def deploy_dir(namespace: str, root: Path = PROJECT_DIR) -> Path:
    return root / ".deploy" / namespace


@dataclass(frozen=True)
class Overlay:
    namespace: str
    registry: str
    directory: Path

    @property
    def secrets_dir(self) -> Path:
        return self.directory / "secrets"

    @property
    def backend_config(self) -> Path:
        return self.directory / "kubernetes_config.json"

    @property
    def job_template(self) -> Path:
        return self.directory / "job_template.yaml"

    @property
    def tracking_uri(self) -> str:
        return in_cluster_tracking_uri(self.namespace)

    def secret(self, name: str) -> str:
        return (self.secrets_dir / name).read_text()

    def admin_credentials(self) -> tuple[str, str]:
        return ADMIN_USERNAME, self.secret("mlflow-admin-password")

    def trainer_credentials(self) -> tuple[str, str]:
        return TRAINER_USERNAME, self.secret("trainer-password")


def validate(namespace: str, registry: str) -> None:
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ValueError(f"NAMESPACE must be a DNS-1123 label (lowercase letters, digits, '-', "
                         f"at most 63), got {namespace!r}")
    if not REGISTRY_PATTERN.fullmatch(registry) or registry.endswith("/"):
        raise ValueError(f"REGISTRY must be host[:port][/path] without a scheme, got {registry!r}")


def ensure_secrets(directory: Path) -> dict[str, str]:
    """Every secret file, generated (32 random bytes, URL-safe) if missing; existing ones kept."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    values = {}
    for name in SECRET_FILES:
        path = directory / name
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
        values[name] = path.read_text()
        if not values[name]:
            raise ValueError(f"secret file {path} is empty (delete it to generate a new value)")
    return values


def kustomization(namespace: str, registry: str, project_dir: Path, directory: Path) -> dict:
    base = os.path.relpath(project_dir / "k8s", directory)
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "bases": [base],
        "resources": ["namespace.yaml"],
        "patchesStrategicMerge": [f"secrets-checksum-{name}.yaml" for name in DEPLOYMENTS],
        "images": [{"name": SERVER_IMAGE, "newName": f"{registry}/{SERVER_IMAGE}"}],
        # Fixed names (the Job template refers to mlflow-trainer); secrets-checksum.yaml rolls
        # the Deployments when a value changes.
        "generatorOptions": {"disableNameSuffixHash": True,
                             "labels": {LABEL_KEY: "credentials"}},
        "secretGenerator": [
            _secret("postgres-superuser", {"password": "postgres-superuser-password"}),
            _secret("mlflow-database", {"password": "mlflow-db-password"},
                    {"username": DB_USERNAME, "database": "mlflow", "auth-database": "mlflow_auth"}),
            _secret("mlflow-admin", {"password": "mlflow-admin-password"},
                    {"username": ADMIN_USERNAME}),
            _secret("mlflow-server", {"flask-secret-key": "flask-secret-key"}),
            _secret("mlflow-trainer", {"password": "trainer-password"},
                    {"username": TRAINER_USERNAME}),
        ],
    }


def _secret(name: str, files: dict[str, str], literals: dict[str, str] | None = None) -> dict:
    generator = {"name": name, "type": "Opaque",
                 "files": [f"{key}=secrets/{file}" for key, file in files.items()]}
    if literals:
        generator["literals"] = [f"{key}={value}" for key, value in literals.items()]
    return generator


def namespace_manifest(namespace: str) -> dict:
    """Pod Security "restricted" for every pod (enforced on 1.25+ or with the admission
    plugin; warn/audit report violations where it is only advisory)."""
    labels = {LABEL_KEY: "namespace"}
    for mode in ("enforce", "warn", "audit"):
        labels[f"pod-security.kubernetes.io/{mode}"] = "restricted"
        labels[f"pod-security.kubernetes.io/{mode}-version"] = "latest"
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": labels}}


def checksum_patch(deployment: str, values: dict[str, str]) -> dict:
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": deployment},
            "spec": {"template": {"metadata": {"annotations": {
                "celeb-smile/secrets-checksum": digest}}}}}


def job_template_text(namespace: str, project_dir: Path) -> str:
    text = (project_dir / "job_template.yaml").read_text()
    if text.count(TEMPLATE_NAMESPACE_LINE) != 1:
        raise ValueError(f"job_template.yaml must contain the line {TEMPLATE_NAMESPACE_LINE!r} "
                         "exactly once (make deploy sets the namespace there)")
    return text.replace(TEMPLATE_NAMESPACE_LINE, f"  namespace: {namespace}\n")


def backend_config(registry: str, job_template: Path) -> dict:
    """An absolute template path: `mlflow run` resolves it from its working directory."""
    return {"kube-job-template-path": str(job_template.resolve()),
            "repository-uri": f"{registry}/{TRAIN_IMAGE}"}


def render(namespace: str = DEFAULT_NAMESPACE, registry: str = DEFAULT_REGISTRY,
           project_dir: Path = PROJECT_DIR, directory: Path | None = None) -> Overlay:
    """Write the overlay (secrets only where missing); nothing outside `directory` changes."""
    validate(namespace, registry)
    directory = directory or deploy_dir(namespace, project_dir)
    overlay = Overlay(namespace, registry, directory)
    values = ensure_secrets(overlay.secrets_dir)
    files = {
        "kustomization.yaml": _json(kustomization(namespace, registry, project_dir, directory)),
        "namespace.yaml": _json(namespace_manifest(namespace)),
        **{f"secrets-checksum-{name}.yaml": _json(checksum_patch(name, values))
           for name in DEPLOYMENTS},
        "job_template.yaml": job_template_text(namespace, project_dir),
        "kubernetes_config.json": _json(backend_config(registry, overlay.job_template)),
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    return overlay


def _json(value) -> str:
    return json.dumps(value, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE)
    parser.add_argument("--registry", default=DEFAULT_REGISTRY)
    args = parser.parse_args(argv)
    try:
        overlay = render(args.namespace, args.registry)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(os.path.relpath(overlay.directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
