"""driver.py's entry point: parse the sweep, refuse what cannot work in one line (exit 2),
then run it (exit 0 all finished, 1 a trial failed, 130 interrupted)."""

import os
import sys

from celeb_smile.cli import fail
from celeb_smile.constants import EXIT_INTERRUPTED, EXIT_OK, EXIT_TRIAL_FAILED, OUTAGE_PATIENCE_S
from celeb_smile import deploy
from celeb_smile.sweep.connect import in_cluster_tracking_uri

DEFAULT_NAMESPACE = deploy.sweeps_namespace(deploy.DEFAULT_NAMESPACE)  # the template names none
DEFAULT_TRACKING_NAMESPACE = deploy.DEFAULT_NAMESPACE  # when the backend config names none
EMBEDDED_STORE = "mlflow.db"  # in the current directory; `mlflow ui --backend-store-uri sqlite:///mlflow.db`


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        description="Run a hyperparameter sweep of the celeb-smile project: every combination "
                    "is one MLflow run (a Kubernetes Job with --backend kubernetes), nested "
                    "under one parent run. With no arguments: a small local sweep on synthetic "
                    "data, tracked in ./mlflow.db.")
    add = parser.add_argument
    add("--sweep", metavar="FILE", help="sweep file (YAML): grid, random, params, objective, ...")
    add("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
        help="values to try for a parameter (repeatable; all combinations are run)")
    add("--param", action="append", default=[], metavar="NAME=VALUE",
        help="a fixed parameter for every trial (repeatable)")
    add("--search", choices=("grid", "random", "tpe"),
        help="grid: every combination; random: seeded draws from the sweep file's space; tpe: "
             "Optuna's TPE over that space, learning from the trials so far (needs --max-trials)."
             " Default: random with a space, else grid")
    add("--samples", type=int, metavar="N", help="random-search draws from the sweep file's space")
    add("--max-trials", type=int, metavar="N",
        help="trials to run: required by tpe; a cap for grid and random")
    add("--seed", type=int, metavar="N", help="seed of the random or tpe search")
    add("--objective", metavar="METRIC",
        help="metric to rank runs by (default val_accuracy): one training logs, "
             "or a custom one the sweep file declares")
    add("--early-stopping", choices=("median", "asha", "hyperband", "none"),
        help="stop hopeless trials early by the median rule, ASHA or Hyperband (settings: the "
             "sweep file's early_stopping, else the rule's defaults); none: never")
    add("--goal", type=float, metavar="VALUE",
        help="end the sweep once a trial's objective reaches VALUE")
    add("--budget-epochs", type=int, metavar="N",
        help="submit no new trial once the trials have trained N epochs in total")
    add("--budget-minutes", type=float, metavar="M",
        help="submit no new trial after M minutes (running trials finish)")
    add("--direction", choices=("maximize", "minimize"), help="default maximize")
    add("--experiment", metavar="NAME", help="MLflow experiment (default celeb-smile)")
    add("--max-parallel", type=int, metavar="N", help="trials in flight at once (default 2)")
    add("--max-failures", type=int, metavar="N",
        help="stop submitting once more than N trials failed (default: never stop)")
    add("--backend", choices=("local", "kubernetes"), default="local")
    add("--backend-config", metavar="FILE",
        help="kubernetes backend config (default: the project's kubernetes_config.json)")
    add("--cluster-tracking-uri", metavar="URI",
        help="tracking URI as pods see it (default $KUBE_MLFLOW_TRACKING_URI or the mlflow "
             "Service's DNS name in the job template's namespace)")
    add("--no-build", action="store_true",
        help="kubernetes: use the image already pushed (e.g. by `make images`), build nothing")
    add("--rerun", action="store_true", help="run every combination, even those finished before")
    add("--pending-timeout", type=float, default=900, metavar="SECONDS",
        help="fail a trial whose pod cannot start (unschedulable, pulling...) for this long "
             "(default 900)")
    add("--outage-timeout", type=float, default=OUTAGE_PATIENCE_S, metavar="SECONDS",
        help="how long the tracking server or the cluster may be unreachable before the "
             "sweep gives up (default %(default)s)")
    add("--max-disruptions", type=int, default=3, metavar="N",
        help="a trial whose pod or process is lost to something else than its own failure "
             "(evicted, preempted, its node lost, deleted) goes on from its last checkpoint, "
             "up to N times; then it fails (default %(default)s)")
    add("--promote", action="store_true",
        help="register the best trial's model and move celeb-smile@champion to it, if the "
             "sweep ends FINISHED and its best trial beats the current champion on the same "
             "objective (without it, nothing is registered)")
    add("--warm-start", action="store_true",
        help="seed an adaptive search (tpe) with the FINISHED runs of the same experiment made "
             "by the same code")
    detached = parser.add_argument_group(
        "detached sweeps (kubernetes: the sweep's controller runs as a Job in its namespace)")
    steer = detached.add_mutually_exclusive_group()
    steer.add_argument("--detach", action="store_true",
                       help="prepare the sweep, hand it to a controller Job, and exit: the "
                            "sweep runs to its end with nobody attached")
    steer.add_argument("--status", action="store_true",
                       help="the namespace's detached sweeps, one line each")
    steer.add_argument("--attach", metavar="SWEEP_ID",
                       help="a detached sweep's live progress, then its summary (read-only: "
                            "Ctrl-C detaches, the sweep goes on)")
    steer.add_argument("--cancel", metavar="SWEEP_ID",
                       help="cancel a sweep's trials in flight (runs KILLED, no pod left) and "
                            "end it")
    steer.add_argument("--pause", metavar="SWEEP_ID",
                       help="stop a sweep's trials in flight at their last checkpoint and "
                            "submit nothing until --resume")
    steer.add_argument("--resume", metavar="SWEEP_ID",
                       help="a paused sweep goes on: each paused trial from its checkpoint")
    steer.add_argument("--logs", metavar="SWEEP_ID", help="a detached sweep's controller log")
    steer.add_argument("--run-detached", metavar="DIR", help=argparse.SUPPRESS)  # in its pod
    add("--poll-seconds", type=float, help=argparse.SUPPRESS)  # default: the backend's
    add("--stats-file", help=argparse.SUPPRESS)  # benchmarks: per-poll API calls, JSON lines
    return parser


