"""Search strategies behind one ask/tell interface (Katib's suggestion services).

The controller's policy hands a search every trial it knows, in any state (this run's, resumed
ones and warm-start ones), and asks for up to n new parameter sets. Grid and random walk the
spec's list of combinations; tpe is Optuna's multivariate TPE with the constant-liar strategy,
its start-up trials a Latin hypercube over the space rather than independent draws, on an
in-memory study built from those trials: MLflow stays the only record, and the same trials in
give the same suggestions out, in this process or in a resumed one.
"""

import math
from typing import Protocol

from celeb_smile.config import format_value
from celeb_smile.constants import TrialState
from celeb_smile.sweep.spec import SweepSpec, normal, normalised, resolved
from celeb_smile.sweep.trial import Trial

MAX_ATTEMPTS = 100  # asks for one new combination before a discrete space counts as exhausted


class Search(Protocol):
    name: str  # "grid" | "random" | "tpe"

    def get_suggestions(self, trials: list[Trial], n: int) -> list[dict[str, str]]:
        """Learn from `trials`, then up to n new full parameter sets (fewer when done)."""

    def planned(self) -> int | None:
        """How many trials the sweep runs (warm-start trials not counted)."""


def make_search(spec: SweepSpec) -> Search:
    strategy = spec.strategy()
    if strategy == "tpe":
        return TPESearch(spec)
    if strategy in ("grid", "random"):
        return ListSearch(spec, strategy)
    raise ValueError(f"search must be one of grid, random, tpe, got {strategy!r}")


def combination(params: dict[str, str]) -> frozenset:
    """What makes two parameter sets the same run: their values as train.py resolves them."""
    try:
        return frozenset(resolved(params).items())
    except ValueError:  # not a valid configuration: compare it as spelt
        return frozenset(normalised(params).items())


class ListSearch:
    """Grid and random: the spec's combinations in order, skipping those already present."""

    def __init__(self, spec: SweepSpec, name: str):
        self.name = name
        self._combinations = spec.trials()
        self._keys = [combination(c) for c in self._combinations]

    def planned(self) -> int:
        return len(self._combinations)

    def get_suggestions(self, trials: list[Trial], n: int) -> list[dict[str, str]]:
        # Warm start seeds only a search that learns; a grid runs its own combinations.
        present = {combination(trial.params) for trial in trials if not trial.warm_start}
        fresh = [dict(c) for c, key in zip(self._combinations, self._keys) if key not in present]
        return fresh[:max(n, 0)]


def use_scipy_log_ndtr() -> bool:
    """Optuna's TPE (5.0, which dropped SciPy) computes log Phi element by element in Python:
    `_truncnorm._log_ndtr` is a np.frompyfunc of a scalar function, ~85 % of an ask's CPU at
    600 trials (benchmarks/tpe_ask.py; optuna#5478 discusses it). SciPy's `special.log_ndtr` is
    the same function vectorised in C (within 4e-13 of Optuna's: tests/test_search.py); with it
    an ask takes a ninth of the CPU. True once in use; False, leaving Optuna's, if a later
    Optuna no longer has the function (Optuna is pinned: the test says when that changes)."""
    from optuna.samplers._tpe import _truncnorm
    from scipy.special import log_ndtr

    if not hasattr(_truncnorm, "_log_ndtr"):
        return False
    _truncnorm._log_ndtr = log_ndtr
    return True


