"""A front for a real tracking server that answers its first requests the way a proxy or
gateway does while the server behind it restarts: an empty 404 that is not MLflow's. Like the
interceptor that answers for a Service without endpoints, it keeps such a connection open and
answers every later request on it the same way: only a new connection reaches the server."""

import contextlib
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def flaky_front(server_uri: str, failures: int):
    """Yields (front URI, list of the status codes it answered, in order)."""
    answered: list[int] = []

    class Handler(BaseHTTPRequestHandler):  # one instance per connection
        protocol_version = "HTTP/1.1"  # keep-alive
        stale = False

        def do_GET(self):
            self._answer()

        do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        def _answer(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.stale or len(answered) < failures:
                self.stale = True
                status, headers, payload = 404, {}, b""
            else:
                status, headers, payload = self._forward(body)
            answered.append(status)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _forward(self, body: bytes):
            request = urllib.request.Request(server_uri + self.path, data=body or None,
                                             method=self.command,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, {"Content-Type": "application/json"}, response.read()
            except urllib.error.HTTPError as error:
                return error.code, {"Content-Type": "application/json"}, error.read()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", answered
    finally:
        server.shutdown()
        server.server_close()
