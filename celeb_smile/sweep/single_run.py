"""One `mlflow run --backend kubernetes` with credentials of its own, as a sweep's trials have.

scripts/tracking.py runs its command through `run_command`. An `mlflow run ... --backend
kubernetes` against a tracking server with users (MLflow's basic-auth app) then runs with a trial
user made for that one run (celeb_smile.sweep.access), so that nobody grants the shared
`trainer` anything by hand:

1. the experiment is resolved as `mlflow run` resolves it (MLflow's own function: --experiment-id,
   --experiment-name, MLFLOW_EXPERIMENT_ID / MLFLOW_EXPERIMENT_NAME, else Default, "0");
2. the person running the command (MLFLOW_TRACKING_USERNAME, admin or anyone who may MANAGE the
   experiment) makes `trial-<experiment id>-<random id>` with a random password and EDIT on it.
   Whoever may not is refused here, in one line (exit 2), before anything is created;
3. `mlflow run` runs with the same arguments and a backend config of its own: a temporary copy
   whose Job template mounts the trial user's Secret, `celeb-smile-trial-…` (its MLflow
   credentials file, at ~/.mlflow/credentials), and labels the Job (SINGLE_RUN_LABEL);
4. MLflow creates the run (as the person) and the Job; the Secret does not exist yet, so the pod
   cannot start. Once the Job is there, the run it names (its MLFLOW_RUN_ID) is tagged for the
   trial user (TRIAL_USER_TAG: the server lets a `trial-…` user write only such runs), and only
   then is the Secret created: the pod starts (the kubelet retries mounting a missing Secret)
   and logs as the trial user, which can write that run and nothing else;
5. afterwards (finished, failed, Ctrl-C) the user and its Secret are deleted, with the temporary
   files. A failed Job is explained by its pod's last error line.

`mlflow run --run-id` would be simpler than step 4, but MLflow's kubernetes backend ignores it
(it always creates the run). Without users (no auth app, a file or database store) the command
runs unchanged; so does any other command, and a plain `mlflow run` without this wrapper still
uses the Job template as written (the legacy `trainer`).

    python -m celeb_smile.sweep.single_run -- mlflow run . --backend kubernetes ...
        # what scripts/tracking.py does, with MLFLOW_TRACKING_URI and KUBE_MLFLOW_TRACKING_URI
        # already set
"""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from celeb_smile.cli import fail
from celeb_smile.constants import EXIT_TRIAL_FAILED, OUTAGE_PATIENCE_S, TRIAL_USER_TAG
from celeb_smile.retry import retrying, tracking_transient
from celeb_smile.sweep.access import (AccessError, close_trial_user, has_users, open_trial_user,
                                      trial_username)
from celeb_smile.sweep.backends import PreparationError
from celeb_smile.sweep.backends.kubernetes import (REQUEST_TIMEOUT, api_message,
                                                   create_trial_secret, delete_trial_secret,
                                                   job_template_path, kubernetes_clients,
                                                   read_backend_config, trial_secret_name,
                                                   use_credentials)

SINGLE_RUN_LABEL = "celeb-smile/single-run"  # on the Job only (its pods keep the template's)
ID_BYTES = 6  # the random id in `trial-<experiment id>-<id>`: 12 hex digits, like a sweep's
POLL_SECONDS = 0.5  # how often the Job is looked for (the pod waits for its Secret meanwhile)
EXCEPTION_LINE = re.compile(r"[\w.]*(Error|Exception)\b: ")  # a traceback's last line


class SingleRunError(RuntimeError):
    """Refused before anything was created (exit 2): one line."""


def run_command(command: list[str]) -> int:
    """Run `command` with this process's environment; an `mlflow run --backend kubernetes` on a
    server with users runs with a trial user of its own (module docstring)."""
    args = mlflow_run_args(command)
    params = _kubernetes_params(args) if args is not None else None
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if params is None or not has_users(tracking_uri):
        return _plain(command)
    try:
        run = SingleRun.prepare(params, tracking_uri)
    except SingleRunError as error:
        return fail(str(error))
    return run.execute(command)


def mlflow_run_args(command: list[str]) -> list[str] | None:
    """The arguments after `run` when `command` is `mlflow run ...` (or `python -m mlflow
    run ...`); None for any other command."""
    if command and Path(command[0]).name == "mlflow":
        rest = command[1:]
    elif len(command) > 2 and command[1:3] == ["-m", "mlflow"]:
        rest = command[3:]
    else:
        return None
    return rest[1:] if rest[:1] == ["run"] else None


def _kubernetes_params(args: list[str]) -> dict | None:
    """`mlflow run`'s parameters, parsed by its own click command, when it runs on Kubernetes
    with a backend config; None otherwise (or when MLflow would reject the arguments: it then
    says why itself)."""
    import click
    from mlflow.cli import run as mlflow_run

    try:
        params = mlflow_run.make_context("run", list(args), resilient_parsing=True).params
    except click.exceptions.ClickException:
        return None
    if params.get("backend") != "kubernetes" or not params.get("backend_config"):
        return None
    return params


