"""models/layers.py: masked mean embedding and the MLP tower: numerics vs
NumPy, symbolic calls, JSON config round-trips."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from models.layers import MaskedMeanEmbedding
from models.layers import MLPTower


def test_masked_mean_embedding_matches_numpy():
    layer = MaskedMeanEmbedding(5, 3)
    ids = np.array([[1, 2, 0], [0, 0, 0], [4, 4, 3]], "int32")
    keep = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1]], "float32")
    out = ops.convert_to_numpy(layer(ids, keep))
    table = ops.convert_to_numpy(layer.embedding.embeddings)
    expected = np.stack(
        [
            (table[1] + table[2]) / 2,  # padding 0 ignored
            np.zeros(3),  # nothing but padding
            (table[4] + table[3]) / 2,  # keep hides the second 4
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_masked_mean_embedding_symbolic_and_config():
    layer = MaskedMeanEmbedding(7, 4, embeddings_regularizer="l2")
    out = layer(keras.Input(shape=(3,), dtype="int32"))
    assert isinstance(out, keras.KerasTensor)
    assert out.shape == (None, 4)
    config = json.loads(json.dumps(layer.get_config()))
    clone = MaskedMeanEmbedding.from_config(config)
    assert clone.num_embeddings == 7 and clone.embedding_dim == 4
    with pytest.raises(ValueError, match="num_embeddings"):
        MaskedMeanEmbedding(1, 4)


def test_mlp_tower_normalises_and_round_trips():
    tower = MLPTower((8, 8), 4, dropout=0.2, seed=3)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    out = ops.convert_to_numpy(tower(x))
    assert out.shape == (5, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    config = json.loads(json.dumps(tower.get_config()))
    clone = MLPTower.from_config(config)
    assert clone.hidden_dims == (8, 8) and clone.dropout == 0.2
    with pytest.raises(ValueError, match="dropout"):
        MLPTower(dropout=1.0)
