"""What a sweep is: fixed parameters, a search (grid, seeded random draws, or TPE over a space),
an objective, and how it may end early (early stopping, a goal, a budget).

Every value is normalised to the spelling train.py logs and checked against MLproject's
parameter types and the training code's own validation before anything is submitted.
"""

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import random
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from celeb_smile.config import TrainConfig, canonical, config_from_params, format_value
from celeb_smile.constants import EPOCH_METRIC_DIRECTIONS, EPOCH_METRICS, FINAL_METRICS

PROJECT_DIR = Path(__file__).resolve().parents[2]
ENTRY_POINT = "main"
DIRECTIONS = ("maximize", "minimize")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
SEARCHES = ("grid", "random", "tpe")
ADAPTIVE = ("tpe",)  # searches that learn from results: they run max_trials, not a list
SPEC_KEYS = {"experiment", "objective", "params", "grid", "random", "max_parallel", "max_failures",
             "search", "space", "seed", "max_trials", "early_stopping", "goal", "budget"}
OBJECTIVE_KEYS = {"metric", "direction", "custom"}
RANDOM_KEYS = {"samples", "seed", "space"}
BUDGET_KEYS = {"trial_epochs", "wall_minutes"}
# Each rule's settings and defaults (the median rule's names as Katib's medianstop; ASHA and Hyperband
# as Optuna's pruners and Ray Tune).
STOPPING_RULES = {"median": {"start_step": 4, "min_trials_required": 3},
                  "asha": {"grace_period": 1, "reduction_factor": 3},
                  "hyperband": {"grace_period": 1, "reduction_factor": 3}}

# The embedded default: a small sweep that finishes in a couple of minutes on a laptop.
DEFAULT_PARAMS = {"epochs": "5", "training_samples": "1000", "validation_samples": "200"}
DEFAULT_GRID = {"convolutions": ["1", "2"], "randomize_images": ["true", "false"]}


@dataclass
class Objective:
    metric: str = "val_accuracy"
    direction: str = "maximize"
    custom: bool = False  # a metric the project's training does not log, declared by the sweep

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b


@dataclass
class EarlyStopping:
    rule: str = "median"  # median | asha | hyperband
    start_step: int = STOPPING_RULES["median"]["start_step"]
    min_trials_required: int = STOPPING_RULES["median"]["min_trials_required"]
    grace_period: int = STOPPING_RULES["asha"]["grace_period"]
    reduction_factor: int = STOPPING_RULES["asha"]["reduction_factor"]
    metric: str = ""  # what the rule judges: "" = the objective, else a per-epoch metric


@dataclass
class Budget:
    """What the whole sweep may spend; None = no limit. Once spent, nothing new is submitted."""
    trial_epochs: int | None = None  # epochs summed over every trial of this run of the sweep
    wall_seconds: float | None = None  # since the sweep started