def sweep_spec_from_args(args):
    """The sweep file (if any) with the command line's settings on top; defaults when empty."""
    from celeb_smile.sweep.spec import (DEFAULT_GRID, DEFAULT_PARAMS, SweepSpec,
                                        early_stopping_rule, load_spec_file, parse_assignment)

    spec = load_spec_file(args.sweep) if args.sweep else SweepSpec()
    if not (args.sweep or args.grid or args.param):
        spec.params, spec.grid = dict(DEFAULT_PARAMS), dict(DEFAULT_GRID)
    for text in args.param:
        name, value = parse_assignment(text, many=False)
        spec.params[name] = value
    for text in args.grid:
        name, values = parse_assignment(text, many=True)
        spec.grid[name] = values
    overrides = {"samples": args.samples, "seed": args.seed, "experiment": args.experiment,
                 "max_parallel": args.max_parallel, "max_failures": args.max_failures,
                 "search": args.search, "max_trials": args.max_trials, "goal": args.goal}
    for name, value in overrides.items():
        if value is not None:
            setattr(spec, name, value)
    if args.objective and args.objective != spec.objective.metric:
        spec.objective.metric, spec.objective.custom = args.objective, False
    if args.direction:
        spec.objective.direction = args.direction
    if args.early_stopping == "none":
        spec.early_stopping = None
    elif args.early_stopping and getattr(spec.early_stopping, "rule", None) != args.early_stopping:
        spec.early_stopping = early_stopping_rule(args.early_stopping)
    if args.budget_epochs is not None:
        spec.budget.trial_epochs = args.budget_epochs
    if args.budget_minutes is not None:
        spec.budget.wall_seconds = args.budget_minutes * 60
    spec.search = spec.strategy()
    return spec


def main(argv=None) -> int:
    from contextlib import ExitStack

    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = KeepsWriting(sys.stdout), KeepsWriting(sys.stderr)
    try:
        with ExitStack() as cleanup:  # the driver's own connection to the tracking server
            return _main(argv, cleanup)
    finally:
        sys.stdout, sys.stderr = streams


class KeepsWriting:
    """An output stream whose reader may go away (`driver.py | tee log`, Ctrl-C'd together):
    what no one reads is dropped, so cancelling the trials still runs to its end."""

    def __init__(self, stream):
        self._stream = stream
        self.closed_by_reader = False

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                return self._stream.write(text)
            except (BrokenPipeError, ValueError):  # ValueError: the file was closed
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._reader_gone()

    def _reader_gone(self) -> None:
        """From now on the descriptor writes to /dev/null, so the interpreter's own flush at
        exit does not fail either (Python's advice for SIGPIPE)."""
        self.closed_by_reader = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):  # isatty, fileno, encoding...: the stream's own
        return getattr(self._stream, name)


