"""MLflow tracking-server load: K concurrent client processes logging metrics.

By default starts, on free 127.0.0.1 ports, a SQLite-backed `mlflow server` and a
PostgreSQL-backed one (a throwaway cluster under a temp dir, run as the postgres user),
and measures each in two modes:

  unbatched  one MlflowClient.log_metric call (one HTTP request) per metric write
  batched    one MlflowClient.log_batch call per step carrying all of that step's metrics
             (what the project's per-epoch logger does with mlflow.log_metrics)

Every client logs the same metrics (--keys keys x --steps steps) in both modes. Afterwards every
metric history is read back and compared with what was sent: `lost` counts missing or wrong
values. Prints one `name: value` line per figure, prefixed with backend and mode.

    .venv/bin/python benchmarks/tracking_load.py                      # ~2-3 minutes
    .venv/bin/python benchmarks/tracking_load.py --backends sqlite
    .venv/bin/python benchmarks/tracking_load.py --tracking-uri http://127.0.0.1:5000   # existing server

Only loopback addresses are used; every loop is bounded; servers it started are stopped.
"""

import argparse
import contextlib
import glob
import io
import multiprocessing
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import print_machine  # noqa: E402

from celeb_smile import local_server  # noqa: E402
from celeb_smile.local_server import LOOPBACK, free_port  # noqa: E402



def emit(name: str, value) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    print(f"{name}: {value}", flush=True)


def mlflow_server(backend_store_uri: str, root: str, workers: int):
    return local_server.mlflow_server(backend_store_uri, Path(root), workers)


def postgres_bin(name: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else shutil.which(name)


@contextlib.contextmanager
def postgres_cluster(root: str):
    """A throwaway PostgreSQL cluster under `root`, owned by the postgres user, on a free
    loopback port, with trust authentication; yields a SQLAlchemy URI for database mlflow."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("PostgreSQL binaries not found: apt-get install -y postgresql "
                           "(or pass --install-postgres)")
    user = pwd.getpwnam("postgres")
    data = os.path.join(root, "pgdata")
    os.makedirs(data)
    for path in (root, data):
        os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(root, 0o755)

    def as_postgres(*command):
        prefix = [] if os.geteuid() == user.pw_uid else ["runuser", "-u", "postgres", "--"]
        subprocess.run(prefix + list(command), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT, timeout=120)

    port = free_port()
    as_postgres(initdb, "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8")
    as_postgres(pg_ctl, "-D", data, "-l", os.path.join(root, "postgres.log"), "-w", "-t", "60",
                "-o", f"-p {port} -c listen_addresses={LOOPBACK} -k {root} "
                      "-c max_connections=200 -c fsync=on", "start")
    try:
        import psycopg

        with psycopg.connect(f"host={LOOPBACK} port={port} user=postgres dbname=postgres",
                             autocommit=True) as connection:
            connection.execute("CREATE DATABASE mlflow")
        yield f"postgresql+psycopg://postgres@{LOOPBACK}:{port}/mlflow"
    finally:
        as_postgres(pg_ctl, "-D", data, "-m", "fast", "-w", "-t", "60", "stop")


# ---------------------------------------------------------------- clients


def client_process(uri, run_id, keys, steps, batched, barrier, results):
    """Log keys x steps metrics to run_id; put (latencies in seconds, errors, first, last)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    latencies, errors = [], 0
    barrier.wait(timeout=120)
    first = time.time()
    for step in range(steps):
        timestamp = int(time.time() * 1000)
        values = {f"m{key}": value_of(step, key) for key in range(keys)}
        requests = ([list(values.items())] if batched
                    else [[item] for item in values.items()])
        for request in requests:
            started = time.perf_counter()
            try:
                if batched:
                    client.log_batch(run_id, metrics=[Metric(name, value, timestamp, step)
                                                      for name, value in request])
                else:
                    (name, value), = request
                    client.log_metric(run_id, name, value, timestamp=timestamp, step=step)
            except Exception:  # noqa: BLE001 - counted, and visible as lost metrics
                errors += 1
            latencies.append(time.perf_counter() - started)
    results.put((latencies, errors, first, time.time()))


def value_of(step: int, key: int) -> float:
    return step + key / 100.0


def count_lost(uri, run_ids, keys, steps) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    lost = 0
    for run_id in run_ids:
        for key in range(keys):
            history = client.get_metric_history(run_id, f"m{key}")
            got = {(metric.step, metric.value) for metric in history}
            lost += sum((step, value_of(step, key)) not in got for step in range(steps))
    return lost


def measure(uri, clients, keys, steps, batched) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = f"tracking-load-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    run_ids = [client.create_run(experiment_id, run_name=f"client-{i}").info.run_id
               for i in range(clients)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(clients), context.Queue()
    processes = [context.Process(target=client_process,
                                 args=(uri, run_id, keys, steps, batched, barrier, results))
                 for run_id in run_ids]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=900) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    latencies = sorted(latency for outcome in outcomes for latency in outcome[0])
    errors = sum(outcome[1] for outcome in outcomes)
    wall = max(outcome[3] for outcome in outcomes) - min(outcome[2] for outcome in outcomes)
    writes = clients * keys * steps
    lost = count_lost(uri, run_ids, keys, steps)
    with contextlib.redirect_stdout(io.StringIO()):  # set_terminated prints run links
        for run_id in run_ids:
            client.set_terminated(run_id)
    return {
        "writes_per_s": writes / wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "max_ms": 1000 * latencies[-1],
        "errors": errors,
        "lost": lost,
        "writes": writes,
        "seconds": wall,
    }


