"""How soon a training process stops on SIGTERM: `python train.py` on a run against a local
`mlflow server` (as a local trial or a pod runs it), SIGTERM once its first epoch is logged,
then how long it takes to exit and how many epochs it logged meanwhile. A trial that early
stopping rules out, a cancelled sweep or a drained node should stop within the epoch under way,
not train on. Per run, then medians over `--runs`:

  stop_s               SIGTERM -> the process exited (143, its run ended KILLED)
  epoch_s              the run's median epoch (epoch_seconds as training logs it)
  stop_vs_epoch        stop_s / epoch_s: under 1 is within the epoch under way
  epochs_after_sigterm epochs logged between the signal and the exit (0 or 1 expected)

    .venv/bin/python benchmarks/sigterm_stop.py             # ~1 minute on 2 cores
    .venv/bin/python benchmarks/sigterm_stop.py --runs 5
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlflow import MlflowClient  # noqa: E402

from celeb_smile.constants import EXIT_TERMINATED  # noqa: E402
from celeb_smile.local_server import mlflow_server  # noqa: E402
from machine import print_machine  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]
# The integration test's long run (tests/integration/test_project_run.py: LONG_EPOCHS).
PARAMS = {"epochs": "50", "training_samples": "3000", "validation_samples": "300",
          "convolutions": "1", "batch_size": "32", "dataset": "synthetic"}


def epochs_logged(client: MlflowClient, run_id: str) -> int:
    return len(client.get_metric_history(run_id, "loss"))


def one_run(uri: str, index: int) -> dict:
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"sigterm-{index}")
    run_id = client.create_run(experiment_id).info.run_id
    argv = [sys.executable, str(PROJECT_DIR / "train.py")]
    for name, value in PARAMS.items():
        argv += [f"--{name}", value]
    process = subprocess.Popen(argv, cwd=PROJECT_DIR, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(
                                   os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_RUN_ID=run_id,
                                   MLFLOW_EXPERIMENT_ID=experiment_id))
    while (before := epochs_logged(client, run_id)) < 1:
        if process.poll() is not None:
            raise RuntimeError(f"train.py exited with {process.returncode} before an epoch")
        time.sleep(0.2)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=600)
    stop_s = time.monotonic() - signalled
    if code != EXIT_TERMINATED:
        raise RuntimeError(f"train.py exited with {code} after SIGTERM, not {EXIT_TERMINATED}")
    epoch_s = statistics.median(m.value for m in
                                client.get_metric_history(run_id, "epoch_seconds"))
    return {"stop_s": stop_s, "epoch_s": epoch_s, "stop_vs_epoch": stop_s / epoch_s,
            "epochs_after_sigterm": epochs_logged(client, run_id) - before,
            "status": client.get_run(run_id).info.status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory() as root, \
            mlflow_server(f"sqlite:///{root}/mlflow.db", Path(root)) as uri:
        runs = []
        for index in range(args.runs):
            runs.append(one_run(uri, index))
            print(f"run_{index}: " + ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in runs[-1].items()), flush=True)
    for name in ("stop_s", "epoch_s", "stop_vs_epoch"):
        print(f"{name}_median: {statistics.median(r[name] for r in runs):.2f}")
    print(f"stop_vs_epoch_max: {max(r['stop_vs_epoch'] for r in runs):.2f}")
    print(f"epochs_after_sigterm_max: {max(r['epochs_after_sigterm'] for r in runs)}")


if __name__ == "__main__":
    main()
