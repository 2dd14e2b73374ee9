"""Checkpoints and per-epoch randomness, without a tracking server: the file round trip, the
refusals, the background saver, and a resumed fit that ends where an uninterrupted one does."""

import contextlib
import io
import threading

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from celeb_smile import IMAGE_SHAPE, checkpoint
from celeb_smile.config import TrainConfig
from celeb_smile.data import load_splits
from celeb_smile.model import AUGMENTATION_LAYER, build_model, compile_model, reseed_augmentation
from celeb_smile.retry import Unavailable
from celeb_smile.training import EpochRandomness, epoch_seeds, train

SMALL = TrainConfig(batch_size=16, epochs=3, training_samples=48, validation_samples=16)


# -- per-(seed, epoch) randomness --------------------------------------------------------------

def test_epoch_seeds_are_a_function_of_the_seed_and_the_epoch():
    assert epoch_seeds(42, 3) == epoch_seeds(42, 3)
    seeds = [tuple(epoch_seeds(42, epoch).values()) for epoch in range(20)]
    assert len(set(seeds)) == 20  # every epoch its own order and flips
    assert epoch_seeds(43, 3) != epoch_seeds(42, 3)
    assert all(0 <= value < 2**31 for pair in seeds for value in pair)


def image_sums(dataset) -> list[int]:
    """The training set in the order one iteration gives it, each image named by its sum."""
    return [int(image.sum()) for images, _ in dataset for image in images.numpy()
            .astype(np.int64)]


def training_set(cfg: TrainConfig):
    keras.utils.set_random_seed(cfg.seed)  # as train() does first
    order_seed = tf.Variable(0, dtype=tf.int64)
    return load_splits(cfg, order_seed)["train"], order_seed


def test_an_iterations_order_depends_on_its_epochs_seed_alone():
    dataset, order = training_set(SMALL)
    order.assign(epoch_seeds(SMALL.seed, 1)["shuffle"])
    epoch_1 = image_sums(dataset)
    order.assign(epoch_seeds(SMALL.seed, 0)["shuffle"])
    epoch_0 = image_sums(dataset)
    assert epoch_0 != epoch_1 and sorted(epoch_0) == sorted(epoch_1)  # reordered, not redrawn
    order.assign(epoch_seeds(SMALL.seed, 1)["shuffle"])
    assert image_sums(dataset) == epoch_1  # whatever was iterated before
    fresh, fresh_order = training_set(SMALL)  # a new process' pipeline, resumed at epoch 1
    fresh_order.assign(epoch_seeds(SMALL.seed, 1)["shuffle"])
    assert image_sums(fresh) == epoch_1


def test_reseeded_flips_draw_the_same_whatever_was_drawn_before():
    model = build_model(0, randomize_images=True, seed=1)
    flips = keras.Model(model.input, model.get_layer(AUGMENTATION_LAYER).output)
    images = np.random.default_rng(0).integers(0, 256, (16, *IMAGE_SHAPE), dtype=np.uint8)
    reseed_augmentation(model, 7)
    first = flips(images, training=True).numpy()
    assert not np.array_equal(flips(images, training=True).numpy(), first)  # draws move on
    reseed_augmentation(model, 7)
    np.testing.assert_array_equal(flips(images, training=True).numpy(), first)
    reseed_augmentation(model, 8)
    assert not np.array_equal(flips(images, training=True).numpy(), first)


# -- the checkpoint file ------------------------------------------------------------------------

def trained_model(steps: int = 1, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = compile_model(build_model(1, randomize_images=True, seed=seed), 0.001)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (16 * steps, *IMAGE_SHAPE), dtype=np.uint8)
    model.fit(images, rng.integers(0, 2, 16 * steps), batch_size=16, epochs=1, verbose=0)
    return model


def record(epochs_done: int = 1, cfg: TrainConfig = SMALL) -> checkpoint.Record:
    return checkpoint.Record(epochs_done, cfg.as_params(), epoch_seeds(cfg.seed, epochs_done))


