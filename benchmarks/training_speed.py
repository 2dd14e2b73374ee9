"""Training speed, side by side in one process, on the synthetic CelebA-shaped set.

(a) seed:     the original article's set-up: conv blocks at full 218x178 resolution
              (Conv2D 3x3 relu + MaxPool), Flatten, Dense 32 relu, Dense 1 sigmoid, fed float32
              images already divided by 255 through tf.data.Dataset.from_generator over a
              Python generator of batches.
(b) project:  celeb_smile.data.load_splits + celeb_smile.model.build_model/compile_model with
              TrainConfig's defaults (sample counts from the flags).
(c) ceiling:  the project's model on batches already in memory (a cached tensor dataset).

Prints one `name: value` line per figure. Usage (from the repository root):

    .venv/bin/python benchmarks/training_speed.py              # ~4-6 minutes on 2 cores
    .venv/bin/python benchmarks/training_speed.py --quick      # throughput only, ~1 minute
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from celeb_smile import IMAGE_SHAPE  # noqa: E402
from celeb_smile.config import TrainConfig  # noqa: E402
from celeb_smile.data import SYNTHETIC_SPLIT_OFFSETS, load_splits, synthetic_examples  # noqa: E402
from celeb_smile.model import FIRST_FILTERS, build_model, compile_model  # noqa: E402
from machine import peak_gflop_per_s, print_machine  # noqa: E402

TARGET_ACCURACY = 0.9


def emit(name: str, value) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    print(f"{name}: {value}", flush=True)


# ---------------------------------------------------------------- (a) the seed's set-up


def build_seed_model(convolutions: int) -> keras.Model:
    """The original article's CNN: full-resolution float32 input, no in-model downscale."""
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="image")
    x = inputs
    for block in range(convolutions):
        x = layers.Conv2D(FIRST_FILTERS * 2**block, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(32, activation="relu")(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs, name="seed")
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model


def seed_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle_seed=None):
    """A Python generator of float32 batches divided by 255, wrapped by from_generator.

    The original declared tf.uint8 in output_signature for images it had already divided by
    255 (which truncates every pixel to 0); here the signature is float32, as it should be.
    """
    epochs = [0]

    def generate():
        order = np.arange(len(images))
        if shuffle_seed is not None:
            np.random.default_rng(shuffle_seed + epochs[0]).shuffle(order)
            epochs[0] += 1
        for start in range(0, len(order), batch_size):
            index = np.sort(order[start:start + batch_size]) if shuffle_seed is None else \
                order[start:start + batch_size]
            yield images[index].astype(np.float32) / 255.0, labels[index].astype(np.float32)

    signature = (tf.TensorSpec((None, *IMAGE_SHAPE), tf.float32), tf.TensorSpec((None,), tf.float32))
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


# ---------------------------------------------------------------- helpers


