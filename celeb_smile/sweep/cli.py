"""driver.py's entry point: parse the sweep, refuse what cannot work in one line (exit 2),
then run it (exit 0 all finished, 1 a trial failed, 130 interrupted)."""

import os
import sys

from celeb_smile.cli import fail
from celeb_smile.constants import EXIT_INTERRUPTED, EXIT_TRIAL_FAILED, OUTAGE_PATIENCE_S
from celeb_smile.sweep.connect import in_cluster_tracking_uri

DEFAULT_NAMESPACE = "celeb-smile"  # when the job template names none
DEFAULT_CLUSTER_TRACKING_URI = in_cluster_tracking_uri(DEFAULT_NAMESPACE)
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
    add("--early-stopping", choices=("median", "asha", "none"),
        help="stop hopeless trials early by the median rule or ASHA (settings: the sweep "
             "file's early_stopping, else the rule's defaults); none: never")
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
    add("--promote", action="store_true",
        help="register the best trial's model and move celeb-smile@champion to it, if the "
             "sweep ends FINISHED and its best trial beats the current champion on the same "
             "objective (without it, nothing is registered)")
    add("--warm-start", action="store_true",
        help="seed an adaptive search (tpe) with the FINISHED runs of the same experiment made "
             "by the same code")
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
    from pathlib import Path

    import mlflow
    from rich.console import Console

    from celeb_smile.sweep.backends import PreparationError
    from celeb_smile.sweep.backends.kubernetes import KubernetesBackend
    from celeb_smile.sweep.backends.local import LocalBackend
    from celeb_smile.sweep.connect import TrackingConnectionError, connect_to_tracking_server
    from celeb_smile.sweep.controller import SweepController
    from celeb_smile.sweep.tracking import Unavailable, configure_driver_http
    from celeb_smile.sweep.spec import PROJECT_DIR, validate

    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough for the summary table
        console = Console(width=160)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # MLflow prints a "View run" link per ended run; the summary table names them all.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    remote = args.backend == "kubernetes"
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
            config_path = Path(args.backend_config or PROJECT_DIR / "kubernetes_config.json")
            namespace, context = _job_namespace_and_context(config_path)
            cluster_uri = (args.cluster_tracking_uri or os.environ.get("KUBE_MLFLOW_TRACKING_URI")
                           or in_cluster_tracking_uri(namespace))
            backend = KubernetesBackend(config_path, cluster_uri, spec.sweep_id(),
                                        build=not args.no_build)
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                # Through the Kubernetes API: follows the server's pod across restarts.
                connection = cleanup.enter_context(
                    connect_to_tracking_server(namespace, context=context))
                os.environ["MLFLOW_TRACKING_URI"] = connection.uri
                console.print(f"tracking server {namespace}/mlflow reached at {connection.uri} "
                              f"(Kubernetes API port-forward); pods use {cluster_uri}")
        else:
            backend = LocalBackend(Path(".sweep") / spec.sweep_id())
        # The environment decides, whatever this process's MLflow was pointed at before;
        # trials (local processes) inherit the same variable.
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        _check_reachable(mlflow.get_tracking_uri())
    except (ValueError, TrackingConnectionError) as error:
        return fail(str(error))
    console.print(f"tracking: {mlflow.get_tracking_uri()}  experiment: {spec.experiment}")
    configure_driver_http()
    sweep = SweepController(spec, backend, console, tracking_uri=mlflow.get_tracking_uri(),
                  rerun=args.rerun, poll_seconds=args.poll_seconds, promote=args.promote,
                  warm_start=args.warm_start,
                  pending_timeout=args.pending_timeout, outage_seconds=args.outage_timeout,
                  stats_path=args.stats_file)
    try:
        return sweep.run()
    except KeyboardInterrupt:  # while preparing (e.g. building the image): nothing submitted
        print("interrupted before any trial was submitted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (PreparationError, Unavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_TRIAL_FAILED


def _job_namespace_and_context(config_path) -> tuple[str, str | None]:
    """The namespace of the job template the backend config names (where the Jobs and the
    tracking server live), and the config's kube-context."""
    import json
    from pathlib import Path

    import yaml

    from celeb_smile.sweep.backends.kubernetes import job_template_path

    try:
        config = json.loads(Path(config_path).read_text())
        template = job_template_path(config_path, config["kube-job-template-path"])
        job = yaml.safe_load(template.read_text())
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return DEFAULT_NAMESPACE, None  # the backend reports what is wrong, in one line
    namespace = ((job or {}).get("metadata") or {}).get("namespace") or DEFAULT_NAMESPACE
    return namespace, config.get("kube-context")


def _check_reachable(tracking_uri: str) -> None:
    """A tracking server that does not answer, or refuses this address (e.g. a Service's
    ClusterIP, not in its --allowed-hosts), fails the sweep now, in one line."""
    from celeb_smile.sweep.connect import check_tracking_server

    if tracking_uri.startswith(("http://", "https://")):
        check_tracking_server(tracking_uri)


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/", ".")) or "://" not in uri
