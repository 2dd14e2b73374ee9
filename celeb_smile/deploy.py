"""`make deploy`'s generator: one kustomize overlay per deployment, never committed.

    python -m celeb_smile.deploy --namespace celeb-smile --registry localhost:5001

A deployment is two namespaces: <namespace>, the tracking namespace (k8s/tracking: the server,
PostgreSQL and their Secrets), and <namespace>-sweeps (k8s/sweeps: trials, controllers and the
people running sweeps). It writes .deploy/<namespace>/ (git-ignored) and prints its path:
  secrets/                  random values made on first use (mode 600), reused afterwards
  kustomization.yaml        both namespaces' overlays: `kubectl apply -k` applies everything
  tracking/, sweeps/        each namespace's overlay: k8s/<part> + the namespace, its Namespace
                            (Pod Security "restricted"), its policies' peer namespace, its
                            Secrets (from copies of the files it needs in its own secrets/:
                            kustomize reads no file outside an overlay; sweeps/ also the
                            trainer's MLflow credentials file made from them, which the Job
                            template mounts); tracking/ also the
                            images' registry and a pod-template annotation per Deployment (a
                            changed secret rolls it)
  job_template.yaml         ../../job_template.yaml for the sweeps namespace
  kubernetes_config.json    the backend config for `mlflow run` and the driver (that Job
                            template, the registry's training repository, the tracking
                            namespace)
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
# The legacy trainer's MLflow credentials file (mlflow_credentials_file), written on every
# render into the sweeps overlay's secrets/ from trainer-password: Secret mlflow-trainer's key
# `credentials`, which job_template.yaml mounts at ~/.mlflow/credentials.
TRAINER_CREDENTIALS_FILE = "trainer-credentials"
SWEEPS_SUFFIX = "-sweeps"
# A DNS-1123 label short enough that <namespace>-sweeps is one too.
NAMESPACE_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,54}[a-z0-9])?")
REGISTRY_PATTERN = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?")
DEPLOYMENTS = ("postgres", "mlflow")
TEMPLATE_NAMESPACE_LINE = f"  namespace: {DEFAULT_NAMESPACE}{SWEEPS_SUFFIX}\n"
# The backend config's key naming the tracking namespace (MLflow ignores keys it does not know).
TRACKING_NAMESPACE_KEY = "tracking-namespace"
# Each namespace's NetworkPolicy whose peer is the other namespace (k8s/<part>/networkpolicy-*).
PEER_POLICIES = {"tracking": ("mlflow-from-sweeps", "/spec/ingress/0/from/0"),
                 "sweeps": ("training-to-mlflow", "/spec/egress/0/to/0")}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def sweeps_namespace(namespace: str) -> str:
    """Where a deployment's trials, controllers and sweep users work."""
    return namespace + SWEEPS_SUFFIX


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
    def sweeps_namespace(self) -> str:
        return sweeps_namespace(self.namespace)

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
                         f"at most {63 - len(SWEEPS_SUFFIX)}: <NAMESPACE>{SWEEPS_SUFFIX} is one "
                         f"too), got {namespace!r}")
    if not REGISTRY_PATTERN.fullmatch(registry) or registry.endswith("/"):
        raise ValueError(f"REGISTRY must be host[:port][/path] without a scheme, got {registry!r}")


def mlflow_credentials_file(username: str, password: str) -> str:
    """MLflow's credentials file (~/.mlflow/credentials, which its client reads on every
    request: mlflow.utils.credentials) for `username`: an ini file that ConfigParser, with its
    %-interpolation, reads back to exactly these values."""
    for what, value in (("username", username), ("password", password)):
        if value != value.strip() or any(c in value for c in "\r\n"):
            raise ValueError(f"an MLflow {what} in a credentials file cannot have line breaks or "
                             "leading or trailing whitespace")
    return (f"[mlflow]\nmlflow_tracking_username = {username.replace('%', '%%')}\n"
            f"mlflow_tracking_password = {password.replace('%', '%%')}\n")


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


def tracking_kustomization(namespace: str, registry: str, project_dir: Path,
                           directory: Path) -> dict:
    """The tracking namespace's overlay (written to `directory`)."""
    return {
        **_overlay_base(namespace, project_dir / "k8s" / "tracking", directory, "tracking"),
        "patchesStrategicMerge": [f"secrets-checksum-{name}.yaml" for name in DEPLOYMENTS],
        "images": [{"name": SERVER_IMAGE, "newName": f"{registry}/{SERVER_IMAGE}"}],
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


def sweeps_kustomization(namespace: str, project_dir: Path, directory: Path) -> dict:
    """The sweeps namespace's overlay: only the legacy trainer's Secret (job_template.yaml's,
    for a plain `mlflow run`, whose pods mount its `credentials`); a sweep's trial-user Secrets
    are made by its controller."""
    return {
        **_overlay_base(sweeps_namespace(namespace), project_dir / "k8s" / "sweeps", directory,
                        "sweeps"),
        "secretGenerator": [_secret("mlflow-trainer", {"password": "trainer-password",
                                                       "credentials": TRAINER_CREDENTIALS_FILE},
                                    {"username": TRAINER_USERNAME})],
    }


def _overlay_base(namespace: str, base: Path, directory: Path, part: str) -> dict:
    policy, _ = PEER_POLICIES[part]
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "bases": [os.path.relpath(base, directory)],
        "resources": ["namespace.yaml"],
        "patchesJson6902": [{"target": {"group": "networking.k8s.io", "version": "v1",
                                        "kind": "NetworkPolicy", "name": policy},
                             "path": "peer-namespace.yaml"}],
        # Fixed names (the Job template refers to mlflow-trainer); secrets-checksum-*.yaml
        # rolls the Deployments when a value changes.
        "generatorOptions": {"disableNameSuffixHash": True,
                             "labels": {LABEL_KEY: "credentials"}},
    }


