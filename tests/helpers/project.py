"""The project as `mlflow run --env-manager local` can run it in tests."""

from pathlib import Path

import yaml

from tests.conftest import BIN_DIR, PROJECT_DIR


def docker_free_project(dest: Path, source: Path = PROJECT_DIR) -> Path:
    """`dest` as the project without its docker_env (MLflow runs any project that has one in
    Docker, whatever --env-manager says): MLproject rewritten, code linked."""
    dest.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((source / "MLproject").read_text())
    spec.pop("docker_env", None)
    (dest / "MLproject").write_text(yaml.safe_dump(spec, sort_keys=False))
    for name in ("train.py", "celeb_smile"):
        link = dest / name
        if not link.is_symlink():
            link.symlink_to(source / name)
    return dest


def train_argv(params: dict[str, str], *flags: str) -> list[str]:
    """`python train.py` (the venv's) with `flags`, then `--name value` for each parameter."""
    argv = [str(BIN_DIR / "python"), str(PROJECT_DIR / "train.py"), *flags]
    for name, value in params.items():
        argv += [f"--{name}", value]
    return argv
