"""`make ui`: the in-cluster MLflow UI at http://127.0.0.1:<port>, through the Kubernetes API
(celeb_smile.sweep.connect), following the server's pod across restarts, until Ctrl-C."""

import argparse
import socket
import sys
import threading

from celeb_smile.cli import fail
from celeb_smile.sweep.connect import TrackingConnectionError, connect_to_tracking_server


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", default="celeb-smile")
    parser.add_argument("--port", type=int, default=5000,
                        help="local port (default 5000; a free one if 5000 is taken)")
    args = parser.parse_args(argv)
    try:
        with connect_to_tracking_server(args.namespace, local_port=_usable(args.port)) as conn:
            print(f"MLflow UI of {args.namespace}/mlflow: {conn.uri}  (Ctrl-C to stop)", flush=True)
            threading.Event().wait()  # forwarding happens in the connection's threads
    except TrackingConnectionError as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return 0
    return 0


def _usable(port: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            print(f"port {port} is taken: using a free one", file=sys.stderr)
            return 0
    return port


if __name__ == "__main__":
    sys.exit(main())
