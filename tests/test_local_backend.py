"""The local backend's processes: an exit is reported as it happens, and the poll still
reads its exit code."""

import subprocess
import sys
import threading

from celeb_smile.constants import TrialState
from celeb_smile.sweep.backends.local import LocalBackend, LocalTrial


def exiting_process(code: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import sys, time; time.sleep(0.2); "
                                                   f"sys.exit({code})"])


def test_a_process_exit_is_reported_and_its_exit_code_still_observed(tmp_path):
    backend = LocalBackend(tmp_path)
    ended = threading.Semaphore(0)
    backend.on_end = ended.release
    finished, failed = exiting_process(0), exiting_process(3)
    for process in (finished, failed):
        backend.report_exit(process)
    assert ended.acquire(timeout=60) and ended.acquire(timeout=60)  # hang guards
    observed = [backend._observe(LocalTrial("run", p.pid, tmp_path / "none.log", p))
                for p in (finished, failed)]
    assert [(o.state, o.exit_code) for o in observed] == \
        [(TrialState.FINISHED, 0), (TrialState.FAILED, 3)]
    assert observed[1].reason == "exit code 3"
