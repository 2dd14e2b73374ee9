"""What a sweep tells its user: the experiment opened in MLflow's model-training view, the
parent run's note (what the sweep is and what it found, rewritten as it goes), and at the end
a summary (console table + summary.csv), plots, the best-run tag, and promotion if asked.
Whatever the sweep's size, the console table, the plots and the note stay short: they show
the best trials and count the rest; summary.csv has them all.

A rerun never overwrites a record of what happened: summary.csv has a row per run that a
trial of this sweep ever had (the state it ended in and the sweep run that ran it), earlier
attempts kept; a rerun that ran nothing leaves the summary and the plots as they were."""

import csv
import io
import tempfile
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from rich.markup import escape
from rich.table import Table

from celeb_smile.constants import (BEST_RUN_TAG, EXPERIMENT_KIND_MODEL_TRAINING,
                                   EXPERIMENT_KIND_TAG, TrialState)
from celeb_smile.retry import Unavailable
from celeb_smile.sweep import plots, promotion
from celeb_smile.sweep.result import SweepResult
from celeb_smile.sweep.progress import (SUMMARY_CSV, TRAINED_TO_END, counted, label,
                                        params_label, styled_state, top_of)

__all__ = ["prepare_experiment", "update_note", "finish", "params_label", "ranked",
           "best_trial", "summary_rows", "merged_summary"]

PLOTS_DIR = "plots"
OBJECTIVE_PNG = "objective_per_combination.png"
CURVES_PNG = "learning_curves_top.png"
PARALLEL_PNG = "parallel_coordinates.png"
NOT_RUN_HERE = (TrialState.PENDING, TrialState.SKIPPED)
SUMMARY_ROWS = 20  # trials in the console's summary table; summary.csv has every one
FAILURES_NAMED = 10  # failed trials printed with their reason under the summary table
# Values of a grid parameter the note lists: a grid's values grow with its trials.
SPACE_VALUES_SHOWN = 8


def prepare_experiment(client, experiment_id: str) -> None:
    """Open the experiment in MLflow 3's model-training view (not the GenAI one)."""
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND_MODEL_TRAINING:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG,
                                  EXPERIMENT_KIND_MODEL_TRAINING)


# -- ranking ----------------------------------------------------------------------------------
def own_trials(trials) -> list:
    """The sweep's own trials: warm-start trials are earlier sweeps' runs, never run here."""
    return [t for t in trials if not t.warm_start]


def ranked(trials, objective) -> list:
    """Trials best first; those without the objective metric last, in their original order."""
    scored = [t for t in trials if t.objective(objective.metric) is not None]
    unscored = [t for t in trials if t.objective(objective.metric) is None]
    scored.sort(key=lambda t: t.metrics[objective.metric],
                reverse=objective.direction == "maximize")
    return scored + unscored


def best_trial(trials, objective):
    """The best trial that trained to its end (in this sweep run or an earlier one)."""
    candidates = [t for t in ranked(own_trials(trials), objective)
                  if TrialState(t.state) in TRAINED_TO_END
                  and t.objective(objective.metric) is not None]
    return candidates[0] if candidates else None


def ran_here(trials) -> list:
    """Trials this invocation of the sweep submitted."""
    return [t for t in own_trials(trials) if TrialState(t.state) not in NOT_RUN_HERE]


# -- the end of a sweep -----------------------------------------------------------------------
def finish(result: SweepResult, client, console) -> None:
    spec, parent_run_id = result.spec, result.parent_run_id
    metric, varying = spec.objective.metric, spec.varying()
    rows = ranked(own_trials(result.trials), spec.objective)
    console.print(summary_table(rows, varying, metric))
    print_failures(console, rows)
    try:
        _record(result, client, console, rows)
    except Unavailable:
        raise  # the controller's to handle: the tracking server is gone
    except Exception as error:  # a report is a convenience: never lose the sweep over it
        console.print(f"[yellow]summary or plots not recorded: {escape(str(error))}[/]")
    best = best_trial(result.trials, spec.objective)
    outcome = None
    if best is None:
        console.print(f"[red]no trial produced {metric}[/]")
    else:
        client.set_tag(parent_run_id, BEST_RUN_TAG, best.run_id)
        client.log_metric(parent_run_id, f"best_{metric}", best.metrics[metric])
        try:
            outcome = promotion.promote(client, result, best)
        except Unavailable:
            raise
        except Exception as error:  # the registry failed: the sweep's results still stand
            outcome = promotion.Outcome(None, f"not promoted: the model registry failed: {error}")
    update_note(result, client, console, outcome.message if outcome else "")
    if best is not None:
        console.print(f"best: {best.name} ({label(best, varying)}) {metric}="
                      f"{best.metrics[metric]:.4f} run {best.run_id}\n{outcome.message}",
                      highlight=False, markup=False)


