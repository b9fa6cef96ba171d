"""models/autoencoders.py: the VAE's loss is the multinomial likelihood
plus the weighted KL, scoring is deterministic, the KL weight anneals or
scales with the user's items, and the model saves and loads."""

import keras
import numpy as np
import pytest
from keras import ops

from models.autoencoders import VAECF

NUM_ITEMS = 15


def _rows(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, NUM_ITEMS)) < 0.3).astype("float32")


def _np(x):
    return ops.convert_to_numpy(x)


def _model(**kwargs):
    args = dict(
        num_users=6,
        num_items=NUM_ITEMS,
        hidden_dims=(8, 8),
        latent_dim=4,
        dropout=0.0,
        seed=0,
    )
    args.update(kwargs)
    return VAECF(**args)


def test_loss_is_multinomial_nll_plus_weighted_kl():
    model = _model(kl_weight=0.3)
    x = {"interactions": _rows()}
    y_pred = model(x, training=True)
    got = float(_np(model.compute_loss(x=x, y=None, y_pred=y_pred)))
    logits = _np(y_pred["scores"]).astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -(logp * x["interactions"]).sum(-1)
    mean, log_var = (_np(t) for t in model.encode(x["interactions"]))
    kl = 0.5 * (np.exp(log_var) + mean**2 - 1 - log_var).sum(-1)
    assert got == pytest.approx(np.mean(nll + 0.3 * kl), rel=1e-4)


def test_kl_weight_anneals_or_scales_with_items():
    x = {"interactions": _rows()}
    annealed = _model(kl_weight=1.0, kl_anneal_steps=4)
    first = _np(annealed(x, training=True)["kl"])
    second = _np(annealed(x, training=True)["kl"])
    mean, log_var = (_np(t) for t in annealed.encode(x["interactions"]))
    kl = 0.5 * (np.exp(log_var) + mean**2 - 1 - log_var).sum(-1)
    np.testing.assert_allclose(first, 0.25 * kl, rtol=1e-4)
    np.testing.assert_allclose(second, 0.5 * kl, rtol=1e-4)
    scaled = _model(kl_weight=0.1, kl_scaling="per_interaction")
    weighted = _np(scaled(x, training=True)["kl"])
    mean, log_var = (_np(t) for t in scaled.encode(x["interactions"]))
    kl = 0.5 * (np.exp(log_var) + mean**2 - 1 - log_var).sum(-1)
    np.testing.assert_allclose(
        weighted, 0.1 * x["interactions"].sum(-1) * kl, rtol=1e-4
    )


def test_scores_are_the_decoded_mean_and_save_load(tmp_path):
    model = _model(dropout=0.5)
    model.compile(optimizer="adam")
    rows = _rows(12)
    model.fit({"interactions": rows}, np.zeros(12), batch_size=4, verbose=0)
    x = {"interactions": rows}
    scores = _np(model(x)["scores"])
    np.testing.assert_allclose(scores, _np(model(x)["scores"]))
    mean, _ = model.encode(rows)
    np.testing.assert_allclose(
        scores, _np(model.decoder(mean)), rtol=1e-5, atol=1e-6
    )
    model.save(tmp_path / "vae.keras")
    loaded = keras.saving.load_model(tmp_path / "vae.keras", compile=False)
    np.testing.assert_allclose(
        _np(loaded(x)["scores"]), scores, rtol=1e-5, atol=1e-5
    )
    assert float(_np(loaded.step)) == 3.0  # three training steps taken


def test_argument_errors():
    with pytest.raises(ValueError, match="kl_scaling"):
        _model(kl_scaling="sometimes")
    with pytest.raises(ValueError, match="hidden_dims"):
        _model(hidden_dims=())
    with pytest.raises(ValueError, match="dropout"):
        _model(dropout=1.0)
