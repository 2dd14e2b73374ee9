"""Train one configuration and record it on the active MLflow run.

A run resumes where it stopped: every epoch ends with a checkpoint on the run
(celeb_smile.checkpoint), and train() on a run that has one goes on from the next epoch. What
an epoch draws (the data order, the random flips) is a function of (seed, epoch) alone, so the
epochs a resumed run trains are those an uninterrupted run would have.
"""

import tempfile
import time

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from celeb_smile import IMAGE_SHAPE, checkpoint
from celeb_smile.config import TrainConfig, parse_value
from celeb_smile.constants import FINAL_METRICS
from celeb_smile.data import load_splits
from celeb_smile.model import build_model, compile_model, reseed_augmentation
from celeb_smile.retry import patiently

MODEL_NAME = "model"  # the run's logged model: runs:/<run_id>/model
# Logged with each epoch's other metrics: its steps are the epochs a run has logged.
PROGRESS_METRIC = "loss"


def epoch_seeds(seed: int, epoch: int) -> dict[str, int]:
    """The data order's and the random flips' seeds for a (0-based) epoch."""
    shuffle, augmentation = np.random.SeedSequence([seed, epoch]).generate_state(2) >> 1
    return {"shuffle": int(shuffle), "augmentation": int(augmentation)}  # >> 1: both int32


class EpochRandomness(keras.callbacks.Callback):
    """At each epoch's start, reseed the training set's order and the random flips from
    (seed, epoch): an epoch draws the same whichever epochs this process trained before it."""

    def __init__(self, seed: int, order_seed: tf.Variable):
        super().__init__()
        self._seed, self._order_seed = seed, order_seed

    def on_epoch_begin(self, epoch, logs=None):
        seeds = epoch_seeds(self._seed, epoch)
        self._order_seed.assign(seeds["shuffle"])
        reseed_augmentation(self.model, seeds["augmentation"])