class TPESearch:
    name = "tpe"

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.fixed = normalised(spec.params)
        self.distributions = _distributions(spec)
        self._values_of: dict[tuple, dict | None] = {}  # a trial's params -> its space values
        # The study is kept between asks and told only what changed: rebuilding it from every
        # trial took half of each ask's time at a thousand trials (benchmarks/README.md).
        self._kept = None  # the Optuna study, once built
        self._storage = None  # its in-memory storage
        self._number_of: dict[tuple, int] = {}  # a known trial's identity -> its Optuna number
        self._running: set[int] = set()  # Optuna numbers told nothing final yet
        self._asked: dict[tuple, int] = {}  # suggestions not seen back yet: key -> number
        self._created = 0  # Optuna trials in the kept study (numbers are 0, 1, ...)
        self._design: list[dict] | None = None  # the start-up trials' points, once drawn
        self._past_start_up = False  # the study holds as many trials as the start-up
        # What a trial must share with this sweep for its result to mean something here.
        self._baseline = {name: value for name, value in resolved(self.fixed).items()
                          if name not in self.distributions}

    def planned(self) -> int:
        return self.spec.max_trials

    def startup_trials(self) -> int:
        """Random trials before TPE models the results: Optuna's 10, but at most a quarter of
        the sweep (at least 2), so a sweep of a dozen trials is not random search."""
        return min(10, max(2, self.spec.max_trials // 4))

    def get_suggestions(self, trials: list[Trial], n: int) -> list[dict[str, str]]:
        import optuna

        own = sum(1 for trial in trials if not trial.warm_start)
        wanted = min(n, self.spec.max_trials - own)
        study = self._synced(trials)
        seen = {self._key(values) for values in map(self._space_values, trials)
                if values is not None}
        suggestions = []
        while len(suggestions) < wanted and len(seen) < _size(self.distributions):
            for _ in range(MAX_ATTEMPTS):
                self._enqueue_start_up_point(study, seen)
                asked = study.ask(self.distributions)
                self._created += 1
                values = {name: self._spell(name, value) for name, value in asked.params.items()}
                if self._key(values) not in seen:
                    self._asked[self._key(values)] = asked.number
                    self._running.add(asked.number)
                    break
                study.tell(asked, state=optuna.trial.TrialState.FAIL)  # a repeat: ask again
            else:
                # TPE keeps proposing values already tried (near its optimum, at the spelling's
                # precision): a random point of a space that is not exhausted goes on instead.
                values = self._unseen_random_point(seen, len(study.get_trials(deepcopy=False)))
                if values is None:
                    break
            seen.add(self._key(values))
            suggestions.append({**self.fixed, **values})  # stays RUNNING: the liar sees it
        return suggestions

    def start_up_design(self) -> list[dict]:
        """The start-up trials' points: a Latin hypercube over the space (SciPy's, seeded by the
        sweep, its centred discrepancy improved), each parameter's range cut into as many equal
        slices as there are start-up trials and each slice drawn once. Six independent draws
        leave one of four values untried in 62 % of sweeps (one of three in 26 %) before TPE
        models what was tried; replayed on recorded curves, slightly fewer sweeps missed random
        search's best this way, for no more epochs (benchmarks/README.md)."""
        if self._design is None:
            from scipy.stats import qmc

            names = sorted(self.distributions)
            cube = qmc.LatinHypercube(d=len(names), optimization="random-cd",
                                      seed=self.spec.seed).random(self.startup_trials())
            self._design = [{name: _from_unit(self.distributions[name], x)
                             for name, x in zip(names, row)} for row in cube]
        return self._design

    def _enqueue_start_up_point(self, study, seen: set) -> None:
        """While the study holds fewer trials than the start-up, the next ask takes the next
        design point (unless a trial already ran it: TPE's own random draw then)."""
        import optuna

        design = self.start_up_design()
        if self._past_start_up:
            return
        counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                   optuna.trial.TrialState.RUNNING)  # what TPE's start-up counts
        held = len(study.get_trials(deepcopy=False, states=counted))
        self._past_start_up = held >= len(design)  # from then on, not counted at every ask
        if not self._past_start_up and self._key(design[held]) not in seen:
            study.enqueue_trial(design[held])

    def _unseen_random_point(self, seen: set, salt: int) -> dict | None:
        """Seeded by the sweep and how much it knows, as the sampler: the same trials in, the
        same suggestion out."""
        import random

        rng = random.Random(self.spec.seed * 1_000_003 + salt)
        for _ in range(MAX_ATTEMPTS):
            values = {name: self._spell(name, _draw_from(rng, dist))
                      for name, dist in self.distributions.items()}
            if self._key(values) not in seen:
                return values
        return None

    def _study(self, salt: int):
        """A new study, its sampler seeded by the sweep and how many trials it will be told
        first: a rebuilt study (a restarted controller's) continues instead of repeating."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        use_scipy_log_ndtr()
        sampler = optuna.samplers.TPESampler(
            multivariate=True, constant_liar=True, n_startup_trials=self.startup_trials(),
            seed=(self.spec.seed * 1_000_003 + salt) % 2**32)
        self._storage = optuna.storages.InMemoryStorage()
        return optuna.create_study(direction=self.spec.objective.direction, sampler=sampler,
                                   storage=self._storage)

    def _synced(self, trials: list[Trial]):
        """The kept study, told what changed since the last ask: the trials it has not seen
        (its own suggestions recognised by their values) and the ends of those it saw running."""
        ordered = sorted(trials, key=lambda t: (not t.warm_start, t.index))
        if self._kept is None:
            self._kept = self._study(sum(self._space_values(t) is not None for t in ordered))
        for trial in ordered:
            number = self._number_of.get(self._identity(trial)) if trial.index else None
            if number is None:
                self._remember(trial)
            elif number in self._running and trial.state.ended:
                self._tell_end(number, trial)
        return self._kept

    def _remember(self, trial: Trial) -> None:
        """A trial seen for the first time: map it to the suggestion it came from, or add it.
        A suggestion not yet taken (index 0) is only kept apart from, as running."""
        values = self._space_values(trial)
        if values is None:
            return  # another problem, or outside the space: never told
        key = self._key(values)
        number = self._asked.get(key)
        if number is None:
            self._kept.add_trial(self._frozen(trial))
            number, self._created = self._created, self._created + 1
            if not trial.state.ended:
                self._running.add(number)
            if not trial.index:
                self._asked[key] = number
                return
        elif not trial.index:
            return
        else:
            del self._asked[key]
            if trial.state.ended:
                self._tell_end(number, trial)
        self._number_of[self._identity(trial)] = number

    def _tell_end(self, number: int, trial: Trial) -> None:
        import optuna

        frozen = self._frozen(trial)
        if frozen.state == optuna.trial.TrialState.PRUNED:  # its epochs rank it among the pruned
            trial_id = self._storage.get_trial_id_from_study_id_trial_number(
                self._storage.get_study_id_from_name(self._kept.study_name), number)
            for step, value in frozen.intermediate_values.items():
                self._storage.set_trial_intermediate_value(trial_id, step, value)
        self._kept.tell(number, frozen.value, state=frozen.state)
        self._running.discard(number)

    @staticmethod
    def _identity(trial: Trial) -> tuple:
        return (trial.warm_start, trial.index)

    def _resolved(self, trial: Trial) -> dict[str, str] | None:
        """The trial's parameters if it ran this sweep's problem (same fixed values), else None."""
        try:
            params = resolved(trial.params)
        except ValueError:
            return None
        same = all(params.get(name) == value for name, value in self._baseline.items())
        return params if same else None

    def _space_values(self, trial: Trial) -> dict | None:
        """The trial's searched values as Optuna holds them; None if it ran another problem
        (other fixed values) or lies outside the space. Worked out once per parameter set:
        every ask reads every trial's."""
        key = tuple(sorted(trial.params.items()))
        if key not in self._values_of:
            self._values_of[key] = self._space_values_of(trial)
        return self._values_of[key]

    def _space_values_of(self, trial: Trial) -> dict | None:
        params = self._resolved(trial)
        if params is None:
            return None
        values = {name: _optuna_value(dist, params[name])
                  for name, dist in self.distributions.items()}
        return None if any(value is None for value in values.values()) else values

    def _frozen(self, trial: Trial):
        """`trial` as an Optuna trial: FINISHED -> COMPLETE, STOPPED -> PRUNED (with its
        epochs so far), FAILED/KILLED -> FAIL, in flight -> RUNNING; None if outside."""
        import optuna

        states = optuna.trial.TrialState
        values = self._space_values(trial)
        if values is None:
            return None
        value, intermediate = None, {}
        if trial.state in (TrialState.FINISHED, TrialState.SKIPPED):
            value = _final_value(trial, self.spec.objective.metric)
            state = states.COMPLETE if value is not None else states.FAIL
        elif trial.state == TrialState.STOPPED:
            state = states.PRUNED
            intermediate = dict(enumerate(trial.history))
        elif trial.state.ended:  # FAILED, KILLED
            state = states.FAIL
        else:  # PENDING, SCHEDULED, RUNNING: the constant liar keeps new asks away from them
            state = states.RUNNING
        return optuna.trial.create_trial(
            state=state, value=value, params=values, distributions=self.distributions,
            intermediate_values=intermediate)

    def _spell(self, name: str, value) -> str:
        dist = self.distributions[name]
        if isinstance(value, float):  # the same precision as random search's draws
            value = float(f"{value:.3g}") if dist.log else round(value, 6)
            value = min(max(value, dist.low), dist.high)
        return normal(name, format_value(value))

    def _key(self, params: dict) -> tuple:
        return tuple(self._spell(name, params[name]) for name in sorted(self.distributions))


def _distributions(spec: SweepSpec) -> dict:
    """Optuna distributions of the searched parameters: grid values are choices."""
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    def choices(name, values):
        return CategoricalDistribution(list(dict.fromkeys(normal(name, v) for v in values)))

    distributions = {name: choices(name, values) for name, values in spec.grid.items()}
    for name, distribution in spec.random_space.items():
        (kind, args), = distribution.items()
        if kind == "choice":
            distributions[name] = choices(name, args)
        elif kind == "randint":
            distributions[name] = IntDistribution(int(args[0]), int(args[1]))
        else:
            distributions[name] = FloatDistribution(float(args[0]), float(args[1]),
                                                    log=kind == "loguniform")
    return distributions


def _draw_from(rng, distribution):
    """A uniform draw from an Optuna distribution (log-uniform where it is on a log scale)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return rng.choice(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return rng.randint(distribution.low, distribution.high)
    if distribution.log:
        return math.exp(rng.uniform(math.log(distribution.low), math.log(distribution.high)))
    return rng.uniform(distribution.low, distribution.high)


def _from_unit(distribution, x: float):
    """The value at quantile x in [0, 1) of a distribution drawn uniformly (log-uniformly where
    it is on a log scale; a category or an integer by equal slices)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[min(int(x * len(distribution.choices)),
                                        len(distribution.choices) - 1)]
    if isinstance(distribution, IntDistribution):
        count = distribution.high - distribution.low + 1
        return distribution.low + min(int(x * count), count - 1)
    low, high = ((math.log(distribution.low), math.log(distribution.high)) if distribution.log
                 else (distribution.low, distribution.high))
    value = low + x * (high - low)
    return min(max(math.exp(value) if distribution.log else value, distribution.low),
               distribution.high)


def _optuna_value(distribution, text: str):
    """A logged value as `distribution` holds it; None when it lies outside."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return text if text in distribution.choices else None
    try:
        value = int(text) if isinstance(distribution, IntDistribution) else float(text)
    except ValueError:
        return None
    return value if distribution.low <= value <= distribution.high else None


def _size(distributions: dict) -> float:
    """How many distinct combinations the space holds (inf when any dimension is continuous)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    size = 1
    for dist in distributions.values():
        if isinstance(dist, CategoricalDistribution):
            size *= len(dist.choices)
        elif isinstance(dist, IntDistribution):
            size *= dist.high - dist.low + 1
        else:
            return math.inf
    return size


def _final_value(trial: Trial, metric: str) -> float | None:
    """The objective a finished trial ended with; None (a failure to Optuna) when NaN."""
    if metric not in trial.metrics and trial.history:
        return None if math.isnan(trial.history[-1]) else trial.history[-1]
    return trial.objective(metric)
