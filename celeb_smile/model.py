"""The CNN: uint8 CelebA image in, probability of 'Smiling' out."""

import keras
from keras import layers

from celeb_smile import IMAGE_SHAPE

# Average-pool the 218x178 input by this factor before the convolutions: a smile is visible
# at a quarter of the resolution, and on CPU the convolutions are the whole cost.
INPUT_DOWNSCALE = 3
FIRST_FILTERS = 16  # filters of the first conv block; each further block doubles them
DENSE_UNITS = 32  # width of the dense layer before the sigmoid (as in the original article)
# Before the dense layer: one more 2x max-pool (4x fewer inputs to the dense layer) and a batch
# normalization of its inputs. Without them, Adam's first steps shift every pre-activation of
# the wide dense ReLU layer the same way (its inputs are all non-negative) and for some seeds
# kill all 32 units: the model then predicts one class forever (val_accuracy ~0.5 on the
# synthetic set for seeds 1 and 3 of 1, 2, 3, 42; with these two layers, seeds 1-8 and 42 all
# reach 0.9 by epoch 3-6: see benchmarks/README.md).
HEAD_POOL = 2
AUGMENTATION_LAYER = "random_flip"


def build_model(convolutions: int, randomize_images: bool, seed: int = 0) -> keras.Model:
    if convolutions < 0:
        raise ValueError(f"convolutions must be 0 or more, got {convolutions}")
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.AveragePooling2D(INPUT_DOWNSCALE, name="downscale")(x)
    if randomize_images:
        x = layers.RandomFlip("horizontal", seed=seed, name=AUGMENTATION_LAYER)(x)
    for block in range(convolutions):
        filters = FIRST_FILTERS * 2**block
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{block + 1}")(x)
    x = layers.MaxPooling2D(HEAD_POOL, padding="same", name="head_pool")(x)
    x = layers.BatchNormalization(name="head_norm")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(DENSE_UNITS, activation="relu", name="dense")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="smiling")(x)
    return keras.Model(inputs, outputs, name=f"celeb_smile_conv{convolutions}")


def reseed_augmentation(model: keras.Model, seed: int) -> None:
    """Restart the random flips' draws from `seed` (nothing to do without them): what they
    draw from here on depends on `seed` alone, not on the steps trained before."""
    if any(layer.name == AUGMENTATION_LAYER for layer in model.layers):
        # Keras keeps a random layer's draws in its SeedGenerator: a [seed, counter] variable.
        model.get_layer(AUGMENTATION_LAYER).generator.state.assign([seed, 0])


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model
