"""models/persona.py: the matching maths (aggregation, InfoNCE with
temperature, label smoothing and repeated items), the Keras layers and
model (shapes, symbolic call, fit step, config and `.keras` round trips) and
the host-side inputs."""

import json

import keras
import numpy as np
import pytest
from keras import ops

import data
from models import persona as pm


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---------------------------------------------------------------------------
# Matching maths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["max", "softmax"])
def test_aggregation_matches_reference_and_numpy_twin(mode):
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, (3, 4, 5)).astype(np.float32)
    mask = rng.random((3, 4, 5)) < 0.6
    mask[0, 0] = False  # an item without personas scores 0
    mask[0, 1] = [True, False, False, False, False]
    t = 0.2
    want = np.zeros((3, 4))
    for i in np.ndindex(3, 4):
        s = sims[i][mask[i]]
        if len(s):
            want[i] = s.max() if mode == "max" else softmax(s / t) @ s
    layer = pm.PersonaAggregation(mode, t)
    got = ops.convert_to_numpy(layer(sims, mask.astype(np.float32)))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(
        pm.aggregate_scores(sims, mask, mode, t), want, atol=1e-5
    )
    assert got[0, 0] == 0.0 and got[0, 1] == pytest.approx(sims[0, 1, 0])


def test_softmax_aggregation_tends_to_max_and_mean():
    sims = np.array([[0.9, 0.1, 0.5]], np.float32)
    mask = np.ones_like(sims, bool)
    assert pm.aggregate_scores(sims, mask, "softmax", 1e-3)[0] == (
        pytest.approx(0.9, abs=1e-4)
    )
    assert pm.aggregate_scores(sims, mask, "softmax", 1e4)[0] == (
        pytest.approx(0.5, abs=1e-3)
    )


def test_infonce_loss_matches_numpy_reference():
    model = pm.PersonaMatcher(
        input_kind="vectors",
        input_dim=4,
        hidden_dims=(4,),
        aggregation="softmax",
        temperature=0.5,
        label_smoothing=0.2,
    )
    rng = np.random.default_rng(1)
    profile = rng.standard_normal((3, 4)).astype(np.float32)
    profile /= np.linalg.norm(profile, axis=1, keepdims=True)
    personas = rng.standard_normal((3, 2, 4)).astype(np.float32)
    personas /= np.linalg.norm(personas, axis=-1, keepdims=True)
    mask = np.array([[1, 1], [1, 0], [1, 1]], np.float32)
    item = np.array([7, 8, 7], np.int32)  # rows 0 and 2: the same item
    loss = model.compute_loss(
        x={"persona_mask": mask, "item": item},
        y_pred={"profile": profile, "personas": personas},
    )
    sims = np.einsum("bd,ckd->bck", profile, personas)
    logits = np.zeros((3, 3))
    for b in range(3):
        for c in range(3):
            s = sims[b, c][mask[c] > 0]
            logits[b, c] = softmax(s / 0.5) @ s / 0.5
    total = 0.0
    for b in range(3):
        allowed = [c for c in range(3) if c == b or item[c] != item[b]]
        logp = logits[b, allowed] - np.log(np.exp(logits[b, allowed]).sum())
        target = np.full(len(allowed), 0.2 / len(allowed))
        target[allowed.index(b)] += 0.8
        total += -(target * logp).sum()
    assert float(ops.convert_to_numpy(loss)) == pytest.approx(
        total / 3, rel=1e-4
    )


# ---------------------------------------------------------------------------
# Layers and model
# ---------------------------------------------------------------------------


def test_residual_adapter_starts_as_identity_and_round_trips():
    layer = pm.ResidualAdapter(6, hidden_dims=(5,), dropout=0.1, seed=3)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    out = ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(
        out, x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6
    )
    config = json.loads(json.dumps(layer.get_config()))
    again = pm.ResidualAdapter.from_config(config).get_config()
    assert json.loads(json.dumps(again)) == config
    with pytest.raises(ValueError, match="dropout"):
        pm.ResidualAdapter(6, dropout=1.0)


