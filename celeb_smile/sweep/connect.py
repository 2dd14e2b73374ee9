"""The driver's own way to the in-cluster tracking server: no `make port-forward`, nothing to
export.

    with connect_to_tracking_server("celeb-smile") as conn:
        conn.uri                             # http://127.0.0.1:<port>, for this process
    in_cluster_tracking_uri("celeb-smile")   # http://mlflow.celeb-smile.svc.cluster.local:5000, for pods

The local address is a small TCP forwarder this process owns. Each connection made to it is
carried to a Ready pod of the Service (its Endpoints) over the Kubernetes API's port-forward
websocket, opened per connection: so when the server's pod changes (restart, redeploy) the same
local URL keeps working, new connections go to the new pod, and a connection to a pod that left
the Service is closed after a short drain instead of hanging its request. Every Kubernetes call
is bounded by a timeout.

Kubernetes credentials: the in-cluster service account first (a driver running in a pod, which
then uses the Service's DNS name directly and forwards nothing), the kubeconfig second. The
permissions needed in the tracking namespace: get the service and endpoints `mlflow`, create
pods/portforward (what k8s/tracking/sweep-user-role.yaml grants a sweep user).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Protocol

DEFAULT_SERVICE = "mlflow"
DEFAULT_PORT = 5000
API_TIMEOUT_SECONDS = 5.0     # every Kubernetes API call, and opening a port-forward
REFRESH_SECONDS = 1.0         # how often the Service's Ready pods are read again
DRAIN_SECONDS = 3.0           # a connection to a pod that left the Service ends after this
WAIT_FOR_POD_SECONDS = 5.0    # a new connection waits this long for a Ready pod, then is closed
DIAL_ATTEMPTS = 3             # port-forwards tried per connection (the API server may blip)
READY_TIMEOUT_SECONDS = 60.0  # at start: for a Ready pod and the server's /health
HEALTH_TIMEOUT_SECONDS = 5.0
PORTFORWARD_PROTOCOL = "v4.channel.k8s.io"  # data on channel 0, errors on channel 1
INVALID_HOST_MESSAGE = "Invalid Host header"  # the server's 403 for a host not in --allowed-hosts

log = logging.getLogger(__name__)


class TrackingConnectionError(RuntimeError):
    """The tracking server cannot be reached through the Kubernetes API (one line)."""


def in_cluster_tracking_uri(namespace: str, service: str = DEFAULT_SERVICE,
                            port: int = DEFAULT_PORT) -> str:
    """The tracking server as pods see it: the Service's DNS name in `namespace`."""
    return f"http://{service}.{namespace}.svc.cluster.local:{port}"


# --- the tracking server's HTTP answers ---------------------------------------------------------

def check_tracking_server(uri: str, timeout: float = 10.0) -> None:
    """Raise ValueError (one line) unless the server at `uri` answers /health AND accepts the
    host name in `uri`: MLflow answers /health for any Host header but refuses every other
    request (403) whose host is not in its --allowed-hosts, e.g. a Service's ClusterIP."""
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout):
            pass
    except OSError as error:
        raise ValueError(f"tracking server {uri} does not answer ({error})") from None
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers=_basic_auth_header())
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except urllib.error.HTTPError as error:
        if error.code == 403 and INVALID_HOST_MESSAGE in error.read().decode(errors="replace"):
            host = urllib.parse.urlsplit(uri).netloc
            raise ValueError(
                f"tracking server {uri} refuses the host name {host} (not in its "
                "--allowed-hosts); on Kubernetes leave MLFLOW_TRACKING_URI unset and the driver "
                "connects by itself") from None
    except OSError as error:
        raise ValueError(f"tracking server {uri} does not answer ({error})") from None


def _basic_auth_header() -> dict[str, str]:
    """MLflow's own credentials variables, as its client sends them."""
    import base64
    import os

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get(
        "MLFLOW_TRACKING_PASSWORD")
    if not (user and password):
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- the forwarder: 127.0.0.1:<port> -> the current pod ----------------------------------------

@dataclass(frozen=True)
class PodTarget:
    pod: str
    port: int


class Stream(Protocol):
    """A byte stream to one pod's port (a port-forward websocket, or a test double). Used by
    one thread at a time: TLS connections must not be read and written concurrently."""

    def fileno(self) -> int: ...
    def send(self, data: bytes) -> None: ...
    def recv(self) -> bytes | None: ...  # b"" at the end; None: nothing for the client (yet)
    def pending(self) -> bool: ...  # data buffered above the socket (TLS), readable now
    def shutdown(self) -> None: ...  # wakes a thread blocked on it; the socket stays allocated
    def close(self) -> None: ...


