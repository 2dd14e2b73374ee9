"""Input pipelines: CelebA through tensorflow-datasets, and a synthetic CelebA look-alike.

Both yield (image uint8 [218, 178, 3], label int32 {0, 1}) examples; the model rescales
in-graph, so batches cross into the model as uint8 (4x less to copy than float32).
"""

import numpy as np
import tensorflow as tf

from celeb_smile import IMAGE_SHAPE
from celeb_smile.config import TrainConfig

AUTOTUNE = tf.data.AUTOTUNE
HEIGHT, WIDTH, _ = IMAGE_SHAPE
# Each split of the synthetic set draws from its own stream of example indices.
SYNTHETIC_SPLIT_OFFSETS = {"train": 0, "validation": 10_000_000, "test": 20_000_000}
CELEB_A_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
SHUFFLE_BUFFER = 4096  # examples; at least the training set's size gives a full shuffle


def load_splits(cfg: TrainConfig,
                order_seed: tf.Variable | None = None) -> dict[str, tf.data.Dataset]:
    """Batched, cached, prefetched train/validation/test datasets for a configuration.

    The training set is reshuffled each time it is iterated. With `order_seed` (an int64
    variable), an iteration's order is a function of the value it holds when the iteration
    starts (train() sets it at each epoch's start); without, tf.data reshuffles from cfg.seed,
    each iteration's order depending on how many came before it.
    """
    counts = {"train": cfg.training_samples, "validation": cfg.validation_samples,
              "test": cfg.validation_samples}
    train_seed = cfg.seed if order_seed is None else order_seed
    return {
        split: batch_pipeline(examples(cfg, split, count), cfg.batch_size,
                              shuffle_seed=train_seed if split == "train" else None)
        for split, count in counts.items()
    }


def examples(cfg: TrainConfig, split: str, count: int) -> tf.data.Dataset:
    if cfg.dataset == "synthetic":
        return synthetic_examples(count, seed=cfg.seed, offset=SYNTHETIC_SPLIT_OFFSETS[split])
    return celeb_a_examples(CELEB_A_SPLITS[split], count, data_dir=cfg.data_path)


def batch_pipeline(dataset: tf.data.Dataset, batch_size: int,
                   shuffle_seed: int | tf.Variable | None = None) -> tf.data.Dataset:
    dataset = dataset.cache()
    if isinstance(shuffle_seed, tf.Variable):
        dataset = shuffled_by(dataset, shuffle_seed)
    elif shuffle_seed is not None:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def shuffled_by(dataset: tf.data.Dataset, seed: tf.Variable) -> tf.data.Dataset:
    """`dataset` shuffled, at each iteration, by the value `seed` holds when that iteration
    starts: the same value, the same order (tf.data also mixes in the global seed, which
    train() sets to cfg.seed before anything else)."""
    # Read inside a dataset function, the seed is read at every iteration's start, not once
    # when the pipeline is built.
    shuffled = tf.data.Dataset.range(1).flat_map(
        lambda _: dataset.shuffle(SHUFFLE_BUFFER, seed=seed.read_value()))
    count = dataset.cardinality()
    if count < 0:  # unknown: nothing to tell Keras
        return shuffled
    # flat_map hides the count, which Keras would otherwise learn by running out of data (with
    # a warning) at the end of the first epoch.
    return shuffled.apply(tf.data.experimental.assert_cardinality(count))


class DataUnavailable(ValueError):
    """The requested dataset is not where the configuration says."""


def celeb_a_examples(split: str, count: int, data_dir=None) -> tf.data.Dataset:
    """The first `count` CelebA examples of a split, labelled by the 'Smiling' attribute."""
    import tensorflow_datasets as tfds  # heavy import, only needed for the real data

    try:
        dataset = tfds.load("celeb_a", split=f"{split}[:{count}]", data_dir=data_dir,
                            shuffle_files=False, download=False)
    except (AssertionError, FileNotFoundError) as error:  # tfds' "not prepared here"
        raise DataUnavailable(
            f"CelebA is not prepared in data_dir {data_dir!r}: run `tfds build celeb_a "
            f"--data_dir {data_dir}` where CelebA can be downloaded, then mount or copy it"
        ) from error
    # take() as well: the slice spares reading other shards, take() holds under mock data too.
    return dataset.take(count).map(_image_and_smiling, num_parallel_calls=AUTOTUNE)


