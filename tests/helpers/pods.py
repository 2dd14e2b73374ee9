"""In-process stand-ins for the tracking server's pods and the port-forward to them, for the
unit tests of celeb_smile.sweep.connect.Forwarder."""

import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from celeb_smile.sweep.connect import PodTarget

POD_PORT = 5000


@dataclass
class Pod:
    name: str
    address: tuple[str, int]
    received: threading.Event = field(default_factory=threading.Event)


@contextmanager
def http_pod(name: str):
    """A pod whose server answers every GET with its own name (HTTP/1.1, kept alive)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Pod(name, server.server_address)
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def hanging_pod(name: str):
    """A pod that accepts connections and reads requests but never answers (a dead server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    pod = Pod(name, listener.getsockname())
    accepted = []

    def serve():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)
            if connection.recv(65536):
                pod.received.set()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield pod
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


class TcpStream:
    """connect.Stream over a plain TCP connection (the port-forward's stand-in)."""

    def __init__(self, address):
        self._socket = socket.create_connection(address, timeout=5)
        self._socket.settimeout(None)

    def fileno(self) -> int:
        return self._socket.fileno()

    def pending(self) -> bool:
        return False

    def send(self, data: bytes) -> None:
        self._socket.sendall(data)

    def recv(self) -> bytes:
        return self._socket.recv(65536)

    def shutdown(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._socket.close()


class FakePods:
    """The Service's Ready pods (what Forwarder reads) and the dialer to them."""

    def __init__(self, *pods: Pod, dial_error: Exception | None = None, failing_dials: int = 0):
        """dial_error: every dial fails with it; failing_dials: only the first N fail."""
        self.pods = list(pods)
        self.dial_error = dial_error
        self.failing_dials = failing_dials
        self.read_error: Exception | None = None

    def replace_with(self, *pods: Pod) -> None:
        self.pods = list(pods)

    def ready(self) -> list[PodTarget]:
        if self.read_error is not None:
            raise self.read_error
        return [PodTarget(pod.name, POD_PORT) for pod in self.pods]

    def dial(self, target: PodTarget) -> TcpStream:
        if self.dial_error is not None:
            raise self.dial_error
        if self.failing_dials > 0:
            self.failing_dials -= 1
            raise ConnectionError("the API server closed the port-forward")
        pod = next(pod for pod in self.pods if pod.name == target.pod)
        return TcpStream(pod.address)
