"""NCF (NeuMF): shapes, symbolic calls, fit steps, losses vs NumPy, JSON and
`.keras` round-trips, scoring new item vectors, pretraining, errors, and a
small learning test."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from models.ncf import NCF

NUM_USERS, NUM_ITEMS, FEATS = 10, 16, 6


def _inputs(batch=4, negatives=0, seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "user": rng.integers(0, NUM_USERS, batch).astype("int32"),
        "item": rng.integers(0, NUM_ITEMS, batch).astype("int32"),
        "item_features": rng.normal(size=(batch, FEATS)).astype("float32"),
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
        num_item_features=FEATS,
        gmf_dim=4,
        mlp_embedding_dim=4,
        mlp_dims=(8, 4),
        seed=1,
    )
    args.update(kwargs)
    return NCF(**args)


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("item_input", ["id", "features", "both"])
def test_output_shapes_for_each_item_input(item_input):
    model = _model(item_input=item_input)
    out = model(_inputs(batch=4, negatives=3))
    assert tuple(out["logit"].shape) == (4,)
    assert tuple(out["neg_logit"].shape) == (4, 3)
    plain = model(_inputs(batch=4))
    assert set(plain) == {"logit"}
    # A negative's logit is the logit of its (user, item) pair.
    x = _inputs(batch=4, negatives=3)
    flat = {
        "user": np.repeat(x["user"], 3),
        "item": x["neg_item"].reshape(-1),
        "item_features": x["neg_item_features"].reshape(-1, FEATS),
    }
    np.testing.assert_allclose(
        _np(out["neg_logit"]),
        _np(model.score_pairs(flat)).reshape(4, 3),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        _np(model.score_pairs(_inputs(batch=4))),
        _np(plain["logit"]),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "use_gmf, use_mlp, mlp_dims",
    [(True, False, (8,)), (False, True, (8, 4)), (True, True, ())],
)
def test_single_branch_and_no_hidden_layer(use_gmf, use_mlp, mlp_dims):
    model = _model(use_gmf=use_gmf, use_mlp=use_mlp, mlp_dims=mlp_dims)
    out = model(_inputs(batch=3, negatives=2))
    assert tuple(out["neg_logit"].shape) == (3, 2)
    width = (4 if use_gmf else 0) + (
        (mlp_dims[-1] if mlp_dims else 8) if use_mlp else 0
    )
    assert tuple(model.prediction.kernel.shape) == (width, 1)


@pytest.mark.parametrize("item_input", ["id", "features", "both"])
def test_symbolic_call(item_input):
    model = _model(item_input=item_input)
    inputs = {
        "user": keras.Input(shape=(), dtype="int32"),
        "neg_item": keras.Input(shape=(3,), dtype="int32"),
        "neg_item_features": keras.Input(shape=(3, FEATS)),
    }
    if item_input != "features":
        inputs["item"] = keras.Input(shape=(), dtype="int32")
    if item_input != "id":
        inputs["item_features"] = keras.Input(shape=(FEATS,))
    out = model(inputs)
    assert isinstance(out["logit"], keras.KerasTensor)
    assert tuple(out["logit"].shape) == (None,)
    assert tuple(out["neg_logit"].shape) == (None, 3)


@pytest.mark.parametrize(
    "loss, graded, item_input",
    [("bce", False, "id"), ("bce", True, "both"), ("bpr", False, "features")],
)
def test_fit_steps_lower_the_loss(loss, graded, item_input):
    model = _model(item_input=item_input, loss=loss, l2=1e-4, dropout=0.1)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    x = _inputs(batch=8, negatives=2)
    y = (
        np.array([1, 0, 0.5, 1, 0.25, 0, 1, 0.75], "float32")
        if graded
        else np.ones(8, "float32")
    )
    first = float(model.train_on_batch(x, y))
    for _ in range(15):
        last = float(model.train_on_batch(x, y))
    assert np.isfinite(first) and last < first


def test_bce_loss_matches_numpy():
    model = _model()
    logit = np.array([2.0, -1.0, 0.5, 30.0], "float32")
    neg_logit = np.array(
        [[-2.0, 1.0], [0.0, 0.3], [-30.0, 4.0], [1.5, -0.5]], "float32"
    )
    y = np.array([1.0, 0.0, 0.5, 0.75], "float32")
    weight = np.array([1.0, 2.0, 0.0, 0.5], "float32")

    def xent(z, t):
        # -(t log s(z) + (1 - t) log(1 - s(z))), with -log s(z) =
        # log(1 + e^-z) and -log(1 - s(z)) = log(1 + e^z), in float64.
        z = z.astype(np.float64)
        return t * np.logaddexp(0, -z) + (1 - t) * np.logaddexp(0, z)

    terms = np.concatenate([xent(logit, y)[:, None], xent(neg_logit, 0)], 1)
    y_pred = {"logit": logit, "neg_logit": neg_logit}
    got = float(model.compute_loss(x={}, y=y, y_pred=y_pred))
    assert got == pytest.approx(terms.mean(), rel=1e-5)
    got_weighted = float(
        model.compute_loss(x={}, y=y, y_pred=y_pred, sample_weight=weight)
    )
    expected = (terms * weight[:, None]).mean()
    assert got_weighted == pytest.approx(expected, rel=1e-5)
    # No negatives and no targets: every pair is a positive.
    got_plain = float(model.compute_loss(x={}, y=None, y_pred={"logit": logit}))
    assert got_plain == pytest.approx(xent(logit, 1.0).mean(), rel=1e-5)


def test_bpr_loss_and_l2_penalty_match_numpy():
    model = _model(loss="bpr", l2=0.01)
    logit = np.array([1.0, -0.5, 2.0], "float32")
    neg_logit = np.array([[0.0, 2.0], [-1.0, 0.5], [1.0, 1.0]], "float32")
    diff = logit[:, None].astype(np.float64) - neg_logit
    bpr = -np.mean(np.log(1 / (1 + np.exp(-diff))))
    tables = [
        _np(layer.embeddings)
        for layer in (
            model.gmf_user_embedding,
            model.gmf_item_embedding,
            model.mlp_user_embedding,
            model.mlp_item_embedding,
        )
    ]
    penalty = sum(0.01 * np.sum(np.square(t)) for t in tables)
    got = float(
        model.compute_loss(
            x={}, y=None, y_pred={"logit": logit, "neg_logit": neg_logit}
        )
    )
    assert penalty > 0
    assert got == pytest.approx(bpr + penalty, rel=1e-5)
    with pytest.raises(ValueError, match="negatives"):
        model.compute_loss(x={}, y=None, y_pred={"logit": logit})


def test_config_json_round_trip():
    model = _model(
        item_input="both", mlp_dims=(8,), dropout=0.2, l2=1e-3, loss="bpr"
    )
    config = json.loads(json.dumps(model.get_config()))
    clone = NCF.from_config(config)
    assert clone.get_config() == model.get_config()
    assert clone.mlp_dims == (8,) and clone.loss_name == "bpr"
    assert len(clone.weights) == len(model.weights)


def test_keras_save_load_same_logits(tmp_path):
    model = _model(item_input="both", dropout=0.3)
    x = _inputs(batch=6, negatives=2)
    path = tmp_path / "ncf.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, NCF)
    before, after = model(x), loaded(x)
    for key in ("logit", "neg_logit"):
        np.testing.assert_allclose(
            _np(before[key]), _np(after[key]), rtol=1e-5, atol=1e-6
        )


def test_features_mode_scores_a_brand_new_vector():
    model = _model(item_input="features")
    assert model.gmf_item_embedding is None
    assert model.mlp_item_embedding is None
    rng = np.random.default_rng(3)
    users = np.array([0, 0, 5], "int32")
    vector = rng.normal(size=(1, FEATS)).astype("float32")
    other = vector + rng.normal(size=(1, FEATS)).astype("float32")
    # No "item" key at all: a vector that belongs to no catalog item.
    feats = np.concatenate([vector, other, vector])
    scores = _np(model.score_pairs({"user": users, "item_features": feats}))
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert abs(scores[0] - scores[1]) > 1e-6  # the vector matters
    assert abs(scores[0] - scores[2]) > 1e-6  # and so does the user
    # Ids are ignored in features mode, even out of range.
    with_ids = model.score_pairs(
        {
            "user": users,
            "item": np.array([99, 98, 97], "int32"),
            "item_features": feats,
        }
    )
    np.testing.assert_allclose(_np(with_ids), scores, rtol=1e-6)
    with pytest.raises(ValueError, match="item_features"):
        model.score_pairs({"user": users, "item": np.array([1, 2, 3])})


@pytest.mark.parametrize("item_input", ["id", "both"])
def test_from_pretrained_copies_weights_and_mixes_output(item_input):
    gmf = _model(item_input=item_input, use_mlp=False, gmf_dim=4)
    mlp = _model(item_input=item_input, use_gmf=False, mlp_dims=(8, 4))
    # Non-default output biases so the bias mix is checked too.
    gmf.prediction.bias.assign(np.array([0.7], "float32"))
    mlp.prediction.bias.assign(np.array([-0.3], "float32"))
    alpha = 0.3
    neumf = NCF.from_pretrained(gmf, mlp, alpha=alpha, name="neumf")
    assert neumf.use_gmf and neumf.use_mlp and neumf.name == "neumf"
    pairs = [
        (gmf.gmf_user_embedding, neumf.gmf_user_embedding),
        (mlp.mlp_user_embedding, neumf.mlp_user_embedding),
        (gmf.gmf_item_embedding, neumf.gmf_item_embedding),
        (mlp.mlp_item_embedding, neumf.mlp_item_embedding),
        *zip(mlp.mlp_layers, neumf.mlp_layers),
    ]
    if item_input == "both":
        pairs += [
            (gmf.gmf_item_projection, neumf.gmf_item_projection),
            (mlp.mlp_item_projection, neumf.mlp_item_projection),
        ]
    for source, target in pairs:
        for a, b in zip(source.get_weights(), target.get_weights()):
            np.testing.assert_array_equal(a, b)
    kernel, bias = neumf.prediction.get_weights()
    gmf_kernel, gmf_bias = gmf.prediction.get_weights()
    mlp_kernel, mlp_bias = mlp.prediction.get_weights()
    np.testing.assert_allclose(
        kernel,
        np.concatenate([alpha * gmf_kernel, (1 - alpha) * mlp_kernel]),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        bias, alpha * gmf_bias + (1 - alpha) * mlp_bias, rtol=1e-6
    )
    # Hence the fused logit is the alpha mix of the pretrained logits.
    x = _inputs(batch=5)
    expected = alpha * _np(gmf.score_pairs(x)) + (1 - alpha) * _np(
        mlp.score_pairs(x)
    )
    np.testing.assert_allclose(
        _np(neumf.score_pairs(x)), expected, rtol=1e-5, atol=1e-6
    )


def test_from_pretrained_rejects_incompatible_models():
    gmf = _model(use_mlp=False)
    mlp = _model(use_gmf=False)
    with pytest.raises(ValueError, match="GMF-only"):
        NCF.from_pretrained(_model(), mlp)
    with pytest.raises(ValueError, match="MLP-only"):
        NCF.from_pretrained(gmf, gmf)
    with pytest.raises(ValueError, match="num_items"):
        NCF.from_pretrained(gmf, _model(use_gmf=False, num_items=12))
    with pytest.raises(ValueError, match="item_input"):
        NCF.from_pretrained(gmf, _model(use_gmf=False, item_input="features"))
    with pytest.raises(ValueError, match="num_item_features"):
        NCF.from_pretrained(
            _model(use_mlp=False, item_input="both"),
            _model(use_gmf=False, item_input="both", num_item_features=3),
        )
    with pytest.raises(ValueError, match="loss"):
        NCF.from_pretrained(gmf, _model(use_gmf=False, loss="bpr"))
    assert (
        NCF.from_pretrained(
            gmf, _model(use_gmf=False, loss="bpr"), loss="bpr"
        ).loss_name
        == "bpr"
    )
    with pytest.raises(ValueError, match="architecture"):
        NCF.from_pretrained(gmf, mlp, gmf_dim=8)
    with pytest.raises(ValueError, match="alpha"):
        NCF.from_pretrained(gmf, mlp, alpha=1.5)
    with pytest.raises(ValueError, match="NCF"):
        NCF.from_pretrained(gmf, "mlp")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(item_input="text"), "item_input"),
        (dict(item_input="features", num_item_features=0), "num_item_feat"),
        (dict(item_input="both", num_item_features=0), "num_item_features"),
        (dict(use_gmf=False, use_mlp=False), "use_gmf"),
        (dict(loss="mse"), "loss"),
        (dict(num_users=0), "num_users"),
        (dict(num_items=2.5), "num_items"),
        (dict(gmf_dim=0), "gmf_dim"),
        (dict(mlp_embedding_dim=0), "mlp_embedding_dim"),
        (dict(mlp_dims=(8, 0)), "mlp_dims"),
        (dict(dropout=1.0), "dropout"),
        (dict(l2=-1.0), "l2"),
    ],
)
def test_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(**kwargs)


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_learns_block_structure(loss):
    """Two user groups each like one half of the catalog; one liked item per
    user is held out. After training, the held-out item should outscore
    every disliked item for most users (an untrained model manages about 1
    in 11)."""
    num_users, num_items, half, negatives = 20, 20, 10, 2
    group = np.arange(num_users) % 2
    held_out = group * half + (np.arange(num_users) // 2) % half
    liked = np.zeros((num_users, num_items), bool)
    for g in (0, 1):
        liked[group == g, g * half : (g + 1) * half] = True
    train = liked.copy()
    train[np.arange(num_users), held_out] = False
    pos_user, pos_item = np.nonzero(train)

    rng = np.random.default_rng(0)
    steps, batch = 100, 16
    rows = rng.integers(0, pos_user.size, steps * batch)
    user = pos_user[rows].astype("int32")
    # Negatives: uniform over the items the user has no training
    # interaction with (the held-out item included, as in real data).
    neg = rng.integers(0, num_items, (rows.size, negatives))
    for _ in range(50):
        clash = train[user[:, None], neg]
        if not clash.any():
            break
        neg[clash] = rng.integers(0, num_items, int(clash.sum()))
    x = {
        "user": user,
        "item": pos_item[rows].astype("int32"),
        "neg_item": neg.astype("int32"),
    }
    model = NCF(
        num_users,
        num_items,
        gmf_dim=8,
        mlp_embedding_dim=8,
        mlp_dims=(16, 8),
        loss=loss,
        seed=0,
    )
    all_users = np.repeat(np.arange(num_users), num_items).astype("int32")
    all_items = np.tile(np.arange(num_items), num_users).astype("int32")

    def share_ranked_above_disliked():
        scores = _np(
            model.score_pairs({"user": all_users, "item": all_items})
        ).reshape(num_users, num_items)
        held_score = scores[np.arange(num_users), held_out]
        worst = np.where(~liked, scores, -np.inf).max(axis=1)
        return np.mean(held_score > worst)

    assert share_ranked_above_disliked() < 0.5  # untrained: chance level
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(
        x,
        np.ones(rows.size, "float32"),
        batch_size=batch,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    assert share_ranked_above_disliked() >= 0.8
