"""Settings for the project's learning test: synthetic set, val_accuracy >= 0.9 in under a minute.

Runs celeb_smile.training.train (the real code path: load_splits, build/compile, fit with the
per-epoch MLflow logger, test evaluation, model logging) against a throwaway SQLite tracking
store, for several seeds, with fixed epochs (as a test would: no early stopping), and prints
per seed the final val_accuracy, the first epoch reaching 0.9 and the wall time.

    .venv/bin/python benchmarks/learning_settings.py                          # ~2 minutes
    .venv/bin/python benchmarks/learning_settings.py --seeds 1,2 --set epochs=6 training_samples=1000
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mlflow  # noqa: E402

from celeb_smile.config import config_from_params  # noqa: E402
from celeb_smile.training import train  # noqa: E402
from machine import print_machine  # noqa: E402

SETTINGS = {"dataset": "synthetic", "epochs": "8", "training_samples": "2000",
            "validation_samples": "300", "batch_size": "32", "convolutions": "1",
            "learning_rate": "0.001"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="42,1,2,3,4")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="override a training parameter")
    args = parser.parse_args(argv)
    params = dict(SETTINGS, **dict(item.split("=", 1) for item in args.set))
    print_machine()
    print("settings: " + " ".join(f"{k}={v}" for k, v in params.items()), flush=True)

    root = tempfile.mkdtemp(prefix="learning-settings-")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    mlflow.set_experiment("learning-settings")
    seconds, finals = [], []
    for seed in args.seeds.split(","):
        cfg = config_from_params(dict(params, seed=seed))
        started = time.perf_counter()
        with mlflow.start_run() as run:
            train(cfg, verbose=0)
        elapsed = time.perf_counter() - started
        history = [m.value for m in
                   mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")]
        reached = next((epoch + 1 for epoch, value in enumerate(history) if value >= 0.9), None)
        seconds.append(elapsed)
        finals.append(history[-1])
        print(f"seed_{seed}: final_val_accuracy={history[-1]:.3f} first_epoch_at_0.9={reached} "
              f"seconds={elapsed:.1f} val_accuracy_by_epoch="
              + ",".join(f"{value:.2f}" for value in history), flush=True)
    print(f"min_final_val_accuracy: {min(finals):.3f}")
    print(f"max_seconds: {max(seconds):.1f}")
    print(f"median_seconds: {statistics.median(seconds):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
