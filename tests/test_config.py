"""Parameters: typed flags mirror MLproject 1:1, booleans are strict, bad input is rejected."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from celeb_smile.config import TrainConfig, canonical, format_value, parse_args, parse_bool
from tests.conftest import PROJECT_DIR

MLPROJECT_TYPES = {int: "int", float: "float", bool: "string", str: "string"}


def test_mlproject_declares_every_flag_with_same_type_and_default():
    spec = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())
    declared = spec["entry_points"]["main"]["parameters"]
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert list(declared) == list(fields)
    for name, field in fields.items():
        assert declared[name]["type"] == MLPROJECT_TYPES[field.type], name
        assert format_value(declared[name]["default"]) == format_value(field.default), name
        assert f"--{name} {{{name}}}" in spec["entry_points"]["main"]["command"]


def test_mlproject_name_is_dns_1123():
    name = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())["name"]
    assert name == name.lower() and all(c.isalnum() or c == "-" for c in name)


def test_defaults_parse_to_the_dataclass_defaults():
    assert parse_args([]) == TrainConfig()


@pytest.mark.parametrize("text, expected", [("true", True), ("False", False), ("TRUE", True)])
def test_booleans_mean_what_they_say(text, expected):
    assert parse_bool(text) is expected
    assert parse_args(["--randomize_images", text]).randomize_images is expected


@pytest.mark.parametrize("name, text, logged", [
    ("learning_rate", "1e-3", "0.001"), ("learning_rate", "0.0010", "0.001"),
    ("learning_rate", "1E-05", "1e-05"), ("randomize_images", "True", "true"),
    ("epochs", "05", "5"), ("epochs", " 7 ", "7"), ("dataset", "synthetic", "synthetic"),
])
def test_canonical_spells_a_value_as_training_logs_it(name, text, logged):
    assert canonical(name, text) == logged
    assert parse_args([f"--{name}", text]).as_params()[name] == logged


def test_canonical_refuses_what_training_refuses():
    with pytest.raises(ValueError, match="epochs must be an integer, got '1.5'"):
        canonical("epochs", "1.5")


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--batch_size", "-1"], "batch_size must be a positive integer"),
    (["--training_samples", "0"], "training_samples must be a positive integer"),
    (["--validation_samples", "0"], "validation_samples must be a positive integer"),
    (["--convolutions", "-1"], "convolutions must be 0 or more"),
    (["--learning_rate", "0"], "learning_rate must be positive"),
    (["--dataset", "imagenet"], "dataset must be one of"),
    (["--randomize_images", "yes"], "randomize_images must be true or false"),
    (["--epochs", "two"], "epochs must be an integer"),
    (["--dataset", "celeb_a", "--data_dir", "/no/such/dir"], "is not a readable directory"),
])
def test_bad_input_is_rejected_with_a_clear_message(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(argv)


def test_celeb_a_accepts_a_readable_data_dir(tmp_path):
    cfg = parse_args(["--dataset", "celeb_a", "--data_dir", str(tmp_path)])
    assert cfg.data_path == str(tmp_path)


def test_default_data_dir_follows_tfds_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert TrainConfig().data_path == str(tmp_path)


def test_train_py_rejects_bad_input_in_one_line_before_any_run(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "train.py", "--epochs", "0"], cwd=PROJECT_DIR,
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: epochs must be a positive integer, got 0"
    assert not (tmp_path / "mlflow.db").exists()  # no store touched, so no run created


def test_images_install_exactly_the_pins_of_pyproject():
    import tomllib

    from celeb_smile.pins import pins

    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    assert pins(PROJECT_DIR / "pyproject.toml") == project["dependencies"]
    assert "psycopg[binary]==3.3.9" in pins(PROJECT_DIR / "pyproject.toml", "server")
    assert all("==" in requirement for requirement in project["dependencies"])