def _main(argv, cleanup) -> int:
    import logging

    from rich.console import Console

    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough for the summary table
        console = Console(width=160)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # MLflow prints a "View run" link per ended run; the summary table names them all.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.run_detached:
        return _run_detached(args, console)
    if args.status or args.attach or args.cancel or args.logs or args.pause or args.resume:
        return _steer(args, console, cleanup)
    return _sweep(args, console, cleanup)


def _sweep(args, console, cleanup) -> int:
    """Run the sweep the arguments define: here (local trials, or Kubernetes Jobs watched
    from this machine), or, with --detach, by a controller Job in the cluster."""
    from pathlib import Path

    from celeb_smile.sweep.backends.local import LocalBackend
    from celeb_smile.sweep.connect import TrackingConnectionError
    from celeb_smile.sweep.spec import validate

    remote = args.backend == "kubernetes"
    if args.detach and not remote:
        return fail("--detach runs the sweep's controller in the cluster: add --backend "
                    "kubernetes")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        if not remote:  # absolute, since trials run in another directory
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(EMBEDDED_STORE).resolve()}"
    elif remote and _is_local_store(os.environ["MLFLOW_TRACKING_URI"]):
        return fail(f"MLFLOW_TRACKING_URI={os.environ['MLFLOW_TRACKING_URI']} is a local store "
                    "that pods cannot reach; use the tracking server's http:// address")
    try:
        spec = sweep_spec_from_args(args)
        validate(spec, remote=remote)
        if args.warm_start and spec.search != "tpe":
            raise ValueError(f"--warm-start seeds an adaptive search (search: tpe), not "
                             f"{spec.search}")
        if remote:
            cluster = _Cluster(args)
            backend = cluster.backend(spec.sweep_id(), build=not args.no_build)
            tracking_uri = _connect(cluster, console, cleanup)
        else:
            backend = LocalBackend(Path(".sweep") / spec.sweep_id())
            tracking_uri = _connect(None, console, cleanup)
    except (ValueError, TrackingConnectionError) as error:
        return fail(str(error))
    console.print(f"tracking: {tracking_uri}  experiment: {spec.experiment}")
    if remote and args.detach:
        return _handled(lambda: _detach(args, spec, backend, cluster, tracking_uri, console))

    def run_or_attach() -> int:
        if remote and (steering := _steering(cluster, tracking_uri, console)).controller_alive(
                spec.sweep_id()):
            console.print(f"sweep {spec.sweep_id()} is run by its controller in the cluster: "
                          "attaching", highlight=False)
            return steering.attach(spec.sweep_id())
        return _controller(args, spec, backend, console, tracking_uri).run()

    return _handled(run_or_attach)


def _controller(args, spec, backend, console, tracking_uri, **settings):
    from celeb_smile.sweep.controller import SweepController
    from celeb_smile.sweep.tracking import configure_driver_http

    configure_driver_http()
    return SweepController(spec, backend, console, tracking_uri=tracking_uri, rerun=args.rerun,
                           poll_seconds=args.poll_seconds, promote=args.promote,
                           warm_start=args.warm_start, pending_timeout=args.pending_timeout,
                           outage_seconds=args.outage_timeout, stats_path=args.stats_file,
                           max_disruptions=args.max_disruptions, **settings)


