"""Where trials run: local processes (`local`) or Kubernetes Jobs (`kubernetes`).

The controller creates each trial's MLflow run itself (parameters normalised, tags that say how
to find the trial again), then asks a backend to launch it. A backend answers for all the
trials in flight at once (`observe`: one listing per poll, whatever their number), adopts the
trials of a driver that died (`adopt`, from the run's tags), cancels, and hands over logs.
A backend that learns of a trial's end as it happens (a local process exits, a simulated trial
logs its last epoch) calls `on_end()`, which the controller sets, from any thread: the
controller then polls at once rather than at its next interval. The Kubernetes backend does
not: its ends are seen by the poll's listing.
"""

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from celeb_smile.constants import TrialState
from celeb_smile.sweep.spec import ENTRY_POINT, PROJECT_DIR, project

# What a trial runs: hashed into the code version that resume matches runs by.
CODE_FILES = ("MLproject", "train.py", "Dockerfile", "pyproject.toml")
CODE_DIRS = ("celeb_smile",)
EXCLUDED_DIRS = ("celeb_smile/sweep",)  # the driver's own code does not change what trains


@dataclass
class Observation:
    """What a backend sees of one trial: its state and why (reason for FAILED, or what a
    SCHEDULED trial waits for, e.g. an unschedulable pod).

    `disrupted`: the trial's pod or process was lost to something other than its own failure
    (evicted, preempted, its node lost, deleted, terminated by SIGTERM): it is to go on from
    its last checkpoint, in a new Job or process for the same run (`relaunch`) or in the pod
    its Job starts by itself. `queued`: waiting in a queue (a suspended Job, e.g. Kueue's),
    which is not a pending pod."""

    state: TrialState
    reason: str = ""
    exit_code: int | None = None
    disrupted: str = ""
    relaunch: bool = False
    queued: bool = False


class PreparationError(RuntimeError):
    """The backend cannot start trials (no cluster access, the image does not build...)."""


class LaunchError(RuntimeError):
    """A launch that will not work however often it is retried (e.g. a rejected Job spec)."""


def code_version(root: Path = PROJECT_DIR) -> str:
    """A short hash of the files that decide what a trial computes (not the driver)."""
    digest = hashlib.sha256()
    paths = [root / name for name in CODE_FILES]
    for directory in CODE_DIRS:
        paths += sorted(p for p in (root / directory).rglob("*.py")
                        if not any(p.is_relative_to(root / x) for x in EXCLUDED_DIRS))
    for path in paths:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def entry_point_argv(params: dict[str, str]) -> list[str]:
    """MLproject's main command for `params`, as an argv (no shell, no re-quoting)."""
    import shlex

    entry_point = project().get_entry_point(ENTRY_POINT)
    return shlex.split(entry_point.compute_command(params, storage_dir=None))


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_docker(*args: str) -> str:
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise PreparationError("docker is not installed (needed to build the training image; "
                               "or pass --no-build)") from None
    if result.returncode != 0:
        raise PreparationError(f"docker {args[0]} failed: {tail(result.stderr or result.stdout, 5)}")
    return result.stdout
