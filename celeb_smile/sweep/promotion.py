"""Moving `celeb-smile@champion`: only when asked (--promote), only from a sweep that ended
FINISHED, only when its best trial beats the current champion on the same objective (metric
AND direction). The version the alias points to says which sweep put it there."""

from dataclasses import dataclass

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST,
                                          ErrorCode)

from celeb_smile.constants import (CHAMPION_ALIAS, CODE_VERSION_TAG, DATASET_TAG,
                                   OBJECTIVE_DIRECTION_TAG, OBJECTIVE_METRIC_TAG,
                                   OBJECTIVE_VALUE_TAG, PROMOTED_BY_TAG, REGISTERED_MODEL,
                                   SWEEP_ID_TAG, SWEEP_RUN_TAG)
from celeb_smile.sweep.progress import params_label
from celeb_smile.sweep.result import SweepResult

SWEEP_FINISHED = RunStatus.to_string(RunStatus.FINISHED)  # the parent run's final MLflow status
_MISSING = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}


@dataclass
class Outcome:
    version: str | None  # the model version now @champion because of this sweep, else None
    message: str  # one line for the console and the parent's note


def promote(client, result: SweepResult, best) -> Outcome:
    """Register `best` (a Trial of the sweep) and move the champion alias to it, if the rules
    allow; otherwise register nothing and say why."""
    objective, model_name = result.spec.objective, result.registered_model
    if not result.promote:
        return Outcome(None, f"not promoted: without --promote nothing is registered and "
                             f"{model_name}@{CHAMPION_ALIAS} stays where it is")
    status = result.status
    if status != SWEEP_FINISHED:
        return Outcome(None, f"not promoted: the sweep ended {status}; only a sweep that "
                             f"ended FINISHED may move @{CHAMPION_ALIAS}")
    value = best.metrics.get(objective.metric) if best else None
    if value is None:
        return Outcome(None, f"not promoted: no trial produced {objective.metric}")
    champion = current_champion(client, model_name)
    if champion is not None:
        refusal = _refusal(champion, best, value, objective)
        if refusal:
            return Outcome(None, f"not promoted: {refusal}")
    version = register(client, result, best)
    client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version.version)
    client.set_model_version_tag(model_name, version.version, PROMOTED_BY_TAG,
                                 f"{result.spec.sweep_id()} {result.parent_run_id}")
    was = (f"; was v{champion.version} with {champion.tags[OBJECTIVE_VALUE_TAG]}"
           if champion is not None else "; the first champion")
    return Outcome(version.version, f"promoted: {model_name} v{version.version} is now "
                                    f"@{CHAMPION_ALIAS} ({objective.metric}={value:.4f}{was})")


def current_champion(client, model_name: str = REGISTERED_MODEL):
    """The version the alias points to, None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException as error:
        if error.error_code in _MISSING:
            return None
        raise


def _refusal(champion, best, value: float, objective) -> str:
    """Why `best` may not replace `champion`; '' when it may."""
    name = f"@{CHAMPION_ALIAS} (v{champion.version})"
    if champion.run_id and champion.run_id == best.run_id:
        return f"{name} is this sweep's best run already"
    tags = champion.tags or {}
    metric, direction = tags.get(OBJECTIVE_METRIC_TAG), tags.get(OBJECTIVE_DIRECTION_TAG)
    if not metric or not direction or OBJECTIVE_VALUE_TAG not in tags:
        return (f"{name} records no objective, so it cannot be compared; move the alias by "
                "hand if this sweep's model should replace it")
    if (metric, direction) != (objective.metric, objective.direction):
        return (f"{name} was chosen to {direction} {metric}, this sweep to "
                f"{objective.direction} {objective.metric}: not comparable")
    try:
        champion_value = float(tags[OBJECTIVE_VALUE_TAG])
    except ValueError:
        return f"{name} has an unreadable {OBJECTIVE_VALUE_TAG}: {tags[OBJECTIVE_VALUE_TAG]!r}"
    if not objective.better(value, champion_value):
        return (f"{objective.metric}={value:.4f} does not beat {name}'s "
                f"{champion_value:.4f} ({objective.direction})")
    return ""


def register(client, result: SweepResult, best):
    """The model version of `best`'s model, with a description and the sweep's tags: the
    existing one if this run was registered before, else a new one."""
    objective, model_name = result.spec.objective, result.registered_model
    parent_run_id, sweep_id = result.parent_run_id, result.spec.sweep_id()
    run = client.get_run(best.run_id)
    value = best.metrics[objective.metric]
    tags = {SWEEP_ID_TAG: sweep_id, SWEEP_RUN_TAG: parent_run_id,
            OBJECTIVE_METRIC_TAG: objective.metric,
            OBJECTIVE_DIRECTION_TAG: objective.direction, OBJECTIVE_VALUE_TAG: repr(value),
            DATASET_TAG: best.params.get("dataset") or run.data.params.get("dataset", ""),
            CODE_VERSION_TAG: result.code_version or run.data.tags.get(CODE_VERSION_TAG, "")}
    description = (f"{objective.metric} = {value:.4f} ({objective.direction}) — best trial "
                   f"{best.name} of sweep {sweep_id} (sweep run {parent_run_id}, "
                   f"trial run {best.run_id}); parameters: "
                   f"{params_label(best.params, sorted(best.params))}")
    existing = client.search_model_versions(
        f"name = '{model_name}' and run_id = '{best.run_id}'")
    if existing:
        version = existing[0]
        client.update_model_version(model_name, version.version, description=description)
        for key, tag_value in tags.items():
            client.set_model_version_tag(model_name, version.version, key, tag_value)
        return version
    _ensure_registered_model(client, model_name)
    model_id = logged_model_id(client, run)
    source = f"models:/{model_id}" if model_id else f"runs:/{best.run_id}/model"
    return client.create_model_version(model_name, source, run_id=best.run_id, tags=tags,
                                       description=description, model_id=model_id)


def _ensure_registered_model(client, model_name: str) -> None:
    try:
        client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code not in _MISSING:
            raise
        client.create_registered_model(model_name)


def logged_model_id(client, run) -> str | None:
    """MLflow 3 keeps a run's model as a LoggedModel (models:/<id>); None for older runs."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'")
    return models[0].model_id if models else None
