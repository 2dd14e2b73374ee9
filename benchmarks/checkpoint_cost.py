"""What the per-epoch checkpoint costs a trial, through the real `train()` against a local
`mlflow server`: the time the training loop spends on it per epoch, against the epoch itself.

The sweep's default trial (celeb_smile.sweep.spec.DEFAULT_PARAMS: 5 epochs, 1000 training and 200
validation images) with the learning settings (learning_settings.py: batch 32, 1 conv block,
learning rate 0.001) is trained in three ways, one after the other in each of `--rounds` rounds
(the order rotating): `background` (the project's: the loop copies the variables, a thread writes
and uploads the file), `synchronous` (the same file written and uploaded inside the loop, as a
simpler design would) and `none` (no checkpoint). Per mode:

  checkpoint_s_mean  what the loop spends on checkpoints per epoch: the callback after each epoch,
                     plus the wait for the last upload after the last epoch, spread over the epochs
  epoch_s_mean/median  an epoch as training logs it (epoch_seconds: its steps and validation), the
                     first of each run left out (it draws and caches the faces); against `none`'s
                     it shows what a background upload takes from the epochs (here the server,
                     the upload and training share 2 cores; on a cluster the server has its own)
  upload_s_mean      one upload of the file (log_artifact), wherever it runs
  save_cpu_s_mean    CPU time of writing and uploading one checkpoint, in the thread doing it: what
                     a training pod spends beside its epochs (the server's share is elsewhere)
  checkpoint_vs_epoch  checkpoint_s_mean / `none`'s mean epoch

    .venv/bin/python benchmarks/checkpoint_cost.py              # ~3-4 minutes on 2 cores
    .venv/bin/python benchmarks/checkpoint_cost.py --rounds 6 --set epochs=8
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import mlflow  # noqa: E402

from celeb_smile import checkpoint, training  # noqa: E402
from celeb_smile.config import config_from_params  # noqa: E402
from celeb_smile.local_server import mlflow_server  # noqa: E402
from celeb_smile.sweep.spec import DEFAULT_PARAMS  # noqa: E402
from learning_settings import SETTINGS  # noqa: E402
from machine import print_machine  # noqa: E402

TRIAL = {**SETTINGS, **DEFAULT_PARAMS}
MODES = ("background", "synchronous", "none")


class SynchronousSaver(checkpoint.Saver):
    """The same write and upload, done inside the training loop."""

    def __init__(self, run_id, directory):  # no thread
        self._run_id, self._directory = run_id, directory

    def submit(self, state):
        self._save(state)

    def finish(self):
        pass


class Stopwatch:
    """Durations per mode of calls wrapped in place (wall time, or the calling thread's CPU)."""

    def __init__(self):
        self.mode = MODES[0]
        self.seconds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def wrap(self, kind: str, call, clock=time.perf_counter):
        def timed(*args, **kwargs):
            started = clock()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds[self.mode][kind].append(clock() - started)
        return timed


def instrument(stopwatch: Stopwatch) -> None:
    callback = training.EpochCheckpoint
    callback.on_epoch_end = stopwatch.wrap("after_epoch", callback.on_epoch_end)
    callback.on_train_end = stopwatch.wrap("last_wait", callback.on_train_end)
    checkpoint.upload = stopwatch.wrap("upload", checkpoint.upload)
    checkpoint.Saver._save = stopwatch.wrap("save_cpu", checkpoint.Saver._save, time.thread_time)


def run_trial(cfg, mode: str) -> tuple[str, float]:
    """One train() on a new run, checkpointing as `mode` says; its run id and wall time."""
    real_callback, real_saver = training.EpochCheckpoint, checkpoint.Saver
    if mode == "none":
        training.EpochCheckpoint = lambda *args: keras.callbacks.Callback()
    elif mode == "synchronous":
        checkpoint.Saver = SynchronousSaver
    try:
        started = time.perf_counter()
        with mlflow.start_run() as run:
            training.train(cfg, verbose=0)
        return run.info.run_id, time.perf_counter() - started
    finally:
        training.EpochCheckpoint, checkpoint.Saver = real_callback, real_saver


def steady_epoch_seconds(run_id: str) -> list[float]:
    history = mlflow.MlflowClient().get_metric_history(run_id, "epoch_seconds")
    return [metric.value for metric in sorted(history, key=lambda m: m.step)][1:]


def checkpoint_seconds_per_epoch(timed: dict[str, list[float]]) -> float:
    """The loop's time after each epoch plus its wait for the last upload, per epoch."""
    return (sum(timed["after_epoch"]) + sum(timed["last_wait"])) / len(timed["after_epoch"])


def emit(name: str, value) -> None:
    print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="override a training parameter")
    args = parser.parse_args(argv)
    cfg = config_from_params(dict(TRIAL, **dict(item.split("=", 1) for item in args.set)))
    print_machine()
    emit("settings", " ".join(f"{k}={v}" for k, v in cfg.as_params().items()))

    stopwatch = Stopwatch()
    instrument(stopwatch)
    epochs, walls = defaultdict(list), defaultdict(list)
    root = Path(tempfile.mkdtemp(prefix="checkpoint-cost-"))
    with mlflow_server(f"sqlite:///{root}/mlflow.db", root) as uri:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("checkpoint-cost")
        for round_ in range(args.rounds):
            for mode in MODES[round_ % 3:] + MODES[:round_ % 3]:
                stopwatch.mode = mode
                run_id, wall = run_trial(cfg, mode)
                epochs[mode] += steady_epoch_seconds(run_id)
                walls[mode].append(wall)
                emit(f"round_{round_ + 1}_{mode}_run_s", wall)
        emit("checkpoint_mb", next(root.rglob(checkpoint.CHECKPOINT_FILE)).stat().st_size / 1e6)

    bare_epoch = statistics.mean(epochs["none"])
    for mode in MODES:
        emit(f"{mode}_epoch_s_mean", statistics.mean(epochs[mode]))
        emit(f"{mode}_epoch_s_median", statistics.median(epochs[mode]))
        emit(f"{mode}_run_s_median", statistics.median(walls[mode]))
        if mode != "none":
            timed = stopwatch.seconds[mode]
            emit(f"{mode}_checkpoint_s_mean", checkpoint_seconds_per_epoch(timed))
            emit(f"{mode}_checkpoint_s_max_after_an_epoch", max(timed["after_epoch"]))
            emit(f"{mode}_upload_s_mean", statistics.mean(timed["upload"]))
            emit(f"{mode}_save_cpu_s_mean", statistics.mean(timed["save_cpu"]))
            emit(f"{mode}_checkpoint_vs_epoch", checkpoint_seconds_per_epoch(timed) / bare_epoch)
    # The shipped design's figures under the names the issue asked for.
    shipped = stopwatch.seconds["background"]
    emit("checkpoint_s_mean", checkpoint_seconds_per_epoch(shipped))
    emit("epoch_s_mean", bare_epoch)
    emit("checkpoint_vs_epoch", checkpoint_seconds_per_epoch(shipped) / bare_epoch)
    emit("upload_vs_epoch", statistics.mean(shipped["upload"]) / bare_epoch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