class _Link:
    """One local client connection carried to one pod by one thread (select over both ends).
    stop() only shuts the sockets down, which wakes the thread; the thread itself closes them,
    so a socket's number is never reused while a call on it is still under way."""

    def __init__(self, client: socket.socket, stream: Stream, target: PodTarget):
        self.client, self.stream, self.target = client, stream, target
        self.left_service_at: float | None = None
        self._stopped = threading.Event()

    def start(self, on_end: Callable[[_Link], None]) -> None:
        threading.Thread(target=self._run, args=(on_end,), daemon=True,
                         name=f"tracking-forward-{self.target.pod}").start()

    def _run(self, on_end) -> None:
        try:
            self._pump()
        except Exception as error:  # a reset, a closed websocket: the link is over
            log.debug("link to %s ended: %s", self.target.pod, error)
        finally:
            self.stop()
            for end in (self.client, self.stream):
                try:
                    end.close()
                except OSError:
                    pass
            on_end(self)

    def _pump(self) -> None:
        while not self._stopped.is_set():
            readable = [self.stream] if self.stream.pending() else []
            if not readable:
                readable, _, _ = select.select([self.client, self.stream], [], [])
            if self.client in readable:
                data = self.client.recv(65536)
                if not data:
                    return
                self.stream.send(data)
            if self.stream in readable:
                data = self.stream.recv()
                if data == b"":
                    return
                if data:
                    self.client.sendall(data)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        for shutdown in (lambda: self.client.shutdown(socket.SHUT_RDWR), self.stream.shutdown):
            try:
                shutdown()
            except OSError:
                pass


class Forwarder:
    """Listens on 127.0.0.1 and carries each connection to the current Ready pod.

    `ready_pods()` lists the Service's Ready pods (Kubernetes: its Endpoints); `dial(target)`
    opens a stream to one. Both are bounded by their own timeouts."""

    def __init__(self, ready_pods: Callable[[], list[PodTarget]],
                 dial: Callable[[PodTarget], Stream], local_port: int = 0,
                 refresh_seconds: float = REFRESH_SECONDS, drain_seconds: float = DRAIN_SECONDS,
                 wait_for_pod_seconds: float = WAIT_FOR_POD_SECONDS):
        self._ready_pods, self._dial = ready_pods, dial
        self._refresh_seconds, self._drain_seconds = refresh_seconds, drain_seconds
        self._wait_for_pod_seconds = wait_for_pod_seconds
        self._listener = socket.create_server(("127.0.0.1", local_port))
        self._listener.settimeout(0.5)  # so close() ends the accept loop promptly
        self._targets: list[PodTarget] = []
        self._targets_changed = threading.Condition()
        self._links: set[_Link] = set()
        self._links_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def current(self) -> PodTarget | None:
        """The pod new connections go to (the first Ready one, by name)."""
        with self._targets_changed:
            return self._targets[0] if self._targets else None

    def start(self) -> None:
        self.refresh()
        for target, name in ((self._watch_pods, "pods"), (self._accept, "accept")):
            thread = threading.Thread(target=target, daemon=True, name=f"tracking-forward-{name}")
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stopping.set()
        with self._targets_changed:
            self._targets_changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        self._listener.close()
        with self._links_lock:
            links = list(self._links)
        for link in links:
            link.stop()

    def wait_for_pod(self, timeout: float) -> PodTarget | None:
        deadline = time.monotonic() + timeout
        with self._targets_changed:
            while not self._targets and not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._targets_changed.wait(left)
            return self._targets[0] if self._targets else None

    def refresh(self) -> None:
        """Read the Ready pods again; a failed read keeps the last known ones."""
        try:
            targets = sorted(self._ready_pods(), key=lambda target: target.pod)
        except Exception as error:
            log.warning("could not read the tracking server's pods: %s", error)
            return
        with self._targets_changed:
            if targets != self._targets:
                log.info("tracking server pods: %s", [target.pod for target in targets] or "none")
            self._targets = targets
            self._targets_changed.notify_all()
        self._close_links_to_departed(set(targets))

    def _close_links_to_departed(self, ready: set[PodTarget]) -> None:
        now = time.monotonic()
        with self._links_lock:
            links = list(self._links)
        for link in links:
            if link.target in ready:
                link.left_service_at = None
            elif link.left_service_at is None:
                link.left_service_at = now
            elif now - link.left_service_at >= self._drain_seconds:
                log.info("closing a connection to %s, which left the Service", link.target.pod)
                link.stop()

    def _watch_pods(self) -> None:
        while not self._stopping.wait(self._refresh_seconds):
            self.refresh()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # requests are small
            threading.Thread(target=self._connect, args=(client,), daemon=True,
                             name="tracking-forward-connect").start()

    def _connect(self, client: socket.socket) -> None:
        # What the client sent meanwhile waits in the socket, so a failed dial can be retried.
        deadline = time.monotonic() + self._wait_for_pod_seconds
        stream = target = None
        for _ in range(DIAL_ATTEMPTS):
            target = self.wait_for_pod(max(0.0, deadline - time.monotonic()))
            if target is None or self._stopping.is_set():
                break
            try:
                stream = self._dial(target)
                break
            except Exception as error:
                log.info("could not open a port-forward to %s: %s", target.pod, error)
                self.refresh()  # it may have just gone
        if stream is None:
            client.close()  # the client retries; nothing waits on a dead pod
            return
        link = _Link(client, stream, target)
        with self._links_lock:
            self._links.add(link)
        link.start(self._forget)

    def _forget(self, link: _Link) -> None:
        with self._links_lock:
            self._links.discard(link)


