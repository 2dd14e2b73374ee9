"""Sweeps recorded on a real tracking server without training anything: a parent run and one
child run per trial with its objective history and a (weightless) LoggedModel."""

import uuid

from mlflow.entities import LoggedModelStatus, Metric, Param

from celeb_smile.constants import SWEEP_ID_TAG, SWEEP_RUN_TAG, TrialState
from celeb_smile.sweep.trial import Trial
from rich.console import Console

from celeb_smile.sweep import report
from celeb_smile.sweep.result import SweepResult
from tests.helpers.fake_sweep import spec_with

METRIC = "val_accuracy"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def recorded_sweep(client, histories: list[list[float]], experiment_id: str | None = None,
                   status="FINISHED", promote=False, model_name=None, direction="maximize"):
    """A SweepResult whose trials (convolutions=1..n, objective = last of each history) have
    real runs under a real parent run. Returns (sweep, parent_run_id)."""
    experiment_id = experiment_id or client.create_experiment(unique("report"))
    spec = spec_with({"convolutions": [str(i) for i in range(1, len(histories) + 1)]},
                     direction=direction, experiment=experiment_id)
    sweep_id = spec.sweep_id()
    parent = client.create_run(experiment_id, tags={SWEEP_ID_TAG: sweep_id},
                               run_name=f"sweep-{sweep_id}").info.run_id
    trials = [record_trial(client, experiment_id, parent, sweep_id, index, history)
              for index, history in enumerate(histories, 1)]
    client.set_terminated(parent, status)
    sweep = SweepResult(spec, trials, experiment_id, parent, "code-1", status, promote)
    if model_name:
        sweep.registered_model = model_name
    return sweep, parent


def record_trial(client, experiment_id, parent, sweep_id, index, history) -> Trial:
    trial = Trial(index, {"convolutions": str(index), "epochs": "3", "dataset": "synthetic"},
                  sweep_id=sweep_id, state=TrialState.FINISHED, sweep_run_id=parent,
                  history=list(history), metrics={METRIC: history[-1]})
    run_id = client.create_run(experiment_id, run_name=trial.name,
                               tags={"mlflow.parentRunId": parent, SWEEP_ID_TAG: sweep_id,
                                     SWEEP_RUN_TAG: parent}).info.run_id
    client.log_batch(run_id, metrics=[Metric(METRIC, v, 0, step)
                                      for step, v in enumerate(history)],
                     params=[Param(k, v) for k, v in trial.params.items()])
    model = client.create_logged_model(experiment_id, source_run_id=run_id, name="model")
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.set_terminated(run_id, "FINISHED")
    trial.run_id = run_id
    return trial


def rerun_of(sweep, parent_run_id: str) -> SweepResult:
    """The same sweep run again with nothing to do: every trial SKIPPED (finished earlier)."""
    trials = [Trial(t.index, dict(t.params), sweep_id=t.sweep_id, state=TrialState.SKIPPED,
                    run_id=t.run_id, sweep_run_id=parent_run_id, history=list(t.history),
                    metrics=dict(t.metrics)) for t in sweep.trials]
    return SweepResult(sweep.spec, trials, sweep.experiment_id, parent_run_id, "code-1",
                       "FINISHED", sweep.promote)


def finish(result: SweepResult, client) -> str:
    """report.finish, and what it printed."""
    console = Console(width=200, record=True)
    report.finish(result, client, console)
    return console.export_text()
