"""The project's shell scripts (scripts/*.sh) parse and pass shellcheck.
scripts/kind-cluster.sh (`make cluster`) cannot run here (no kind node images, no Docker Hub):
it is also checked against the steps of kind's current local-registry recipe."""

import shutil
import subprocess

import pytest

from tests.conftest import PROJECT_DIR
from tests.helpers.requirements import missing

SCRIPTS = sorted(PROJECT_DIR.glob("scripts/*.sh"))
KIND_SCRIPT = PROJECT_DIR / "scripts" / "kind-cluster.sh"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_the_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_shellcheck_finds_nothing(script):
    if shutil.which("shellcheck") is None:
        missing("shellcheck is not installed (Debian package `shellcheck`)")
    result = subprocess.run(["shellcheck", "--severity=style", "--external-sources",
                             str(script)], capture_output=True, text=True, cwd=script.parent)
    assert result.returncode == 0, result.stdout


def test_the_kind_script_follows_kinds_current_registry_recipe():
    text = KIND_SCRIPT.read_text()
    assert 'config_path = "/etc/containerd/certs.d"' in text  # not containerd 1's registry.mirrors
    assert "hosts.toml" in text
    assert '.registry.mirrors."' not in text
    assert "docker network connect kind" in text
    assert "local-registry-hosting" in text
