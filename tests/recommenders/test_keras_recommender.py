"""recommenders/keras_recommender.py: the Keras families behind the one
interface: save / load / warm start, item-feature modes, scoring."""

import keras
import numpy as np
import pandas as pd
import pytest

import config
import data
import recommenders
from eval import cold_start
from tests.conftest import large_on
from tests.conftest import with_item_features
from tests.conftest import write_ratings
from tests.content.test_items import IDS
from tests.content.test_items import write_content


def test_save_load_and_warm_start(tiny_cfg, tmp_path):
    dataset = data.load(tiny_cfg.data)
    rec = recommenders.build(tiny_cfg, dataset)
    rec.fit(dataset.interactions, None, epochs=1)
    users = np.arange(dataset.interactions.num_users)
    rec.save(tmp_path / "saved")
    loaded = recommenders.load(tmp_path / "saved")
    assert loaded.family == "two_tower" and loaded.has_vectors
    np.testing.assert_allclose(
        loaded.score(users), rec.score(users), rtol=1e-5, atol=1e-5
    )
    history = loaded.fit(dataset.interactions, None, epochs=1, warm_start=True)
    assert np.isfinite(history["loss"][0])


def test_dot_product_scores_are_user_times_item_vectors(tiny_cfg):
    dataset = data.load(tiny_cfg.data)
    rec = recommenders.build(tiny_cfg, dataset)
    rec.fit(dataset.interactions, None, epochs=1)
    users = np.arange(5)
    expected = rec.user_embeddings(users) @ rec.item_embeddings().T
    np.testing.assert_allclose(rec.score(users), expected, rtol=1e-5)
    pairs = rec.score_pairs(users, np.arange(5))
    np.testing.assert_allclose(pairs, np.diag(expected), rtol=1e-4, atol=1e-6)
    # A new user's history encodes like a known user's with that history.
    history = rec.history_table[0]
    items = history[history > 0][::-1] - 1  # oldest first
    np.testing.assert_allclose(
        rec.history_embedding(items),
        rec.user_embeddings([0])[0],
        rtol=1e-4,
        atol=1e-5,
    )


def test_sasrec_reads_its_own_batch_and_dropout_fields(tiny_cfg):
    cfg = config.override(
        tiny_cfg,
        [
            "model.name='sasrec'",
            "model.history_length=5",
            "train.positions_per_step=20",
            "model.attention_dropout=0.3",
            "model.dropout=0.0",
            "train.batch_size=7",
        ],
    )
    dataset = data.load(cfg.data)
    rec = recommenders.build(cfg, dataset)
    batches = rec.spec.batches(rec, dataset.interactions, None)
    x, _ = batches[0]
    assert x["history"].shape == (4, 5)  # 20 positions = 4 windows of 5
    inter = dataset.interactions
    model = rec.build_model(inter.num_users, inter.num_items)
    rates = {
        layer.rate
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.Dropout)
    }
    assert rates == {0.3}
    assert rec.spec.batch_field == "positions_per_step"


def test_ncf_features_mode_needs_features(tiny_cfg):
    cfg = config.override(
        tiny_cfg, ["model.name='ncf'", "model.item_input='features'"]
    )
    with pytest.raises(ValueError, match="item_features.path"):
        recommenders.build(cfg, data.load(cfg.data))


def test_ncf_features_mode_separates_groups_on_cold_items(tiny_cfg, tmp_path):
    """Items never seen in training are scored from their features: each
    user's own group's cold items score above the other group's."""
    cfg = config.override(
        with_item_features(tiny_cfg, tmp_path),
        [
            "model.name='ncf'",
            "model.item_input='features'",
            "train.epochs=30",
            "train.early_stopping_patience=30",
            "train.monitor='ndcg@10'",
            "train.learning_rate=0.01",
        ],
    )
    dataset = data.load(cfg.data)
    split = cold_start.cold_item_split(
        dataset.interactions, 0.1, 0.3, seed=cfg.seed
    )
    rec = recommenders.build(cfg, dataset)
    rec.fit(split.train, split.valid)
    users = np.arange(dataset.interactions.num_users)
    scores = rec.score(users, split.cold)
    own = (split.cold < 15)[None, :] == (users % 2 == 0)[:, None]
    margin = np.where(own, scores, 0).sum(1) / own.sum(1) - np.where(
        ~own, scores, 0
    ).sum(1) / (~own).sum(1)
    assert (margin > 0).mean() >= 0.9, margin


def test_baseline_params_reach_the_baseline(tiny_cfg):
    cfg = config.override(
        tiny_cfg, ["model.name='ease'", "model.baseline_params={'l2': 7.0}"]
    )
    assert recommenders.build(cfg, None).l2 == 7.0
    bad = config.override(cfg, ["model.baseline_params={'lambda_': 1.0}"])
    with pytest.raises(ValueError, match="takes the parameters.*l2"):
        recommenders.build(bad, None)


# Eager JAX dispatches these fits op by op (minutes on the shared CI CPU,
# against seconds on TensorFlow and torch): `large` there only.
LARGE_ON_JAX = large_on("jax")


def _ratings(folder):
    write_ratings(folder / "ratings.csv", num_users=12, num_items=6, per_user=3)
    frame = pd.read_csv(folder / "ratings.csv")
    frame["movieId"] = IDS[(frame["movieId"] - 100) // 3]
    frame.to_csv(folder / "ratings.csv", index=False)


@LARGE_ON_JAX
@pytest.mark.parametrize("base", ["two_tower", "ncf"])
def test_multimodal_recommender_end_to_end(base, tmp_path):
    """model.name=multimodal through recommenders.build: fit with
    validation, score cold items, save and load."""
    folder = write_content(tmp_path)
    _ratings(folder)
    cfg = config.override(
        config.tiny(),
        [
            f"data.path={str(folder / 'ratings.csv')!r}",
            f"data.item_features.path={str(folder / 'items.csv')!r}",
            "data.item_features.text=()",
            f"multimodal.content_path={str(folder / 'extra.dat')!r}",
            "multimodal.content_column_names=('movieId','title','plot','year')",
            "multimodal.text_columns=('title','genres','plot')",
            "multimodal.image_pattern="
            + repr(str(folder / "posters") + "/{id}.jpg"),
            "multimodal.image_size=8",
            "multimodal.cnn_filters=(4,)",
            "multimodal.text_encoder='hashed'",
            "multimodal.hashed_text_dim=8",
            "multimodal.embedding_dim=8",
            "multimodal.num_heads=2",
            "multimodal.alignment_weight=0.1",
            f"multimodal.base={base!r}",
            f"multimodal.cache_dir={str(folder / 'cache')!r}",
            "model.name='multimodal'",
            "train.jit_compile=False",
            "train.batch_size=8",
            "train.epochs=1",
        ],
    )
    dataset = data.load(cfg.data)
    tr, va, te = data.split(dataset.interactions, "cold_items", 0.2, 0.34)
    rec = recommenders.build(cfg, dataset)
    assert rec.family == "multimodal" and rec.item_layout["image_size"] == 8
    assert rec.has_vectors == (base == "two_tower")
    rec.fit(tr, va)
    cold = np.unique(te.item)
    scores = rec.score(np.arange(3), cold)
    assert scores.shape == (3, len(cold)) and np.isfinite(scores).all()
    # Distinct content gives distinct scores for never-trained items.
    assert np.ptp(scores[0]) > 0
    rec.save(tmp_path / "saved")
    loaded = recommenders.load(tmp_path / "saved")
    np.testing.assert_allclose(
        loaded.score(np.arange(3), cold), scores, atol=1e-4
    )
