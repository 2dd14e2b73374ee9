"""The training image: built from the Dockerfile, non-root, and `mlflow run .` in its
docker environment against a real tracking server."""

import shutil
import subprocess

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from celeb_smile import IMAGE_SHAPE
from tests.conftest import BIN_DIR, PROJECT_DIR
from tests.helpers.requirements import missing

pytestmark = pytest.mark.docker
IMAGE = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())["docker_env"]["image"]


@pytest.fixture(scope="module")
def training_image():
    info = subprocess.run(["docker", "info"], capture_output=True) if shutil.which("docker") else None
    if info is None or info.returncode != 0:
        missing("NO DOCKER ENGINE: docker tests skipped (start dockerd; see README)")
    build = subprocess.run(["docker", "build", "-q", "-t", IMAGE, str(PROJECT_DIR)],
                           capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stderr[-3000:]
    return IMAGE


def test_image_runs_as_non_root_with_the_project_inside(training_image):
    result = subprocess.run(["docker", "run", "--rm", training_image, "sh", "-c",
                             "id -u && ls MLproject train.py celeb_smile/__init__.py"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "10001"


def test_mlflow_run_in_the_docker_environment(training_image, mlflow_server, small_params):
    argv = [str(BIN_DIR / "mlflow"), "run", str(PROJECT_DIR), "--experiment-name", "docker-run",
            "-A", "network=host"]
    for name, value in small_params.items():
        argv += ["-P", f"{name}={value}"]
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "PATH": f"{BIN_DIR}:/usr/bin:/bin"}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("docker-run").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "docker"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
    mlflow.set_tracking_uri(mlflow_server)  # the model logged from inside the image loads here
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.signature.inputs.inputs[0].shape == (-1, *IMAGE_SHAPE)
