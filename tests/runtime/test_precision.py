"""Mixed precision (`scale.mixed_precision`): the models train under a
bfloat16 policy with float32 variables and losses, and reach the metrics of
float32 training within noise."""

import keras
import numpy as np
import pytest

import data
import recommenders
import train
from runtime import seeding
from tests.conftest import tiny_config


def _fit(cfg):
    seeding.set_seed(0)
    dataset = data.load(cfg.data)
    train_, _, test = data.split(dataset.interactions, "chrono", 0.1, 0.2)
    rec = recommenders.build(cfg, dataset)
    rec.fit(train_, None)
    metrics = train.evaluate_split(rec, test, train_, cfg).summary()
    return rec, metrics


def test_two_tower_bfloat16_matches_float32(tmp_path):
    full, full_metrics = _fit(tiny_config(tmp_path))
    mixed, mixed_metrics = _fit(
        tiny_config(tmp_path, "scale.mixed_precision='mixed_bfloat16'")
    )
    layer = mixed.model.user_tower.hidden[0]
    assert layer.compute_dtype == "bfloat16"
    assert layer.kernel.dtype == "float32"
    assert full.model.user_tower.hidden[0].compute_dtype == "float32"
    # The policy applies inside fit only.
    assert keras.config.dtype_policy().name == "float32"
    losses = mixed.fit_history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # Early losses hinge on bfloat16 rounding of the initial scores; where
    # training has got to must agree.
    assert losses[-1] == pytest.approx(full.fit_history["loss"][-1], rel=0.1)
    for metric in ("ndcg@10", "recall@20"):
        assert mixed_metrics[metric] == pytest.approx(
            full_metrics[metric], abs=0.1
        )
    scores = mixed.score(np.arange(3))
    assert scores.dtype == np.float32 and np.isfinite(scores).all()


def test_ncf_loss_is_float32_under_bfloat16():
    """One NCF step under the policy: bfloat16 compute, float32 loss."""
    from models.ncf import NCF

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = NCF(
            num_users=6,
            num_items=7,
            gmf_dim=4,
            mlp_embedding_dim=4,
            mlp_dims=(8,),
            seed=0,
        )
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer="adam")
    x = {
        "user": np.arange(4) % 6,
        "item": np.arange(4) % 7,
        "neg_item": np.arange(8).reshape(4, 2) % 7,
    }
    assert model.prediction.compute_dtype == "bfloat16"
    logits = model(x)["logit"]
    loss = model.compute_loss(x, np.ones(4, "float32"), model(x))
    assert keras.backend.standardize_dtype(logits.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    assert np.isfinite(float(model.train_on_batch(x, np.ones(4))))