def _record(result: SweepResult, client, console, rows) -> None:
    """summary.csv and the plots on the parent run, unless this was a rerun that ran nothing
    (then the earlier record stays exactly as it was)."""
    spec, parent_run_id = result.spec, result.parent_run_id
    earlier = read_summary(client, parent_run_id)
    if earlier is not None and not ran_here(result.trials):
        console.print("nothing ran: summary.csv and the plots of the earlier run are kept")
        return
    varying, metric = spec.varying(), spec.objective.metric
    header, merged = merged_summary(summary_rows(rows, varying, metric), earlier or [],
                                    varying, metric)
    client.log_text(parent_run_id, to_csv(header, merged), SUMMARY_CSV)
    out_dir = Path(".sweep") / spec.sweep_id()
    paths = save_plots(rows, spec, client, out_dir)
    for path in paths:
        client.log_artifact(parent_run_id, str(path), PLOTS_DIR)
    console.print(f"summary.csv and plots ({', '.join(p.name for p in paths)}) on the parent "
                  f"run; plots also in {out_dir}/")


def summary_table(rows, varying, metric) -> Table:
    """The best SUMMARY_ROWS trials; a caption counts the rest."""
    shown = rows[:SUMMARY_ROWS]
    table = Table(title="sweep summary (best first)", title_justify="left",
                  caption=top_of(len(shown), len(rows)) if len(shown) < len(rows) else None,
                  caption_justify="left")
    for column in ("rank", "trial", *varying, "state", metric, "run id"):
        table.add_column(column)
    for rank, trial in enumerate(shown, 1):
        value = trial.objective(metric)
        table.add_row(str(rank), escape(trial.name),
                      *(escape(str(trial.params.get(n, ""))) for n in varying),
                      styled_state(trial), f"{value:.4f}" if value is not None else "-",
                      trial.run_id or "-")
    return table


def print_failures(console, rows) -> None:
    """Each failed trial's reason, for the first FAILURES_NAMED of them."""
    failed = [t for t in rows if TrialState(t.state) == TrialState.FAILED]
    for trial in failed[:FAILURES_NAMED]:
        console.print(f"[red]{escape(trial.name)} failed[/]: {escape(trial.reason)}",
                      highlight=False)
    if len(failed) > FAILURES_NAMED:
        console.print(f"[red]and {len(failed) - FAILURES_NAMED} more failed[/]: see "
                      f"{SUMMARY_CSV}", highlight=False)


# -- summary.csv: a row per run a trial ever had ----------------------------------------------
def summary_header(varying, metric) -> list[str]:
    return ["rank", "trial", *varying, "state", metric, "run_id", "sweep_run_id", "reason"]


def summary_rows(rows, varying, metric) -> list[dict]:
    """The ranked trials as CSV rows; a SKIPPED trial is recorded as what it ended as when it
    ran (FINISHED), with the sweep run that ran it."""
    out = []
    for rank, trial in enumerate(rows, 1):
        state = TrialState(trial.state)
        value = trial.objective(metric)
        out.append({"rank": rank, "trial": trial.name,
                    **{n: trial.params.get(n, "") for n in varying},
                    "state": TrialState.FINISHED if state == TrialState.SKIPPED else state,
                    metric: "" if value is None else repr(value),
                    "run_id": trial.run_id or "",
                    "sweep_run_id": trial.sweep_run_id or "",
                    "reason": trial.reason,
                    "_ran_here": state not in NOT_RUN_HERE})
    return out


def merged_summary(current: list[dict], earlier: list[dict], varying, metric):
    """(header, rows): this run's rows, ranked, then the earlier rows of runs no trial has
    now (earlier attempts: e.g. a failed run retried). A trial that did not run here keeps
    its earlier row, word for word."""
    by_run = {row.get("run_id"): row for row in earlier if row.get("run_id")}
    rows = []
    for row in current:
        ran = row.pop("_ran_here")
        kept = by_run.get(row["run_id"]) if row["run_id"] and not ran else None
        rows.append({**kept, "rank": row["rank"]} if kept else row)
    now = {row["run_id"] for row in rows if row["run_id"]}
    names = {row["trial"] for row in rows}
    rows += [{**row, "rank": ""} for row in earlier
             if (row.get("run_id") and row["run_id"] not in now)
             or (not row.get("run_id") and row.get("trial") not in names)]
    return summary_header(varying, metric), rows


def to_csv(header, rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, extrasaction="ignore", restval="",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_summary(client, run_id: str) -> list[dict] | None:
    """The rows of the run's summary.csv; None when it has none."""
    if SUMMARY_CSV not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, SUMMARY_CSV, tmp)
        with open(path, newline="") as file:
            return list(csv.DictReader(file))


# -- plots ------------------------------------------------------------------------------------
def save_plots(rows, spec, client, out_dir: Path) -> list[Path]:
    """Draw the plots that have something to say; returns their files."""
    metric, varying = spec.objective.metric, spec.varying()
    scored = [t for t in rows if t.objective(metric) is not None]
    top = plots.curve_candidates(scored)
    figures = {OBJECTIVE_PNG: plots.objective_figure(scored, metric, varying),
               CURVES_PNG: plots.curves_figure(top, histories(top, metric, client), metric,
                                               varying),
               PARALLEL_PNG: plots.parallel_figure(scored, metric, varying,
                                                   spec.objective.direction)}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in figures.items():
        if figure is not None:
            figure.savefig(out_dir / name, dpi=plots.DPI, bbox_inches="tight")
            paths.append(out_dir / name)
    return paths


