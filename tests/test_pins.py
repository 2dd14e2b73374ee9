"""celeb_smile/pins.py and the locks it writes: each image installs a lock in which every package
has hashes and every pin of pyproject.toml appears at its version."""

import re

import pytest

from celeb_smile import pins
from tests.conftest import PROJECT_DIR

REQUIREMENT = re.compile(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;\\]+)")
DOCKERFILES = {"train": "Dockerfile", "controller": "k8s/controller/Dockerfile",
               "server": "k8s/server/Dockerfile"}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """{package: (version, its hashes)} of a `pip --require-hashes` requirements file."""
    packages, current = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("--hash="):
            assert current, f"a hash before any requirement: {line}"
            packages[current][1].append(stripped.removeprefix("--hash=").rstrip(" \\"))
            continue
        match = REQUIREMENT.match(stripped)
        assert match, f"not a pinned requirement: {line}"
        current = _normalized(match.group(1))
        assert current not in packages, f"{current} twice"
        packages[current] = (match.group(3), [])
    return packages


@pytest.mark.parametrize("image", sorted(pins.IMAGES))
def test_every_locked_package_has_hashes(image):
    locked = parse_lock(pins.lock_path(image).read_text())
    assert len(locked) > 10  # indirect dependencies too
    unhashed = [name for name, (_, hashes) in locked.items() if not hashes]
    assert unhashed == []
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h)
               for _, hashes in locked.values() for h in hashes)


@pytest.mark.parametrize("image", sorted(pins.IMAGES))
def test_the_lock_holds_each_pin_of_pyproject_at_its_version(image):
    locked = parse_lock(pins.lock_path(image).read_text())
    for requirement in pins.pins(PROJECT_DIR / "pyproject.toml", pins.IMAGES[image]):
        match = REQUIREMENT.match(requirement)
        name, version = _normalized(match.group(1)), match.group(3)
        assert locked.get(name, ("missing",))[0] == version, \
            f"{image}.lock: {name} is not {version}; run `{pins.LOCK_COMMAND}`"


@pytest.mark.parametrize("image", sorted(pins.IMAGES))
def test_each_image_installs_its_lock_requiring_hashes(image):
    dockerfile = (PROJECT_DIR / DOCKERFILES[image]).read_text()
    assert f"COPY requirements/{image}.lock " in dockerfile
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs and all("--require-hashes" in line for line in installs)
    assert "!requirements/*.lock" in (PROJECT_DIR / ".dockerignore").read_text().splitlines()


def test_the_lock_check_sees_a_changed_pin_and_a_missing_hash():
    text = pins.lock_path("server").read_text()
    mlflow_line = next(line for line in text.splitlines() if line.startswith("mlflow=="))
    locked = parse_lock(text.replace(mlflow_line, mlflow_line.replace("==", "==0.0.0+")))
    assert not locked["mlflow"][0].startswith("3.")
    with pytest.raises(AssertionError, match="not a pinned requirement"):
        parse_lock("requests>=2\n")
    assert parse_lock("requests==2.0\n") == {"requests": ("2.0", [])}
