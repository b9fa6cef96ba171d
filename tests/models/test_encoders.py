"""models/encoders.py: the trainable CNN, the feature projection and the
frozen image backbone (random weights here: no download)."""

import keras
import numpy as np
import pytest

from models import encoders
from models.encoders import ConvImageEncoder
from models.encoders import FeatureProjection

SIZE = 8
IMAGE = SIZE * SIZE * 3


def np_out(layer, x, **kwargs):
    return keras.ops.convert_to_numpy(layer(x, **kwargs))


def test_modality_encoders():
    cnn = ConvImageEncoder(SIZE, 5, filters=(4,))
    pixels = np.random.default_rng(0).uniform(-1, 1, (3, IMAGE))
    assert np_out(cnn, pixels.astype("float32")).shape == (3, 5)
    assert np_out(cnn, pixels.reshape(3, SIZE, SIZE, 3)).shape == (3, 5)
    clone = ConvImageEncoder.from_config(cnn.get_config())
    assert clone.get_config() == cnn.get_config()
    proj = FeatureProjection((4,), 3)
    assert np_out(proj, np.ones((2, 7), "float32")).shape == (2, 3)
    assert FeatureProjection.from_config(proj.get_config()).normalize is False


@pytest.mark.parametrize("name", ["MobileNetV3Small", "MobileNet"])
def test_image_backbone_is_frozen_and_pools_features(name):
    """Random weights, 32 px: the real loading path of both a model with
    built-in preprocessing (MobileNetV3) and one whose module's
    `preprocess_input` is applied first (MobileNet)."""
    model = encoders.image_backbone(name, 32, weights=None)
    assert not model.trainable and model.name == f"frozen_{name}"
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))
    features = np.asarray(model.predict_on_batch(images.astype("float32")))
    assert features.ndim == 2 and features.shape[0] == 2
    assert np.isfinite(features).all() and features.std() > 0
    # Frozen: predictions do not change with the batch around them.
    again = np.asarray(model.predict_on_batch(images[:1].astype("float32")))
    np.testing.assert_allclose(again[0], features[0], rtol=1e-4, atol=1e-4)


def test_image_backbone_names_the_choices():
    with pytest.raises(ValueError, match="keras.applications"):
        encoders.image_backbone("NoSuchNet", 32, weights=None)