def histories(trials, metric: str, client) -> dict[str, list[float]]:
    """Objective per epoch of each trial: what the controller recorded, else the run's."""
    out = {}
    for trial in trials:
        history = list(trial.history)
        if not history and trial.run_id:
            points = sorted(client.get_metric_history(trial.run_id, metric), key=lambda m: m.step)
            history = [m.value for m in points]
        out[trial.name] = history
    return out


# -- the parent run's note --------------------------------------------------------------------
def update_note(result: SweepResult, client, console, promotion_message: str = "") -> None:
    """Rewrite the parent run's description (Markdown, shown on its run page). A failure is
    printed, never raised: the note is a view of the sweep, not part of it."""
    try:
        _write_note(result, client, promotion_message)
    except Unavailable:
        raise
    except Exception as error:
        console.print(f"[yellow]the sweep run's description was not updated: "
                      f"{escape(str(error))}[/]")


def _write_note(result: SweepResult, client, promotion_message: str) -> None:
    best = best_trial(result.trials, result.spec.objective)
    version = _model_version(client, best.run_id) if best is not None else None
    plot_files = [a.path for a in client.list_artifacts(result.parent_run_id, PLOTS_DIR)]
    client.set_tag(result.parent_run_id, MLFLOW_RUN_NOTE,
                   note_markdown(result, best, version, plot_files, promotion_message))


def _model_version(client, run_id: str):
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if not versions:
        return None
    latest = max(versions, key=lambda v: int(v.version))
    return client.get_model_version(latest.name, latest.version)  # search omits aliases


def note_markdown(result: SweepResult, best, version, plot_files: list[str],
                  promotion_message: str = "") -> str:
    spec, experiment_id, parent_run_id = result.spec, result.experiment_id, result.parent_run_id
    metric = spec.objective.metric
    trials = own_trials(result.trials)
    status = result.status or (
        "ended" if all(TrialState(t.state).ended for t in trials) else "running")
    lines = [f"### Sweep `{spec.sweep_id()}`: {spec.strategy()} search, "
             f"{spec.objective.direction} `{metric}`",
             "", f"**Status**: {status.lower()} · "
                 f"**Trials**: {len(trials)} — {_counts(trials)}", "",
             f"**Space**: {_space(spec)}", ""]
    if result.ended_because:
        lines += [f"**Ended early**: {result.ended_because}", ""]
    if result.warm_start_runs:
        lines += [f"The search was seeded with {result.warm_start_runs} earlier runs.", ""]
    if best is None:
        lines.append(f"**Best**: none yet (no trial has finished with `{metric}`)")
    else:
        link = run_link(experiment_id, best.run_id)
        lines.append(f"**Best**: [{best.name}]({link}) ({label(best, spec.varying())}): "
                     f"`{metric}` = {best.metrics[metric]:.4f}, run `{best.run_id}`")
        if version is not None:
            aliases = "".join(f" @{a}" for a in version.aliases)
            lines.append(f"**Model**: [{version.name} v{version.version}]"
                         f"(#/models/{version.name}/versions/{version.version}){aliases}")
        else:
            lines.append("**Model**: not registered (register with `driver.py --promote`)")
    if promotion_message:
        lines += ["", f"**Promotion**: {promotion_message}"]
    if plot_files:
        lines += ["", "**Plots**", ""]
        lines += [f"![{Path(p).stem}](get-artifact?path={p}&run_uuid={parent_run_id})"
                  for p in sorted(plot_files)]
    return "\n".join(lines) + "\n"


# MLflow 3.17's UI picks GenAI or model-training from this URL parameter, else from the
# browser's last choice (GenAI by default); the experiment's kind tag is for other versions.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def run_link(experiment_id: str, run_id: str) -> str:
    """A link to a run's page (model-training view) that works on any host the UI is on."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def experiment_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The experiment's runs in the UI, in the model-training view; None for a local store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}"


def _counts(trials) -> str:
    return ", ".join(counted(trials)) or "none"


def _space(spec) -> str:
    parts = [f"`{name}` ∈ {{{_some_values(values)}}}"
             for name, values in spec.grid.items()]
    for name, distribution in spec.random_space.items():
        (kind, args), = distribution.items()
        parts.append(f"`{name}` ~ {kind}{tuple(args) if kind != 'choice' else set(args)}")
    fixed = spec.params
    if fixed:
        parts.append("fixed " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    return " · ".join(parts) or "defaults only"


def _some_values(values) -> str:
    """'1, 2, 3'; past SPACE_VALUES_SHOWN values, the first of them, then '… (1000 values)'."""
    values = [str(v) for v in values]
    listed = ", ".join(values[:SPACE_VALUES_SHOWN])
    return listed if len(values) <= SPACE_VALUES_SHOWN else f"{listed}, … ({len(values)} values)"
