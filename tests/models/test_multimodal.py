"""models/multimodal.py: every fusion mode on tiny inputs, masking of
absent modalities, InfoNCE against NumPy, and the encoder inside the
two-tower and NCF models (fit step, .keras round trip)."""

import json

import keras
import numpy as np
import pytest

from models.encoders import ConvImageEncoder
from models.multimodal import FUSIONS
from models.multimodal import ModalityFusion
from models.multimodal import MultimodalItemEncoder
from models.multimodal import info_nce
from models.ncf import NCF
from models.two_tower import TwoTower
from tests.conftest import large_on

# Eager JAX dispatches these fits op by op (minutes on the shared CI CPU,
# against seconds on TensorFlow and torch): `large` there only.
LARGE_ON_JAX = large_on("jax")
TEXT, SIZE, NUMERIC = 6, 8, 2
IMAGE = SIZE * SIZE * 3
WIDTH = TEXT + IMAGE + NUMERIC + 3


def rows(n=5, seed=0):
    """Item rows with every presence pattern that matters."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, WIDTH)).astype("float32")
    flags = [[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]]
    x[:, -3:] = np.array(flags * n)[:n]
    return x


def encoder(fusion="attention", **kwargs):
    return MultimodalItemEncoder(
        text_dim=TEXT,
        image_dim=IMAGE,
        numeric_dim=NUMERIC,
        image_size=SIZE,
        embedding_dim=8,
        num_heads=2,
        fusion=fusion,
        cnn_filters=(4, 8),
        seed=1,
        **kwargs,
    )


def np_out(layer, x, **kwargs):
    return keras.ops.convert_to_numpy(layer(x, **kwargs))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_shapes_masking_and_config(fusion):
    enc = encoder(fusion)
    x = rows()
    y = np_out(enc, x)
    assert y.shape == (5, 8) and np.isfinite(y).all()
    # Leading dims (negatives) are kept.
    y3 = np_out(enc, x.reshape(5, 1, WIDTH))
    np.testing.assert_allclose(y3[:, 0], y, atol=1e-5)
    # An absent modality is masked: its block does not matter ...
    noisy = x.copy()
    noisy[1, TEXT : TEXT + IMAGE] += 3.0  # item 1 has no image
    noisy[4, :-3] += 3.0  # item 4 has nothing
    np.testing.assert_allclose(np_out(enc, noisy), y, atol=1e-5)
    # ... while a present one does.
    changed = x.copy()
    changed[0, :TEXT] += 3.0
    assert np.abs(np_out(enc, changed)[0] - y[0]).max() > 1e-4
    symbolic = enc(keras.KerasTensor((None, WIDTH)))
    assert tuple(symbolic.shape) == (None, 8)
    config_json = json.dumps(keras.layers.serialize(enc))
    clone = keras.layers.deserialize(json.loads(config_json))
    clone.set_weights(enc.get_weights())
    np.testing.assert_allclose(np_out(clone, x), y, atol=1e-5)


def test_layers_validate_their_arguments():
    with pytest.raises(ValueError, match="`mode`"):
        ModalityFusion("sum")
    with pytest.raises(ValueError, match="divide"):
        ModalityFusion("attention", embedding_dim=6, num_heads=4)
    with pytest.raises(ValueError, match="image_dim"):
        MultimodalItemEncoder(text_dim=4, image_dim=10, image_size=8)
    with pytest.raises(ValueError, match="at least one"):
        MultimodalItemEncoder()
    with pytest.raises(ValueError, match="image_size"):
        ConvImageEncoder(4, 8)


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3)).astype("float32")
    b = rng.normal(size=(4, 3)).astype("float32")
    mask = np.array([1, 1, 0, 1], "float32")
    got = float(keras.ops.convert_to_numpy(info_nce(a, b, mask, 0.5)))
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    keep = mask > 0
    logits = an[keep] @ bn[keep].T / 0.5

    def ce(z):
        z = z - z.max(axis=1, keepdims=True)
        return -np.diag(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))

    want = np.mean(0.5 * (ce(logits) + ce(logits.T)))
    assert got == pytest.approx(want, rel=1e-4)
    none = info_nce(a, b, np.zeros(4, "float32"))
    assert float(keras.ops.convert_to_numpy(none)) == 0.0


def test_alignment_loss_only_in_training():
    enc = encoder(alignment_weight=0.5)
    enc(rows(), training=True)
    assert len(enc.losses) == 1
    assert float(keras.ops.convert_to_numpy(enc.losses[0])) > 0
    enc(rows(), training=False)
    assert not enc.losses


@LARGE_ON_JAX
@pytest.mark.parametrize("family", ["two_tower", "ncf"])
def test_encoder_inside_base_models_fits_and_round_trips(family, tmp_path):
    n_items = 5
    table = rows(n_items)
    if family == "two_tower":
        model = TwoTower(
            num_users=3,
            num_items=n_items,
            embedding_dim=4,
            id_embedding_dim=4,
            hidden_dims=(8,),
            history_length=2,
            use_user_id=True,
            num_item_features=WIDTH,
            item_encoder=encoder(alignment_weight=0.1),
            use_item_id=False,
        )
        assert model.item_embedding is None
    else:
        model = NCF(
            num_users=3,
            num_items=n_items,
            item_input="features",
            num_item_features=WIDTH,
            gmf_dim=4,
            mlp_embedding_dim=4,
            mlp_dims=(8,),
            item_encoder=encoder(alignment_weight=0.1),
        )
    model.compile(optimizer="adam", jit_compile=False)
    item = np.array([0, 1, 2, 3], "int32")
    x = {
        "user": np.array([0, 1, 2, 0], "int32"),
        "item": item,
        "item_features": table[item],
        "history": np.array([[1, 0], [2, 3], [0, 0], [4, 1]], "int32"),
        "neg_item": np.array([[4], [3], [0], [2]], "int32"),
    }
    x["neg_item_features"] = table[x["neg_item"]]
    before = [w.copy() for w in model.item_encoder.get_weights()]
    loss = model.train_on_batch(x, np.ones(4, "float32"))
    assert np.isfinite(loss)
    after = model.item_encoder.get_weights()
    assert any(np.abs(a - b).max() > 0 for a, b in zip(after, before))
    inputs = {k: x[k] for k in ("user", "item", "item_features", "history")}
    key = "item" if family == "two_tower" else "logit"
    want = keras.ops.convert_to_numpy(model(inputs)[key])
    if family == "ncf":
        # Scoring from precomputed item vectors skips the encoder.
        vectors = model.predict({"item_features": table}, verbose=0)
        fast = dict(inputs, item_vector=vectors["item_vector"][item])
        del fast["item_features"]
        got = keras.ops.convert_to_numpy(model(fast)["logit"])
        np.testing.assert_allclose(got, want, atol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(inputs)[key]), want, atol=1e-5
    )
