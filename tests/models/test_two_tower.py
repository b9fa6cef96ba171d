"""models/two_tower.py: shapes, symbolic calls, a fit step,
JSON config round-trips, `.keras` save/load, and numerics vs NumPy."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from models.two_tower import TwoTower

NUM_USERS, NUM_ITEMS, HIST, FEATS = 10, 16, 5, 6


def _inputs(batch=4, negatives=0, seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "user": rng.integers(0, NUM_USERS, batch).astype("int32"),
        "history": rng.integers(0, NUM_ITEMS + 1, (batch, HIST)).astype(
            "int32"
        ),
        "user_features": rng.normal(size=(batch, FEATS)).astype("float32"),
        "item": rng.permutation(NUM_ITEMS)[:batch].astype("int32"),
        "item_features": rng.normal(size=(batch, FEATS)).astype("float32"),
        "item_logq": np.log(np.full(batch, 1 / NUM_ITEMS, "float32")),
    }
    if negatives:
        x["neg_item"] = rng.integers(0, NUM_ITEMS, (batch, negatives)).astype(
            "int32"
        )
        x["neg_item_features"] = rng.normal(
            size=(batch, negatives, FEATS)
        ).astype("float32")
    return x


def _model(**kwargs):
    args = dict(
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        embedding_dim=8,
        id_embedding_dim=8,
        hidden_dims=(16,),
        history_length=HIST,
        num_user_features=FEATS,
        num_item_features=FEATS,
        seed=1,
    )
    args.update(kwargs)
    return TwoTower(**args)


def test_two_tower_output_shapes_and_symbolic_call():
    model = _model()
    out = model(_inputs(batch=4, negatives=3))
    assert out["user"].shape == (4, 8)
    assert out["item"].shape == (4, 8)
    assert out["neg_item"].shape == (4, 3, 8)
    symbolic = model(
        {
            "user": keras.Input(shape=(), dtype="int32"),
            "history": keras.Input(shape=(HIST,), dtype="int32"),
            "user_features": keras.Input(shape=(FEATS,)),
        }
    )
    assert isinstance(symbolic["user"], keras.KerasTensor)
    assert tuple(symbolic["user"].shape) == (None, 8)
    assert "item" not in symbolic


@pytest.mark.parametrize("loss", ["softmax", "bpr", "mse"])
def test_two_tower_fit_step_lowers_loss(loss):
    model = _model(loss=loss)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    x = _inputs(batch=8, negatives=2 if loss == "bpr" else 0)
    y = np.linspace(-1, 1, 8).astype("float32")
    first = float(model.train_on_batch(x, y))
    for _ in range(20):
        last = float(model.train_on_batch(x, y))
    assert np.isfinite(first) and last < first


def test_softmax_loss_matches_numpy_reference():
    model = _model(temperature=0.5)
    x = _inputs(batch=4)
    x["item"] = np.array([3, 5, 3, 7], "int32")  # item 3 twice: masked
    x["item_logq"] = np.log(np.array([0.1, 0.2, 0.1, 0.3], "float32"))
    u = np.random.default_rng(1).normal(size=(4, 8)).astype("float32")
    v = np.random.default_rng(2).normal(size=(4, 8)).astype("float32")
    got = float(model.compute_loss(x=x, y=None, y_pred={"user": u, "item": v}))
    logits = u @ v.T / 0.5 - x["item_logq"][None, :]
    clash = (x["item"][:, None] == x["item"][None, :]) & ~np.eye(4, dtype=bool)
    logits[clash] = -1e9
    logits -= logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.mean(np.diag(log_softmax))
    assert got == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("mask_known", [False, True])
def test_full_softmax_matches_numpy_reference(mask_known, tmp_path):
    model = _model(
        loss="full_softmax", temperature=0.5, dropout=0.0, mask_known=mask_known
    )
    table = np.random.default_rng(3).normal(size=(NUM_ITEMS, FEATS))
    model.set_item_feature_table(table.astype("float32"))
    x = _inputs(batch=4)
    x["item"] = np.array([3, 5, 3, 7], "int32")
    x["history"] = np.array(
        [[2, 9, 0, 0, 0], [4, 0, 0, 0, 0], [0] * 5, [8, 2, 0, 0, 0]], "int32"
    )  # ids + 1: row 0 knows items 1 and 8, row 3 items 7 (its target) and 1
    u = np.random.default_rng(1).normal(size=(4, 8)).astype("float32")
    items = keras.ops.convert_to_numpy(model.all_item_vectors())
    got = float(model.compute_loss(x=x, y=None, y_pred={"user": u}))
    logits = u @ items.T / 0.5
    if mask_known:
        logits[0, [1, 8]] = -1e9
        logits[1, 3] = -1e9
        logits[3, 1] = -1e9  # item 7 is row 3's target: kept
    logits -= logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.mean(log_softmax[np.arange(4), x["item"]])
    assert got == pytest.approx(expected, rel=1e-4)
    # The feature table is part of the saved model.
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.all_item_vectors()),
        items,
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="full_softmax"):
        _model().set_item_feature_table(table)
    with pytest.raises(ValueError, match="multimodal item encoder"):
        TwoTower(
            num_users=3,
            num_items=4,
            num_item_features=2,
            loss="full_softmax",
            item_encoder=object(),
        )


def test_two_tower_config_round_trip_and_errors():
    model = _model(loss="bpr", temperature=0.1, use_logq=False)
    config = json.loads(json.dumps(model.get_config()))
    clone = TwoTower.from_config(config)
    assert clone.get_config() == model.get_config()
    with pytest.raises(ValueError, match="loss"):
        _model(loss="hinge")
    with pytest.raises(ValueError, match="temperature"):
        _model(temperature=0.0)


def test_two_tower_keras_save_load_same_outputs(tmp_path):
    model = _model()
    model.compile(optimizer="adam")
    x = _inputs(batch=6, negatives=2)
    model.train_on_batch(x, np.zeros(6, "float32"))
    path = tmp_path / "two_tower.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    before, after = model(x), loaded(x)
    for key in ("user", "item", "neg_item"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(before[key]),
            ops.convert_to_numpy(after[key]),
            rtol=1e-5,
            atol=1e-6,
        )


def test_two_tower_without_optional_parts():
    model = TwoTower(NUM_USERS, NUM_ITEMS, embedding_dim=4, hidden_dims=())
    out = model({"user": np.array([0, 1]), "item": np.array([2, 3])})
    assert out["user"].shape == (2, 4) and out["item"].shape == (2, 4)