def peer_namespace_patch(part: str, peer: str) -> list[dict]:
    """A JSON patch naming the other namespace in the part's cross-namespace policy."""
    _, peer_path = PEER_POLICIES[part]
    label = NAMESPACE_NAME_LABEL.replace("/", "~1")
    return [{"op": "replace", "path": f"{peer_path}/namespaceSelector/matchLabels/{label}",
             "value": peer}]


def _secret(name: str, files: dict[str, str], literals: dict[str, str] | None = None) -> dict:
    generator = {"name": name, "type": "Opaque",
                 "files": [f"{key}=secrets/{file}" for key, file in files.items()]}
    if literals:
        generator["literals"] = [f"{key}={value}" for key, value in literals.items()]
    return generator


def namespace_manifest(namespace: str) -> dict:
    """Pod Security "restricted" for every pod (enforced on 1.25+ or with the admission
    plugin; warn/audit report violations where it is only advisory), and the name label the
    policies select namespaces by (Kubernetes sets it itself from 1.21)."""
    labels = {LABEL_KEY: "namespace", NAMESPACE_NAME_LABEL: namespace}
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


def backend_config(registry: str, job_template: Path, namespace: str) -> dict:
    """An absolute template path: `mlflow run` resolves it from its working directory. The
    tracking namespace: where the driver finds the server (the Jobs go to the template's)."""
    return {"kube-job-template-path": str(job_template.resolve()),
            "repository-uri": f"{registry}/{TRAIN_IMAGE}",
            TRACKING_NAMESPACE_KEY: namespace}


def render(namespace: str = DEFAULT_NAMESPACE, registry: str = DEFAULT_REGISTRY,
           project_dir: Path = PROJECT_DIR, directory: Path | None = None) -> Overlay:
    """Write the overlay (secrets only where missing); nothing outside `directory` changes."""
    validate(namespace, registry)
    directory = directory or deploy_dir(namespace, project_dir)
    overlay = Overlay(namespace, registry, directory)
    values = ensure_secrets(overlay.secrets_dir)
    parts = {
        "tracking": (namespace, overlay.sweeps_namespace, tracking_kustomization(
            namespace, registry, project_dir, directory / "tracking")),
        "sweeps": (overlay.sweeps_namespace, namespace, sweeps_kustomization(
            namespace, project_dir, directory / "sweeps")),
    }
    for part, (own, peer, kustomization) in parts.items():
        files = {"kustomization.yaml": _json(kustomization),
                 "namespace.yaml": _json(namespace_manifest(own)),
                 "peer-namespace.yaml": _json(peer_namespace_patch(part, peer))}
        if part == "tracking":
            files |= {f"secrets-checksum-{name}.yaml": _json(checksum_patch(name, values))
                      for name in DEPLOYMENTS}
        _write(directory / part, files)
        _copy_secrets(overlay.secrets_dir, directory / part / "secrets", kustomization, {
            TRAINER_CREDENTIALS_FILE: mlflow_credentials_file(TRAINER_USERNAME,
                                                              values["trainer-password"])})
    _write(directory, {
        "kustomization.yaml": _json({"apiVersion": "kustomize.config.k8s.io/v1beta1",
                                     "kind": "Kustomization", "bases": list(parts)}),
        "job_template.yaml": job_template_text(overlay.sweeps_namespace, project_dir),
        "kubernetes_config.json": _json(backend_config(registry, overlay.job_template,
                                                       namespace)),
    })
    return overlay


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def _copy_secrets(source: Path, target: Path, kustomization: dict,
                  derived: dict[str, str]) -> None:
    """The secret files an overlay's generators read, copied beside it (mode 600): kustomize
    reads no file outside the overlay's directory. A file named in `derived` is written with
    that text instead (made from the secrets, never kept in `source`)."""
    target.mkdir(mode=0o700, exist_ok=True)
    os.chmod(target, 0o700)
    for generator in kustomization["secretGenerator"]:
        for entry in generator["files"]:
            name = Path(entry.split("=", 1)[1]).name
            descriptor = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(descriptor, 0o600)  # an older file's mode too
            with os.fdopen(descriptor, "w") as handle:
                handle.write(derived[name] if name in derived else (source / name).read_text())


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
