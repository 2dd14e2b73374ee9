"""Calls to the tracking server and the Kubernetes API that survive blips and outages.

Every call is bounded by its own timeout (set where the client is made); this module repeats a
failed call with exponential backoff until it succeeds, the patience runs out, or the sweep is
interrupted — so the driver answers Ctrl-C within one call's timeout, whatever it waits on.
"""

import threading
import time

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 15.0


class Unavailable(RuntimeError):
    """A call kept failing for longer than its patience (or the sweep was interrupted)."""


def backoff_delays(first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S):
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


def retrying(call, *, what: str, patience_s: float, stop: threading.Event,
             transient=lambda error: True, on_retry=None):
    """`call()` until it succeeds; transient errors are retried with backoff for `patience_s`
    seconds (0: one attempt), others are raised at once. Raises Unavailable when out of
    patience or when `stop` is set while waiting."""
    deadline = time.monotonic() + patience_s
    for delay in backoff_delays():
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - classified by `transient`
            if not transient(error):
                raise
            last = error
        if time.monotonic() + delay > deadline or stop.is_set():
            raise Unavailable(f"{what}: {_one_line(last)}") from last
        if on_retry is not None:
            on_retry(what, last, delay)
        if stop.wait(delay):
            raise Unavailable(f"{what}: interrupted while retrying ({_one_line(last)})") from last


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
