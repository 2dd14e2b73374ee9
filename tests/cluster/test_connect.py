"""The driver's own connection to the in-cluster tracking server (celeb_smile.sweep.connect) on a
real cluster, in the tests' own namespace (cluster_stack): it follows the server's pod across a
restart at the same local address (as a sweep user: the shipped Role's port-forward), `make ui`
serves the UI through it, a sweep survives a
server restart mid-way with nothing exported by hand, and the Service's ClusterIP is refused in
one line. Tests that restart the server reconnect the session's kubectl port-forward after."""

import signal
import subprocess
import time
import urllib.request

import pytest
from mlflow import MlflowClient

from celeb_smile.constants import EPOCH_METRICS
from celeb_smile.sweep.connect import connect_to_tracking_server, in_cluster_tracking_uri
from tests.conftest import BIN_DIR, PROJECT_DIR
from tests.helpers.sweeps import sweep_runs, trial_log_tails

pytestmark = pytest.mark.cluster
SERVER_SELECTOR = "app.kubernetes.io/component=mlflow"
TINY = ["--param", "epochs=3", "--param", "training_samples=64",
        "--param", "validation_samples=32", "--param", "batch_size=16"]


@pytest.fixture
def own_stack(cluster_stack):
    """The session's stack; its kubectl port-forward (which dies with the server's pod) is
    restarted afterwards for the tests that use it."""
    yield cluster_stack
    if cluster_stack.port_forward.process is None or \
            cluster_stack.port_forward.process.poll() is not None or not _answers(cluster_stack):
        cluster_stack.reconnect()


def _answers(stack) -> bool:
    try:
        with urllib.request.urlopen(f"{stack.tracking_uri}/health", timeout=5):
            return True
    except OSError:
        return False


def server_pods(stack) -> list[str]:
    return stack.tracking_kubectl("get", "pods", "-l", SERVER_SELECTOR, "-o", "name").stdout.split()


def test_the_connection_follows_a_restarted_server_pod_at_the_same_address(own_stack):
    with connect_to_tracking_server(own_stack.tracking_namespace) as connection:
        uri, first_pod = connection.uri, connection.forwarder.current.pod
        client = MlflowClient(uri)
        experiment_id = client.create_experiment(f"restart-{time.time_ns()}")
        own_stack.tracking_kubectl("delete", "pod", first_pod, "--wait=true", "--timeout=120s")
        # The old pod is gone, the new one may not be Ready yet: MLflow's own retries carry the
        # call over; nothing is reopened by hand.
        run = client.create_run(experiment_id)
        assert connection.uri == uri
        assert connection.forwarder.current.pod != first_pod
        assert f"pod/{first_pod}" not in server_pods(own_stack)
        assert client.get_run(run.info.run_id).info.experiment_id == experiment_id


def _ctrl_c_as_at_a_terminal() -> None:
    """SIGINT back to its default in the child: a test run started in the background (no job
    control) ignores SIGINT, the child would inherit that, and Python then never raises
    KeyboardInterrupt (seen: the script waited on, 180 s after the signal)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_make_ui_serves_the_mlflow_ui_until_interrupted(own_stack, tmp_path):
    # Its stderr goes to a file (a pipe nobody reads could fill and stall it); if it does not
    # exit, SIGABRT makes Python's faulthandler write every thread's stack there, for the report.
    errors = tmp_path / "stderr"
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [str(BIN_DIR / "python"), str(PROJECT_DIR / "scripts" / "tracking.py"),
             "--namespace", own_stack.tracking_namespace, "--port", "0"],
            env={**own_stack.sweep_user_env, "PYTHONFAULTHANDLER": "1"},
            stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=_ctrl_c_as_at_a_terminal)
    try:
        first_line = process.stdout.readline()
        assert first_line.startswith(f"MLflow UI of {own_stack.tracking_namespace}/mlflow: http://127.0.0.1:"), \
            first_line + errors.read_text()
        uri = first_line.split(": ", 1)[1].split()[0]
        credentials = f"{own_stack.env['MLFLOW_TRACKING_USERNAME']}:" \
                      f"{own_stack.env['MLFLOW_TRACKING_PASSWORD']}"
        page = subprocess.run(["curl", "-sf", "-u", credentials, f"{uri}/"], capture_output=True,
                              text=True, timeout=60)
        assert page.returncode == 0 and "<title>MLflow</title>" in page.stdout, page.stdout[:500]
        process.send_signal(signal.SIGINT)
        try:
            exit_code = process.wait(timeout=180)  # a hang guard: it exits, and cleanly
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=30)
            raise AssertionError("no exit 180 s after SIGINT; its threads:\n"
                                 + errors.read_text()[-8000:]) from None
        assert exit_code == 0, errors.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_command_runs_with_both_tracking_addresses_set(own_stack):
    probe = ("import os, sys, urllib.request\n"
             "urllib.request.urlopen(os.environ['MLFLOW_TRACKING_URI'] + '/health', timeout=30)\n"
             "print(os.environ['KUBE_MLFLOW_TRACKING_URI'])\n"
             "sys.exit(3)\n")
    result = subprocess.run(
        [str(BIN_DIR / "python"), str(PROJECT_DIR / "scripts" / "tracking.py"),
         "--namespace", own_stack.tracking_namespace, "--port", "0", "--",
         str(BIN_DIR / "python"), "-c", probe], env=own_stack.sweep_user_env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 3, result.stderr  # the command's own exit code
    assert result.stdout.strip() == in_cluster_tracking_uri(own_stack.tracking_namespace)


def test_the_services_clusterip_is_refused_in_one_line(own_stack):
    cluster_ip = own_stack.tracking_kubectl("get", "service", "mlflow",
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


def test_a_sweep_survives_a_server_restart_with_nothing_exported(own_stack):
    config = own_stack.backend_config  # this namespace's job template: the driver derives the rest
    experiment = f"connect-sweep-{time.time_ns()}"
    env = {key: value for key, value in own_stack.sweep_user_env.items()
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
    assert "reached at http://127.0.0.1:" in output
    assert in_cluster_tracking_uri(own_stack.tracking_namespace) in output
    with connect_to_tracking_server(own_stack.tracking_namespace) as connection:
        client = MlflowClient(connection.uri)
        assert driver.returncode == 0, output[-5000:] + trial_log_tails(client, experiment)
        tagged, children = sweep_runs(client, experiment)
        parents = [run for run in tagged if "mlflow.parentRunId" not in run.data.tags]
        assert len(parents) == 1, [run.data.tags for run in tagged]
        assert {child.info.status for child in children} == {"FINISHED"}
        assert len(children) == 2
        for child in children:  # nothing lost, nothing twice: one point per epoch
            for metric in EPOCH_METRICS:
                steps = [m.step for m in client.get_metric_history(child.info.run_id, metric)]
                assert sorted(steps) == [0, 1, 2], (metric, steps)


def restart_server_once_a_trial_runs(stack, driver, timeout=600) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        phases = stack.kubectl("get", "pods", "-l", "app.kubernetes.io/component=training",
                               "-o", "jsonpath={.items[*].status.phase}").stdout.split()
        if "Running" in phases:
            time.sleep(5)  # into training: it is reporting metrics
            stack.tracking_kubectl("delete", "pods", "-l", SERVER_SELECTOR, "--wait=false")
            return True
        time.sleep(2)
    return False
