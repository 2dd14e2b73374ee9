"""The driver's own connection to the in-cluster tracking server (celeb_smile.sweep.connect) on a
real cluster, in a namespace of this module's own: it follows the server's pod across a
restart at the same local address, `make ui` serves the UI through it, a sweep survives a
server restart mid-way with nothing exported by hand, and the Service's ClusterIP is refused in
one line."""

import json
import signal
import subprocess
import time

import pytest
from mlflow import MlflowClient

from celeb_smile.sweep.connect import connect_to_tracking_server, in_cluster_tracking_uri
from tests.cluster.conftest import make
from tests.conftest import BIN_DIR, PROJECT_DIR, sweep_runs
from tests.helpers.namespaced_stack import namespaced_stack

pytestmark = pytest.mark.cluster
SERVER_SELECTOR = "app.kubernetes.io/component=mlflow"
TINY = ["--param", "epochs=3", "--param", "training_samples=64",
        "--param", "validation_samples=32", "--param", "batch_size=16"]


@pytest.fixture(scope="module")
def own_stack(kube_env):
    make(kube_env, "images", timeout=1800)  # the server image the stack runs
    with namespaced_stack(kube_env, "connect") as stack:
        yield stack


def test_the_connection_follows_a_restarted_server_pod_at_the_same_address(own_stack):
    with connect_to_tracking_server(own_stack.namespace) as connection:
        uri, first_pod = connection.uri, connection.forwarder.current.pod
        client = MlflowClient(uri)
        experiment_id = client.create_experiment(f"restart-{time.time_ns()}")
        own_stack.kubectl("delete", "pod", first_pod, "--wait=true", "--timeout=120s")
        # The old pod is gone, the new one may not be Ready yet: MLflow's own retries carry the
        # call over; nothing is reopened by hand.
        run = client.create_run(experiment_id)
        assert connection.uri == uri
        assert connection.forwarder.current.pod != first_pod
        assert f"pod/{first_pod}" not in own_stack.server_pods()
        assert client.get_run(run.info.run_id).info.experiment_id == experiment_id


def test_make_ui_serves_the_mlflow_ui_until_interrupted(own_stack):
    process = subprocess.Popen(
        [str(BIN_DIR / "python"), str(PROJECT_DIR / "scripts" / "mlflow_ui.py"),
         "--namespace", own_stack.namespace, "--port", "0"],
        env=own_stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = process.stdout.readline()
        assert first_line.startswith(f"MLflow UI of {own_stack.namespace}/mlflow: http://127.0.0.1:"), \
            first_line + process.stderr.read() if process.poll() is not None else first_line
        uri = first_line.split(": ", 1)[1].split()[0]
        page = subprocess.run(["curl", "-sf", f"{uri}/"], capture_output=True, text=True,
                              timeout=60)
        assert page.returncode == 0 and "<title>MLflow</title>" in page.stdout, page.stdout[:500]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_services_clusterip_is_refused_in_one_line(own_stack):
    cluster_ip = own_stack.kubectl("get", "service", "mlflow",
                                   "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    result = subprocess.run(
        [str(BIN_DIR / "python"), str(PROJECT_DIR / "driver.py"), "--backend", "kubernetes",
         "--no-build"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
        env=dict(own_stack.env, MLFLOW_TRACKING_URI=f"http://{cluster_ip}:5000"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: tracking server http://{cluster_ip}:5000 refuses the host name "
        f"{cluster_ip}:5000 (not in its --allowed-hosts); on Kubernetes leave "
        "MLFLOW_TRACKING_URI unset and the driver connects by itself"]


def test_a_sweep_survives_a_server_restart_with_nothing_exported(own_stack, tmp_path):
    config = backend_config_for(own_stack.namespace, tmp_path)
    experiment = f"connect-sweep-{time.time_ns()}"
    env = {key: value for key, value in own_stack.env.items()
           if key not in ("MLFLOW_TRACKING_URI", "KUBE_MLFLOW_TRACKING_URI")}
    driver = subprocess.Popen(
        [str(BIN_DIR / "python"), str(PROJECT_DIR / "driver.py"), "--backend", "kubernetes",
         "--backend-config", str(config), "--no-build", "--poll-seconds", "2",
         "--experiment", experiment, "--grid", "convolutions=0,1", *TINY],
        cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        restarted = restart_server_once_a_trial_runs(own_stack, driver)
        output, _ = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
        own_stack.kubectl("delete", "jobs", "-l", "app.kubernetes.io/component=training",
                          "--wait=true", "--timeout=120s", check=False, timeout=150)
    assert restarted, "no trial ran before the driver ended"
    assert driver.returncode == 0, output[-5000:]
    assert "reached at http://127.0.0.1:" in output
    assert in_cluster_tracking_uri(own_stack.namespace) in output
    with connect_to_tracking_server(own_stack.namespace) as connection:
        client = MlflowClient(connection.uri)
        (parent,), children = sweep_runs(client, experiment)
        assert {child.info.status for child in children} == {"FINISHED"}
        assert len(children) == 2


def backend_config_for(namespace: str, directory):
    """kubernetes_config.json and job_template.yaml with the Jobs in `namespace`."""
    template = (PROJECT_DIR / "job_template.yaml").read_text()
    assert "  namespace: celeb-smile\n" in template
    job_template = directory / "job_template.yaml"
    job_template.write_text(template.replace("  namespace: celeb-smile\n",
                                             f"  namespace: {namespace}\n"))
    config = json.loads((PROJECT_DIR / "kubernetes_config.json").read_text())
    config["kube-job-template-path"] = str(job_template)
    path = directory / "kubernetes_config.json"
    path.write_text(json.dumps(config))
    return path


def restart_server_once_a_trial_runs(stack, driver, timeout=600) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        phases = stack.kubectl("get", "pods", "-l", "app.kubernetes.io/component=training",
                               "-o", "jsonpath={.items[*].status.phase}").stdout.split()
        if "Running" in phases:
            time.sleep(5)  # into training: it is reporting metrics
            stack.kubectl("delete", "pods", "-l", SERVER_SELECTOR, "--wait=false")
            return True
        time.sleep(2)
    return False