def report(prefix: str, uri: str, args) -> None:
    for mode in args.modes:
        figures = measure(uri, args.clients, args.keys, args.steps, batched=mode == "batched")
        for name, value in figures.items():
            emit(f"{prefix}_{mode}_{name}", value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent client processes (K)")
    parser.add_argument("--keys", type=int, default=8,
                        help="metrics per step (the per-epoch logger sends ~5-8)")
    parser.add_argument("--steps", type=int, default=40, help="steps per client")
    parser.add_argument("--workers", type=int, default=2, help="mlflow server worker processes")
    parser.add_argument("--backends", default="sqlite,postgres",
                        help="comma-separated: sqlite, postgres")
    parser.add_argument("--modes", default="unbatched,batched")
    parser.add_argument("--tracking-uri", help="measure this existing server instead")
    parser.add_argument("--install-postgres", action="store_true",
                        help="apt-get install postgresql when its binaries are missing")
    args = parser.parse_args(argv)
    args.modes = args.modes.split(",")

    print_machine()
    emit("load", f"clients={args.clients} keys={args.keys} steps={args.steps} "
                 f"writes_per_mode={args.clients * args.keys * args.steps} "
                 f"server_workers={args.workers}")
    if args.tracking_uri:
        report("external", args.tracking_uri, args)
        return 0
    for backend in args.backends.split(","):
        root = tempfile.mkdtemp(prefix=f"tracking-load-{backend}-")
        try:
            if backend == "sqlite":
                with mlflow_server(f"sqlite:///{root}/mlflow.db", root, args.workers) as uri:
                    report(backend, uri, args)
            elif backend == "postgres":
                if postgres_bin("initdb") is None and args.install_postgres:
                    subprocess.run(["apt-get", "install", "-y", "postgresql"], check=True)
                try:
                    cluster = postgres_cluster(root)
                    store = cluster.__enter__()
                except Exception as error:  # noqa: BLE001
                    emit("postgres_skipped", str(error).splitlines()[0])
                    continue
                try:
                    with mlflow_server(store, root, args.workers) as uri:
                        report(backend, uri, args)
                finally:
                    cluster.__exit__(None, None, None)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
