"""The recorder: the sweep's slow writes, in order, on one background thread."""

import threading

import pytest

from celeb_smile.sweep.recorder import Recorder


def test_jobs_run_in_order_on_another_thread_and_drain_waits_for_them():
    recorder, done = Recorder(), []
    for n in range(5):
        recorder.submit(lambda n=n: done.append((n, threading.current_thread().name)))
    recorder.drain()
    assert [n for n, _ in done] == [0, 1, 2, 3, 4]
    assert {name for _, name in done} == {"sweep-recorder"}


def test_a_failed_job_is_raised_in_the_caller_and_holds_back_the_next_until_forgiven():
    recorder, done = Recorder(), []

    def fail():
        raise ConnectionError("server away")

    recorder.submit(fail)
    recorder.submit(lambda: done.append("skipped"))
    recorder.drain()
    with pytest.raises(ConnectionError, match="server away"):
        recorder.check()
    assert done == []
    recorder.forgive()
    recorder.check()
    recorder.submit(lambda: done.append("after"))
    recorder.drain()
    assert done == ["after"]


def test_discarding_the_queue_lets_only_the_running_job_finish():
    recorder, done = Recorder(), []
    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait()
        done.append("slow")

    recorder.submit(slow)
    recorder.submit(lambda: done.append("queued"))
    started.wait()
    recorder.discard_queued()
    release.set()
    recorder.drain()
    assert done == ["slow"]
    recorder.submit(lambda: done.append("later"))
    recorder.drain()
    assert done == ["slow", "later"]
