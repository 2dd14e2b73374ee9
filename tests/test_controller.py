"""The controller's core loop against an in-process backend and a real sqlite tracking store:
max-parallel, the failures budget, retried and failed submissions, a deleted Job, adoption of a
dead driver's trials, cancellation, the lease."""

import io
import signal
import threading
import time

import mlflow
import pytest
from mlflow.exceptions import RestException
from rich.console import Console

from celeb_smile.constants import (ATTEMPT_TAG, CANCEL_TAG, CODE_VERSION_TAG, DISRUPTIONS_TAG,
                                   EXIT_BAD_INPUT,
                                   EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED,
                                   EXIT_TRIAL_FAILED, LEASE_TAG, PARAMS_TAG, PAUSE_TAG,
                                   PAUSED_TAG,
                                   REASON_TAG, RUNG_TAG, STOPPED_TAG, SWEEP_ID_TAG,
                                   TRIAL_INDEX_TAG)
from celeb_smile.constants import TrialState
from celeb_smile.retry import Unavailable
from celeb_smile.sweep.controller import END_POLL_GAP_S, RUN_CREATIONS_AT_ONCE, SweepController
from celeb_smile.sweep.spec import EarlyStopping, SweepSpec
from celeb_smile.sweep.tracking import RunSnapshot
from celeb_smile.sweep.trial import Trial
from tests.helpers.fake_backend import ADOPT_TAG, EVICTED, UNSCHEDULABLE, FakeBackend


def make_sweep(backend, grid, **settings) -> SweepController:
    spec = SweepSpec(experiment="unit", params={"epochs": "3"}, grid=grid,
                     max_parallel=settings.pop("max_parallel", 2),
                     max_failures=settings.pop("max_failures", None),
                     early_stopping=settings.pop("early_stopping", None))
    console = Console(file=io.StringIO(), width=200)
    return SweepController(spec, backend, console, tracking_uri=mlflow.get_tracking_uri(),
                 **{"poll_seconds": 0, **settings})


def trial_runs(client) -> list:
    experiment = client.get_experiment_by_name("unit")
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_every_trial_runs_once_with_at_most_max_parallel_in_flight(store):
    backend = FakeBackend()
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02", "0.03", "0.04", "0.05"]})
    assert sweep.run() == EXIT_OK
    assert backend.max_in_flight == 2
    runs = trial_runs(store)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 5
    names = {r.info.run_name for r in runs}
    assert names == {f"{sweep.sweep_id}/trial-0{i}" for i in range(1, 6)}
    for run in runs:
        assert run.data.tags[SWEEP_ID_TAG] == sweep.sweep_id
        assert run.data.tags[CODE_VERSION_TAG] == sweep.record.code_version
        assert run.data.tags[PARAMS_TAG].startswith("learning_rate=0.0")
        history = store.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [0, 1, 2]  # one point per epoch, no duplicates
        assert store.list_artifacts(run.info.run_id, "logs")[0].path == "logs/trial.log"


def test_the_loop_refills_slots_while_an_ended_trials_end_is_still_being_recorded(store):
    """The first trial's log is read beside the loop, which meanwhile launches the third trial
    (a loop that recorded inline would read it itself, with only two trials launched)."""
    third_launched, seen = threading.Event(), []

    def launch(trial, *args):
        handle = FakeBackend.launch(backend, trial, *args)
        if len(backend.launched) == 3:
            third_launched.set()
        return handle

    def hold_the_first_log(backend, handle):
        if handle is backend.launched[0]:
            inline = threading.current_thread() is threading.main_thread()
            if not inline:
                third_launched.wait(timeout=600)  # a hang guard: `seen` says what happened
            seen.append(("inline" if inline else "beside", len(backend.launched)))

    backend = FakeBackend(on_logs=hold_the_first_log)
    backend.launch = launch
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02", "0.03"]}, max_parallel=1)
    assert sweep.run() == EXIT_OK
    assert seen == [("beside", 3)]
    assert sorted(r.info.status for r in trial_runs(store)) == ["FINISHED"] * 3
    first = store.get_run(backend.launched[0].run_id)
    assert store.list_artifacts(first.info.run_id, "logs")[0].path == "logs/trial.log"


def test_a_slot_is_refilled_once_its_trial_ended_its_run_before_its_pod_exits(store):
    backend = FakeBackend(exit_polls=50)
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02", "0.03"]}, max_parallel=1)
    assert sweep.run() == EXIT_OK
    assert backend.polls < 50  # never waited for a "pod" to exit
    assert sorted(r.info.status for r in trial_runs(store)) == ["FINISHED"] * 3
    assert [t.state for t in sweep.trials] == [TrialState.FINISHED] * 3


def test_polls_come_sooner_while_a_trial_is_past_its_last_epoch(store):
    sweep = make_sweep(FakeBackend(), {"learning_rate": ["0.01"]}, poll_seconds=3.0)
    trial = Trial(1, {"epochs": "3"}, state=TrialState.RUNNING, history=[0.5, 0.6])
    sweep.trials.append(trial)
    assert sweep._poll_interval() == 3.0
    trial.history.append(0.7)
    assert sweep._poll_interval() < 1.0
    trial.state = TrialState.FINISHED
    assert sweep._poll_interval() == 3.0