@dataclass
class SweepSpec:
    experiment: str = "celeb-smile"
    objective: Objective = field(default_factory=Objective)
    params: dict[str, str] = field(default_factory=dict)  # fixed for every trial
    grid: dict[str, list[str]] = field(default_factory=dict)  # every combination
    random_space: dict[str, dict] = field(default_factory=dict)  # name -> {distribution: args}
    samples: int = 0  # random draws (each combined with every grid point)
    seed: int = 0  # seeds the random search
    max_parallel: int = 2
    max_failures: int | None = None  # stop submitting once more trials than this failed
    search: str = ""  # grid | random | tpe; "" = random when there is a space, else grid
    max_trials: int | None = None  # trials to run (tpe: required; grid/random: a cap)
    early_stopping: EarlyStopping | None = None
    goal: float | None = None  # the sweep ends once a trial's objective reaches it
    budget: Budget = field(default_factory=Budget)

    def strategy(self) -> str:
        """The search that runs: `search` as given, else inferred from the space."""
        return self.search or ("random" if self.random_space else "grid")

    def stopping_metric(self) -> tuple[str, str]:
        """The metric the early-stopping rule judges, and which way it improves."""
        stopping, objective = self.early_stopping, self.objective
        metric = (stopping.metric if stopping else "") or objective.metric
        if metric == objective.metric:
            return metric, objective.direction
        return metric, EPOCH_METRIC_DIRECTIONS.get(metric, "")

    def most_epochs(self) -> int:
        """The most epochs a trial of this sweep trains: Hyperband's largest resource."""
        if "epochs" in self.params:
            return int(self.params["epochs"])
        if "epochs" in self.grid:
            return max(int(value) for value in self.grid["epochs"])
        if "epochs" in self.random_space:
            (_, bounds), = self.random_space["epochs"].items()
            return int(max(bounds))
        return TrainConfig.epochs

    def sweep_id(self) -> str:
        """Stable identity of the sweep's definition: the same spec resumes the same parent run.
        Grid and random: their list of trials; an adaptive search: what decides its suggestions.
        Early stopping, goal and budget only decide when it ends, so they are not part of it."""
        if self.strategy() in ADAPTIVE:
            identity = {"experiment": self.experiment, "search": self.strategy(),
                        "params": normalised(self.params), "grid": self._normalised_grid(),
                        "space": self.random_space, "seed": self.seed,
                        "max_trials": self.max_trials,
                        "objective": [self.objective.metric, self.objective.direction]}
        else:
            identity = {"experiment": self.experiment, "trials": self.trials()}
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def trials(self) -> list[dict[str, str]]:
        """Grid and random: every combination of parameters, normalised, in a stable order
        (grid x random draws), at most max_trials. An adaptive search has no list: []."""
        if self.strategy() in ADAPTIVE:
            return []
        grid_points = [dict(zip(self.grid, values))
                       for values in itertools.product(*self._normalised_grid().values())]
        draws = self._random_draws() or [{}]
        combos = []
        for draw in draws:
            for point in grid_points:
                trial = normalised({**self.params, **point, **draw})
                if trial not in combos:
                    combos.append(trial)
        return combos[:self.max_trials] if self.max_trials is not None else combos

    def _normalised_grid(self) -> dict[str, list[str]]:
        return {name: [normal(name, v) for v in values] for name, values in self.grid.items()}

    def varying(self) -> list[str]:
        return list(self.grid) + [name for name in self.random_space if name not in self.grid]

    def random_samples(self) -> int:
        """Random draws: `samples`, else max_trials (a top-level space with max_trials)."""
        return self.samples or (self.max_trials or 0)

    def _random_draws(self) -> list[dict[str, str]]:
        if not self.random_space or self.random_samples() < 1:
            return []
        rng = random.Random(self.seed)
        return [{name: format_value(_draw(rng, dist)) for name, dist in self.random_space.items()}
                for _ in range(self.random_samples())]


def normal(name: str, value) -> str:
    """`value` as train.py logs it; as given when it does not parse (validate() reports it)."""
    try:
        return canonical(name, format_value(value))
    except ValueError:
        return format_value(value)


def normalised(params: dict) -> dict[str, str]:
    return {name: normal(name, value) for name, value in params.items()}


def _draw(rng: random.Random, distribution: dict):
    (kind, args), = distribution.items()
    if kind == "choice":
        return rng.choice(list(args))
    low, high = args
    if kind == "uniform":
        return round(rng.uniform(low, high), 6)
    if kind == "loguniform":
        return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")
    return rng.randint(int(low), int(high))  # randint: both ends included