def _image_and_smiling(example):
    return example["image"], tf.cast(example["attributes"]["Smiling"], tf.int32)


def synthetic_examples(count: int, seed: int, offset: int = 0) -> tf.data.Dataset:
    """`count` drawn faces; example i depends only on (seed, offset + i), so any slice is stable."""
    indices = tf.data.Dataset.range(offset, offset + count)
    return indices.map(lambda index: draw_face(seed, index), num_parallel_calls=AUTOTUNE)


def draw_face(seed, index):
    """One CelebA-shaped image of a face whose mouth curves up (smiling, 1) or down (0).

    Face position, size, skin, background, eye and mouth geometry and pixel noise all vary,
    so the label is only in the mouth's curvature.
    """
    rng = _StatelessDraws(seed, index)
    smiling = rng.uniform() < 0.5
    y, x = _pixel_grid()

    face_x, face_y = rng.uniform(0.38, 0.62) * WIDTH, rng.uniform(0.42, 0.58) * HEIGHT
    radius_x = rng.uniform(0.24, 0.32) * WIDTH
    radius_y = radius_x * rng.uniform(1.15, 1.35)
    face = tf.square((x - face_x) / radius_x) + tf.square((y - face_y) / radius_y) <= 1.0

    eye_dx, eye_y = 0.38 * radius_x, face_y - rng.uniform(0.2, 0.35) * radius_y
    eye_r = rng.uniform(0.07, 0.11) * radius_x
    eyes = tf.logical_or(_disc(x, y, face_x - eye_dx, eye_y, eye_r),
                         _disc(x, y, face_x + eye_dx, eye_y, eye_r))

    mouth_y = face_y + rng.uniform(0.35, 0.5) * radius_y
    half_width = rng.uniform(0.4, 0.6) * radius_x
    depth = rng.uniform(0.25, 0.45) * half_width * tf.where(smiling, 1.0, -1.0)
    thickness = rng.uniform(2.5, 4.5)
    u = (x - face_x) / half_width
    # Smiling: the centre of the arc sits lower (larger y) than its corners.
    arc_y = mouth_y + depth * (1.0 - tf.square(u)) - depth / 2
    mouth = tf.logical_and(tf.abs(u) <= 1.0, tf.abs(y - arc_y) <= thickness)

    # Paint background, face, eyes, mouth (each over the last) in one gather of a region map:
    # the same pixels as four full-image selects, at a fraction of the cost.
    colours = tf.stack([rng.colour(0.0, 1.0), rng.colour(0.45, 1.0), rng.colour(0.0, 0.3),
                        rng.colour(0.0, 0.45)])
    region = tf.where(mouth, 3, tf.where(eyes, 2, tf.where(face, 1, 0)))
    image = tf.gather(colours, region)
    image += tf.random.stateless_normal([HEIGHT, WIDTH, 3], rng.next_seed(), stddev=0.05)
    image = tf.cast(tf.clip_by_value(image, 0.0, 1.0) * 255.0, tf.uint8)
    return tf.ensure_shape(image, IMAGE_SHAPE), tf.cast(smiling, tf.int32)


class _StatelessDraws:
    """Successive stateless random draws keyed by (seed, index): same inputs, same image."""

    def __init__(self, seed, index):
        self._key = tf.cast(tf.stack([tf.cast(seed, tf.int64), index]), tf.int64)
        self._count = 0

    def next_seed(self):
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self._key, self._count)

    def uniform(self, low=0.0, high=1.0, shape=()):
        return tf.random.stateless_uniform(shape, self.next_seed(), low, high)

    def colour(self, low, high):
        return self.uniform(low, high, shape=[3])


# Pixel row and column coordinates, built once (they are the same for every image).
_ROWS, _COLUMNS = np.meshgrid(np.arange(HEIGHT, dtype=np.float32),
                              np.arange(WIDTH, dtype=np.float32), indexing="ij")


def _pixel_grid():
    return tf.constant(_ROWS), tf.constant(_COLUMNS)


def _disc(x, y, centre_x, centre_y, radius):
    # tf.square, not ** 2: Pow is ~10x slower than Mul on CPU, and x * x is exactly x ** 2.
    return tf.square(x - centre_x) + tf.square(y - centre_y) <= tf.square(radius)