def test_a_poll_taking_time_shortens_the_wait_for_the_next(store):
    sweep = make_sweep(FakeBackend(), {"learning_rate": ["0.01"]}, poll_seconds=3.0)
    assert sweep._until_next_poll(1.0) == 2.0
    assert sweep._until_next_poll(5.0) == 0.0


def test_an_end_the_backend_reports_brings_the_next_poll_forward(store):
    backend = FakeBackend()
    sweep = make_sweep(backend, {"learning_rate": ["0.01"]}, poll_seconds=3.0)
    assert sweep._until_next_poll(0.05) == pytest.approx(2.95)
    backend.on_end()  # from the backend's thread, as a process exits
    assert sweep._wakeup.is_set()
    assert sweep._until_next_poll(0.05) == pytest.approx(END_POLL_GAP_S - 0.05)
    assert sweep._until_next_poll(1.0) == 0.0


def test_a_remote_backend_is_observed_while_the_runs_are_read(store):
    """The cluster's listing and the tracking query of a poll go out together: the fake
    cluster answers only once the tracking read has begun (in order, one would wait for the
    other)."""
    read_begun, waits = threading.Event(), []

    def answer_after_the_read(backend):
        waits.append(read_begun.wait(timeout=60))  # a hang guard, not a speed figure
        read_begun.clear()

    sweep = make_sweep(FakeBackend(remote=True, on_poll=answer_after_the_read),
                       {"learning_rate": ["0.01", "0.02"]})
    snapshots = sweep.tracking.snapshots

    def read(*args):
        read_begun.set()
        return snapshots(*args)

    sweep.tracking.snapshots = read
    assert sweep.run() == EXIT_OK
    assert waits and all(waits), waits
    assert [t.state for t in sweep.trials] == [TrialState.FINISHED] * 2


def test_no_submission_after_the_failures_budget_is_spent(store):
    backend = FakeBackend()
    sweep = make_sweep(backend, {"convolutions": ["9", "1", "2", "3"]}, max_parallel=1,
                       max_failures=0)
    assert sweep.run() == EXIT_TRIAL_FAILED
    assert len(backend.launched) == 1
    (failed,) = trial_runs(store)
    assert failed.info.status == "FAILED"
    assert "exit code 1" in failed.data.tags[REASON_TAG]
    assert "max_failures" in sweep.ended_because


def test_a_transient_launch_failure_is_retried_without_a_second_run(store):
    backend = FakeBackend(blips=1)
    sweep = make_sweep(backend, {"learning_rate": ["0.01"]})
    assert sweep.run() == EXIT_OK
    assert len(backend.launched) == 1
    assert [r.info.status for r in trial_runs(store)] == ["FINISHED"]


def test_a_launch_that_fails_for_good_ends_its_run_failed_with_the_reason(store):
    sweep = make_sweep(FakeBackend(reject=True), {"learning_rate": ["0.01", "0.02"]})
    assert sweep.run() == EXIT_TRIAL_FAILED
    runs = trial_runs(store)
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert all("submission failed: Job rejected" in r.data.tags[REASON_TAG] for r in runs)


def test_a_deleted_job_fails_its_trial_within_one_poll(store):
    def delete_first_job(backend):
        if backend.polls == 2:
            backend.launched[0].deleted = True

    backend = FakeBackend(on_poll=delete_first_job, gang=2)
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02"]})
    assert sweep.run() == EXIT_TRIAL_FAILED
    deleted = next(t for t in sweep.trials if t.run_id == backend.launched[0].run_id)
    assert deleted.reason.startswith("Job deleted")
    assert store.get_run(deleted.run_id).info.status == "FAILED"
    assert store.get_run(deleted.run_id).data.tags[REASON_TAG].startswith("Job deleted")


def test_interrupting_cancels_the_trials_in_flight_and_kills_their_runs(store):
    def interrupt(backend):
        if backend.polls == 2:
            sweep.interrupted.set()

    backend = FakeBackend(on_poll=interrupt, gang=2)
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02", "0.03"]})
    assert sweep.run() == EXIT_INTERRUPTED
    assert all(h.cancelled for h in backend.launched)
    assert sorted(r.info.status for r in trial_runs(store)) == ["KILLED", "KILLED"]


def test_a_wave_of_trials_has_its_runs_created_together(store):
    """Each run of the first wave waits at a barrier for the other: created one after the
    other, the first would wait alone until the barrier breaks."""
    wave = threading.Barrier(2, timeout=60)  # a hang guard, not a speed figure
    backend = FakeBackend()
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02", "0.03"]})
    create_run = sweep.tracking.create_run
    arrived = []

    def create_in_wave(*args):
        arrived.append(args[1])
        if len(arrived) <= 2:
            wave.wait()
        return create_run(*args)

    sweep.tracking.create_run = create_in_wave
    assert sweep.run() == EXIT_OK
    assert len(backend.launched) == 3 and not wave.broken


