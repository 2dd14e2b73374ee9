"""The k8s/ stack deployed into a namespace of a test's own (created here, deleted afterwards),
so cluster tests never touch a user's `celeb-smile` namespace. Until `make deploy` takes a
namespace, the rendered manifests are rewritten: every `celeb-smile` that names the namespace
(not the images' or the service account's `celeb-smile-…`)."""

import re
import secrets
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass

from tests.conftest import PROJECT_DIR

DEFAULT_NAMESPACE = "celeb-smile"
NAMESPACE_WORD = re.compile(rf"(?<![-\w]){DEFAULT_NAMESPACE}(?![-\w])")


def run_kubectl(env, *args, input=None, timeout=180, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(["kubectl", *args], env=env, input=input, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def render_stack(env, namespace: str) -> str:
    rendered = run_kubectl(env, "kustomize", str(PROJECT_DIR / "k8s")).stdout
    return NAMESPACE_WORD.sub(namespace, rendered)


@dataclass
class NamespacedStack:
    env: dict
    namespace: str

    def kubectl(self, *args, **kwargs) -> subprocess.CompletedProcess:
        return run_kubectl(self.env, "-n", self.namespace, *args, **kwargs)

    def wait_ready(self, timeout: int = 300) -> None:
        for deployment in ("postgres", "mlflow"):
            self.kubectl("rollout", "status", f"deployment/{deployment}", f"--timeout={timeout}s",
                         timeout=timeout + 30)

    def server_pods(self) -> list[str]:
        return self.kubectl("get", "pods", "-l", "app.kubernetes.io/component=mlflow",
                            "-o", "name").stdout.split()


@contextmanager
def namespaced_stack(env, prefix: str):
    """Deploy the stack into `<prefix>-<random>`; yield a NamespacedStack; delete the namespace."""
    stack = NamespacedStack(env, f"{prefix}-{secrets.token_hex(3)}")
    try:
        run_kubectl(env, "apply", "-f", "-", input=render_stack(env, stack.namespace))
        stack.wait_ready()
        yield stack
    finally:
        run_kubectl(env, "delete", "namespace", stack.namespace, "--ignore-not-found",
                    "--wait=true", "--timeout=300s", timeout=330, check=False)
