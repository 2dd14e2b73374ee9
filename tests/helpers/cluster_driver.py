"""driver.py --backend kubernetes as the cluster tests run it: against the tests' own stack
(through its port-forward, as MLflow's admin, as the stack's sweep user on Kubernetes: the
shipped Role celeb-smile-sweep-user and nothing more), and what they read back (runs, Jobs)."""

import re
import subprocess
import time

import pytest
from mlflow import MlflowClient

from celeb_smile.constants import COMPONENT_LABEL, SWEEP_LABEL
from tests.conftest import BIN_DIR, PROJECT_DIR
from tests.helpers.sweeps import sweep_runs

TINY = ["--param", "epochs=2", "--param", "training_samples=64",
        "--param", "validation_samples=32", "--param", "batch_size=16"]
JOB_PATTERN = re.compile(r"submitted \(job (\S+)\)")


def driver_command(stack, *args, backend_config=None):
    return [str(BIN_DIR / "python"), str(PROJECT_DIR / "driver.py"), "--backend", "kubernetes",
            "--backend-config", str(backend_config or stack.backend_config),
            "--poll-seconds", "2", *args]


def driver_env(stack):
    return dict(stack.sweep_user_env, MLFLOW_TRACKING_URI=stack.tracking_uri,
                KUBE_MLFLOW_TRACKING_URI=stack.in_cluster_tracking_uri)


def run_driver(stack, jobs, *args, timeout=900, **options):
    result = subprocess.run(driver_command(stack, *args, **options), cwd=PROJECT_DIR,
                            env=driver_env(stack), capture_output=True, text=True,
                            timeout=timeout)
    jobs.names.extend(JOB_PATTERN.findall(result.stdout))
    return result


def start_driver(stack, *args) -> subprocess.Popen:
    return subprocess.Popen(driver_command(stack, *args), cwd=PROJECT_DIR,
                            env=driver_env(stack), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def runs_on(stack, experiment):
    client = MlflowClient(stack.tracking_uri)
    return (client, *sweep_runs(client, experiment))


def sweep_jobs(stack, sweep_id: str) -> list[str]:
    """The trial Jobs of a sweep (not its controller's)."""
    selector = f"{SWEEP_LABEL}={sweep_id},{COMPONENT_LABEL}=training"
    return stack.kubectl("get", "jobs", "-l", selector, "-o", "name").stdout.split()


def wait_for(condition, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"{what}: not within {timeout}s")


def training_runs(client, experiment, count: int):
    """Once `count` trials of `experiment` have logged an epoch: their runs."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = [r for r in client.search_runs([found.experiment_id])
            if "mlflow.parentRunId" in r.data.tags and "loss" in r.data.metrics]
    return runs if len(runs) >= count else None
