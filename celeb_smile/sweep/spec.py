"""What a sweep is: fixed parameters, a grid and a seeded random search, an objective.

Every value is checked against MLproject's parameter types and the training code's own
validation before anything is submitted.
"""

import dataclasses
import hashlib
import itertools
import json
import math
import random
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from celeb_smile.config import config_from_params, format_value

PROJECT_DIR = Path(__file__).resolve().parents[2]
ENTRY_POINT = "main"
DIRECTIONS = ("maximize", "minimize")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
SPEC_KEYS = {"experiment", "objective", "params", "grid", "random", "max_parallel", "max_failures"}

# The embedded default: a small sweep that finishes in a couple of minutes on a laptop.
DEFAULT_PARAMS = {"epochs": "5", "training_samples": "1000", "validation_samples": "200"}
DEFAULT_GRID = {"convolutions": ["1", "2"], "randomize_images": ["true", "false"]}


@dataclass
class Objective:
    metric: str = "val_accuracy"
    direction: str = "maximize"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b


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

    def sweep_id(self) -> str:
        """Stable identity of the sweep's definition: the same spec resumes the same parent run."""
        canonical = json.dumps(
            {"experiment": self.experiment, "trials": self.trials()}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def trials(self) -> list[dict[str, str]]:
        """Every combination of parameters, in a stable order (grid x random draws)."""
        grid_points = [dict(zip(self.grid, values))
                       for values in itertools.product(*self.grid.values())]
        draws = self._random_draws() or [{}]
        combos = []
        for draw in draws:
            for point in grid_points:
                trial = {**self.params, **point, **draw}
                if trial not in combos:
                    combos.append(trial)
        return combos

    def varying(self) -> list[str]:
        return list(self.grid) + [name for name in self.random_space if name not in self.grid]

    def _random_draws(self) -> list[dict[str, str]]:
        if not self.random_space or self.samples < 1:
            return []
        rng = random.Random(self.seed)
        return [{name: format_value(_draw(rng, dist)) for name, dist in self.random_space.items()}
                for _ in range(self.samples)]


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
    """Read a sweep file (YAML); see sweeps/example.yaml."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise ValueError(f"cannot read sweep file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"sweep file {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"sweep file {path} must be a mapping")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ValueError(f"sweep file {path}: unknown keys {sorted(unknown)}; "
                         f"known: {sorted(SPEC_KEYS)}")
    spec = SweepSpec()
    spec.experiment = str(raw.get("experiment", spec.experiment))
    objective = raw.get("objective") or {}
    spec.objective = Objective(str(objective.get("metric", "val_accuracy")),
                               str(objective.get("direction", "maximize")))
    spec.params = {k: format_value(v) for k, v in (raw.get("params") or {}).items()}
    spec.grid = {k: [format_value(v) for v in _as_list(vs)]
                 for k, vs in (raw.get("grid") or {}).items()}
    random_section = raw.get("random") or {}
    spec.random_space = dict(random_section.get("space") or {})
    spec.samples = int(random_section.get("samples", 0))
    spec.seed = int(random_section.get("seed", 0))
    spec.max_parallel = int(raw.get("max_parallel", spec.max_parallel))
    if raw.get("max_failures") is not None:
        spec.max_failures = int(raw["max_failures"])
    return spec


def _as_list(values):
    return values if isinstance(values, list) else [values]


def validate(spec: SweepSpec, remote: bool = False) -> None:
    """Raise ValueError on the first problem, before anything is submitted.

    remote (the kubernetes backend): data_dir lives in the pod, so it is not checked here; and
    MLflow passes values through two rounds of shell quoting, so only plain words arrive intact.
    """
    if spec.objective.direction not in DIRECTIONS:
        raise ValueError(f"objective direction must be maximize or minimize, "
                         f"got {spec.objective.direction!r}")
    if spec.max_parallel < 1:
        raise ValueError(f"max_parallel must be at least 1, got {spec.max_parallel}")
    if spec.max_failures is not None and spec.max_failures < 0:
        raise ValueError(f"max_failures must be 0 or more, got {spec.max_failures}")
    for name, distribution in spec.random_space.items():
        _check_distribution(name, distribution)
    if spec.random_space and spec.samples < 1:
        raise ValueError("a random search needs samples >= 1 (--samples N or random.samples)")
    declared = project_parameter_types()
    trials = spec.trials()
    for trial in trials:
        for name, value in trial.items():
            _check_declared(name, value, declared, plain_words=remote)
        config_from_params(trial, check_paths=not remote)


def _check_distribution(name: str, distribution) -> None:
    if not isinstance(distribution, dict) or len(distribution) != 1:
        raise ValueError(f"random.space.{name} must be one of {DISTRIBUTIONS} with its "
                         f"arguments, e.g. {{loguniform: [0.0001, 0.01]}}")
    (kind, args), = distribution.items()
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"random.space.{name}: unknown distribution {kind!r}; "
                         f"known: {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError(f"random.space.{name}: choice needs a non-empty list")
        return
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, (int, float)) for a in args) or not args[0] < args[1]):
        raise ValueError(f"random.space.{name}: {kind} needs [low, high] with low < high")
    if kind == "loguniform" and args[0] <= 0:
        raise ValueError(f"random.space.{name}: loguniform needs low > 0")


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


def project_parameter_types(project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """MLproject's declared parameters of the main entry point: name -> type."""
    from mlflow.projects._project_spec import load_project

    entry_point = load_project(str(project_dir)).get_entry_point(ENTRY_POINT)
    return {name: param.type for name, param in entry_point.parameters.items()}


def resolved(trial: dict[str, str]) -> dict[str, str]:
    """A trial's full parameter set as train.py logs it (defaults filled, values normalised)."""
    return config_from_params(trial, check_paths=False).as_params()


def describe(spec: SweepSpec) -> dict:
    """The spec as plain data (logged as the parent run's artifact)."""
    data = dataclasses.asdict(spec)
    data["trials"] = spec.trials()
    return data
