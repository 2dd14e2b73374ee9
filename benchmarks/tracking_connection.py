"""The driver's connection to the in-cluster tracking server (celeb_smile.sweep.connect) against
`kubectl port-forward service/mlflow`: mean request time on new connections and on one kept-alive
connection, failures under 16 concurrent new connections, and (with --restart) how long after
a server pod deletion the same local address answers again.

    .venv/bin/python benchmarks/tracking_connection.py --namespace celeb-smile [--restart]

Needs a deployed stack in NAMESPACE and kubectl on PATH. --restart deletes the server's pod."""

import argparse
import concurrent.futures
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import print_machine  # noqa: E402
from celeb_smile.local_server import free_port, wait_for_http  # noqa: E402
from celeb_smile.sweep.connect import connect_to_tracking_server  # noqa: E402

REQUESTS = 100
PATH = "/health"  # answered by the server itself in ~1 ms: the figures are the connection's


def new_connection_s(uri: str) -> float:
    started = time.perf_counter()
    for _ in range(REQUESTS):
        with urllib.request.urlopen(uri + PATH, timeout=30) as response:
            response.read()
    return (time.perf_counter() - started) / REQUESTS


def keepalive_s(uri: str) -> float:
    import requests

    session = requests.Session()
    session.get(uri + PATH, timeout=30)
    started = time.perf_counter()
    for _ in range(REQUESTS):
        session.get(uri + PATH, timeout=30).raise_for_status()
    return (time.perf_counter() - started) / REQUESTS


def concurrent_failures(uri: str, total: int = 400, workers: int = 16) -> int:
    def one(_):
        try:
            with urllib.request.urlopen(uri + PATH, timeout=30) as response:
                return response.status == 200
        except OSError:
            return False

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return sum(1 for ok in pool.map(one, range(total)) if not ok)


def measure(name: str, uri: str) -> None:
    print(f"{name}_new_connection_request_s_mean: {new_connection_s(uri):.4f}")
    print(f"{name}_keepalive_request_s_mean: {keepalive_s(uri):.4f}")
    print(f"{name}_failures_of_400_at_16_concurrent: {concurrent_failures(uri)}")


def restart_recovery_s(namespace: str, connection) -> float:
    pod = connection.forwarder.current.pod
    subprocess.run(["kubectl", "-n", namespace, "delete", "pod", pod, "--wait=false"],
                   check=True, capture_output=True)
    started = time.perf_counter()
    while connection.forwarder.current is None or connection.forwarder.current.pod == pod:
        time.sleep(0.2)
    wait_for_http(connection.uri + PATH, timeout=300)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", default="celeb-smile")
    parser.add_argument("--restart", action="store_true")
    args = parser.parse_args()
    print_machine()
    with connect_to_tracking_server(args.namespace) as connection:
        measure("connect", connection.uri)
        port = free_port()
        kubectl = subprocess.Popen(["kubectl", "-n", args.namespace, "port-forward",
                                    "service/mlflow", f"{port}:5000"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_http(f"http://127.0.0.1:{port}{PATH}", timeout=60, process=kubectl)
            measure("kubectl", f"http://127.0.0.1:{port}")
        finally:
            kubectl.terminate()
            kubectl.wait(timeout=10)
        if args.restart:
            print(f"connect_restart_to_answer_s: {restart_recovery_s(args.namespace, connection):.1f}")


if __name__ == "__main__":
    main()