def materialize(count: int, seed: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The same synthetic examples load_splits draws for `split`, as numpy arrays."""
    dataset = synthetic_examples(count, seed=seed, offset=SYNTHETIC_SPLIT_OFFSETS[split])
    images, labels = next(iter(dataset.batch(count)))
    return images.numpy(), labels.numpy()


def iterate_img_per_s(dataset: tf.data.Dataset) -> float:
    started, images = time.perf_counter(), 0
    for batch, _ in dataset:
        images += int(batch.shape[0])
    return images / (time.perf_counter() - started)


class BatchClock(keras.callbacks.Callback):
    """Training throughput over the batches after the first `skip` of each fit call."""

    def __init__(self, batch_size: int, skip: int = 2):
        super().__init__()
        self.batch_size, self.skip, self.times = batch_size, skip, []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())

    def img_per_s(self) -> float:
        times = self.times[self.skip:]
        return (len(times) - 1) * self.batch_size / (times[-1] - times[0])


class TimeToAccuracy(keras.callbacks.Callback):
    """Stop when val_accuracy reaches the target (and note when), or when the cap is spent."""

    def __init__(self, started: float, cap_seconds: float, target: float = TARGET_ACCURACY):
        super().__init__()
        self.started, self.cap, self.target = started, cap_seconds, target
        self.reached_at, self.history = None, []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def on_train_batch_end(self, batch, logs=None):
        if self.elapsed() > self.cap:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        accuracy = float((logs or {}).get("val_accuracy", 0.0))
        self.history.append((epoch + 1, round(self.elapsed(), 1), round(accuracy, 3)))
        if accuracy >= self.target:
            self.reached_at = self.elapsed()
            self.model.stop_training = True
        elif self.elapsed() > self.cap:
            self.model.stop_training = True


def time_to_accuracy(make_model, train, validation, cap_seconds: float, seed: int):
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    model = make_model()
    clock = TimeToAccuracy(started, cap_seconds)
    model.fit(train, validation_data=validation, epochs=10_000, callbacks=[clock], verbose=0)
    return clock


def forward_flops_per_image(model: keras.Model) -> int:
    """Multiply-adds x 2 of the Conv2D and Dense layers (pooling, rescaling, flips ignored)."""
    flops = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, filters = layer.output.shape
            kernel_h, kernel_w = layer.kernel_size
            flops += 2 * height * width * filters * kernel_h * kernel_w * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return flops


# ---------------------------------------------------------------- the benchmark


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--training-samples", type=int, default=2000)
    parser.add_argument("--validation-samples", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5,
                        help="throughput rounds; each times one epoch of (a), (b), (c) in turn")
    parser.add_argument("--seed-cap", type=float, default=150.0,
                        help="seconds (a) may train towards the target")
    parser.add_argument("--project-cap", type=float, default=90.0,
                        help="seconds (b) may train towards the target")
    parser.add_argument("--quick", action="store_true", help="skip the time-to-accuracy runs")
    args = parser.parse_args(argv)

    defaults = TrainConfig()
    cfg = dataclasses.replace(defaults, training_samples=args.training_samples,
                              validation_samples=args.validation_samples).validate()
    batch_size, convolutions = cfg.batch_size, cfg.convolutions
    print_machine()
    emit("tensorflow", tf.__version__)
    emit("config", f"batch_size={batch_size} convolutions={convolutions} "
                   f"training_samples={cfg.training_samples} "
                   f"validation_samples={cfg.validation_samples} learning_rate={cfg.learning_rate} "
                   f"randomize_images={cfg.randomize_images} seed={cfg.seed}")

    started = time.perf_counter()
    train_x, train_y = materialize(cfg.training_samples, cfg.seed, "train")
    val_x, val_y = materialize(cfg.validation_samples, cfg.seed, "validation")
    emit("draw_synthetic_img_per_s",
         (cfg.training_samples + cfg.validation_samples) / (time.perf_counter() - started))

    # ---- the input pipelines alone (no model): iterate the batched dataset
    seed_train = seed_dataset(train_x, train_y, batch_size, shuffle_seed=cfg.seed)
    iterate_img_per_s(seed_train)  # warm-up
    seed_pipeline = statistics.median(iterate_img_per_s(seed_train) for _ in range(3))
    emit("seed_pipeline_img_per_s", seed_pipeline)
    project_train = load_splits(cfg)["train"]
    emit("project_pipeline_first_epoch_img_per_s", iterate_img_per_s(project_train))
    project_pipeline = statistics.median(iterate_img_per_s(project_train) for _ in range(3))
    emit("project_pipeline_img_per_s", project_pipeline)
    emit("pipeline_vs_seed", project_pipeline / seed_pipeline)

    # ---- training throughput after warm-up, interleaved rounds so load drifts hit all three
    keras.utils.set_random_seed(cfg.seed)
    seed_model = build_seed_model(convolutions)
    project_model = compile_model(build_model(convolutions, cfg.randomize_images, cfg.seed),
                                  cfg.learning_rate)
    ceiling_train = (tf.data.Dataset.from_tensor_slices((train_x, train_y)).batch(batch_size)
                     .cache().prefetch(tf.data.AUTOTUNE))
    # (b) and (c) train the very same model instance: only the input differs.
    runs = {"seed": (seed_model, seed_train), "project": (project_model, project_train),
            "ceiling": (project_model, ceiling_train)}
    for model, dataset in runs.values():  # warm-up: trace the train step, fill caches
        model.fit(dataset, epochs=2, verbose=0)
    rates = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(args.rounds):  # rotate the order so no set-up always follows another
        for name in names[round_ % 3:] + names[:round_ % 3]:
            model, dataset = runs[name]
            clock = BatchClock(batch_size)
            model.fit(dataset, epochs=1, verbose=0, callbacks=[clock])
            rates[name].append(clock.img_per_s())
    for name in runs:
        emit(f"{name}_img_per_s", statistics.median(rates[name]))
        emit(f"{name}_img_per_s_rounds", ",".join(f"{rate:.0f}" for rate in rates[name]))
    emit("project_vs_ceiling", statistics.median(rates["project"]) / statistics.median(rates["ceiling"]))
    emit("project_vs_seed_img_per_s", statistics.median(rates["project"]) / statistics.median(rates["seed"]))

    peak, why = peak_gflop_per_s()
    seed_flops, project_flops = forward_flops_per_image(seed_model), forward_flops_per_image(project_model)
    emit("seed_mflop_per_img_train", 3 * seed_flops / 1e6)
    emit("project_mflop_per_img_train", 3 * project_flops / 1e6)
    emit("seed_achieved_gflop_per_s", 3 * seed_flops * statistics.median(rates["seed"]) / 1e9)
    emit("achieved_gflop_per_s", 3 * project_flops * statistics.median(rates["project"]) / 1e9)
    emit("peak_gflop_per_s", peak)
    emit("peak_assumption", why)
    del seed_model, project_model
    if args.quick:
        return 0

    # ---- time to val_accuracy >= 0.9 from fresh weights (validation after every epoch)
    seed_val = seed_dataset(val_x, val_y, batch_size)
    seed = time_to_accuracy(lambda: build_seed_model(convolutions), seed_train, seed_val,
                            args.seed_cap, cfg.seed)
    emit("seed_epochs", seed.history)
    splits = load_splits(cfg)  # fresh: the first epoch draws and caches the faces again
    project = time_to_accuracy(
        lambda: compile_model(build_model(convolutions, cfg.randomize_images, cfg.seed),
                              cfg.learning_rate),
        splits["train"], splits["validation"], args.project_cap, cfg.seed)
    emit("project_epochs", project.history)
    emit("seed_seconds_to_0.9", seed.reached_at if seed.reached_at is not None
         else f"not reached (cap {args.seed_cap:.0f}s, best val_accuracy "
              f"{max([h[2] for h in seed.history] or [0]):.3f})")
    emit("project_seconds_to_0.9", project.reached_at if project.reached_at is not None
         else f"not reached (cap {args.project_cap:.0f}s)")
    if project.reached_at is not None:
        seed_time = seed.reached_at if seed.reached_at is not None else args.seed_cap
        prefix = "" if seed.reached_at is not None else ">= "
        emit("time_to_accuracy_speedup", f"{prefix}{seed_time / project.reached_at:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
