"""The driver's forwarder to the tracking server: one local address that follows the Service's
Ready pod. Pods are stood in for by in-process HTTP servers, the Kubernetes port-forward by a
plain TCP stream (an in-process double of connect.Stream); tests/cluster/test_connect.py runs
the real thing."""

import http.client
import threading
from contextlib import contextmanager

import pytest

from celeb_smile.sweep.connect import (Forwarder, PodTarget, TrackingConnectionError,
                                       check_tracking_server, connect_to_tracking_server,
                                       in_cluster_tracking_uri)
from tests.helpers.pods import FakePods, hanging_pod, http_pod

DISCONNECTED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@contextmanager
def forwarder_for(pods: FakePods, **settings):
    forwarder = Forwarder(pods.ready, pods.dial, refresh_seconds=3600, **settings)
    forwarder.start()
    try:
        yield forwarder
    finally:
        forwarder.close()


def get(connection: http.client.HTTPConnection) -> str:
    connection.request("GET", "/")
    return connection.getresponse().read().decode()


def new_connection(forwarder) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", forwarder.port, timeout=30)


def test_pods_address_is_the_services_dns_name_in_the_namespace():
    assert in_cluster_tracking_uri("team-a") == "http://mlflow.team-a.svc.cluster.local:5000"


def test_requests_reach_the_ready_pod():
    with http_pod("pod-a") as pod_a, forwarder_for(FakePods(pod_a)) as forwarder:
        assert forwarder.current == PodTarget("pod-a", 5000)
        assert get(new_connection(forwarder)) == "pod-a"


def test_the_same_local_address_follows_a_new_pod():
    with http_pod("pod-a") as pod_a, http_pod("pod-b") as pod_b:
        pods = FakePods(pod_a)
        with forwarder_for(pods) as forwarder:
            port = forwarder.port
            assert get(new_connection(forwarder)) == "pod-a"
            pods.replace_with(pod_b)
            forwarder.refresh()
            assert forwarder.port == port
            assert get(new_connection(forwarder)) == "pod-b"


def test_a_request_waiting_on_a_pod_that_left_the_service_is_cut_not_left_hanging():
    with hanging_pod("pod-a") as pod_a, http_pod("pod-b") as pod_b:
        pods = FakePods(pod_a)
        with forwarder_for(pods, drain_seconds=0) as forwarder:
            connection = new_connection(forwarder)
            outcome = {}
            waiting = threading.Thread(target=lambda: outcome.update(result=_try_get(connection)))
            waiting.start()
            pod_a.received.wait(timeout=30)  # the request reached the pod that never answers
            pods.replace_with(pod_b)
            forwarder.refresh()  # pod-a left the Service: its connections are marked...
            forwarder.refresh()  # ...and closed once the (here: zero) drain has passed
            waiting.join(timeout=30)
            assert isinstance(outcome["result"], DISCONNECTED), outcome
            assert get(new_connection(forwarder)) == "pod-b"


def test_connections_to_a_pod_still_in_the_service_are_kept():
    with http_pod("pod-a") as pod_a:
        with forwarder_for(FakePods(pod_a), drain_seconds=0) as forwarder:
            connection = new_connection(forwarder)
            assert get(connection) == "pod-a"
            forwarder.refresh()
            forwarder.refresh()
            assert get(connection) == "pod-a"  # the same kept-alive connection


def test_without_a_ready_pod_a_new_connection_is_closed_so_the_client_retries():
    with forwarder_for(FakePods(), wait_for_pod_seconds=0.1) as forwarder:
        assert isinstance(_try_get(new_connection(forwarder)), DISCONNECTED)


def test_a_port_forward_that_cannot_be_opened_closes_the_connection():
    with http_pod("pod-a") as pod_a:
        pods = FakePods(pod_a, dial_error=ConnectionRefusedError("pod is gone"))
        with forwarder_for(pods) as forwarder:
            assert isinstance(_try_get(new_connection(forwarder)), DISCONNECTED)


def test_a_port_forward_that_fails_once_is_retried_without_the_client_noticing():
    with http_pod("pod-a") as pod_a:
        with forwarder_for(FakePods(pod_a, failing_dials=1)) as forwarder:
            assert get(new_connection(forwarder)) == "pod-a"


def test_a_failed_read_of_the_pods_keeps_the_last_known_ones():
    with http_pod("pod-a") as pod_a:
        pods = FakePods(pod_a)
        with forwarder_for(pods) as forwarder:
            pods.read_error = TimeoutError("API server busy")
            forwarder.refresh()
            assert get(new_connection(forwarder)) == "pod-a"


def test_no_kubeconfig_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(TrackingConnectionError, match="no Kubernetes credentials"):
        with connect_to_tracking_server("celeb-smile"):
            pass


@pytest.mark.integration
def test_a_host_name_the_server_refuses_is_reported_in_one_line(tmp_path, monkeypatch):
    from celeb_smile import local_server

    # The server accepts `localhost` only; /health still answers for any host name.
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", "localhost:*")
    with local_server.mlflow_server(f"sqlite:///{tmp_path}/mlflow.db", tmp_path) as uri:
        port = uri.rsplit(":", 1)[1]
        check_tracking_server(f"http://localhost:{port}")
        with pytest.raises(ValueError) as refused:
            check_tracking_server(uri)
    message = str(refused.value)
    assert "\n" not in message
    assert f"refuses the host name 127.0.0.1:{port}" in message


def _try_get(connection):
    try:
        return get(connection)
    except Exception as error:
        return error
