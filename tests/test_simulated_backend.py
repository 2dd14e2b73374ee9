"""The simulated backend (trials that log by the clock to real runs) against a sqlite store: a
whole sweep through the real controller, cancellation, adoption. No assertion on durations:
waits are hang guards, assertions are about order and content."""

import io
import threading
import time

import mlflow
import pytest
from mlflow.entities import Metric
from rich.console import Console

from celeb_smile.constants import EXIT_OK, TrialState
from celeb_smile.sweep.backends.simulated import ADOPT_TAG, SimulatedBackend, epoch_metrics
from celeb_smile.sweep.controller import SweepController
from celeb_smile.sweep.spec import SweepSpec
from celeb_smile.sweep.trial import Trial

METRICS = ("val_accuracy", "val_loss", "loss", "accuracy")


@pytest.fixture
def backend():
    backends = []

    def make(**settings):
        backends.append(SimulatedBackend(**settings))
        return backends[-1]

    yield make
    for made in backends:
        made.close()


def wait_until(condition, timeout=60.0):
    """A hang guard, not a speed figure."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_sweep_of_simulated_trials_logs_every_epoch_once_and_finishes(store, backend):
    simulated = backend(duration=1.5, epochs=3)
    rates = ["0.0001", "0.0003", "0.001", "0.003", "0.01", "0.03"]
    spec = SweepSpec(experiment="unit", params={"epochs": "3"},
                     grid={"learning_rate": rates}, max_parallel=3)
    sweep = SweepController(spec, simulated, Console(file=io.StringIO(), width=200),
                  tracking_uri=mlflow.get_tracking_uri(), poll_seconds=0.1)
    assert sweep.run() == EXIT_OK
    assert simulated.max_in_flight <= 3
    assert [t.state for t in sweep.trials] == [TrialState.FINISHED] * 6
    experiment = store.get_experiment_by_name("unit")
    runs = [r for r in store.search_runs([experiment.experiment_id])
            if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 6
    params_of = {t.run_id: t.params for t in sweep.trials}
    for run in runs:
        params = params_of[run.info.run_id]
        for name in METRICS:
            history = sorted(store.get_metric_history(run.info.run_id, name),
                             key=lambda m: m.step)
            assert [m.step for m in history] == [0, 1, 2]
            assert [m.value for m in history] == \
                [epoch_metrics(params, epoch, 3)[name] for epoch in (1, 2, 3)]
            assert [m.timestamp for m in history] == sorted(m.timestamp for m in history)
        assert run.info.end_time >= max(m.timestamp for m in store.get_metric_history(
            run.info.run_id, "val_accuracy"))
        assert run.data.tags[ADOPT_TAG].endswith(" 1.5 3")  # written by the trial, for adoption
    if not simulated.failed_requests:  # (sqlite may say "locked": that epoch is sent again)
        assert simulated.requests == 6 * (3 + 1)  # a log per epoch, the end
    # The trial's epochs ran by the clock: the slots were refilled as trials ended.
    starts = sorted(r.info.start_time for r in runs)
    ends = sorted(r.info.end_time for r in runs)
    assert starts[3] >= ends[0]


def test_a_trial_ending_by_itself_has_the_controller_poll_at_once(store, backend):
    """Polls an hour apart: the sweep ends only because each trial's end calls a poll (before,
    it waited for the next interval)."""
    simulated = backend(duration=0.6, epochs=2)
    spec = SweepSpec(experiment="unit", params={"epochs": "2"},
                     grid={"learning_rate": ["0.0001", "0.001", "0.01"]}, max_parallel=2)
    sweep = SweepController(spec, simulated, Console(file=io.StringIO(), width=200),
                            tracking_uri=mlflow.get_tracking_uri(), poll_seconds=3600)
    guard = threading.Timer(120, sweep._interrupt)  # a hang guard: it guards an hour's wait
    guard.start()
    try:
        assert sweep.run() == EXIT_OK
    finally:
        guard.cancel()
    assert [t.state for t in sweep.trials] == [TrialState.FINISHED] * 3
    assert [len(t.history) for t in sweep.trials] == [2] * 3  # every epoch read at the end


def test_a_cancelled_trial_logs_nothing_more(store, backend):
    simulated = backend(duration=30.0, epochs=3, threads=1)  # an epoch every 10 s
    experiment_id = store.create_experiment("cancel")
    run_id = store.create_run(experiment_id).info.run_id
    trial = Trial(1, {"learning_rate": "0.001", "epochs": "3"}, run_id=run_id)
    handle = simulated.launch(trial, experiment_id, mlflow.get_tracking_uri())
    wait_until(lambda: handle.logged >= 1)
    simulated.cancel(handle)
    at_cancel = store.get_metric_history(run_id, "val_accuracy")
    trial.handle = handle
    assert simulated.observe([trial])[1].state == TrialState.KILLED
    next_epoch = len(at_cancel) + 1
    time.sleep(max(0.0, handle.due(next_epoch) - time.time()) + 0.5)  # past the next epoch
    after = store.get_metric_history(run_id, "val_accuracy")
    assert after == at_cancel and len(after) >= 1
    assert handle.logged == len(after)
    assert store.get_run(run_id).info.status == "RUNNING"  # the scheduler ends it, not the trial
    assert simulated.in_flight == 0


def test_an_adopted_trial_resumes_its_clock_without_doubling_an_epoch(store, backend):
    simulated = backend(duration=3.0, epochs=3)
    experiment_id = store.create_experiment("adopt")
    params = {"learning_rate": "0.01", "epochs": "3"}
    started_at = time.time() - 10  # the old driver's trial: every epoch due by now
    run_id = store.create_run(experiment_id, tags={ADOPT_TAG: f"{started_at:.3f} 3.0 3"}
                              ).info.run_id
    for name, value in params.items():
        store.log_param(run_id, name, value)
    first = epoch_metrics(params, 1, 3)  # logged by the old driver's trial before it died
    store.log_batch(run_id, metrics=[Metric(name, value, round((started_at + 1) * 1000), 0)
                                     for name, value in first.items()])
    trial = Trial(1, params, run_id=run_id)
    handle = simulated.adopt(trial, store.get_run(run_id))
    assert handle is not None
    wait_until(lambda: handle.state.ended)
    assert handle.state == TrialState.FINISHED
    assert store.get_run(run_id).info.status == "FINISHED"
    for name in METRICS:
        assert sorted(m.step for m in store.get_metric_history(run_id, name)) == [0, 1, 2]
    assert simulated.adopt(trial, store.get_run(store.create_run(experiment_id).info.run_id)) \
        is None  # not a simulated trial's run


def test_values_depend_on_the_parameters_only():
    good = {"learning_rate": "0.001", "seed": "1"}
    assert epoch_metrics(good, 3, 10) == epoch_metrics(dict(good), 3, 10)
    assert epoch_metrics(good, 10, 10)["val_accuracy"] > \
        epoch_metrics({**good, "learning_rate": "0.1"}, 10, 10)["val_accuracy"]
    assert epoch_metrics(good, 2, 10)["val_accuracy"] < epoch_metrics(good, 9, 10)["val_accuracy"]
    assert epoch_metrics(good, 9, 10) != epoch_metrics({**good, "seed": "2"}, 9, 10)