def test_a_round_creates_its_runs_a_few_at_a_time_and_launches_every_trial_once(store):
    """A wave of 12 trials: never more than RUN_CREATIONS_AT_ONCE runs being created, yet
    more than one at a time, and each trial launched once. The first creation waits for a
    second to begin (so "more than one" depends on no timing); each is then held a moment, so
    that a wave sent out all at once would overlap beyond the bound."""
    backend = FakeBackend()
    rates = [f"0.0{i:02d}" for i in range(1, 13)]
    sweep = make_sweep(backend, {"learning_rate": rates}, max_parallel=12)
    create_run, log_tags = sweep.tracking.create_run, sweep.tracking.log_tags
    lock, creating, most = threading.Lock(), set(), []
    overlapped = threading.Event()

    def held(name, call, *args):
        with lock:
            creating.add(name)
            most.append(len(creating))
            if len(creating) > 1:
                overlapped.set()
        overlapped.wait(timeout=30)  # a hang guard: a serial controller fails the test below
        time.sleep(0.05)
        result = call(*args)
        with lock:
            creating.discard(name)
        return result

    def counted_create(*args):
        return held(args[1], create_run, *args)

    def counted_log_tags(run_id, tags, params=None):
        if params:  # the creation's second half: the trial's tags and parameters
            return held(run_id, log_tags, run_id, tags, params)
        return log_tags(run_id, tags, params)

    sweep.tracking.create_run, sweep.tracking.log_tags = counted_create, counted_log_tags
    assert sweep.run() == EXIT_OK
    assert 1 < max(most) <= RUN_CREATIONS_AT_ONCE
    launched = sorted(h.params["learning_rate"] for h in backend.launched)
    assert len(set(launched)) == 12 and launched == sorted(t.params["learning_rate"]
                                                           for t in sweep.trials)
    assert len(trial_runs(store)) == 12


def test_a_round_interrupted_while_its_runs_are_created_creates_no_more(store):
    """Ctrl-C during the first creation of a 10-trial wave: the creations already under way
    end (their runs KILLED), the rest never get a run (nor, unless chosen already, a trial),
    and nothing launches."""
    backend = FakeBackend()
    sweep = make_sweep(backend, {"learning_rate": [f"0.0{i:02d}" for i in range(1, 11)]},
                       max_parallel=10)
    create_run = sweep.tracking.create_run

    def interrupt_then_create(*args):
        sweep.interrupted.set()
        return create_run(*args)

    sweep.tracking.create_run = interrupt_then_create
    assert sweep.run() == EXIT_INTERRUPTED
    assert backend.launched == []
    runs = trial_runs(store)
    assert 1 <= len(runs) <= RUN_CREATIONS_AT_ONCE
    assert {r.info.status for r in runs} == {"KILLED"}
    assert {t.state for t in sweep.trials} == {TrialState.KILLED}  # those chosen so far
    assert {t.reason for t in sweep.trials} == {"sweep interrupted before its Job was created"}


def test_a_trial_whose_run_was_created_as_the_sweep_was_interrupted_never_launches(store):
    backend = FakeBackend()
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02"]})
    create_run = sweep.tracking.create_run

    def create_then_interrupt(*args):
        run_id = create_run(*args)
        sweep.interrupted.set()  # Ctrl-C while the wave's runs were being created
        return run_id

    sweep.tracking.create_run = create_then_interrupt
    assert sweep.run() == EXIT_INTERRUPTED
    assert backend.launched == []
    # The second run exists only if its creation began before the first one's returned.
    statuses = [r.info.status for r in trial_runs(store)]
    assert 1 <= len(statuses) <= 2 and set(statuses) == {"KILLED"}
    assert {t.reason for t in sweep.trials} == {"sweep interrupted before its Job was created"}


