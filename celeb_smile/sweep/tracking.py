"""The driver's access to the tracking server: every call retried with backoff, bounded by a
timeout, and cheap per poll (one query for all the runs in flight)."""

import collections
import json
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import RestException

from celeb_smile.constants import LEASE_TAG, SUBMISSION_TAG, SWEEP_ID_TAG
from celeb_smile.retry import Unavailable, retrying, tracking_transient
from celeb_smile.sweep.processes import alive

# The driver's own MLflow client: each HTTP call gives up after this long, and is not retried
# by MLflow (this module retries, with backoff and an eye on Ctrl-C). Set before any request.
DRIVER_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
PAGE = 1000  # runs per search page
LEASE_SECONDS = 90  # a driver that stops renewing its lease for this long is presumed dead
LEASE_SETTLE_S = 0.5  # a lease is read back this long after it is written
QUICK_PATIENCE_S = 20  # reads for progress only: give up soon, the next poll tries again


def configure_driver_http() -> None:
    for name, value in DRIVER_HTTP_ENV.items():
        os.environ.setdefault(name, value)


@dataclass
class RunSnapshot:
    run_id: str
    status: str
    metrics: dict[str, float]
    steps: dict[str, int]  # latest step per metric
    tags: dict[str, str]
    params: dict[str, str]