def _plain(command: list[str]) -> int:
    try:
        return subprocess.run(command).returncode
    except FileNotFoundError:
        return fail(f"command not found: {command[0]}")


@dataclass
class SingleRun:
    tracking_uri: str
    experiment_id: str
    config: dict  # the backend config (its template path absolute)
    template: dict
    core: object
    batch: object
    single_run_id: str = field(default_factory=lambda: secrets.token_hex(ID_BYTES))  # random
    run_id: str | None = None  # MLflow's run, once its Job is there
    job_name: str | None = None
    problem: str | None = None  # why the hand-over failed (the command is then stopped)
    handed_over: threading.Event = field(default_factory=threading.Event)

    @property
    def username(self) -> str:
        return trial_username(self.experiment_id, self.single_run_id)

    @property
    def namespace(self) -> str:
        return self.template["metadata"].get("namespace", "default")

    @classmethod
    def prepare(cls, params: dict, tracking_uri: str, clients=None) -> "SingleRun":
        """The experiment and the backend config of `mlflow run`'s `params`, and Kubernetes
        clients that may create the Secret (asked by a dry run); nothing is created."""
        config = _backend_config(params["backend_config"])
        template = yaml.safe_load(Path(config["kube-job-template-path"]).read_text())
        experiment_id = _experiment_id(params, tracking_uri)
        try:
            core, batch = clients or kubernetes_clients(config.get("kube-context"))
        except PreparationError as error:
            raise SingleRunError(str(error)) from None
        run = cls(tracking_uri, experiment_id, config, template, core, batch)
        try:
            create_trial_secret(core, run.namespace, run.single_run_id, run.username, "",
                                dry_run=True)
        except PreparationError as error:
            raise SingleRunError(str(error).replace("the sweep's", "the run's")) from None
        return run

    # -- the run ---------------------------------------------------------------------------
    def execute(self, command: list[str], popen=subprocess.Popen) -> int:
        """Make the trial user, run `command` with the temporary backend config, hand the
        credentials over when the Job appears, and remove them afterwards, whatever happens."""
        try:
            password = open_trial_user(self.tracking_uri, self.username, self.experiment_id,
                                       whose="the run's")
        except AccessError as error:
            self._forget_user()  # refused before it was made, as a rule: nothing to delete
            return fail(str(error))
        if password is None:  # a server without the auth app after all
            return _plain(command)
        directory = Path(tempfile.mkdtemp(prefix="celeb-smile-run-"))
        try:
            config_path = self._write_backend_config(directory)
            print(f"trial user {self.username} (Secret {trial_secret_name(self.username)} in "
                  f"{self.namespace}), removed when the run ends", file=sys.stderr, flush=True)
            try:
                process = popen([*command, "--backend-config", str(config_path)])
            except FileNotFoundError:
                return fail(f"command not found: {command[0]}")
            watcher = threading.Thread(target=self._hand_over, args=(password, process),
                                       name="hand-over", daemon=True)
            watcher.start()
            returncode = _wait(process)
            self.handed_over.set()  # stops the watcher if the Job never came
            watcher.join(timeout=30)
            if self.problem:
                return fail(self.problem, exit_code=EXIT_TRIAL_FAILED)
            if returncode != 0 and self.job_name:
                self._explain_failure()
            return returncode
        finally:
            self._clean_up(directory)

    def _write_backend_config(self, directory: Path) -> Path:
        job = json.loads(json.dumps(self.template))
        job["metadata"].setdefault("labels", {})[SINGLE_RUN_LABEL] = self.single_run_id
        use_credentials(job["spec"]["template"]["spec"], trial_secret_name(self.username))
        template_path = directory / "job_template.yaml"
        template_path.write_text(yaml.safe_dump(job, sort_keys=False))
        config_path = directory / "kubernetes_config.json"  # MLflow wants the .json suffix
        config_path.write_text(json.dumps(
            dict(self.config, **{"kube-job-template-path": str(template_path)}), indent=2))
        return config_path

    def _hand_over(self, password: str, process) -> None:
        """Wait for MLflow's Job; tag the run it names for the trial user, then create the
        Secret (never before: a pod started before its run is tagged would be refused, 403)."""
        from mlflow import MlflowClient

        selector = f"{SINGLE_RUN_LABEL}={self.single_run_id}"
        while not self.handed_over.wait(POLL_SECONDS):
            try:
                jobs = self.batch.list_namespaced_job(self.namespace, label_selector=selector,
                                                      _request_timeout=REQUEST_TIMEOUT).items
            except Exception:  # noqa: BLE001 - a blip of the API server: the next poll
                continue
            if not jobs:
                continue
            job = jobs[0]
            self.job_name = job.metadata.name
            env = {item.name: item.value
                   for item in job.spec.template.spec.containers[0].env or []}
            self.run_id = env.get("MLFLOW_RUN_ID")
            try:
                if env.get("MLFLOW_EXPERIMENT_ID") != self.experiment_id:
                    raise SingleRunError(
                        f"Job {self.job_name}'s run is in experiment "
                        f"{env.get('MLFLOW_EXPERIMENT_ID')}, not {self.experiment_id}")
                client = MlflowClient(self.tracking_uri)
                retrying(lambda: client.set_tag(self.run_id, TRIAL_USER_TAG, self.username),
                         what="tag the run", patience_s=OUTAGE_PATIENCE_S,
                         stop=self.handed_over, transient=tracking_transient)
                create_trial_secret(self.core, self.namespace, self.single_run_id,
                                    self.username, password)
            except Exception as error:  # noqa: BLE001 - said in one line; the run is stopped
                self.problem = (f"cannot hand run {self.run_id} over to {self.username}: "
                                f"{_one_line(error)}")
                self._stop(process)
            self.handed_over.set()

    def _stop(self, process) -> None:
        """The run cannot go on: stop `mlflow run` and delete its Job (the pod would wait for
        its Secret until the Job's deadline)."""
        from kubernetes.client import V1DeleteOptions

        process.terminate()
        try:
            self.batch.delete_namespaced_job(
                self.job_name, self.namespace, _request_timeout=REQUEST_TIMEOUT,
                body=V1DeleteOptions(propagation_policy="Background"))
        except Exception as error:  # noqa: BLE001
            print(f"warning: could not delete Job {self.job_name}: {_one_line(error)}",
                  file=sys.stderr)

    def _explain_failure(self) -> None:
        """The failed Job's pod's last error line (MLflow says only "backoff limit")."""
        line = last_error_line(self.core, self.namespace, self.job_name)
        if line:
            print(f"error: Job {self.job_name} failed: {line}", file=sys.stderr, flush=True)

    def _forget_user(self) -> None:
        try:
            close_trial_user(self.tracking_uri, self.username)
        except AccessError:
            pass

    def _clean_up(self, directory: Path) -> None:
        for what, step in ((f"trial user {self.username}",
                            lambda: close_trial_user(self.tracking_uri, self.username)),
                           (f"Secret {trial_secret_name(self.username)}",
                            lambda: delete_trial_secret(self.core, self.namespace,
                                                        self.username))):
            try:
                step()
            except Exception as error:  # noqa: BLE001 - the other one is still removed
                print(f"warning: could not delete {what}: {_one_line(error)}; delete it by "
                      f"hand", file=sys.stderr)
        shutil.rmtree(directory, ignore_errors=True)


