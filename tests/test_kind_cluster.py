"""scripts/kind-cluster.sh (`make cluster`) cannot run here (no kind node images, no Docker
Hub): it is checked statically, and against the steps of kind's local-registry recipe."""

import shutil
import subprocess

import pytest

from tests.conftest import IN_CI, PROJECT_DIR

SCRIPT = PROJECT_DIR / "scripts" / "kind-cluster.sh"


def test_the_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shellcheck_finds_nothing():
    if shutil.which("shellcheck") is None:
        message = "shellcheck is not installed (Debian package `shellcheck`)"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    result = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_script_follows_kinds_current_registry_recipe():
    text = SCRIPT.read_text()
    assert 'config_path = "/etc/containerd/certs.d"' in text
    assert "hosts.toml" in text
    assert "registry.mirrors" not in text.replace("`registry.mirrors`", "")  # containerd 2 removed it
    assert "docker network connect kind" in text
    assert "local-registry-hosting" in text
