"""The in-cluster tracking server from this machine, through the Kubernetes API
(celeb_smile.sweep.connect): the local address follows the server's pod across restarts.

    scripts/tracking.py [--namespace NS]                  # `make ui`: print the UI's URL, forward until Ctrl-C
    scripts/tracking.py [--namespace NS] -- mlflow run .  --backend kubernetes ...
        # run a command with MLFLOW_TRACKING_URI (this machine's forwarded address) and
        # KUBE_MLFLOW_TRACKING_URI (the pods' address) set; exits with its exit code.
        # `mlflow run --backend kubernetes` runs as a trial user made for that run and
        # removed after it (celeb_smile.sweep.single_run): no grant by hand.
"""

import argparse
import os
import socket
import sys
import threading

from celeb_smile.cli import fail
from celeb_smile.sweep.connect import (TrackingConnectionError, connect_to_tracking_server,
                                       in_cluster_tracking_uri)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--namespace", default="celeb-smile")
    parser.add_argument("--port", type=int, default=5000,
                        help="local port (default 5000; a free one if 5000 is taken; 0: any)")
    parser.add_argument("command", nargs="*", help="a command to run (after --)")
    args = parser.parse_args(argv)
    try:
        with connect_to_tracking_server(args.namespace, local_port=_usable(args.port)) as conn:
            if args.command:
                return _run(args.command, conn.uri, in_cluster_tracking_uri(args.namespace))
            print(f"MLflow UI of {args.namespace}/mlflow: {conn.uri}  (Ctrl-C to stop)", flush=True)
            threading.Event().wait()  # forwarding happens in the connection's threads
    except TrackingConnectionError as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return 0
    return 0


def _run(command: list[str], local_uri: str, pods_uri: str) -> int:
    """`command` with the tracking addresses in the environment; an `mlflow run --backend
    kubernetes` with credentials of its own (single_run.py)."""
    from celeb_smile.sweep.single_run import run_command  # MLflow: not for `make ui`

    os.environ.update(MLFLOW_TRACKING_URI=local_uri, KUBE_MLFLOW_TRACKING_URI=pods_uri)
    print(f"tracking: {local_uri} (pods: {pods_uri})", file=sys.stderr, flush=True)
    return run_command(command)


def _usable(port: int) -> int:
    if port == 0:
        return 0
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            print(f"port {port} is taken: using a free one", file=sys.stderr)
            return 0
    return port


if __name__ == "__main__":
    sys.exit(main())