class EpochMetricsLogger(keras.callbacks.Callback):
    """Log every epoch's metrics as it ends (step = epoch), so a run can be watched live. An
    epoch the run has logged already (trained again after a resume) is not logged twice."""

    def __init__(self, logged_epochs=frozenset()):
        super().__init__()
        self._logged_epochs = logged_epochs

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if epoch in self._logged_epochs:
            return
        metrics = {name: float(value) for name, value in (logs or {}).items()}
        metrics["epoch_seconds"] = time.perf_counter() - self._epoch_started
        log_metrics_once(f"log epoch {epoch}'s metrics", metrics, step=epoch)


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch (after its metrics are logged: list it after EpochMetricsLogger), the
    run's checkpoint becomes this epoch's. The loop only copies the variables; the file is
    written and uploaded while the next epoch trains, and fit() returns once the last one is
    on the run."""

    def __init__(self, cfg: TrainConfig, run_id: str, directory: str):
        super().__init__()
        self._cfg, self._run_id, self._directory = cfg, run_id, directory

    def on_train_begin(self, logs=None):
        self._saver = checkpoint.Saver(self._run_id, self._directory)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        record = checkpoint.Record(done, self._cfg.as_params(), epoch_seeds(self._cfg.seed, done))
        self._saver.submit(checkpoint.snapshot(self.model, record))

    def on_train_end(self, logs=None):
        self._saver.finish()


def train(cfg: TrainConfig, verbose: int = 2) -> keras.Model:
    """Fit the model for `cfg` on the active MLflow run: params, per-epoch metrics, test
    metrics and the model (with signature and input example) all land on that run. A run with
    a checkpoint goes on from the epoch after it."""
    patiently("log the parameters", lambda: log_params_once(cfg))
    run_id = mlflow.active_run().info.run_id
    model, splits, randomness = prepare(cfg)
    # Cleanup errors ignored: after a failed fit() the saver's thread may still be writing there.
    with tempfile.TemporaryDirectory(prefix="celeb-smile-checkpoint-",
                                     ignore_cleanup_errors=True) as scratch:
        first_epoch = resume(model, cfg, run_id, scratch)
        if first_epoch < cfg.epochs:
            callbacks = [randomness,
                         EpochMetricsLogger(logged_epochs(run_id)),
                         EpochCheckpoint(cfg, run_id, scratch)]
            model.fit(splits["train"], validation_data=splits["validation"], epochs=cfg.epochs,
                      initial_epoch=first_epoch, callbacks=callbacks, verbose=verbose)
    test_loss, test_accuracy = model.evaluate(splits["test"], verbose=0)
    log_test_metrics(run_id, {"test_loss": test_loss, "test_accuracy": test_accuracy})
    example = next(iter(splits["validation"]))[0].numpy()[:1]
    patiently("log the model", lambda: log_model(model, example_batch=example))
    return model


def prepare(cfg: TrainConfig, training_seed: int | None = None
            ) -> tuple[keras.Model, dict[str, tf.data.Dataset], EpochRandomness]:
    """What a configuration trains: its compiled model, its datasets, and the callback that
    makes each epoch's randomness a function of (seed, epoch). The data is always drawn from
    cfg.seed; the weights, data order and flips from `training_seed` (cfg.seed by default)."""
    seed = cfg.seed if training_seed is None else training_seed
    keras.utils.set_random_seed(seed)
    order_seed = tf.Variable(0, dtype=tf.int64, trainable=False)  # set at each epoch's start
    splits = load_splits(cfg, order_seed)
    model = compile_model(build_model(cfg.convolutions, cfg.randomize_images, seed),
                          cfg.learning_rate)
    return model, splits, EpochRandomness(seed, order_seed)


def resume(model: keras.Model, cfg: TrainConfig, run_id: str, scratch: str) -> int:
    """The (0-based) epoch to train first: the one after the run's checkpoint, whose weights
    and optimizer state `model` takes; 0 when the run has no checkpoint."""
    path = checkpoint.download(run_id, scratch)
    if path is None:
        return 0
    state = checkpoint.read(path)
    done = state.record.epochs_done
    checkpoint.refuse_unless_continues(state.record, cfg.as_params(),
                                       epoch_seeds(cfg.seed, done), run_id)
    checkpoint.restore(model, state)
    print(f"resumed at epoch {done + 1} from the checkpoint of run {run_id}" if done < cfg.epochs
          else f"resumed after its last epoch ({done}) from the checkpoint of run {run_id}",
          flush=True)
    return done


def logged_epochs(run_id: str) -> frozenset[int]:
    client = mlflow.MlflowClient()
    history = patiently("read the logged epochs",
                        lambda: client.get_metric_history(run_id, PROGRESS_METRIC))
    return frozenset(metric.step for metric in history)


def log_test_metrics(run_id: str, metrics: dict[str, float]) -> None:
    """Once per run, also when a resumed run that had logged them evaluates again."""
    recorded = patiently("read the run", lambda: mlflow.get_run(run_id)).data.metrics
    if not set(FINAL_METRICS) <= set(recorded):
        log_metrics_once("log the test metrics", metrics)


def log_metrics_once(what: str, metrics: dict[str, float], step: int = 0) -> None:
    """A resent batch carries the same timestamp: the server stores each point once."""
    timestamp = int(time.time() * 1000)
    patiently(what, lambda: mlflow.log_metrics(metrics, step=step, timestamp=timestamp))


def log_params_once(cfg: TrainConfig) -> None:
    """Log the resolved configuration, except what the run already records as an equal value.

    `mlflow run -P learning_rate=1e-3` logs "1e-3" when it creates the run, and MLflow refuses to
    change a logged parameter: an equal value in another spelling is left as it is; a genuinely
    different one (a run reused for another configuration) is refused with both values."""
    run = mlflow.active_run()
    logged = mlflow.get_run(run.info.run_id).data.params if run else {}
    missing = {}
    for name, value in cfg.as_params().items():
        if name not in logged:
            missing[name] = value
        elif not _same_value(name, logged[name], getattr(cfg, name)):
            raise ValueError(f"run {run.info.run_id} already records {name}={logged[name]}, "
                             f"not {value}")
    if missing:
        mlflow.log_params(missing)


def _same_value(name: str, text: str, value) -> bool:
    try:
        return parse_value(name, text) == value
    except ValueError:
        return False


def log_model(model: keras.Model, example_batch: np.ndarray) -> None:
    # mlflow.keras.log_model (3.17) writes the input example before creating its folder;
    # the tensorflow flavour stores the same .keras file and loads back as a Keras model.
    # The signature is spelled out: inferring it imports scipy, which mlflow-skinny lacks.
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *IMAGE_SHAPE), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1), "smiling")]))
    mlflow.tensorflow.log_model(
        model, name=MODEL_NAME, signature=signature, input_example=example_batch,
        # Naming the requirements skips MLflow's slow inference of them in a subprocess.
        pip_requirements=[f"tensorflow-cpu=={tf.__version__}", f"keras=={keras.__version__}"],
    )