@pytest.mark.parametrize("kind", ["tokens", "vectors"])
def test_matcher_shapes_config_and_keras_round_trip(kind, tmp_path):
    batch, n, k, length, dim = 4, 3, 2, 5, 6
    model = pm.PersonaMatcher(
        input_kind=kind,
        vocab_size=20,
        input_dim=dim,
        embedding_dim=8,
        hidden_dims=(8,),
        dropout=0.0,
        seed=0,
    )
    rng = np.random.default_rng(0)
    if kind == "tokens":
        prof = rng.integers(0, 20, (batch, n, length)).astype(np.int32)
        pers = rng.integers(0, 20, (batch, k, length)).astype(np.int32)
    else:
        prof = rng.standard_normal((batch, n, dim)).astype(np.float32)
        pers = rng.standard_normal((batch, k, dim)).astype(np.float32)
    x = {
        "profile": prof,
        "profile_weights": pm.recency_weights(n, 0.5)[None].repeat(batch, 0),
        "personas": pers,
        "persona_mask": np.ones((batch, k), np.float32),
        "item": np.arange(batch, dtype=np.int32),
    }
    out = model(x)
    width = 8 if kind == "tokens" else dim
    assert tuple(out["profile"].shape) == (batch, width)
    assert tuple(out["personas"].shape) == (batch, k, width)
    norms = np.linalg.norm(ops.convert_to_numpy(out["personas"]), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    symbolic = model(
        {
            "profile": keras.KerasTensor(prof.shape, prof.dtype),
            "profile_weights": keras.KerasTensor((batch, n), "float32"),
        }
    )
    assert tuple(symbolic["profile"].shape) == (batch, width)
    # (The reranker fixture below fits the model through `fit()`.)
    config = json.loads(json.dumps(model.get_config()))
    again = pm.PersonaMatcher.from_config(config).get_config()
    assert json.loads(json.dumps(again)) == config
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(x)["profile"]),
        ops.convert_to_numpy(model(x)["profile"]),
        atol=1e-6,
    )


def test_matcher_validates_arguments():
    with pytest.raises(ValueError, match="input_kind"):
        pm.PersonaMatcher(input_kind="pixels")
    with pytest.raises(ValueError, match="label_smoothing"):
        pm.PersonaMatcher(label_smoothing=1.0)
    with pytest.raises(ValueError, match="mode"):
        pm.PersonaAggregation("mean")


# ---------------------------------------------------------------------------
# Host-side inputs
# ---------------------------------------------------------------------------


def test_hash_tokens_is_stable_padded_and_truncated():
    out = pm.hash_tokens(["Dark, scary film!", "", "a b c d e f"], 50, 4)
    assert out.shape == (3, 4) and out.dtype == np.int32
    assert (out[0, :3] > 0).all() and out[0, 3] == 0
    assert (out[1] == 0).all()
    assert (out[2] > 0).all()  # six words, four kept
    assert out.max() <= 50
    again = pm.hash_tokens(["dark SCARY film"], 50, 4)
    np.testing.assert_array_equal(again[0], out[0])


def test_previous_rows_and_recency_weights():
    x = data.Interactions(
        user=np.array([0, 1, 0, 0, 1]),
        item=np.array([5, 6, 7, 8, 9]),
        value=np.ones(5),
        ts=np.array([30, 10, 10, 20, 20]),
        num_users=3,
        num_items=10,
    )
    before, last = pm.previous_rows(x, 2)
    # User 0 in time order: rows 2 (t10), 3 (t20), 0 (t30).
    assert before[0].tolist() == [3, 2]
    assert before[3].tolist() == [2, -1]
    assert before[2].tolist() == [-1, -1]
    assert before[4].tolist() == [1, -1]
    assert last.tolist() == [[0, 3], [4, 1], [-1, -1]]
    np.testing.assert_allclose(pm.recency_weights(3, 0.5), [1, 0.5, 0.25])
    with pytest.raises(ValueError, match="gamma"):
        pm.recency_weights(3, 0.0)
