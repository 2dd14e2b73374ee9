"""pyproject.toml's pinned requirements per image, and the hashed locks the images install.

    python pins.py pyproject.toml           # the training image: [project] dependencies
    python pins.py pyproject.toml server    # the tracking server: the `server` extra
    python celeb_smile/pins.py --lock       # rewrite requirements/*.lock (needs uv)

Each image installs its lock with `pip install --require-hashes --no-deps`: every package,
indirect ones included, at one version with the hashes of its published files, so a rebuild
installs the same bytes. A lock is compiled from that image's pins for CPython 3.11 on
x86_64 Linux (the images' python:3.11-slim); after changing a pin, run --lock and commit the
locks (tests/test_pins.py fails while a lock and pyproject.toml disagree).
Standard library only: it runs before anything is installed.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
LOCK_DIR = PROJECT_DIR / "requirements"
# Image -> the pyproject.toml list it installs (None: [project] dependencies).
IMAGES = {"train": None, "controller": "controller", "server": "server"}
LOCK_COMMAND = "python celeb_smile/pins.py --lock"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"


def pins(pyproject_path: str, extra: str | None = None) -> list[str]:
    with open(pyproject_path, "rb") as handle:
        project = tomllib.load(handle)["project"]
    return project["optional-dependencies"][extra] if extra else project["dependencies"]


def lock_path(image: str) -> Path:
    return LOCK_DIR / f"{image}.lock"


def write_locks(uv: str = "uv") -> None:
    """Compile every image's lock from its pins, with hashes, from PyPI."""
    LOCK_DIR.mkdir(exist_ok=True)
    for image, extra in IMAGES.items():
        requirements = "\n".join(pins(PROJECT_DIR / "pyproject.toml", extra)) + "\n"
        subprocess.run(
            [uv, "pip", "compile", "-", "--output-file", str(lock_path(image)), "--quiet",
             "--no-config", "--index-url", "https://pypi.org/simple", "--generate-hashes",
             "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
             "--annotation-style", "line", "--custom-compile-command", LOCK_COMMAND],
            input=requirements, text=True, check=True, cwd=PROJECT_DIR)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--lock"]:
        write_locks(*sys.argv[2:3])
    else:
        print("\n".join(pins(*sys.argv[1:3])))
