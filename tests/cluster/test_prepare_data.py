"""`make data` (k8s/data/prepare-celeba-job.yaml running celeb_smile.prepare_data) on a real
cluster, in a namespace of this module's own. Here CelebA's download host is out of reach, so
the Job must fail at once with one clear line; where it can be downloaded this test skips (and
fails under CI=true, where every test must run)."""

import re
import secrets
import socket
import subprocess

import pytest

from celeb_smile import deploy
from tests.cluster.conftest import kubectl, make
from tests.conftest import PROJECT_DIR
from tests.helpers.requirements import missing

pytestmark = pytest.mark.cluster
DOWNLOAD_HOST = "drive.google.com"  # where tensorflow-datasets fetches CelebA from


def reachable(host: str) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture
def data_namespace(kube_env):
    """A deployment's name whose sweeps namespace (where `make data` runs the Job) has what the
    Job needs: the tfds-data volume and the trainer's account."""
    deployment = f"connect-data-{secrets.token_hex(3)}"
    namespace = deploy.sweeps_namespace(deployment)
    kubectl(kube_env, "create", "namespace", namespace)
    try:
        kubectl(kube_env, "-n", namespace, "apply",
                "-f", str(PROJECT_DIR / "k8s/sweeps/tfds-pvc.yaml"),
                "-f", str(PROJECT_DIR / "k8s/sweeps/training-serviceaccount.yaml"))
        yield deployment
    finally:
        kubectl(kube_env, "delete", "namespace", namespace, "--wait=true", "--timeout=300s",
                check=False, timeout=330)


def test_make_data_fails_in_one_line_where_celeba_cannot_be_downloaded(kube_env, data_namespace):
    if reachable(DOWNLOAD_HOST):
        missing(f"{DOWNLOAD_HOST} is reachable: `make data` would download CelebA (1.4 GB), "
                "so its one-line failure cannot be tested here")
    make(kube_env, "images", timeout=1800)  # the training image carries celeb_smile.prepare_data
    result = subprocess.run(["make", "data", f"NAMESPACE={data_namespace}"], cwd=PROJECT_DIR,
                            env=kube_env, capture_output=True, text=True, timeout=900)
    assert result.returncode != 0, result.stdout
    # make's own "make: *** ... Error 1" (make[1]: when `make test` runs this) is not ours.
    error_lines = [line for line in result.stderr.splitlines()
                   if not re.match(r"make(\[\d+\])?: ", line)]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith(f"error: celeb_a cannot be downloaded here ({DOWNLOAD_HOST}: ")
    assert error_lines[0].endswith("; prepare it where it can be (`tfds build celeb_a --data_dir "
                                   "DIR`) and copy DIR into the tfds-data volume")
    job = kubectl(kube_env, "-n", deploy.sweeps_namespace(data_namespace), "get", "job",
                  "prepare-celeba",
                  "-o", "jsonpath={.status.failed}")
    assert job.stdout == "1"