def _handled(command) -> int:
    """`command()`'s exit code; what stops a sweep before its first trial, in one line."""
    from celeb_smile.sweep.backends import PreparationError
    from celeb_smile.sweep.tracking import Unavailable

    try:
        return command()
    except KeyboardInterrupt:  # while preparing (e.g. building the image): nothing submitted
        print("interrupted before any trial was submitted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (PreparationError, Unavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_TRIAL_FAILED


class _Cluster:
    """Where a Kubernetes sweep runs: the backend config, its Job template's namespace (the
    sweeps namespace), the kube context, the tracking server's namespace and its address as
    pods see it."""

    def __init__(self, args):
        from pathlib import Path

        from celeb_smile.sweep.spec import PROJECT_DIR

        self.config_path = Path(args.backend_config or PROJECT_DIR / "kubernetes_config.json")
        self.namespace, self.context, self.tracking_namespace = _namespaces_and_context(
            self.config_path)
        self.tracking_uri = (args.cluster_tracking_uri
                             or os.environ.get("KUBE_MLFLOW_TRACKING_URI")
                             or in_cluster_tracking_uri(self.tracking_namespace))

    def backend(self, sweep_id: str, build: bool = True):
        from celeb_smile.sweep.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(self.config_path, self.tracking_uri, sweep_id, build=build)

    @staticmethod
    def backend_from(config_path, tracking_uri: str, sweep_id: str, image_ref: str):
        """A detached controller's backend: the image as the laptop pushed it."""
        from celeb_smile.sweep.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(config_path, tracking_uri, sweep_id, build=False,
                                 image_ref=image_ref)

    def clients(self):
        from celeb_smile.sweep.backends.kubernetes import kubernetes_clients

        return kubernetes_clients(self.context)


def _connect(cluster: _Cluster | None, console, cleanup) -> str:
    """This process's address of the tracking server, checked: MLFLOW_TRACKING_URI, else (for
    a cluster) a port-forward this process owns, following the server's pod."""
    import mlflow

    from celeb_smile.sweep.connect import connect_to_tracking_server

    if cluster is not None and not os.environ.get("MLFLOW_TRACKING_URI"):
        connection = cleanup.enter_context(
            connect_to_tracking_server(cluster.tracking_namespace, context=cluster.context))
        os.environ["MLFLOW_TRACKING_URI"] = connection.uri
        console.print(f"tracking server {cluster.tracking_namespace}/mlflow reached at {connection.uri} "
                      f"(Kubernetes API port-forward); pods use {cluster.tracking_uri}")
    # The environment decides, whatever this process's MLflow was pointed at before;
    # trials (local processes) inherit the same variable.
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    _check_reachable(mlflow.get_tracking_uri())
    return mlflow.get_tracking_uri()


def _steering(cluster: _Cluster, tracking_uri: str, console):
    import threading

    from celeb_smile.sweep.steer import Steering
    from celeb_smile.sweep.tracking import Tracking, configure_driver_http

    configure_driver_http()
    core, batch = cluster.clients()
    return Steering(core, batch, cluster.namespace, Tracking(tracking_uri, threading.Event()),
                    console)


def _steer(args, console, cleanup) -> int:
    """--status, --attach, --cancel, --pause, --resume, --logs: a sweep, from any machine."""
    from celeb_smile.sweep.backends import PreparationError
    from celeb_smile.sweep.connect import TrackingConnectionError
    from celeb_smile.sweep.steer import SweepNotFound

    try:
        cluster = _Cluster(args)
        if args.logs:  # the cluster's alone: no tracking server needed
            from celeb_smile.sweep.steer import Steering

            core, batch = cluster.clients()
            return Steering(core, batch, cluster.namespace, None, console).logs(args.logs)
        steering = _steering(cluster, _connect(cluster, console, cleanup), console)
        if args.status:
            return steering.status()
        if args.attach:
            return steering.attach(args.attach)
        if args.pause:
            return steering.pause(args.pause)
        if args.resume:
            return steering.resume(args.resume)
        return steering.cancel(args.cancel)
    except (ValueError, TrackingConnectionError, PreparationError, SweepNotFound) as error:
        return fail(str(error))


def _detach(args, spec, backend, cluster: _Cluster, tracking_uri: str, console) -> int:
    """Prepare as a sweep run here would (images, experiment; the sweep's trial user made and
    deleted at once, so that a refusal shows here, not in the controller's log), then submit
    the sweep's controller as a Job and exit."""
    import threading

    from celeb_smile.sweep import detach
    from celeb_smile.sweep.access import (AccessError, close_trial_user, open_trial_user,
                                          trial_username)
    from celeb_smile.sweep.backends import code_version
    from celeb_smile.sweep.backends.kubernetes import pushed_image
    from celeb_smile.sweep.record import SweepRecord
    from celeb_smile.sweep.spec import PROJECT_DIR
    from celeb_smile.sweep.tracking import Tracking, configure_driver_http

    configure_driver_http()
    sweep_id = spec.sweep_id()
    record = SweepRecord(Tracking(tracking_uri, threading.Event()), spec, code_version())
    parent, _ = record.find()
    steering = _steering(cluster, tracking_uri, console)
    if (holder := record.holder(parent)) or steering.controller_alive(sweep_id):
        return fail(f"sweep {sweep_id} is already running ({holder or 'its controller Job'}): "
                    f"driver.py --attach {sweep_id}")
    backend.prepare(console)  # the training image, built and pushed (or found)
    controller_image = pushed_image(
        console, detach.controller_image(backend.config["repository-uri"], backend.image),
        PROJECT_DIR / "k8s" / "controller" / "Dockerfile", build=not args.no_build)
    try:
        trial_user = trial_username(record.experiment_id, sweep_id)
        if not backend.has_trial_credentials(trial_user):  # else: the controller adopts it
            open_trial_user(tracking_uri, trial_user, record.experiment_id)
            close_trial_user(tracking_uri, trial_user)
    except AccessError as error:
        return fail(str(error))
    started_by = detach.who()
    options = detach.ControllerOptions.from_args(
        args, tracking_uri=cluster.tracking_uri, image_ref=backend.image_ref,
        code_version=record.code_version, started_by=started_by)
    files = detach.handover_files(spec, options, backend.template_text, backend.config)
    job = detach.controller_job(cluster.namespace, sweep_id, controller_image,
                                record.experiment_id, started_by)
    steering.forget_ended(sweep_id)
    detach.submit(backend.core, backend.batch, cluster.namespace, job, files, _credentials())
    name = job["metadata"]["name"]
    driver = "driver.py" + (f" --backend-config {args.backend_config}"
                            if args.backend_config else "")
    console.print(f"sweep {sweep_id} detached: controller Job {cluster.namespace}/{name}",
                  highlight=False)
    for command, what in (("--status", "the namespace's sweeps"),
                          (f"--attach {sweep_id}", "its live progress (Ctrl-C detaches)"),
                          (f"--logs {sweep_id}", "its controller's log"),
                          (f"--cancel {sweep_id}", "cancel its trials and end it")):
        console.print(f"  {driver} {command:<22} {what}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _credentials() -> tuple[str, str] | None:
    user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                      os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    return (user, password) if user and password else None


def _run_detached(args, console) -> int:
    """The controller in its pod: the sweep as the laptop handed it over. Exit 0 once the
    sweep has ended, whatever its outcome (that is MLflow's to tell); anything else makes the
    Job start another pod, which takes over."""
    from pathlib import Path

    from celeb_smile.sweep import detach
    from celeb_smile.sweep.tracking import LEASE_SECONDS

    spec, options, config_path = detach.load_handover(Path(args.run_detached))
    detach.log_in_from()
    options.apply_to(args)
    os.environ["MLFLOW_TRACKING_URI"] = options.tracking_uri
    backend = _Cluster.backend_from(config_path, options.tracking_uri, spec.sweep_id(),
                                    options.image_ref)
    console.print(f"controller of sweep {spec.sweep_id()}, started by {options.started_by}; "
                  f"tracking {options.tracking_uri}", highlight=False)
    controller = _controller(args, spec, backend, console, options.tracking_uri,
                             code_version=options.code_version, hand_over_on_sigterm=True,
                             lease_wait_s=2 * LEASE_SECONDS)
    backend.prepare(console)
    controller.tracking.host_alive = detach.pod_alive(backend.core, backend.namespace,
                                                      spec.sweep_id())
    exit_code = _handled(controller.run)
    ended = exit_code in (EXIT_OK, EXIT_TRIAL_FAILED, EXIT_INTERRUPTED) and controller.status
    return EXIT_OK if ended else (exit_code or EXIT_TRIAL_FAILED)


def _namespaces_and_context(config_path) -> tuple[str, str | None, str]:
    """The namespace of the job template the backend config names (where the Jobs go), the
    config's kube-context, and its tracking namespace (where the server is; `make deploy`
    writes it: celeb_smile.deploy.TRACKING_NAMESPACE_KEY)."""
    import json
    from pathlib import Path

    import yaml

    from celeb_smile.sweep.backends.kubernetes import job_template_path

    try:
        config = json.loads(Path(config_path).read_text())
        template = job_template_path(config_path, config["kube-job-template-path"])
        job = yaml.safe_load(template.read_text())
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        # the backend reports what is wrong, in one line
        return DEFAULT_NAMESPACE, None, DEFAULT_TRACKING_NAMESPACE
    namespace = ((job or {}).get("metadata") or {}).get("namespace") or DEFAULT_NAMESPACE
    return (namespace, config.get("kube-context"),
            config.get(deploy.TRACKING_NAMESPACE_KEY) or DEFAULT_TRACKING_NAMESPACE)


def _check_reachable(tracking_uri: str) -> None:
    """A tracking server that does not answer, or refuses this address (e.g. a Service's
    ClusterIP, not in its --allowed-hosts), fails the sweep now, in one line."""
    from celeb_smile.sweep.connect import check_tracking_server

    if tracking_uri.startswith(("http://", "https://")):
        check_tracking_server(tracking_uri)


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/", ".")) or "://" not in uri