def values(variables) -> list[np.ndarray]:
    return [np.array(variable.numpy()) for variable in variables]


def assert_same_arrays(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        np.testing.assert_array_equal(got, want)


def test_a_checkpoint_file_gives_back_the_weights_the_optimizer_state_and_the_record(tmp_path):
    model = trained_model(steps=2)
    path = checkpoint.write(checkpoint.snapshot(model, record(2)), tmp_path)
    state = checkpoint.read(path)
    assert state.record == record(2)
    fresh = compile_model(build_model(1, randomize_images=True, seed=5), 0.001)
    checkpoint.restore(fresh, state)
    assert_same_arrays(values(fresh.weights), values(model.weights))
    assert_same_arrays(values(fresh.optimizer.variables), values(model.optimizer.variables))
    assert int(fresh.optimizer.iterations.numpy()) == 2  # Adam's bias correction goes on


def test_a_snapshot_keeps_its_values_while_training_goes_on():
    """The saver writes a snapshot while the next epoch trains: it must hold values, not views
    of the variables."""
    model = trained_model()
    state = checkpoint.snapshot(model, record())
    before = values(model.weights)
    model.fit(np.zeros((16, *IMAGE_SHAPE), np.uint8), np.ones(16), verbose=0)
    assert not all(np.array_equal(a, b) for a, b in zip(values(model.weights), before))
    assert_same_arrays(state.model_weights, before)


def test_a_checkpoint_of_other_parameters_or_seeds_is_refused_in_one_line():
    params = SMALL.as_params()
    seeds = epoch_seeds(SMALL.seed, 1)
    checkpoint.refuse_unless_continues(record(1), params, seeds, "r1")  # its own: accepted
    other = checkpoint.Record(1, dict(params, batch_size="8", seed="7"), seeds)
    with pytest.raises(ValueError) as refused:
        checkpoint.refuse_unless_continues(other, params, seeds, "r1")
    assert str(refused.value) == ("the checkpoint of run r1 was made with batch_size=8, "
                                  "seed=7, not batch_size=16, seed=42")
    with pytest.raises(ValueError, match="^the checkpoint of run r1 seeds epoch 2 with .*, "
                                         "this code with [^\n]*$"):
        checkpoint.refuse_unless_continues(record(1), params, epoch_seeds(SMALL.seed, 9), "r1")


# -- the background saver ------------------------------------------------------------------------

class FakeUploads:
    """checkpoint.upload's stand-in: records the epochs uploaded; the first upload waits for
    `release` (the saver is busy meanwhile)."""

    def __init__(self, failure: Exception | None = None):
        self.epochs, self.failure = [], failure
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, run_id, path):
        self.started.set()
        assert self.release.wait(30)
        if self.failure:
            raise self.failure
        self.epochs.append(checkpoint.read(path).record.epochs_done)


def empty_snapshot(epochs_done: int) -> checkpoint.Snapshot:
    return checkpoint.Snapshot(record(epochs_done), [], [])


def test_the_saver_sends_the_newest_snapshot_and_drops_those_replaced_while_it_was_busy(
        monkeypatch, tmp_path):
    uploads = FakeUploads()
    monkeypatch.setattr(checkpoint, "upload", uploads)
    saver = checkpoint.Saver("r1", tmp_path)
    saver.submit(empty_snapshot(1))
    assert uploads.started.wait(30)
    saver.submit(empty_snapshot(2))  # replaced by 3 before its turn
    saver.submit(empty_snapshot(3))
    uploads.release.set()
    saver.finish()
    assert uploads.epochs == [1, 3]
    assert list(tmp_path.iterdir()) == []  # local files removed once uploaded


def test_a_failed_upload_is_raised_in_the_training_thread(monkeypatch, tmp_path):
    uploads = FakeUploads(failure=Unavailable("save the checkpoint: server away"))
    uploads.release.set()
    monkeypatch.setattr(checkpoint, "upload", uploads)
    saver = checkpoint.Saver("r1", tmp_path)
    saver.submit(empty_snapshot(1))
    with pytest.raises(Unavailable, match="server away"):
        saver.finish()
    with pytest.raises(Unavailable):
        saver.submit(empty_snapshot(2))


