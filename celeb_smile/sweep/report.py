"""The end of a sweep: summary table sorted by the objective, the best run tagged on the parent
and its model registered with an alias, and plots logged to the parent run."""

import csv
import io
from pathlib import Path

import mlflow
from rich.table import Table

from celeb_smile.sweep.progress import STATE_STYLES, label

REGISTERED_MODEL = "celeb-smile"
CHAMPION_ALIAS = "champion"
BEST_RUN_TAG = "celeb_smile.best_run_id"
TOP_CURVES = 3  # learning curves drawn for this many of the best runs


def ranked(trials, objective) -> list:
    """Trials best first; those without the objective metric last, in their original order."""
    scored = [t for t in trials if objective.metric in t.metrics]
    unscored = [t for t in trials if objective.metric not in t.metrics]
    scored.sort(key=lambda t: t.metrics[objective.metric],
                reverse=objective.direction == "maximize")
    return scored + unscored


def best_trial(trials, objective):
    candidates = [t for t in ranked(trials, objective)
                  if t.state in ("FINISHED", "SKIPPED") and objective.metric in t.metrics]
    return candidates[0] if candidates else None


def finish(sweep, parent_run_id: str) -> None:
    spec, console = sweep.spec, sweep.console
    rows = ranked(sweep.trials, spec.objective)
    console.print(summary_table(rows, spec.varying(), spec.objective.metric))
    mlflow.log_text(summary_csv(rows, spec.varying(), spec.objective.metric), "summary.csv")
    for trial in rows:
        if trial.state == "FAILED":
            console.print(f"[red]{trial.name} failed[/]: {trial.reason}", highlight=False)
    out_dir = Path(".sweep") / spec.sweep_id()
    try:
        for path in save_plots(rows, spec, sweep.client, out_dir):
            mlflow.log_artifact(str(path), "plots")
        console.print(f"plots: {out_dir}/ (also on the parent run)")
    except Exception as error:  # plots are a convenience: never lose the sweep over them
        console.print(f"[yellow]plots skipped: {error}[/]")
    best = best_trial(sweep.trials, spec.objective)
    if best is None:
        console.print("[red]no trial produced the objective metric[/]")
        return
    mlflow.set_tag(BEST_RUN_TAG, best.run_id)
    mlflow.log_metric(f"best_{spec.objective.metric}", best.metrics[spec.objective.metric])
    version = register(best.run_id, console)
    console.print(
        f"best: {best.name} ({label(best, spec.varying())}) "
        f"{spec.objective.metric}={best.metrics[spec.objective.metric]:.4f} run {best.run_id}"
        + (f"; model {REGISTERED_MODEL} v{version} @{CHAMPION_ALIAS}" if version else ""),
        highlight=False)


def summary_table(rows, varying, metric) -> Table:
    table = Table(title="sweep summary (best first)", title_justify="left")
    for column in ("rank", "trial", *varying, "state", metric, "run id"):
        table.add_column(column)
    for rank, trial in enumerate(rows, 1):
        value = trial.metrics.get(metric)
        style = STATE_STYLES.get(trial.state, "")
        table.add_row(str(rank), trial.name, *(trial.params.get(n, "") for n in varying),
                      f"[{style}]{trial.state}[/]", f"{value:.4f}" if value is not None else "-",
                      trial.run_id or "-")
    return table


def summary_csv(rows, varying, metric) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "trial", *varying, "state", metric, "run_id", "reason"])
    for rank, trial in enumerate(rows, 1):
        writer.writerow([rank, trial.name, *(trial.params.get(n, "") for n in varying),
                         trial.state, trial.metrics.get(metric, ""), trial.run_id or "",
                         trial.reason])
    return buffer.getvalue()


def register(run_id: str, console) -> str | None:
    """Register the run's model (once) and point the champion alias at it."""
    client = mlflow.MlflowClient()
    try:
        existing = client.search_model_versions(
            f"name = '{REGISTERED_MODEL}' and run_id = '{run_id}'")
        version = existing[0] if existing else mlflow.register_model(
            logged_model_uri(run_id), REGISTERED_MODEL)
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version.version)
        return version.version
    except Exception as error:
        console.print(f"[yellow]model not registered: {error}[/]")
        return None


def logged_model_uri(run_id: str) -> str:
    """MLflow 3 keeps a run's model as a LoggedModel (models:/<id>); runs:/ for older runs."""
    run = mlflow.get_run(run_id)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'", output_format="list")
    return f"models:/{models[0].model_id}" if models else f"runs:/{run_id}/model"


def save_plots(rows, spec, client, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    metric, varying = spec.objective.metric, spec.varying()
    scored = [t for t in rows if metric in t.metrics]

    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(scored), 2) + 1.2))
    bars = ax.barh([f"{t.name}: {label(t, varying)}" for t in scored],
                   [t.metrics[metric] for t in scored], color="tab:blue")
    ax.bar_label(bars, fmt="%.4f", padding=3)
    ax.margins(x=0.15)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.set_title(f"{metric} per combination (best first)")
    fig.tight_layout()
    objective_png = out_dir / "objective_per_combination.png"
    fig.savefig(objective_png, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for trial in scored[:TOP_CURVES]:
        history = sorted(client.get_metric_history(trial.run_id, metric), key=lambda m: m.step)
        ax.plot([m.step + 1 for m in history], [m.value for m in history], marker="o",
                label=f"{trial.name}: {label(trial, varying)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves of the top {min(TOP_CURVES, len(scored))} runs")
    if scored:
        ax.legend(fontsize="small")
    fig.tight_layout()
    curves_png = out_dir / "learning_curves_top.png"
    fig.savefig(curves_png, dpi=100)
    plt.close(fig)
    return [objective_png, curves_png]


def prepare_experiment(client, experiment_id: str) -> None:  # TEMPORARY until report lands
    pass


def update_note(sweep, parent_run_id: str) -> None:  # TEMPORARY until report lands
    pass


def params_label(params, varying) -> str:  # TEMPORARY until report lands
    return ", ".join(f"{name}={params.get(name, '')}" for name in varying) or "defaults"