def _wait(process) -> int:
    """The command's exit code. Ctrl-C reaches it too (same process group): `mlflow run` then
    deletes its Job and ends; a second Ctrl-C stops waiting for it."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        print("interrupted: waiting for mlflow run to cancel its Job (Ctrl-C again to stop "
              "waiting)", file=sys.stderr, flush=True)
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.terminate()
            return process.wait()


def _backend_config(named: str) -> dict:
    """The backend config `mlflow run` is given: a .json file, or the JSON itself (its
    template path then relative to the working directory, as MLflow reads it)."""
    try:
        if os.path.splitext(named)[-1] == ".json":
            return read_backend_config(Path(named))
        config = json.loads(named)
        config["kube-job-template-path"] = str(job_template_path(
            Path.cwd() / "inline.json", config["kube-job-template-path"]))
        return config
    except (ValueError, KeyError, TypeError) as error:
        raise SingleRunError(f"backend config: {error}") from None


def _experiment_id(params: dict, tracking_uri: str) -> str:
    """The experiment `mlflow run` will use, by MLflow's own resolution."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.projects import _resolve_experiment_id

    from celeb_smile.sweep.access import _reason

    mlflow.set_tracking_uri(tracking_uri)
    try:
        return str(_resolve_experiment_id(experiment_name=params.get("experiment_name"),
                                          experiment_id=params.get("experiment_id")))
    except MlflowException as error:
        raise SingleRunError(f"cannot find the run's experiment: {_reason(error)}") from None


def last_error_line(core, namespace: str, job_name: str) -> str:
    """The last line of the Job's pod log that says what went wrong: train.py's `error: ...`
    (e.g. a refusal naming the missing permission), else a Python exception's, else the last
    line; '' when there is no log."""
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}",
                                        _request_timeout=REQUEST_TIMEOUT).items
        texts = [core.read_namespaced_pod_log(pod.metadata.name, namespace,
                                              _preload_content=False,
                                              _request_timeout=REQUEST_TIMEOUT).data
                 for pod in pods]
    except Exception:  # noqa: BLE001 - the explanation is a courtesy
        return ""
    lines = [line.strip() for text in texts
             for line in text.decode("utf-8", errors="replace").splitlines() if line.strip()]
    for meaningful in (lambda line: line.startswith("error: "), EXCEPTION_LINE.match):
        found = [line for line in lines if meaningful(line)]
        if found:
            return found[-1][:500]
    return lines[-1][:500] if lines else ""


def _one_line(error: BaseException) -> str:
    from kubernetes.client.rest import ApiException
    from mlflow.exceptions import MlflowException

    from celeb_smile.sweep.access import _reason

    if isinstance(error, MlflowException):
        return _reason(error)
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}: {api_message(error)}"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        return fail("usage: python -m celeb_smile.sweep.single_run -- COMMAND ...")
    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
