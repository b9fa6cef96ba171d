"""models/sasrec.py: causal attention looks back only, the next-item
softmax matches a NumPy reference, item features and ages, saving."""

import keras
import numpy as np
import pytest
from keras import ops

from models.sasrec import SASRec

NUM_ITEMS, L = 12, 5


def _model(**kwargs):
    args = dict(
        num_users=3,
        num_items=NUM_ITEMS,
        embedding_dim=8,
        history_length=L,
        num_blocks=2,
        num_heads=2,
        dropout=0.0,
        seed=0,
    )
    args.update(kwargs)
    return SASRec(**args)


def _np(x):
    return ops.convert_to_numpy(x)


def test_a_slot_reads_only_itself_and_older_slots():
    model = _model()
    history = np.array([[3, 7, 2, 9, 0], [5, 0, 0, 0, 0]], "int32")
    base = _np(model.encode_sequence(history))
    changed = history.copy()
    changed[0, 0] = 11  # the newest item of user 0
    out = _np(model.encode_sequence(changed))
    # Slots 1.. (older) do not see slot 0; slot 0 does.
    np.testing.assert_allclose(out[0, 1:], base[0, 1:], atol=1e-5)
    assert not np.allclose(out[0, 0], base[0, 0])
    np.testing.assert_allclose(out[1], base[1], atol=1e-6)
    user = _np(model({"history": history})["user"])
    np.testing.assert_allclose(user, base[:, 0], atol=1e-6)


def test_next_item_loss_matches_numpy_reference():
    model = _model()
    history = np.array([[3, 7, 2, 0, 0], [5, 4, 0, 0, 0]], "int32")
    target = np.array([[8, 3, 7, 0, 0], [1, 5, 0, 0, 0]], "int32")
    x = {"history": history, "target": target}
    y_pred = model(x)
    got = float(_np(model.compute_loss(x=x, y=None, y_pred=y_pred)))
    seq = _np(y_pred["sequence"])
    items = _np(model.all_item_vectors())
    logits = np.einsum("bld,nd->bln", seq, items).astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    mask = target > 0
    b, l_ = np.nonzero(mask)
    expected = -np.mean(logp[b, l_, target[mask] - 1])
    assert got == pytest.approx(expected, rel=1e-4)


def test_item_vectors_share_the_input_table_and_features():
    table = np.random.default_rng(0).normal(size=(NUM_ITEMS, 3))
    model = _model(num_item_features=3)
    model.set_item_feature_table(table.astype("float32"))
    items = np.array([0, 4], "int32")
    direct = model({"item": items, "item_features": table[items]})["item"]
    np.testing.assert_allclose(
        _np(direct), _np(model.all_item_vectors())[items], rtol=1e-5
    )
    assert np.all(_np(model.item_vectors(np.zeros(2, "int32"))) == 0)
    with pytest.raises(ValueError, match="num_item_features"):
        _model().set_item_feature_table(table)


def test_unknown_age_adds_nothing_and_known_ages_do():
    model = _model(time_buckets=4)
    history = np.array([[3, 7, 2, 0, 0]], "int32")
    plain = _np(model.encode_sequence(history))
    zeros = _np(model.encode_sequence(history, np.zeros_like(history)))
    np.testing.assert_allclose(plain, zeros, atol=1e-6)
    aged = _np(model.encode_sequence(history, np.array([[1, 2, 4, 0, 0]])))
    assert not np.allclose(aged[0, 0], plain[0, 0])


def test_fit_save_load_round_trip(tmp_path):
    model = _model(num_item_features=2, time_buckets=3)
    model.set_item_feature_table(np.ones((NUM_ITEMS, 2), "float32"))
    model.compile(optimizer="adam")
    rng = np.random.default_rng(0)
    x = {
        "history": rng.integers(0, NUM_ITEMS + 1, (8, L)).astype("int32"),
        "target": rng.integers(1, NUM_ITEMS + 1, (8, L)).astype("int32"),
        "history_age": rng.integers(0, 4, (8, L)).astype("int32"),
    }
    loss = model.fit(x, np.zeros(8), batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(loss.history["loss"]))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    inputs = {"history": x["history"], "history_age": x["history_age"]}
    np.testing.assert_allclose(
        _np(loaded(inputs)["user"]), _np(model(inputs)["user"]), atol=1e-5
    )
    np.testing.assert_allclose(
        _np(loaded.all_item_vectors()), _np(model.all_item_vectors())
    )


def test_argument_errors():
    with pytest.raises(ValueError, match="divisible"):
        _model(embedding_dim=9, num_heads=2)
    with pytest.raises(ValueError, match="history_length"):
        _model(history_length=0)
    with pytest.raises(ValueError, match="time_buckets"):
        _model(time_buckets=-1)
