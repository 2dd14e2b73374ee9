"""driver.py refuses, in one line and before creating anything, what cannot work."""

import pytest

from celeb_smile.sweep.cli import main as driver_main
from tests.conftest import PROJECT_DIR

TPE_FILE = str(PROJECT_DIR / "sweeps" / "tpe-asha.yaml")
MEDIAN_FILE = str(PROJECT_DIR / "sweeps" / "median-stop.yaml")  # judges the objective


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # whatever happens, no cluster
    return tmp_path


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--grid", "convolutions=1,-2"], "error: convolutions must be 0 or more, got -2"),
    (["--param", "epochs"], "error: expected NAME=VALUE, got 'epochs'"),
    (["--sweep", "missing.yaml"], "error: cannot read sweep file missing.yaml"),
    (["--objective", "val_acc"], "error: objective 'val_acc' is not a metric training logs"),
    (["--search", "tpe"], "error: a tpe search needs max_trials"),
    (["--sweep", MEDIAN_FILE, "--objective", "test_loss"],
     "error: early stopping needs a metric logged every epoch"),
    (["--sweep", TPE_FILE, "--budget-minutes", "0"], "error: budget.wall_minutes must be positive"),
    (["--param", "learning_rate=1e-3x"], "error: learning_rate must be float"),
])
def test_bad_sweeps_exit_2_without_creating_a_store(in_tmp, capsys, argv, message):
    assert driver_main(argv) == 2
    assert error_line(capsys).startswith(message)
    assert list(in_tmp.iterdir()) == []


def test_kubernetes_without_a_tracking_uri_connects_through_the_kubernetes_api(in_tmp, capsys,
                                                                              monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert driver_main(["--backend", "kubernetes", "--no-build"]) == 2
    assert error_line(capsys).startswith("error: no Kubernetes credentials")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp}/mlflow.db")
    assert driver_main(["--backend", "kubernetes"]) == 2
    assert "pods cannot reach" in error_line(capsys)


def test_unreachable_tracking_server_fails_in_one_line(in_tmp, capsys, monkeypatch):
    # Port 1 (tcpmux): nothing listens there, unlike a "free" port another test may take next.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert driver_main(["--backend", "kubernetes", "--no-build"]) == 2
    assert "does not answer" in error_line(capsys)


def test_missing_backend_config_is_reported(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert driver_main(["--backend", "kubernetes", "--backend-config", "nope.json"]) == 2
    assert error_line(capsys).startswith("error: cannot read backend config nope.json")


def test_a_deploys_backend_config_sends_jobs_to_its_sweeps_namespace_and_finds_its_server(
        tmp_path, monkeypatch):
    """The tracking server is in the deployment's tracking namespace, the Jobs in its sweeps
    namespace: the driver takes both from `make deploy`'s backend config."""
    import argparse

    from celeb_smile import deploy
    from celeb_smile.sweep.cli import _Cluster

    monkeypatch.delenv("KUBE_MLFLOW_TRACKING_URI", raising=False)
    overlay = deploy.render("team-a", directory=tmp_path)
    args = argparse.Namespace(backend_config=str(overlay.backend_config),
                              cluster_tracking_uri=None)
    cluster = _Cluster(args)
    assert (cluster.namespace, cluster.tracking_namespace) == ("team-a-sweeps", "team-a")
    assert cluster.tracking_uri == "http://mlflow.team-a.svc.cluster.local:5000"
    shipped = _Cluster(argparse.Namespace(backend_config=None, cluster_tracking_uri=None))
    assert (shipped.namespace, shipped.tracking_namespace) == ("celeb-smile-sweeps",
                                                               "celeb-smile")
