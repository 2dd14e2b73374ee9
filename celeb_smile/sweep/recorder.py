"""Work beside the polling loop: the sweep's slow writes (an ended trial's log, tags, status
and Job clean-up; the parent run's description) done in order on one background thread, so the
loop only observes, decides and submits, and a freed slot is refilled within one poll; and a
single call on a thread of its own (`beside`)."""

import queue
import threading
from concurrent.futures import Future


class Recorder:
    """Runs jobs one after the other on a daemon thread (a second Ctrl-C never waits for it).
    A job that raises stops the ones after it from running until `forgive`; the loop sees the
    error through `check`."""

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, job) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="sweep-recorder",
                                            daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def check(self) -> None:
        """Raise, in the caller's thread, what a job raised."""
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        """Wait until every job submitted so far has run (or been skipped after an error)."""
        self._jobs.join()

    def discard_queued(self) -> None:
        """Drop the jobs that have not started (the running one ends as it will)."""
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                return
            self._jobs.task_done()

    def forgive(self) -> None:
        """Let the next jobs run again after an error."""
        self.error = None

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if self.error is None:
                    job()
            except BaseException as error:  # noqa: BLE001 - handed to the loop by `check`
                self.error = error
            finally:
                self._jobs.task_done()


def beside(call, name: str) -> Future:
    """`call` on a daemon thread of its own (a second Ctrl-C never waits for it); the future's
    result() is its value or raises its error in the caller's thread."""
    future: Future = Future()

    def work():
        try:
            future.set_result(call())
        except BaseException as error:  # noqa: BLE001 - raised again by result()
            future.set_exception(error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future
