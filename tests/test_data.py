"""Data: CelebA-shaped, labelled, deterministic; the real CelebA loader on tfds mock data."""

import numpy as np
import tensorflow as tf

from celeb_smile import IMAGE_SHAPE
from celeb_smile.config import TrainConfig
from celeb_smile.data import celeb_a_examples, load_splits, synthetic_examples


def as_arrays(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.stack(images), np.array(labels)


def test_synthetic_examples_are_celeb_a_shaped_uint8_with_binary_labels():
    images, labels = as_arrays(synthetic_examples(16, seed=1))
    assert images.shape == (16, *IMAGE_SHAPE) and images.dtype == np.uint8
    assert set(labels) <= {0, 1} and 0 < labels.sum() < 16
    assert images.std() > 20  # not blank


def test_synthetic_examples_are_deterministic_per_seed_and_index():
    first, first_labels = as_arrays(synthetic_examples(8, seed=3))
    again, again_labels = as_arrays(synthetic_examples(8, seed=3))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first_labels, again_labels)
    other, _ = as_arrays(synthetic_examples(8, seed=4))
    assert not np.array_equal(first, other)
    tail, _ = as_arrays(synthetic_examples(4, seed=3, offset=4))  # any slice is stable
    np.testing.assert_array_equal(first[4:], tail)


def test_splits_are_batched_and_disjoint():
    cfg = TrainConfig(training_samples=10, validation_samples=6, batch_size=4)
    splits = load_splits(cfg)
    train_images, _ = next(iter(splits["train"]))
    assert train_images.shape == (4, *IMAGE_SHAPE) and train_images.dtype == tf.uint8
    assert sum(int(x.shape[0]) for x, _ in splits["validation"]) == 6
    validation, _ = as_arrays(splits["validation"].unbatch())
    test, _ = as_arrays(splits["test"].unbatch())
    assert not np.array_equal(validation, test)


def test_celeb_a_loader_reads_tfds_split_and_smiling_attribute(tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        images, labels = as_arrays(celeb_a_examples("validation", 5, data_dir=str(tmp_path)))
    assert images.shape == (5, *IMAGE_SHAPE) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and set(labels) <= {0, 1}
