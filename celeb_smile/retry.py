"""Calls to the tracking server and the Kubernetes API that survive blips and outages.

Every call is bounded by its own timeout (set where the client is made); this module repeats a
failed call with exponential backoff until it succeeds, the patience runs out, or the sweep is
interrupted — so the driver answers Ctrl-C within one call's timeout, whatever it waits on.
A training process rides out a tracking-server outage the same way (`patiently`).
"""

import os
import re
import sys
import threading
import time

from mlflow.exceptions import MlflowException, RestException

from celeb_smile.constants import OUTAGE_PATIENCE_S

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 15.0


class Unavailable(RuntimeError):
    """A call kept failing for longer than its patience (or the sweep was interrupted)."""


class Refused(RuntimeError):
    """The tracking server refused a training process's credentials (401) or permission (403):
    waiting changes nothing. The message is one line naming what is missing."""


REFUSED_STATUSES = (401, 403)
# MLflow's error for an answer that is not its JSON (its auth app's plain-text 403 is one).
PLAIN_ERROR_STATUS = re.compile(r"failed with error code (\d{3})")
# The server's rules (k8s/server/trial_rules.py) say why in their 403: "Permission denied: WHY".
REFUSAL_REASON = re.compile(r"Permission denied: (.+?)'?$")  # MLflow quotes the body: '...'


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


def tracking_transient(error: BaseException) -> bool:
    """Worth retrying: the server or the network, not a request MLflow refused. MLflow refuses
    with a JSON error (RestException); anything else — a connection error, MLflow's retries
    running out, a 5xx, or an answer that is not MLflow's at all (a proxy's or gateway's empty
    404 while the server restarts) — passes."""
    if isinstance(error, RestException):
        code = error.get_http_status_code()
        return code >= 500 or code == 429
    if isinstance(error, MlflowException) or refusal_status(error) is not None:
        return refusal_status(error) is None
    return isinstance(error, (OSError, ConnectionError, TimeoutError)) or \
        type(error).__module__.startswith(("requests", "urllib3"))


def refusal_status(error: BaseException) -> int | None:
    """401 or 403 when `error` is the tracking server refusing the request's credentials or
    permission, as MLflow's JSON error or as its auth app's plain text; else None."""
    if isinstance(error, RestException):
        code = error.get_http_status_code()
    elif isinstance(error, MlflowException):
        found = PLAIN_ERROR_STATUS.search(error.message)
        code = int(found[1]) if found else None
    else:  # an artifact upload's requests.HTTPError
        code = getattr(getattr(error, "response", None), "status_code", None)
    return code if code in REFUSED_STATUSES else None


def patiently(what: str, call, patience_s: float = OUTAGE_PATIENCE_S):
    """A training process's call to the tracking server, retried through an outage of
    `patience_s` (each retry said on stderr, so the trial's log shows it); a refusal raises
    Refused at once."""
    def say(what, error, delay):
        print(f"tracking server unavailable ({what}: {_one_line(error)}); retrying in "
              f"{delay:.0f}s", file=sys.stderr, flush=True)
        _drop_pooled_connections()
    try:
        return retrying(call, what=what, patience_s=patience_s, stop=threading.Event(),
                        transient=tracking_transient, on_retry=say)
    except Exception as error:
        status = refusal_status(error)
        if status is None:
            raise
        raise Refused(refusal_message(what, status, refusal_reason(error))) from None


def refusal_reason(error: BaseException) -> str:
    """What the server's rules said was missing ('' when it said only "Permission denied")."""
    response = getattr(error, "response", None)
    text = error.message if isinstance(error, MlflowException) else \
        getattr(response, "text", "") or ""
    found = REFUSAL_REASON.search(text.strip().splitlines()[-1] if text.strip() else "")
    return found[1].strip() if found else ""


def refusal_message(what: str, status: int, reason: str = "") -> str:
    from mlflow.utils.credentials import read_mlflow_creds

    # MLflow's own lookup: the environment, else ~/.mlflow/credentials (a trial pod's file).
    user = read_mlflow_creds().username or "(no user)"
    if status == 401:
        return (f"the tracking server does not accept user {user!r}'s credentials (401) "
                f"to {what}: check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                f"(or ~/.mlflow/credentials)")
    if reason:
        return f"user {user!r} may not {what} (403 Permission denied: {reason})"
    experiment = os.environ.get("MLFLOW_EXPERIMENT_ID", "?")
    return (f"user {user!r} may not {what} (403 Permission denied): it needs EDIT on "
            f"experiment {experiment}")


def _drop_pooled_connections() -> None:
    """The next attempt opens a new connection. One that met the server away may stay bound to
    whatever answered instead (a gateway, or a Service without endpoints whose traffic went
    elsewhere) and keep answering the same way after the server is back."""
    from mlflow.utils import request_utils

    cached = getattr(request_utils, "_cached_get_request_session", None)  # MLflow's pool
    if cached is not None:
        cached.cache_clear()
