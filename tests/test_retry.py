"""celeb_smile.retry: which failures are worth waiting out, and a training process's calls
riding out a server that answers like a restarting proxy (a real MLflow server behind it)."""

import threading

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

from celeb_smile.retry import (Unavailable, patiently, refusal_message, refusal_reason, retrying,
                               tracking_transient)
from tests.helpers.flaky_front import flaky_front


def _http_error(status: int):
    import requests

    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} error", response=response)


def test_a_refusal_names_the_rule_the_server_gave_else_the_permission_to_grant(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trial-7-abc")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "7")
    ruled = MlflowException("API request to endpoint /api/2.0/mlflow/runs/set-tag failed with "
                            "error code 403 != 200. Response body: 'Permission denied: a trial "
                            "user may tag only its own sweep's runs'")
    assert refusal_message("tag the run", 403, refusal_reason(ruled)) == (
        "user 'trial-7-abc' may not tag the run (403 Permission denied: a trial user may tag "
        "only its own sweep's runs)")
    plain = MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with "
                            "error code 403 != 200. Response body: 'Permission denied'")
    assert refusal_reason(plain) == ""
    assert refusal_message("open the run", 403, refusal_reason(plain)).endswith(
        "(403 Permission denied): it needs EDIT on experiment 7")


@pytest.mark.parametrize("error, worth_retrying", [
    (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}), False),
    (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}), False),
    (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), True),
    (MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code "
                     "404 != 200. Response body: ''"), True),
    (MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code "
                     "403 != 200. Response body: 'Permission denied'"), False),
    (MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code "
                     "401 != 200. Response body: 'You are not authenticated.'"), False),
    (_http_error(403), False),  # an artifact upload the server refused
    (_http_error(502), True),
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (ValueError("run already records epochs=3, not 5"), False),
])
def test_only_what_mlflow_itself_refused_is_final(error, worth_retrying):
    assert tracking_transient(error) is worth_retrying


def test_retrying_gives_up_after_its_patience_with_the_last_error():
    attempts = []

    def call():
        attempts.append(1)
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(Unavailable, match="connect: ConnectionRefusedError: connection refused"):
        retrying(call, what="connect", patience_s=0, stop=threading.Event())
    assert len(attempts) == 1


def test_a_call_outlasts_answers_that_are_not_mlflows(mlflow_server):
    with flaky_front(mlflow_server, failures=2) as (uri, answered):
        experiment = patiently("read", lambda: MlflowClient(uri).get_experiment_by_name("Default"))
    assert experiment.name == "Default"
    assert answered == [404, 404, 200]


def test_mlflows_own_refusal_is_raised_at_once(mlflow_server):
    with flaky_front(mlflow_server, failures=0) as (uri, answered):
        with pytest.raises(RestException, match="RESOURCE_DOES_NOT_EXIST"):
            patiently("read", lambda: MlflowClient(uri).get_run("0" * 32))
    assert answered == [404]


@pytest.mark.parametrize("error, says", [
    (RestException({"error_code": "PERMISSION_DENIED", "message": "no"}),
     "user 'trial-7-abc' may not open the run (403 Permission denied): it needs EDIT on "
     "experiment 7"),
    (RestException({"error_code": "UNAUTHENTICATED", "message": "who"}),
     "the tracking server does not accept user 'trial-7-abc''s credentials (401) to open the run"),
    (MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code "
                     "403 != 200. Response body: 'Permission denied: a trial user may not do "
                     "that'"),
     "user 'trial-7-abc' may not open the run (403 Permission denied: a trial user may not do "
     "that)"),
    (MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code "
                     "401 != 200. Response body: 'You are not authenticated.'"),
     "does not accept user 'trial-7-abc''s credentials (401)"),
    (_http_error(403), "user 'trial-7-abc' may not open the run (403 Permission denied)"),
])
def test_a_refusal_json_or_plain_ends_the_call_at_once_in_one_line(error, says, monkeypatch):
    """Part 5 of issue 20: never 5 minutes of retries for a 401/403, whatever its body."""
    from celeb_smile.retry import Refused

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trial-7-abc")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "7")
    attempts = []

    def call():
        attempts.append(1)
        if len(attempts) > 1:
            raise ValueError("retried")  # ends a retrying test at once, failed
        raise error

    with pytest.raises(Refused) as refused:
        patiently("open the run", call, patience_s=300)
    assert attempts == [1]
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_a_refusal_names_the_user_of_a_credentials_file_as_a_trial_pod_has(monkeypatch,
                                                                           tmp_path):
    """Trial pods have no credential variables: MLflow reads ~/.mlflow/credentials."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = trial-7-abc\nmlflow_tracking_password = x\n")
    assert refusal_message("open the run", 401).startswith(
        "the tracking server does not accept user 'trial-7-abc''s credentials (401)")
