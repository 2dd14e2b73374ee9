"""The training parameters: one block of defaults, typed CLI flags, and validation.

MLproject declares the same parameters with the same defaults (tests/test_config.py
checks that the two never drift apart).
"""

import argparse
import dataclasses
import os
from dataclasses import dataclass

DATASETS = ("synthetic", "celeb_a")
# MLflow's kubernetes backend quotes arguments twice, so '' or '~' cannot reach a pod intact:
# a plain word stands for tfds' own default location.
DEFAULT_DATA_DIR = "default"


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # images per gradient step
    epochs: int = 10  # passes over the training samples
    convolutions: int = 1  # conv blocks before the dense head; 0 = dense only
    training_samples: int = 2000  # images drawn from the training split
    validation_samples: int = 500  # images drawn from the validation (and test) split
    randomize_images: bool = True  # random horizontal flips while training
    learning_rate: float = 0.001  # Adam's step size
    dataset: str = "synthetic"  # 'celeb_a' (tensorflow-datasets) or 'synthetic' (offline, drawn faces)
    data_dir: str = "default"  # where tfds keeps CelebA; 'default' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    seed: int = 42  # seeds data order, augmentation, weights and the synthetic set

    def validate(self, check_paths: bool = True) -> "TrainConfig":
        """Raise ValueError naming the first bad value; return self when all are fine.

        check_paths=False skips data_dir, for a driver whose trials run on another machine.
        """
        for name in ("batch_size", "epochs", "training_samples", "validation_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.convolutions < 0:
            raise ValueError(f"convolutions must be 0 or more, got {self.convolutions}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if check_paths and self.dataset == "celeb_a" and not _readable_dir(self.data_path):
            raise ValueError(f"data_dir {self.data_dir!r} is not a readable directory")
        return self

    @property
    def data_path(self) -> str:
        if self.data_dir != DEFAULT_DATA_DIR:
            return self.data_dir
        return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")

    def as_params(self) -> dict[str, str]:
        """The resolved configuration as MLflow parameters (strings, booleans lower-case)."""
        return {name: format_value(value) for name, value in dataclasses.asdict(self).items()}


def _readable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)


def format_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_bool(text: str) -> bool:
    """'true'/'false' (any case). bool('False') is True, so never use bool() on a flag."""
    lowered = str(text).strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ValueError(f"expected true or false, got {text!r}")


def parse_value(name: str, text: str):
    """Convert one textual parameter to its field's type, with a message naming the field."""
    field_type = FIELD_TYPES.get(name)
    if field_type is None:
        raise ValueError(f"unknown parameter {name!r}; known: {', '.join(FIELD_TYPES)}")
    try:
        return parse_bool(text) if field_type is bool else field_type(text)
    except ValueError:
        raise ValueError(f"{name} must be {TYPE_NAMES[field_type]}, got {text!r}") from None


def canonical(name: str, text) -> str:
    """`text` spelt exactly as train.py logs the parameter `name` ('1e-3' -> '0.001',
    'True' -> 'true', '05' -> '5'); ValueError (naming the field) when it does not parse."""
    return format_value(parse_value(name, str(text)))


FIELD_TYPES = {field.name: field.type for field in dataclasses.fields(TrainConfig)}
TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def config_from_params(params: dict[str, str], check_paths: bool = True) -> TrainConfig:
    """Build and validate a TrainConfig from textual parameters (defaults fill the rest)."""
    values = {name: parse_value(name, text) for name, text in params.items()}
    return TrainConfig(**values).validate(check_paths)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the CelebA 'Smiling' CNN and log it to MLflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for field in dataclasses.fields(TrainConfig):
        parser.add_argument(
            "--" + field.name,
            default=format_value(field.default),
            metavar=FIELD_TYPES[field.name].__name__.upper(),
        )
    return parser


def parse_args(argv=None) -> TrainConfig:
    """Parse CLI flags into a validated TrainConfig; bad input raises ValueError."""
    namespace = build_arg_parser().parse_args(argv)
    return config_from_params(vars(namespace))
