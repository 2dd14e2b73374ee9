"""The suggester: an adaptive search's asks run beside the loop, and an ended ask wakes it."""

import threading
from types import SimpleNamespace

from celeb_smile.sweep.suggester import Suggester


class HeldSearch:
    """A search whose asks wait until the test lets them answer."""

    def __init__(self):
        self.release = threading.Event()
        self.asked: list[int] = []

    def get_suggestions(self, known, n):
        self.asked.append(n)
        assert self.release.wait(timeout=60)  # a hang guard, not a speed figure
        return [{"learning_rate": str(len(self.asked) + i)} for i in range(n)]


def test_an_ask_that_ends_calls_on_ready_and_its_suggestion_is_taken_without_waiting():
    search, ready = HeldSearch(), threading.Event()
    suggester = Suggester(SimpleNamespace(search=search), beside_the_loop=True,
                          on_ready=ready.set)
    suggester.prepare([], 1)
    assert suggester.take([]) is None and not ready.is_set()  # still asking: nothing yet
    search.release.set()
    assert ready.wait(timeout=60)
    assert suggester.take([]) == {"learning_rate": "1"}
    assert search.asked == [1]  # one ask, not a second one to answer the take
