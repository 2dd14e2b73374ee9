"""Train one configuration and record it on the active MLflow run."""

import time

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from celeb_smile import IMAGE_SHAPE
from celeb_smile.config import TrainConfig, parse_value
from celeb_smile.data import load_splits
from celeb_smile.model import build_model, compile_model
from celeb_smile.retry import patiently

MODEL_NAME = "model"  # the run's logged model: runs:/<run_id>/model


class EpochMetricsLogger(keras.callbacks.Callback):
    """Log every epoch's metrics as it ends (step = epoch), so a run can be watched live."""

    def on_epoch_end(self, epoch, logs=None):
        metrics = {name: float(value) for name, value in (logs or {}).items()}
        metrics["epoch_seconds"] = time.perf_counter() - self._epoch_started
        log_metrics_once(f"log epoch {epoch}'s metrics", metrics, step=epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()


def train(cfg: TrainConfig, verbose: int = 2) -> keras.Model:
    """Fit the model for `cfg` on the active MLflow run: params, per-epoch metrics, test
    metrics and the model (with signature and input example) all land on that run."""
    keras.utils.set_random_seed(cfg.seed)
    patiently("log the parameters", lambda: log_params_once(cfg))
    splits = load_splits(cfg)
    model = compile_model(build_model(cfg.convolutions, cfg.randomize_images, cfg.seed),
                          cfg.learning_rate)
    model.fit(splits["train"], validation_data=splits["validation"], epochs=cfg.epochs,
              callbacks=[EpochMetricsLogger()], verbose=verbose)
    test_loss, test_accuracy = model.evaluate(splits["test"], verbose=0)
    log_metrics_once("log the test metrics",
                     {"test_loss": test_loss, "test_accuracy": test_accuracy})
    example = next(iter(splits["validation"]))[0].numpy()[:1]
    patiently("log the model", lambda: log_model(model, example_batch=example))
    return model


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