def parse_assignment(text: str, many: bool) -> tuple[str, list[str] | str]:
    """'name=v' (or 'name=v1,v2,...' when many) -> (name, value(s))."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        form = "NAME=V1,V2,..." if many else "NAME=VALUE"
        raise ValueError(f"expected {form}, got {text!r}")
    name = name.strip()
    if many:
        values = [v.strip() for v in value.split(",")]
        if any(not v for v in values):
            raise ValueError(f"empty value in {text!r}")
        return name, values
    return name, value.strip()


def load_spec_file(path: str | Path) -> SweepSpec:
    """Read a sweep file (YAML); see sweeps/*.yaml."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise ValueError(f"cannot read sweep file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"sweep file {path} is not valid YAML: "
                         f"{' '.join(str(error).split())}") from None
    try:
        return spec_from_mapping(raw)
    except ValueError as error:
        raise ValueError(f"sweep file {path}: {error}") from None


def spec_from_mapping(raw) -> SweepSpec:
    """A sweep file's content as a SweepSpec; ValueError names the first bad key."""
    section = _section(raw, "the sweep file", SPEC_KEYS)
    spec = SweepSpec()
    spec.experiment = str(section.get("experiment", spec.experiment))
    objective = _section(section.get("objective"), "objective", OBJECTIVE_KEYS)
    spec.objective = Objective(str(objective.get("metric", "val_accuracy")),
                               str(objective.get("direction", "maximize")),
                               _bool(objective.get("custom", False), "objective.custom"))
    spec.params = dict(_section(section.get("params"), "params"))
    grid = _section(section.get("grid"), "grid")
    spec.grid = {k: [format_value(v) for v in _as_list(vs)] for k, vs in grid.items()}
    random_section = _section(section.get("random"), "random", RANDOM_KEYS)
    if "space" in section and "space" in random_section:
        raise ValueError("give the search space once: space or random.space")
    if "seed" in section and "seed" in random_section:
        raise ValueError("give the seed once: seed or random.seed")
    spec.random_space = dict(_section(section.get("space", random_section.get("space")), "space"))
    spec.samples = _int(random_section.get("samples", 0), "random.samples")
    spec.seed = _int(section.get("seed", random_section.get("seed", 0)), "seed")
    spec.search = str(section.get("search", ""))
    spec.max_parallel = _int(section.get("max_parallel", spec.max_parallel), "max_parallel")
    spec.max_failures = _optional(section.get("max_failures"), _int, "max_failures")
    spec.max_trials = _optional(section.get("max_trials"), _int, "max_trials")
    spec.goal = _optional(section.get("goal"), _number, "goal")
    spec.early_stopping = _early_stopping(section.get("early_stopping"))
    budget = _section(section.get("budget"), "budget", BUDGET_KEYS)
    minutes = _optional(budget.get("wall_minutes"), _number, "budget.wall_minutes")
    spec.budget = Budget(_optional(budget.get("trial_epochs"), _int, "budget.trial_epochs"),
                         None if minutes is None else minutes * 60)
    return spec


def early_stopping_rule(rule: str, settings: dict | None = None) -> EarlyStopping:
    """An EarlyStopping of `rule` with its settings (the rule's defaults for those not given)."""
    if rule not in STOPPING_RULES:
        raise ValueError(f"early_stopping.rule must be one of {', '.join(STOPPING_RULES)}, "
                         f"got {rule!r}")
    known = STOPPING_RULES[rule]
    settings = dict(settings or {})
    metric = str(settings.pop("metric", None) or "")  # any rule may judge another metric
    unknown = set(settings) - set(known)
    if unknown:
        raise ValueError(f"early_stopping: {rule} takes {', '.join([*known, 'metric'])}, "
                         f"not {', '.join(sorted(unknown))}")
    return EarlyStopping(rule, **{name: _int(value, f"early_stopping.{name}")
                                  for name, value in settings.items()}, metric=metric)


def _early_stopping(raw) -> EarlyStopping | None:
    if raw is None:
        return None
    if isinstance(raw, str):  # early_stopping: asha
        return early_stopping_rule(raw)
    settings = dict(_section(raw, "early_stopping"))
    if "rule" not in settings:
        raise ValueError(f"early_stopping needs a rule: {' or '.join(STOPPING_RULES)}")
    return early_stopping_rule(str(settings.pop("rule")), settings)


def _section(raw, where: str, known: set[str] | None = None) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping, got {raw!r}")
    unknown = set(raw) - known if known else set()
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in {where}; known: {sorted(known)}")
    return raw


def _int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where} must be an integer, got {value!r}") from None


def _number(value, where: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{where} must be a number, got {value!r}")
    return number


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    return value


def _optional(value, convert, where: str):
    return None if value is None else convert(value, where)


def _as_list(values):
    return values if isinstance(values, list) else [values]


def validate(spec: SweepSpec, remote: bool = False) -> None:
    """Raise ValueError on the first problem, before anything is submitted.

    remote (the kubernetes backend): data_dir lives in the pod, so it is not checked here; and
    MLflow passes values through two rounds of shell quoting, so only plain words arrive intact.
    """
    _check_objective(spec)
    _check_counts(spec)
    _check_search(spec)
    _check_ending(spec)
    declared = project_parameter_types()
    for trial in spec.trials() or _space_corners(spec):
        for name, value in trial.items():
            _check_declared(name, value, declared, plain_words=remote)
        config_from_params(trial, check_paths=not remote)


def _check_objective(spec: SweepSpec) -> None:
    objective = spec.objective
    if objective.direction not in DIRECTIONS:
        raise ValueError(f"objective direction must be maximize or minimize, "
                         f"got {objective.direction!r}")
    known = EPOCH_METRICS + FINAL_METRICS
    if objective.metric not in known and not objective.custom:
        raise ValueError(f"objective {objective.metric!r} is not a metric training logs "
                         f"({', '.join(known)}); declare a custom one in the sweep file: "
                         f"objective: {{metric: {objective.metric}, custom: true}}")


def _check_counts(spec: SweepSpec) -> None:
    if spec.max_parallel < 1:
        raise ValueError(f"max_parallel must be at least 1, got {spec.max_parallel}")
    if spec.max_failures is not None and spec.max_failures < 0:
        raise ValueError(f"max_failures must be 0 or more, got {spec.max_failures}")
    if spec.max_trials is not None and spec.max_trials < 1:
        raise ValueError(f"max_trials must be at least 1, got {spec.max_trials}")
    if spec.samples < 0:
        raise ValueError(f"samples must be 0 or more, got {spec.samples}")


def _check_search(spec: SweepSpec) -> None:
    search = spec.strategy()
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    for name, distribution in spec.random_space.items():
        _check_distribution(name, distribution)
    if search == "grid" and spec.random_space:
        raise ValueError("a grid search takes no space; use search: random or tpe")
    if search == "random":
        if not spec.random_space:
            raise ValueError("a random search needs a space (space: or random.space)")
        if spec.random_samples() < 1:
            raise ValueError("a random search needs samples >= 1 "
                             "(--samples N, random.samples or max_trials)")
    if search in ADAPTIVE:
        if not (spec.random_space or spec.grid):
            raise ValueError(f"a {search} search needs a space (space: or --grid values)")
        if spec.max_trials is None:
            raise ValueError(f"a {search} search needs max_trials (--max-trials N)")
        if spec.samples:
            raise ValueError(f"samples is for random search; a {search} search runs max_trials")


def _check_ending(spec: SweepSpec) -> None:
    stopping = spec.early_stopping
    if stopping is not None:
        if stopping.rule not in STOPPING_RULES:
            raise ValueError(f"early_stopping.rule must be one of {', '.join(STOPPING_RULES)}, "
                             f"got {stopping.rule!r}")
        for name in STOPPING_RULES[stopping.rule]:
            least = 2 if name == "reduction_factor" else 1
            if getattr(stopping, name) < least:
                raise ValueError(f"early_stopping.{name} must be at least {least}, "
                                 f"got {getattr(stopping, name)}")
        if stopping.rule == "hyperband" and stopping.grace_period > spec.most_epochs():
            raise ValueError(f"early_stopping.grace_period ({stopping.grace_period}) must not "
                             f"exceed the trials' epochs ({spec.most_epochs()})")
        metric, direction = spec.stopping_metric()
        if not direction:
            raise ValueError(f"early_stopping.metric must be the objective or one of "
                             f"{', '.join(EPOCH_METRIC_DIRECTIONS)}, got {metric!r}")
        if metric in FINAL_METRICS:
            raise ValueError(f"early stopping needs a metric logged every epoch; "
                             f"{metric} is logged once, at the end")
    if spec.goal is not None and not math.isfinite(spec.goal):
        raise ValueError(f"goal must be a number, got {spec.goal!r}")
    budget = spec.budget
    if budget.trial_epochs is not None and budget.trial_epochs < 1:
        raise ValueError(f"budget.trial_epochs must be at least 1, got {budget.trial_epochs}")
    if budget.wall_seconds is not None and not budget.wall_seconds > 0:
        raise ValueError(f"budget.wall_minutes must be positive, got {budget.wall_seconds / 60:g}")


def _space_corners(spec: SweepSpec) -> list[dict[str, str]]:
    """An adaptive search's extremes: each searched value alone at its bounds (or each choice),
    with the fixed params, so a value training would refuse is refused before the sweep."""
    fixed = normalised(spec.params)
    corners = [fixed]
    for name, values in spec._normalised_grid().items():
        corners += [{**fixed, name: value} for value in values]
    for name, distribution in spec.random_space.items():
        (kind, args), = distribution.items()
        if kind in ("uniform", "loguniform") and _declared_type(name) not in ("float", None):
            raise ValueError(f"space.{name}: {kind} draws decimals, but {name} is "
                             f"{_declared_type(name)}; use randint or choice")
        corners += [{**fixed, name: normal(name, value)} for value in args]
    return corners


def _declared_type(name: str) -> str | None:
    return project_parameter_types().get(name)


def _check_distribution(name: str, distribution) -> None:
    if not isinstance(distribution, dict) or len(distribution) != 1:
        raise ValueError(f"space.{name} must be one of {DISTRIBUTIONS} with its "
                         f"arguments, e.g. {{loguniform: [0.0001, 0.01]}}")
    (kind, args), = distribution.items()
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"space.{name}: unknown distribution {kind!r}; "
                         f"known: {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError(f"space.{name}: choice needs a non-empty list")
        return
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
            or not args[0] < args[1]):
        raise ValueError(f"space.{name}: {kind} needs [low, high] with low < high")
    if kind == "loguniform" and args[0] <= 0:
        raise ValueError(f"space.{name}: loguniform needs low > 0")
    if kind == "randint" and not all(float(a).is_integer() for a in args):
        raise ValueError(f"space.{name}: randint needs integer bounds")


def _check_declared(name: str, value: str, declared: dict[str, str], plain_words: bool) -> None:
    if name not in declared:
        raise ValueError(f"unknown parameter {name!r}; MLproject declares: {', '.join(declared)}")
    kind = declared[name]
    converters = {"int": int, "float": float}
    if kind in converters:
        try:
            converters[kind](value)
        except ValueError:
            raise ValueError(f"{name} must be {kind} (MLproject), got {value!r}") from None
    if plain_words and shlex.quote(value) != value:
        raise ValueError(f"{name}={value!r}: the kubernetes backend passes only plain words "
                         f"(letters, digits, @%+=:,./-)")


@functools.cache
def project(project_dir: Path = PROJECT_DIR):
    """MLproject, as MLflow reads it (its entry points, its docker_env)."""
    from mlflow.projects._project_spec import load_project

    return load_project(str(project_dir))


def project_parameter_types(project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """MLproject's declared parameters of the main entry point: name -> type."""
    entry_point = project(project_dir).get_entry_point(ENTRY_POINT)
    return {name: param.type for name, param in entry_point.parameters.items()}


def resolved(trial: dict[str, str]) -> dict[str, str]:
    """A trial's full parameter set as train.py logs it (defaults filled, values normalised)."""
    return config_from_params(trial, check_paths=False).as_params()


def spec_from_data(data: dict) -> SweepSpec:
    """describe()'s output (or dataclasses.asdict's) as the SweepSpec it came from: the same
    definition, hence the same sweep id (a detached controller is handed its sweep this way)."""
    data = {name: value for name, value in data.items()
            if name in {f.name for f in dataclasses.fields(SweepSpec)}}
    stopping = data.pop("early_stopping")
    return SweepSpec(**{**data, "objective": Objective(**data.pop("objective")),
                        "budget": Budget(**data.pop("budget")),
                        "early_stopping": EarlyStopping(**stopping) if stopping else None})


def describe(spec: SweepSpec) -> dict:
    """The spec as plain data (logged as the parent run's artifact)."""
    data = dataclasses.asdict(spec)
    data["search"] = spec.strategy()
    data["trials"] = spec.trials()  # [] for an adaptive search: it decides as it goes
    return data
