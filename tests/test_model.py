"""The CNN for every number of conv blocks, including none."""

import numpy as np
import pytest

from celeb_smile import IMAGE_SHAPE
from celeb_smile.model import build_model, compile_model


@pytest.mark.parametrize("convolutions", [0, 1, 3])
def test_model_maps_uint8_images_to_probabilities(convolutions):
    model = compile_model(build_model(convolutions, randomize_images=True), 0.001)
    conv_layers = [layer for layer in model.layers if layer.name.startswith("conv")]
    assert len(conv_layers) == convolutions
    images = np.random.default_rng(0).integers(0, 256, (2, *IMAGE_SHAPE), dtype=np.uint8)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (2, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_random_flip_only_when_asked():
    assert "random_flip" in [layer.name for layer in build_model(1, True).layers]
    assert "random_flip" not in [layer.name for layer in build_model(1, False).layers]


def test_negative_convolutions_raise_value_error():
    with pytest.raises(ValueError, match="convolutions must be 0 or more"):
        build_model(-1, False)