# --- Kubernetes: credentials, the Service's Ready pods, port-forward streams -------------------

def kubernetes_configuration(context: str | None = None):
    """(configuration, in_cluster): the pod's service account first, the kubeconfig second."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
        return configuration, True
    except ConfigException:
        pass
    try:
        # $KUBECONFIG as it is now: the client reads it once, when first imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), context=context,
                                client_configuration=configuration, persist_config=False)
    except (ConfigException, OSError) as error:
        raise TrackingConnectionError(
            f"no Kubernetes credentials: not in a pod, and no usable kubeconfig ({error})") from None
    return configuration, False


class ServiceEndpoints:
    """The Ready pods behind a Service's port, from its Endpoints (what kube-proxy uses)."""

    def __init__(self, core_api, namespace: str, service: str, port: int):
        from kubernetes.client.rest import ApiException

        self._core, self._namespace, self._service = core_api, namespace, service
        try:
            spec = core_api.read_namespaced_service(service, namespace,
                                                    _request_timeout=API_TIMEOUT_SECONDS).spec
        except ApiException as error:
            if error.status == 404:
                raise TrackingConnectionError(
                    f"no Service {service!r} in namespace {namespace!r}: deploy the tracking "
                    "server first (`make deploy`)") from None
            raise TrackingConnectionError(
                f"cannot read Service {namespace}/{service}: {error.status} {error.reason}") from None
        except Exception as error:  # connection refused, timeout, TLS
            raise TrackingConnectionError(
                f"the Kubernetes API does not answer ({type(error).__name__}: {error})") from None
        ports = [item for item in spec.ports or [] if item.port == port]
        if not ports:
            raise TrackingConnectionError(f"Service {namespace}/{service} has no port {port}")
        self._port_name = ports[0].name  # Endpoints name their ports as the Service does

    def __call__(self) -> list[PodTarget]:
        endpoints = self._core.read_namespaced_endpoints(self._service, self._namespace,
                                                         _request_timeout=API_TIMEOUT_SECONDS)
        targets = []
        for subset in endpoints.subsets or []:
            port = next((item.port for item in subset.ports or []
                         if (item.name or None) == (self._port_name or None)), None)
            for address in subset.addresses or []:  # Ready ones only (not_ready_addresses)
                if port is not None and address.target_ref and address.target_ref.kind == "Pod":
                    targets.append(PodTarget(address.target_ref.name, port))
        return targets


