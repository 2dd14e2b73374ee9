"""report.py and promotion.py against a real tracking server: the experiment's view, the
parent's note, summary.csv and plots across a rerun, and the rules that move @champion.
Every test registers under a model name of its own: no alias it did not create is touched."""

import csv
import io

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from celeb_smile.constants import (BEST_RUN_TAG, CHAMPION_ALIAS, CODE_VERSION_TAG, DATASET_TAG,
                                   EXPERIMENT_KIND_MODEL_TRAINING, EXPERIMENT_KIND_TAG,
                                   OBJECTIVE_DIRECTION_TAG, OBJECTIVE_METRIC_TAG,
                                   OBJECTIVE_VALUE_TAG, PROMOTED_BY_TAG, SWEEP_ID_TAG,
                                   TrialState)
from celeb_smile.sweep import promotion, report
from tests.helpers.tracking import METRIC, finish, recorded_sweep, rerun_of, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def client(mlflow_server):
    return MlflowClient(mlflow_server)


@pytest.fixture
def model_name():
    return unique("report-model")


def test_prepare_experiment_opens_it_in_the_model_training_view(client):
    experiment_id = client.create_experiment(unique("kind"))
    report.prepare_experiment(client, experiment_id)
    tags = client.get_experiment(experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_MODEL_TRAINING


def test_finish_tags_the_best_run_and_the_note_links_it(client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep, parent = recorded_sweep(client, [[0.5, 0.6], [0.5, 0.9], [0.5, 0.7], [0.4, 0.5]])
    finish(sweep, client)
    run = client.get_run(parent)
    best = sweep.trials[1]
    assert run.data.tags[BEST_RUN_TAG] == best.run_id
    note = run.data.tags["mlflow.note.content"]
    link = report.run_link(run.info.experiment_id, best.run_id)
    assert link.startswith(f"#/experiments/{run.info.experiment_id}/runs/{best.run_id}")
    assert f"[{best.name}]({link})" in note
    assert f"run `{best.run_id}`" in note and "4 finished" in note
    assert "not registered" in note
    assert "get-artifact?path=plots/learning_curves_top.png" in note
    assert client.search_model_versions(f"run_id = '{best.run_id}'") == []
    plots = {a.path for a in client.list_artifacts(parent, "plots")}
    assert plots == {"plots/objective_per_combination.png", "plots/learning_curves_top.png"}


def summary_of(client, parent):
    return client.download_artifacts(parent, "summary.csv", str(unique("/tmp/summary")))


def test_a_rerun_that_ran_nothing_leaves_summary_and_plots_as_they_were(client, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep, parent = recorded_sweep(client, [[0.5, 0.6], [0.5, 0.9], [0.5, 0.7]])
    stopped = sweep.trials[2]
    stopped.state, stopped.reason = TrialState.STOPPED, "below the median at epoch 2"
    finish(sweep, client)
    first = open(summary_of(client, parent)).read()
    plot_sizes = {a.path: a.file_size for a in client.list_artifacts(parent, "plots")}

    again = rerun_of(sweep, parent)
    for trial in again.trials:  # were the plots redrawn from this state, they would differ
        trial.history = [0.1] * 5
    printed = finish(again, client)

    assert open(summary_of(client, parent)).read() == first
    rows = list(csv.DictReader(io.StringIO(first)))
    assert [(r["trial"], r["state"], r["sweep_run_id"]) for r in rows] == [
        (sweep.trials[1].name, TrialState.FINISHED, parent),
        (sweep.trials[2].name, TrialState.STOPPED, parent),
        (sweep.trials[0].name, TrialState.FINISHED, parent)]
    assert {a.path: a.file_size for a in client.list_artifacts(parent, "plots")} == plot_sizes
    assert "nothing ran" in printed


def champion(client, model_name):
    return client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)


def promoted(client, histories, model_name, **kwargs):
    sweep, parent = recorded_sweep(client, histories, promote=True, model_name=model_name,
                                   **kwargs)
    best = report.best_trial(sweep.trials, sweep.spec.objective)
    return sweep, parent, promotion.promote(client, sweep, best)


@pytest.mark.parametrize("promote, status", [(False, "FINISHED"), (True, "FAILED"),
                                             (True, "KILLED")])
def test_nothing_is_registered_without_promote_or_from_an_unfinished_sweep(
        client, model_name, promote, status):
    sweep, parent = recorded_sweep(client, [[0.9]], status=status, promote=promote,
                                   model_name=model_name)
    outcome = promotion.promote(client, sweep, sweep.trials[0])
    assert outcome.version is None and "not promoted" in outcome.message
    with pytest.raises(MlflowException):
        client.get_registered_model(model_name)


def test_a_promoted_version_describes_itself_and_names_its_sweep(client, model_name):
    sweep, parent, outcome = promoted(client, [[0.5, 0.7], [0.5, 0.8]], model_name)
    version = champion(client, model_name)
    assert outcome.version == version.version == "1"
    assert version.run_id == sweep.trials[1].run_id
    sweep_id = sweep.spec.sweep_id()
    assert version.tags[SWEEP_ID_TAG] == sweep_id
    assert version.tags[PROMOTED_BY_TAG] == f"{sweep_id} {parent}"
    assert (version.tags[OBJECTIVE_METRIC_TAG], version.tags[OBJECTIVE_DIRECTION_TAG],
            float(version.tags[OBJECTIVE_VALUE_TAG])) == (METRIC, "maximize", 0.8)
    assert version.tags[DATASET_TAG] == "synthetic"
    assert version.tags[CODE_VERSION_TAG] == "code-1"
    for words in ("val_accuracy = 0.8000", sweep_id, "convolutions=2", "epochs=3"):
        assert words in version.description


def test_only_a_better_sweep_on_the_same_objective_moves_the_champion(client, model_name):
    promoted(client, [[0.8]], model_name)
    _, _, worse = promoted(client, [[0.7]], model_name)
    assert worse.version is None and "does not beat" in worse.message
    _, _, equal = promoted(client, [[0.8]], model_name)
    assert equal.version is None
    _, _, other = promoted(client, [[0.1]], model_name, direction="minimize")
    assert other.version is None and "not comparable" in other.message
    assert champion(client, model_name).version == "1"
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 1

    better_sweep, better_parent, better = promoted(client, [[0.85]], model_name)
    now = champion(client, model_name)
    assert better.version == now.version == "2"
    assert now.tags[PROMOTED_BY_TAG] == f"{better_sweep.spec.sweep_id()} {better_parent}"


def test_a_champion_without_a_recorded_objective_is_left_alone(client, model_name):
    sweep, parent = recorded_sweep(client, [[0.5]])
    client.create_registered_model(model_name)
    by_hand = client.create_model_version(model_name, f"runs:/{sweep.trials[0].run_id}/model",
                                          run_id=sweep.trials[0].run_id)
    client.set_registered_model_alias(model_name, CHAMPION_ALIAS, by_hand.version)
    _, _, outcome = promoted(client, [[0.99]], model_name)
    assert outcome.version is None and "records no objective" in outcome.message
    assert champion(client, model_name).version == by_hand.version


def test_finish_with_promote_names_the_model_version_in_the_note(client, model_name, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep, parent = recorded_sweep(client, [[0.6], [0.7]], promote=True, model_name=model_name)
    finish(sweep, client)
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert f"[{model_name} v1](#/models/{model_name}/versions/1) @champion" in note
    assert "promoted:" in note