def test_a_restarted_driver_adopts_trials_in_flight_instead_of_resubmitting(store):
    first = FakeBackend(on_poll=lambda b: len(b.launched) == 2 and
                        (_ for _ in ()).throw(SystemExit))
    sweep = make_sweep(first, {"learning_rate": ["0.01", "0.02", "0.03"]})
    with pytest.raises(SystemExit):  # the driver dies abruptly with its first wave running
        sweep.run()
    mlflow.end_run()
    _expire_lease(store, sweep)
    assert len(first.launched) == 2
    second = FakeBackend()
    again = make_sweep(second, {"learning_rate": ["0.01", "0.02", "0.03"]})
    assert again.run() == EXIT_OK
    assert len(second.launched) == 1  # only the trial never submitted
    assert second.max_in_flight <= 2
    runs = trial_runs(store)
    assert sorted(r.data.tags[TRIAL_INDEX_TAG] for r in runs) == ["1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_second_driver_on_a_running_sweep_refuses_and_creates_nothing(store):
    sweep = make_sweep(FakeBackend(), {"learning_rate": ["0.01"]})
    assert sweep.run() == EXIT_OK
    parent = next(r for r in store.search_runs(
        [store.get_experiment_by_name("unit").experiment_id])
        if "mlflow.parentRunId" not in r.data.tags)
    store.set_tag(parent.info.run_id, LEASE_TAG, f"elsewhere:1:abc {time.time() + 60:.0f}")
    backend = FakeBackend()
    again = make_sweep(backend, {"learning_rate": ["0.01"]}, rerun=True)
    assert again.run() == EXIT_BAD_INPUT
    assert backend.launched == [] and len(trial_runs(store)) == 1


def _expire_lease(client, sweep) -> None:
    client.set_tag(sweep.record.parent_id, LEASE_TAG, "dead-host:1:x 0")


def test_adopted_trials_carry_the_tag_that_finds_them(store):
    backend = FakeBackend()
    sweep = make_sweep(backend, {"learning_rate": ["0.01"]})
    sweep.run()
    (run,) = trial_runs(store)
    assert run.data.tags[ADOPT_TAG] == "yes"


def test_an_outage_longer_than_the_limit_fails_the_trials_and_cancels_them(store):
    def cluster_gone(backend):
        if backend.polls > 2:
            raise ConnectionError("connection refused")

    backend = FakeBackend(on_poll=cluster_gone, gang=2)
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02"]}, outage_seconds=1)
    assert sweep.run() == EXIT_TRIAL_FAILED
    assert all(h.cancelled for h in backend.launched)
    runs = trial_runs(store)
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert all("outage" in r.data.tags[REASON_TAG] for r in runs)


def test_a_warm_started_search_is_told_the_finished_trials_of_earlier_sweeps(store):
    def tpe_sweep(seed, max_trials, **settings):
        spec = SweepSpec(experiment="unit", params={"epochs": "3"}, search="tpe", seed=seed,
                         random_space={"learning_rate": {"loguniform": [0.001, 0.05]}},
                         max_trials=max_trials)
        return SweepController(spec, FakeBackend(), Console(file=io.StringIO()), poll_seconds=0,
                     tracking_uri=mlflow.get_tracking_uri(), **settings)

    first = tpe_sweep(seed=1, max_trials=3)
    assert first.run() == EXIT_OK
    mlflow.end_run()
    second = tpe_sweep(seed=2, max_trials=2, warm_start=True)
    assert second.run() == EXIT_OK
    assert sorted(t.run_id for t in second.warm) == sorted(t.run_id for t in first.trials)
    assert all(t.state == TrialState.FINISHED and t.warm_start for t in second.warm)
    assert len(second.trials) == 2  # warm-start trials do not count toward max_trials


def test_goal_reached_ends_the_sweep_and_stops_the_trials_in_flight(store):
    sweep = make_sweep(FakeBackend(), {"learning_rate": ["0.05", "0.001", "0.002", "0.003"]},
                       max_parallel=1)
    sweep.spec.goal = 0.7
    assert sweep.run() == EXIT_OK
    assert "goal" in sweep.ended_because
    assert [t.state for t in sweep.trials] == [TrialState.FINISHED]


def test_the_trial_epochs_budget_closes_submissions_and_running_trials_finish(store):
    sweep = make_sweep(FakeBackend(), {"learning_rate": ["0.01", "0.02", "0.03", "0.04"]})
    sweep.spec.budget.trial_epochs = 3
    assert sweep.run() == EXIT_OK
    assert "budget" in sweep.ended_because
    assert len(sweep.trials) == 2  # both first trials finish their 3 epochs; no third
    assert all(t.state == TrialState.FINISHED for t in sweep.trials)


def test_a_rule_judging_another_metric_reads_that_metric_from_the_runs(store):
    asha_on_loss = EarlyStopping("asha", grace_period=1, reduction_factor=2, metric="val_loss")
    # The better trial first: of two values arriving in the same poll, the lower index's is
    # compared first (ASHA promotes the first to reach a rung).
    sweep = make_sweep(FakeBackend(), {"learning_rate": ["0.04", "0.01"]},
                       early_stopping=asha_on_loss)
    assert sweep.run() == EXIT_OK
    assert [t.state for t in sweep.trials] == [TrialState.FINISHED, TrialState.STOPPED]
    stopped = store.get_run(sweep.trials[1].run_id)
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags[STOPPED_TAG] == (
        "stopped by asha at epoch 1: val_loss 0.7 is not in the best 1 of 2 trials at rung 1, "
        "whose cut-off is 0.55.")
    assert sweep.trials[0].watched["val_loss"] == [0.55, 0.4, 0.325]  # read to the end


def test_a_poll_takes_one_new_epoch_from_its_read_of_the_runs_and_reads_further_ones(store):
    """At 50 trials in flight nearly every trial is one epoch ahead of the last poll: that epoch
    comes with the poll's one query of the runs. Trials two epochs ahead have their series
    read (one request per series, for all of them)."""
    def two_epochs_at_the_second_poll(backend):
        if backend.polls == 2:
            for handle in backend.launched:
                backend._step(handle)  # an epoch more before this poll's own

    median_on_loss = EarlyStopping("median", min_trials_required=5, metric="val_loss")
    sweep = make_sweep(FakeBackend(on_poll=two_epochs_at_the_second_poll, gang=2),
                       {"learning_rate": ["0.04", "0.01"]}, early_stopping=median_on_loss)
    reads = []
    read_histories = sweep.tracking.histories
    sweep.tracking.histories = lambda run_ids, metric: (
        reads.append((metric, len(run_ids))) or read_histories(run_ids, metric))
    assert sweep.run() == EXIT_OK
    assert reads == [("val_accuracy", 2), ("val_loss", 2)]  # the second poll's, only
    for trial in sweep.trials:
        for metric, series in (("val_accuracy", trial.history),
                               ("val_loss", trial.watched["val_loss"])):
            logged = store.get_metric_history(trial.run_id, metric)
            assert series == [m.value for m in sorted(logged, key=lambda m: m.step)]
            assert len(series) == 3


def test_trial_names_identify_their_sweep(store):
    first = make_sweep(FakeBackend(), {"learning_rate": ["0.01", "0.02"]})
    second = make_sweep(FakeBackend(), {"learning_rate": ["0.03", "0.04"]})
    assert first.run() == EXIT_OK
    mlflow.end_run()
    assert second.run() == EXIT_OK
    names = [r.info.run_name for r in trial_runs(store)]
    assert len(names) == len(set(names)) == 4
    assert {n.split("/")[0] for n in names} == {first.sweep_id, second.sweep_id}


def test_a_run_its_pod_ended_killed_ends_with_the_drivers_status_and_reason(store):
    """Its Job deleted behind the driver's back, the pod's SIGTERM handler ends the run KILLED
    first; the driver, which fails the trial, has the last word on both status and reason."""
    def delete_and_terminate(backend):
        if backend.polls == 2:
            handle = backend.launched[0]
            handle.deleted = True
            store.set_tag(handle.run_id, REASON_TAG, "terminated by SIGTERM")
            store.set_terminated(handle.run_id, "KILLED")

    backend = FakeBackend(on_poll=delete_and_terminate)
    sweep = make_sweep(backend, {"learning_rate": ["0.01"]})
    assert sweep.run() == EXIT_TRIAL_FAILED
    run = store.get_run(backend.launched[0].run_id)
    assert (run.info.status, run.data.tags[REASON_TAG]) == ("FAILED", "Job deleted")


def test_a_trial_whose_run_finished_counts_as_finished_whatever_its_job_did_after(store):
    sweep = make_sweep(FakeBackend(), {"learning_rate": ["0.01"]})
    trial = Trial(1, {"epochs": "3"}, state=TrialState.FAILED, reason="Job x deleted")
    sweep._settle(trial, RunSnapshot("r", "FINISHED", {"val_accuracy": 0.9}, {}, {}, {}))
    assert (trial.state, trial.reason) == (TrialState.FINISHED, "")


def test_the_goal_reached_while_another_trial_is_in_flight_stops_that_trial(store):
    backend = FakeBackend()
    sweep = make_sweep(backend, {"epochs": ["2", "10"], "learning_rate": ["0.05"]})
    sweep.spec.goal = 0.6  # the 2-epoch trial ends at 0.66; the other is at epoch 3 of 10
    assert sweep.run() == EXIT_OK
    short, long = sweep.trials
    assert short.state == TrialState.FINISHED
    assert (long.state, long.reason) == (TrialState.STOPPED,
                                         f"sweep goal reached by {short.name}")
    assert backend.launched[1].cancelled and not backend.launched[0].cancelled
    assert store.get_run(long.run_id).info.status == "KILLED"
    assert sweep.ended_because == f"goal val_accuracy=0.6 reached by {short.name}"


def test_a_trial_pending_longer_than_the_pending_timeout_fails_with_why_it_waited(store):
    backend = FakeBackend()
    sweep = make_sweep(backend, {"convolutions": ["8", "1"]}, pending_timeout=0)
    assert sweep.run() == EXIT_TRIAL_FAILED
    stuck, ran = sweep.trials
    assert stuck.state == TrialState.FAILED and ran.state == TrialState.FINISHED
    assert stuck.reason.startswith("pending for ") and stuck.reason.endswith(
        f"s (--pending-timeout): {UNSCHEDULABLE}")
    assert backend.launched[0].cancelled
    assert store.get_run(stuck.run_id).data.tags[REASON_TAG] == stuck.reason


def test_a_second_interruption_quits_at_once_deleting_the_jobs_and_leaving_runs_to_adopt(store):
    def interrupt_twice(backend):
        if backend.polls == 2:
            sweep._on_signal(signal.SIGINT, None)  # the first: cancel what is in flight...
            sweep._on_signal(signal.SIGINT, None)  # ...the second, before that is done

    backend = FakeBackend(on_poll=interrupt_twice, gang=2)
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02", "0.03"]})
    assert sweep.run() == EXIT_INTERRUPTED
    assert len(backend.launched) == 2 and all(h.cancelled for h in backend.launched)
    assert [r.info.status for r in trial_runs(store)] == ["RUNNING", "RUNNING"]


def test_the_tracking_server_failing_during_reads_is_ridden_out(store):
    failures = []

    def unavailable_twice(*args):
        if len(failures) < 2:
            failures.append(1)
            raise Unavailable("read the runs in flight: ConnectionRefusedError")
        return snapshots(*args)

    sweep = make_sweep(FakeBackend(), {"learning_rate": ["0.01", "0.02"]})
    snapshots = sweep.tracking.snapshots
    sweep.tracking.snapshots = unavailable_twice
    assert sweep.run() == EXIT_OK
    assert len(failures) == 2
    assert "tracking server unreachable" in sweep.console.file.getvalue()
    assert sorted(r.info.status for r in trial_runs(store)) == ["FINISHED", "FINISHED"]
    for run in trial_runs(store):  # every epoch read, none twice
        assert [m.step for m in store.get_metric_history(run.info.run_id, "val_accuracy")] == \
            [0, 1, 2]


def test_the_rung_a_trial_passed_is_recorded_on_its_run(store):
    asha = EarlyStopping("asha", grace_period=1, reduction_factor=2)
    sweep = make_sweep(FakeBackend(), {"learning_rate": ["0.04", "0.01"]},
                       early_stopping=asha)
    assert sweep.run() == EXIT_OK
    finished, stopped = sweep.trials
    assert RUNG_TAG not in store.get_run(stopped.run_id).data.tags  # stopped at its first
    assert store.get_run(finished.run_id).data.tags[RUNG_TAG] == "2"  # rungs 1 and 2 passed


def parent_of(client, sweep):
    return client.get_run(sweep.record.parent_id)


def test_a_cancel_request_on_the_parent_run_cancels_the_trials_and_says_who(store):
    def cancel_from_elsewhere(backend):
        if backend.polls == 2:
            store.set_tag(sweep.record.parent_id, CANCEL_TAG, "alice@laptop")

    backend = FakeBackend(on_poll=cancel_from_elsewhere, gang=2)
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02", "0.03"]})
    assert sweep.run() == EXIT_INTERRUPTED
    assert len(backend.launched) == 2 and all(h.cancelled for h in backend.launched)
    runs = trial_runs(store)
    assert [r.info.status for r in runs] == ["KILLED", "KILLED"]
    assert {r.data.tags[REASON_TAG] for r in runs} == {"sweep cancelled by alice@laptop"}
    parent = parent_of(store, sweep)
    assert parent.info.status == "KILLED"
    assert "**Ended early**: cancelled by alice@laptop" in parent.data.tags["mlflow.note.content"]


def test_a_sweep_started_again_after_a_cancel_is_not_cancelled_by_the_old_request(store):
    def cancel_from_elsewhere(backend):
        store.set_tag(first.record.parent_id, CANCEL_TAG, "alice@laptop")

    first = make_sweep(FakeBackend(on_poll=cancel_from_elsewhere), {"learning_rate": ["0.01"]})
    assert first.run() == EXIT_INTERRUPTED
    backend = FakeBackend()
    again = make_sweep(backend, {"learning_rate": ["0.01"]})  # the same sweep, started again
    assert again.run() == EXIT_OK
    assert again.record.parent_id == first.record.parent_id and len(backend.launched) == 1
    assert [t.state for t in again.trials] == [TrialState.FINISHED]
    assert CANCEL_TAG not in parent_of(store, again).data.tags


def test_sigterm_in_a_pod_hands_the_sweep_over_and_the_next_controller_adopts_it(store):
    def pod_deleted(backend):
        if backend.polls == 2:
            sweep._on_signal(signal.SIGTERM, None)

    grid = {"learning_rate": ["0.01", "0.02", "0.03"]}
    first = FakeBackend(on_poll=pod_deleted, gang=2)
    sweep = make_sweep(first, grid, hand_over_on_sigterm=True)
    assert sweep.run() == EXIT_TERMINATED
    assert len(first.launched) == 2 and not any(h.cancelled for h in first.launched)
    assert [r.info.status for r in trial_runs(store)] == ["RUNNING", "RUNNING"]
    parent = parent_of(store, sweep)
    assert parent.info.status == "RUNNING" and parent.data.tags[LEASE_TAG].endswith(" 0")

    second = FakeBackend()
    successor = make_sweep(second, grid, hand_over_on_sigterm=True)
    assert successor.run() == EXIT_OK  # no wait: the lease was released
    assert len(second.launched) == 1  # the third trial only; the first two adopted
    assert sorted(r.info.status for r in trial_runs(store)) == ["FINISHED"] * 3


def test_a_disrupted_trial_goes_on_in_a_new_job_for_the_same_run(store):
    def evict_the_first_once(backend):
        if backend.polls == 2:
            backend.launched[0].evicted = True

    backend = FakeBackend(on_poll=evict_the_first_once, gang=2)
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02"]})
    assert sweep.run() == EXIT_OK
    first = sweep.trials[0]
    assert [h.run_id for h in backend.launched].count(first.run_id) == 2  # a second Job
    assert backend.launched[0].cancelled  # the lost one cleaned up
    run = store.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert (run.data.tags[DISRUPTIONS_TAG], run.data.tags[ATTEMPT_TAG]) == (EVICTED, "2")
    assert [m.step for m in store.get_metric_history(first.run_id, "val_accuracy")] == \
        [0, 1, 2]  # every epoch once, across both Jobs


def test_a_trial_disrupted_more_often_than_allowed_fails_with_every_reason(store):
    def evict_the_first(backend):
        if backend.launched[-1].run_id == backend.launched[0].run_id:
            backend.launched[-1].evicted = True

    backend = FakeBackend(on_poll=evict_the_first)
    sweep = make_sweep(backend, {"learning_rate": ["0.01"]}, max_disruptions=1)
    assert sweep.run() == EXIT_TRIAL_FAILED
    (trial,) = sweep.trials
    assert trial.reason == f"disrupted 2 times (--max-disruptions 1): {EVICTED}; {EVICTED}"
    assert len(backend.launched) == 2 and all(h.cancelled for h in backend.launched)
    assert store.get_run(trial.run_id).info.status == "FAILED"


def test_a_job_waiting_in_its_queue_is_not_pending(store):
    sweep = make_sweep(FakeBackend(), {"convolutions": ["7"]}, pending_timeout=0)
    assert sweep.run() == EXIT_OK  # queued for 3 polls, never counted as pending
    assert [t.state for t in sweep.trials] == [TrialState.FINISHED]


def test_a_pause_stops_the_trials_at_their_checkpoints_and_a_resume_goes_on(store):
    def pause_from_elsewhere(backend):
        if backend.polls == 2:
            store.set_tag(sweep.record.parent_id, PAUSE_TAG, "alice@laptop")

    reads_while_paused = []

    def resume_after_a_while(run_ids):
        if sweep.paused_by:
            reads_while_paused.append(run_ids)
            if len(reads_while_paused) == 3:
                store.delete_tag(sweep.record.parent_id, PAUSE_TAG)
        return snapshots(run_ids)

    backend = FakeBackend(on_poll=pause_from_elsewhere, gang=2)
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02", "0.03"]})
    snapshots = sweep.record.snapshots
    sweep.record.snapshots = resume_after_a_while
    assert sweep.run() == EXIT_OK
    assert reads_while_paused == [[sweep.record.parent_id]] * 3  # nothing else read, or run
    first_two = backend.launched[:2]
    assert all(h.cancelled for h in first_two)  # stopped by the pause...
    relaunched = [h.run_id for h in backend.launched[2:4]]
    assert sorted(relaunched) == sorted(h.run_id for h in first_two)  # ...then resumed
    assert len(backend.launched) == 5  # and only then the third trial
    for run in trial_runs(store):
        assert run.info.status == "FINISHED" and PAUSED_TAG not in run.data.tags
        assert [m.step for m in store.get_metric_history(run.info.run_id, "val_accuracy")] == \
            [0, 1, 2]  # no epoch logged twice


def test_a_paused_trial_is_marked_paused_on_its_run_before_its_pod_is_stopped(store):
    """A stopped training ends its run KILLED at once; read then (--pause waits on it), a run
    not yet marked paused would count as killed."""
    marked_when_cancelled = []

    class RecordingBackend(FakeBackend):
        def cancel(self, handle):
            run = store.get_run(handle.run_id)
            marked_when_cancelled.append(run.data.tags.get(PAUSED_TAG))
            super().cancel(handle)

    def pause_from_elsewhere(backend):
        if backend.polls == 2:
            store.set_tag(sweep.record.parent_id, PAUSE_TAG, "alice@laptop")

    def resume_once_paused(run_ids):
        if sweep.paused_by:
            store.delete_tag(sweep.record.parent_id, PAUSE_TAG)
        return snapshots(run_ids)

    backend = RecordingBackend(on_poll=pause_from_elsewhere, gang=2)
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02"]})
    snapshots = sweep.record.snapshots
    sweep.record.snapshots = resume_once_paused
    assert sweep.run() == EXIT_OK
    assert marked_when_cancelled == ["true", "true"]


def test_a_trial_whose_run_is_created_during_a_pause_starts_only_on_the_resume(store):
    """The pause is read while the second trial's run is being created: that trial is not
    launched while the sweep is paused, and the resume starts it like the paused one."""
    backend = FakeBackend()
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02"]})
    create_run, launch, launched_while_paused = sweep.tracking.create_run, backend.launch, []

    def pause_during_the_second_creation(*args):
        if args[1].endswith("trial-02"):
            store.set_tag(sweep.record.parent_id, PAUSE_TAG, "alice@laptop")
            deadline = time.monotonic() + 60  # a hang guard, not a speed figure
            while not sweep.paused_by and time.monotonic() < deadline:
                time.sleep(0.01)
        return create_run(*args)

    def recorded_launch(trial, *args):
        if sweep.paused_by:
            launched_while_paused.append(trial.name)
        return launch(trial, *args)

    reads_while_paused = []

    def resume_once_the_second_was_handled(run_ids):
        if sweep.paused_by:
            reads_while_paused.append(run_ids)
            if len(reads_while_paused) >= 3 and len(sweep.trials) == 2 and \
                    sweep.trials[1].state != TrialState.PENDING:  # its run created, dealt with
                store.delete_tag(sweep.record.parent_id, PAUSE_TAG)
        return snapshots(run_ids)

    sweep.tracking.create_run = pause_during_the_second_creation
    backend.launch = recorded_launch
    snapshots = sweep.record.snapshots
    sweep.record.snapshots = resume_once_the_second_was_handled
    assert sweep.run() == EXIT_OK
    assert launched_while_paused == [] and len(reads_while_paused) >= 3
    assert [t.state for t in sweep.trials] == [TrialState.FINISHED] * 2
    second = sweep.trials[1].run_id
    assert [h.run_id for h in backend.launched].count(second) == 1  # started once, on resume
    for run in trial_runs(store):
        assert run.info.status == "FINISHED" and PAUSED_TAG not in run.data.tags


def test_the_sweeps_own_command_lifts_a_pause_that_a_controller_taking_over_keeps(store):
    def pause_from_elsewhere(backend):
        if backend.polls == 2:
            store.set_tag(sweep.record.parent_id, PAUSE_TAG, "alice@laptop")

    def die_while_paused(run_ids):
        if sweep.paused_by:
            raise SystemExit  # the driver dies while paused
        return snapshots(run_ids)

    grid = {"learning_rate": ["0.01", "0.02"]}
    sweep = make_sweep(FakeBackend(on_poll=pause_from_elsewhere, gang=2), grid)
    snapshots = sweep.record.snapshots
    sweep.record.snapshots = die_while_paused
    with pytest.raises(SystemExit):
        sweep.run()
    runs = trial_runs(store)
    assert [r.data.tags.get(PAUSED_TAG) for r in runs] == ["true", "true"]
    _expire_lease(store, sweep)
    # A controller taking over would stay paused; a person's command goes on.
    again = make_sweep(FakeBackend(), grid)
    assert again.run() == EXIT_OK
    assert PAUSE_TAG not in parent_of(store, again).data.tags
    assert sorted(r.info.status for r in trial_runs(store)) == ["FINISHED", "FINISHED"]


def test_a_retried_write_whose_first_attempt_went_through_is_not_a_refusal(store):
    """Under load a trial's parameters may be stored while the answer is lost; the retry is
    refused (MLflow logs a parameter once): they are there, so that is success."""
    sweep = make_sweep(FakeBackend(), {"learning_rate": ["0.01"]})
    log_batch, attempts = sweep.client.log_batch, []

    def stored_then_lost_then_refused(run_id, **batch):
        if "tags" not in batch or not batch.get("params"):  # not a trial's params
            return log_batch(run_id, **batch)
        attempts.append(1)
        if len(attempts) == 1:
            log_batch(run_id, **batch)
            raise ConnectionError("read timed out")
        raise RestException({"error_code": "INVALID_PARAMETER_VALUE",
                             "message": "duplicate key value violates unique constraint"})

    sweep.client.log_batch = stored_then_lost_then_refused
    assert sweep.run() == EXIT_OK
    assert len(attempts) == 2
    assert [r.info.status for r in trial_runs(store)] == ["FINISHED"]


def test_a_slow_ask_of_an_adaptive_search_never_holds_up_the_polls(store):
    """TPE's ask is prepared beside the loop: while one is held, the loop goes on polling the
    trial in flight (asked inline, the polls would wait for it and the guard would break)."""
    spec = SweepSpec(experiment="unit", params={"epochs": "3"}, search="tpe", seed=1,
                     random_space={"learning_rate": {"loguniform": [0.001, 0.05]}},
                     max_trials=3, max_parallel=1)
    backend = FakeBackend()
    sweep = SweepController(spec, backend, Console(file=io.StringIO()), poll_seconds=0,
                            tracking_uri=mlflow.get_tracking_uri())
    ask, asks, polled_while_asking = sweep.policy.search.get_suggestions, [], []

    def slow_ask(known, n):
        asks.append(n)
        if len(asks) > 1:  # the first wave's ask has nothing to hold up
            polls = backend.polls
            deadline = time.monotonic() + 60  # a hang guard, not a speed figure
            while backend.polls < polls + 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            polled_while_asking.append(backend.polls - polls)
        return ask(known, n)

    sweep.policy.search.get_suggestions = slow_ask
    assert sweep.run() == EXIT_OK
    assert polled_while_asking and min(polled_while_asking) >= 2
    assert len(sweep.trials) == 3 and len({t.params["learning_rate"] for t in sweep.trials}) == 3


def test_a_slow_run_creation_never_holds_up_the_polls(store):
    """New trials' runs are created beside the loop: while the second trial's creation is held,
    the loop goes on polling the first (created inline, the polls would wait for it and the
    guard would break), and launches the second once its run exists."""
    backend = FakeBackend()
    sweep = make_sweep(backend, {"learning_rate": ["0.01", "0.02", "0.03"]})
    create_run, polled_while_creating = sweep.tracking.create_run, []

    def slow_second_creation(*args):
        if args[1].endswith("trial-02"):
            polls = backend.polls
            deadline = time.monotonic() + 60  # a hang guard, not a speed figure
            while backend.polls < polls + 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            polled_while_creating.append(backend.polls - polls)
        return create_run(*args)

    sweep.tracking.create_run = slow_second_creation
    assert sweep.run() == EXIT_OK
    assert len(polled_while_creating) == 1 and polled_while_creating[0] >= 2  # polls spin freely
    assert len(backend.launched) == 3 and {t.state for t in sweep.trials} == {TrialState.FINISHED}


def test_a_first_wave_starts_creating_runs_before_the_search_has_answered_for_all_of_it(store):
    """An adaptive search asked for a wave of 8: any ask reaching beyond the first
    RUN_CREATIONS_AT_ONCE suggestions is held until a run is being created (one ask for the
    whole wave would wait for creations that wait for it, and the guard would break)."""
    spec = SweepSpec(experiment="unit", params={"epochs": "2"}, search="tpe", seed=1,
                     random_space={"learning_rate": {"loguniform": [0.001, 0.05]}},
                     max_trials=8, max_parallel=8)
    backend = FakeBackend()
    sweep = SweepController(spec, backend, Console(file=io.StringIO()), poll_seconds=0,
                            tracking_uri=mlflow.get_tracking_uri())
    ask, create_run = sweep.policy.search.get_suggestions, sweep.tracking.create_run
    creating, overlapped = threading.Event(), []

    def held_ask(known, n):
        if len(known) + n > RUN_CREATIONS_AT_ONCE:
            overlapped.append(creating.wait(timeout=30))  # a hang guard
        return ask(known, n)

    def create(*args):
        creating.set()
        return create_run(*args)

    sweep.policy.search.get_suggestions, sweep.tracking.create_run = held_ask, create
    assert sweep.run() == EXIT_OK
    assert overlapped and all(overlapped)
    assert len(backend.launched) == 8
