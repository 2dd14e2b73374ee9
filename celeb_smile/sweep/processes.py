"""Is a process there? (local trials' process groups, a lease holder's driver)."""

import os


def alive(pid: int, group: bool = False) -> bool:
    """Whether process `pid` (or process group `pid`) exists; one we may not signal is."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