# -- resuming ------------------------------------------------------------------------------------

class SnapshotAtEnd(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.state = checkpoint.snapshot(self.model, record(self.params["epochs"]))


def fit(cfg: TrainConfig, epochs: int, start: checkpoint.Snapshot | None = None,
        reseed: bool = True) -> checkpoint.Snapshot:
    """A new pipeline and model, as a new process makes them, trained up to `epochs`."""
    dataset, order = training_set(cfg)
    validation = load_splits(cfg)["validation"]
    model = compile_model(build_model(cfg.convolutions, cfg.randomize_images, cfg.seed),
                          cfg.learning_rate)
    if start is not None:
        checkpoint.restore(model, start)
    end = SnapshotAtEnd()
    callbacks = [EpochRandomness(cfg.seed, order)] if reseed else []
    model.fit(dataset, validation_data=validation, epochs=epochs,
              initial_epoch=start.record.epochs_done if start else 0,
              callbacks=[*callbacks, end], verbose=0)
    return end.state


def test_a_fit_resumed_from_a_checkpoint_ends_with_the_uninterrupted_fits_weights(tmp_path):
    uninterrupted = fit(SMALL, epochs=3)
    after_one = checkpoint.read(checkpoint.write(fit(SMALL, epochs=1), tmp_path))
    resumed = fit(SMALL, epochs=3, start=after_one)
    # TensorFlow on CPU repeats a computation bit for bit on the same machine; the tolerance
    # covers another CPU's kernels (a pod rescheduled elsewhere).
    for got, want in zip(resumed.model_weights + resumed.optimizer_state,
                         uninterrupted.model_weights + uninterrupted.optimizer_state):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # What the check sees: resumed without the per-epoch reseeding, the weights differ.
    unseeded = fit(SMALL, epochs=3, start=after_one, reseed=False)
    assert not all(np.allclose(got, want, rtol=1e-5, atol=1e-7) for got, want in
                   zip(unseeded.model_weights, uninterrupted.model_weights))


@pytest.fixture
def local_tracking(tmp_path):
    """A tracking store in files of tmp_path (no server), for train() itself."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = mlflow.create_experiment("checkpoints", str(tmp_path / "artifacts"))
    yield experiment_id
    mlflow.set_tracking_uri(previous)


def test_train_logs_no_epoch_its_run_has_logged_already(local_tracking):
    """A run killed after an epoch's metrics but before its checkpoint trains that epoch again:
    its point stays the one logged first."""
    cfg = TrainConfig(batch_size=16, epochs=2, training_samples=32, validation_samples=16)
    with mlflow.start_run(experiment_id=local_tracking) as run:
        mlflow.log_metric("loss", 123.0, step=0)  # no checkpoint: trains from epoch 1
        train(cfg, verbose=0)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value == 123.0) for m in history) == [(0, True), (1, False)]


def test_train_on_a_run_whose_checkpoint_has_every_epoch_only_evaluates_and_logs_the_model(
        local_tracking):
    cfg = TrainConfig(batch_size=16, epochs=2, training_samples=32, validation_samples=16)
    with mlflow.start_run(experiment_id=local_tracking) as run:
        train(cfg, verbose=0)
    output = io.StringIO()
    with mlflow.start_run(run_id=run.info.run_id), contextlib.redirect_stdout(output):
        train(cfg, verbose=0)
    run_id = run.info.run_id
    assert (f"resumed after its last epoch (2) from the checkpoint of run {run_id}"
            in output.getvalue())
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1]
    assert len(client.get_metric_history(run_id, "test_accuracy")) == 1
    assert [a.path for a in client.list_artifacts(run_id, checkpoint.CHECKPOINT_DIR)] == \
        [checkpoint.CHECKPOINT_ARTIFACT]