class Tracking:
    def __init__(self, tracking_uri: str, stop: threading.Event, outage_seconds: float = 300.0,
                 on_retry=None):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.stop = stop
        self.outage_seconds = outage_seconds
        self.on_retry = on_retry
        self._calls: collections.Counter = collections.Counter()  # requests, per thread
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Whether another host holding a lease is still there (e.g. a controller's earlier
        # pod); None: only its lease's expiry tells.
        self.host_alive = None

    @property
    def calls(self) -> int:
        """Requests this thread made (the sweep-overhead benchmark counts the polling loop's,
        not the recorder's)."""
        return self._calls[threading.get_ident()]

    # -- retry policy ---------------------------------------------------------------------
    def patient(self, what: str, call):
        """A write that must not be lost: retried through an outage of `outage_seconds`."""
        return self._retry(what, call, self.outage_seconds)

    def quick(self, what: str, call):
        return self._retry(what, call, QUICK_PATIENCE_S)

    def _retry(self, what, call, patience):
        def counted():
            self._calls[threading.get_ident()] += 1
            return call()
        return retrying(counted, what=what, patience_s=patience, stop=self.stop,
                        transient=tracking_transient, on_retry=self.on_retry)

    # -- experiment and parent run --------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        found = self.patient("read the experiment",
                             lambda: self.client.get_experiment_by_name(name))
        if found:
            return found.experiment_id
        return self.patient("create the experiment", lambda: self.client.create_experiment(name))

    def runs(self, experiment_id: str, filter_string: str) -> list:
        """Every matching run, page by page (no result cap)."""
        runs, token = [], None
        while True:
            page = self.patient("search runs", lambda: self.client.search_runs(
                [experiment_id], filter_string=filter_string, max_results=PAGE,
                page_token=token))
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def sweep_runs(self, experiment_id: str, sweep_id: str) -> tuple[object | None, list]:
        """(the sweep's parent run or None, its trial runs)."""
        runs = self.runs(experiment_id, f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}'")
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        parents.sort(key=lambda r: r.info.start_time)
        return (parents[0] if parents else None), \
            [r for r in runs if "mlflow.parentRunId" in r.data.tags]

    # -- the lease: one driver per sweep ----------------------------------------------------
    def lease_holder(self, run) -> str | None:
        """Another live driver holding this sweep's lease, or None."""
        holder, _, expiry = run.data.tags.get(LEASE_TAG, "").partition(" ")
        if not holder or holder == self.holder or not expiry or float(expiry) <= time.time():
            return None
        host, _, pid = holder.partition(":")
        pid = pid.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit() and not alive(int(pid)):
            return None  # its driver died on this machine: no need to wait for the expiry
        if host != socket.gethostname() and self.host_alive and not self.host_alive(host):
            return None  # e.g. a controller pod that is gone
        return holder

    def take_lease(self, run_id: str, meanwhile=None) -> str | None:
        """Write our lease, then read it back at least LEASE_SETTLE_S later (doing `meanwhile`
        in between): a driver that wrote in between wins."""
        self.renew_lease(run_id)
        settle_until = time.monotonic() + LEASE_SETTLE_S
        if meanwhile is not None:
            meanwhile()
        time.sleep(max(0.0, settle_until - time.monotonic()))
        run = self.patient("read the lease", lambda: self.client.get_run(run_id))
        return self.lease_holder(run)

    def renew_lease(self, run_id: str) -> None:
        value = f"{self.holder} {time.time() + LEASE_SECONDS:.0f}"
        self.patient("renew the lease", lambda: self.client.set_tag(run_id, LEASE_TAG, value))

    def release_lease(self, run_id: str) -> None:
        self.patient("release the lease",
                     lambda: self.client.set_tag(run_id, LEASE_TAG, f"{self.holder} 0"))

    # -- trial runs -------------------------------------------------------------------------
    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        """Create a run, exactly once even if a retried request had gone through: a token tag
        finds the run the lost response would have named."""
        token = uuid.uuid4().hex
        tags = {**tags, SUBMISSION_TAG: token}
        attempts = []

        def create():
            if attempts:
                found = self.client.search_runs(
                    [experiment_id], filter_string=f"tags.`{SUBMISSION_TAG}` = '{token}'")
                if found:
                    return found[0].info.run_id
            attempts.append(1)
            return self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

        return self.patient("create a run", create)

    def snapshots(self, experiment_id: str, run_ids: list[str]) -> dict[str, RunSnapshot]:
        """The latest metrics and status of `run_ids`: one query whatever their number."""
        if not run_ids:
            return {}
        listed = ", ".join(f"'{run_id}'" for run_id in run_ids)
        runs = self.quick("read the runs in flight", lambda: self.client.search_runs(
            [experiment_id], filter_string=f"attributes.run_id IN ({listed})",
            max_results=len(run_ids)))
        return {run.info.run_id: snapshot(run) for run in runs}

    def histories(self, run_ids: list[str], metric: str) -> dict[str, list[float]]:
        """Each run's `metric` per step (index = step): one request on a tracking server."""
        if not run_ids:
            return {}
        points = self.quick(f"read {metric} histories", lambda: self._bulk_history(run_ids,
                                                                                  metric))
        return {run_id: per_step(points.get(run_id, [])) for run_id in run_ids}

    def _bulk_history(self, run_ids, metric) -> dict[str, list]:
        store = self.client._tracking_client.store
        if not hasattr(store, "get_host_creds"):  # a local store: cheap per run
            return {r: store.get_metric_history(r, metric) for r in run_ids}
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
        response = http_request(store.get_host_creds(), endpoint, "GET",
                                params=[("run_id", r) for r in run_ids] +
                                [("metric_key", metric)])
        verify_rest_response(response, endpoint)
        points: dict[str, list] = {}
        for item in json.loads(response.text).get("metrics", []):
            points.setdefault(item["run_id"], []).append(
                Metric(metric, item.get("value", math.nan), item["timestamp"], item["step"]))
        return points

    def log_tags(self, run_id: str, tags: dict[str, str],
                 params: dict[str, str] | None = None) -> None:
        """Tags (and parameters) in one request; nothing to log, no request. A retry after a
        lost answer finds the parameters logged already: that is success, not a refusal."""
        if not tags and not params:
            return
        attempts = []

        def log():
            attempts.append(1)
            try:
                self.client.log_batch(
                    run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()],
                    params=[Param(k, v) for k, v in (params or {}).items()])
            except RestException:
                if len(attempts) == 1 or not params or not self._logged(run_id, params):
                    raise

        self.patient("log tags and parameters", log)

    def _logged(self, run_id: str, params: dict[str, str]) -> bool:
        logged = self.client.get_run(run_id).data.params
        return all(logged.get(name) == value for name, value in params.items())

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.patient(f"save {path}", lambda: self.client.log_text(run_id, text, path))

    def end_run(self, run_id: str, status: str) -> None:
        self.patient("end a run", lambda: self.client.set_terminated(run_id, status))

    def snapshot(self, run_id: str) -> RunSnapshot:
        return snapshot(self.patient("read a run", lambda: self.client.get_run(run_id)))


def snapshot(run) -> RunSnapshot:
    objects = run.data._metric_objs if hasattr(run.data, "_metric_objs") else []
    return RunSnapshot(run.info.run_id, run.info.status, dict(run.data.metrics),
                       {m.key: m.step for m in objects}, dict(run.data.tags),
                       dict(run.data.params))


def per_step(points) -> list[float]:
    """One value per step 0..n-1 (the last logged value of a step wins)."""
    by_step = {}
    for point in sorted(points, key=lambda m: (m.step, m.timestamp)):
        by_step[point.step] = point.value
    return [by_step[s] for s in sorted(by_step)]


__all__ = ["Tracking", "Unavailable", "RunSnapshot", "configure_driver_http"]
