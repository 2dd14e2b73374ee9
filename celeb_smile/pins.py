"""Print pyproject.toml's pinned requirements, one a line, for `pip install -r` in the images.

    python pins.py pyproject.toml           # the training image: [project] dependencies
    python pins.py pyproject.toml server    # the tracking server: the `server` extra

Standard library only: it runs before anything is installed.
"""

import sys
import tomllib


def pins(pyproject_path: str, extra: str | None = None) -> list[str]:
    with open(pyproject_path, "rb") as handle:
        project = tomllib.load(handle)["project"]
    return project["optional-dependencies"][extra] if extra else project["dependencies"]


if __name__ == "__main__":
    print("\n".join(pins(*sys.argv[1:3])))