class PodPortStream:
    """One connection to a pod's port through the API server's port-forward websocket."""

    def __init__(self, configuration, namespace: str, target: PodTarget,
                 timeout: float = API_TIMEOUT_SECONDS):
        import websocket

        host = configuration.host.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        path = (f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/pods/"
                f"{urllib.parse.quote(target.pod)}/portforward?ports={target.port}")
        self._ws = websocket.WebSocket(sslopt=_ssl_options(configuration),
                                       skip_utf8_validation=True)
        headers = [f"sec-websocket-protocol: {PORTFORWARD_PROTOCOL}", *_auth_headers(configuration)]
        self._ws.connect(host + path, header=headers, timeout=timeout)
        self._ws.settimeout(None)  # idle keep-alive connections are normal; close() wakes recv
        self._opened_channels: set[int] = set()

    def fileno(self) -> int:
        return self._ws.sock.fileno()

    def pending(self) -> bool:
        sock = self._ws.sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def send(self, data: bytes) -> None:
        import websocket

        self._ws.send(b"\x00" + data, opcode=websocket.ABNF.OPCODE_BINARY)

    def recv(self) -> bytes | None:
        """One websocket frame's data for the client; None for a frame that carries none."""
        import websocket

        opcode, frame = self._ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return b""
        if opcode != websocket.ABNF.OPCODE_BINARY or not frame.data:
            return None
        channel, payload = frame.data[0], frame.data[1:]
        if channel not in self._opened_channels:  # each channel opens with its port number
            self._opened_channels.add(channel)
            payload = payload[2:]
        if channel == 1 and payload:  # the error channel: e.g. connection refused in the pod
            raise ConnectionError(payload.decode(errors="replace"))
        return payload if channel == 0 and payload else None

    def shutdown(self) -> None:
        self._ws.abort()

    def close(self) -> None:
        self._ws.shutdown()


def _ssl_options(configuration) -> dict:
    if not configuration.verify_ssl:
        options = {"cert_reqs": ssl.CERT_NONE}
    else:
        import certifi

        options = {"cert_reqs": ssl.CERT_REQUIRED,
                   "ca_certs": configuration.ssl_ca_cert or certifi.where()}
        if configuration.assert_hostname is not None:
            options["check_hostname"] = configuration.assert_hostname
    if configuration.cert_file:
        options["certfile"] = configuration.cert_file
    if configuration.key_file:
        options["keyfile"] = configuration.key_file
    if configuration.tls_server_name:
        options["server_hostname"] = configuration.tls_server_name
    return options


def _auth_headers(configuration) -> list[str]:
    return [f"{setting['key']}: {setting['value']}"
            for setting in configuration.auth_settings().values()
            if setting["in"] == "header" and setting["value"]]


# --- the context manager -----------------------------------------------------------------------

class TrackingConnection:
    """The tracking server of `namespace` for this process: `uri` is http://127.0.0.1:<port>
    (a forwarder it owns, following the server's pod), or the Service's DNS name when this
    process runs in a pod of the cluster."""

    def __init__(self, namespace: str, service: str = DEFAULT_SERVICE, port: int = DEFAULT_PORT,
                 context: str | None = None, local_port: int = 0,
                 ready_timeout: float = READY_TIMEOUT_SECONDS):
        self.namespace, self.service, self.port = namespace, service, port
        self.context, self.local_port, self.ready_timeout = context, local_port, ready_timeout
        self.uri: str | None = None
        self.forwarder: Forwarder | None = None

    def __enter__(self) -> TrackingConnection:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def open(self) -> None:
        from kubernetes import client

        configuration, in_cluster = kubernetes_configuration(self.context)
        if in_cluster:
            self.uri = in_cluster_tracking_uri(self.namespace, self.service, self.port)
            return
        core = client.CoreV1Api(client.ApiClient(configuration))
        endpoints = ServiceEndpoints(core, self.namespace, self.service, self.port)
        self.forwarder = Forwarder(
            endpoints, lambda target: PodPortStream(configuration, self.namespace, target),
            local_port=self.local_port)
        self.forwarder.start()
        if self.forwarder.wait_for_pod(self.ready_timeout) is None:
            raise TrackingConnectionError(
                f"no Ready pod behind Service {self.namespace}/{self.service} after "
                f"{self.ready_timeout:.0f}s (`kubectl -n {self.namespace} get pods`)")
        self.uri = f"http://127.0.0.1:{self.forwarder.port}"
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=HEALTH_TIMEOUT_SECONDS):
                    return
            except OSError as error:
                if time.monotonic() > deadline:
                    raise TrackingConnectionError(
                        f"the tracking server in {self.namespace}/{self.service} does not answer "
                        f"through the port-forward ({error})") from None
                time.sleep(1)

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None


def connect_to_tracking_server(namespace: str, service: str = DEFAULT_SERVICE,
                               port: int = DEFAULT_PORT, context: str | None = None,
                               local_port: int = 0) -> TrackingConnection:
    """`with connect_to_tracking_server(ns) as conn: conn.uri` (see TrackingConnection)."""
    return TrackingConnection(namespace, service, port, context=context, local_port=local_port)
