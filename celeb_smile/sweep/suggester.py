"""The search's suggestions, prepared beside the polling loop: an adaptive search's ask (TPE
rebuilds its study from every trial: a second and more at a thousand trials) never delays a
poll or a submission. Grid and random lists are read inline: they cost nothing.

The controller takes what is ready (`take`) and, once it has added the trials it took, asks
for the next ones to be prepared (`prepare`) from everything it knows then: the suggestions
still waiting to be taken count as running trials, so Optuna's constant liar keeps new asks
away from them, as it does from the trials in flight. While nothing is in flight there is
nothing to poll, and the controller waits for the ask (`take(wait=True)`). An ask that ends
calls `on_ready`: the controller, waiting for its next poll, fills a free slot at once.
"""

import copy
from concurrent.futures import Future

from celeb_smile.constants import TrialState
from celeb_smile.sweep.policy import Policy
from celeb_smile.sweep.recorder import beside
from celeb_smile.sweep.trial import Trial


class Suggester:
    def __init__(self, policy: Policy, beside_the_loop: bool, on_ready=lambda: None):
        self.policy = policy
        self.beside_the_loop = beside_the_loop  # an adaptive search's ask, else inline
        self.on_ready = on_ready  # called (on the ask's thread) when an ask has ended
        self._ready: list[dict[str, str]] = []
        self._asking: Future | None = None
        self._exhausted = False

    @property
    def asking(self) -> bool:
        return self._asking is not None

    def take(self, known: list[Trial], wait: bool = False) -> dict[str, str] | None:
        """A suggestion if one is ready (with `wait`, once the ask under way has ended);
        None when none is, or the search has no more."""
        if not self.beside_the_loop:
            return self.policy.suggest(known)
        if not self._ready and self._asking is None:
            self.prepare(known, 1)
        if not self._ready and self._asking is not None and (wait or self._asking.done()):
            self._collect()
        return self._ready.pop(0) if self._ready else None

    def prepare(self, known: list[Trial], wanted: int) -> None:
        """Ask beside the loop for the suggestions missing to have `wanted` ready (one ask at
        a time; none once the search said it has no more)."""
        missing = wanted - len(self._ready)
        if not self.beside_the_loop or self._asking is not None or self._exhausted or \
                missing <= 0:
            return
        # Copies: the loop goes on changing its trials while the search reads these.
        snapshot = [copy.copy(t) for t in known] + [
            Trial(0, dict(params), state=TrialState.PENDING) for params in self._ready]
        self._asking = beside(lambda: self.policy.search.get_suggestions(snapshot, missing),
                              "sweep-suggest")
        self._asking.add_done_callback(lambda _: self.on_ready())

    def _collect(self) -> None:
        suggestions = self._asking.result()  # raises, in the loop's thread, what the ask did
        self._asking = None
        self._exhausted = not suggestions
        self._ready += suggestions
