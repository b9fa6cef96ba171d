"""Tests for synthetic.py: exact size, distinct pairs, long tails, and a
file `data.load` reads with only the path changed."""

import numpy as np
import pytest

import config
import data
from benchmarks import synthetic


def test_generate_shape_and_long_tails():
    log = synthetic.generate(50_000, seed=1)
    assert len(log) == 50_000
    assert (log.num_users, log.num_items) == synthetic.ml20m_shape(50_000)
    key = log.user.astype(np.int64) * log.num_items + log.item
    assert len(np.unique(key)) == len(key)  # distinct (user, item) pairs
    assert np.all(np.diff(log.user) >= 0)
    same_user = np.diff(log.user) == 0
    assert np.all(np.diff(log.ts)[same_user] > 0)  # time order per user
    per_item = np.sort(np.bincount(log.item, minlength=log.num_items))[::-1]
    head = per_item[: max(1, log.num_items // 100)].sum() / len(log)
    assert head > 0.05  # top 1% of items far above their 1% share
    per_user = np.bincount(log.user, minlength=log.num_users)
    assert per_user.max() > 2.5 * np.median(per_user)  # capped at items/4
    assert set(np.unique(log.rating)) <= set(np.arange(1, 11) / 2)
    again = synthetic.generate(50_000, seed=1)
    np.testing.assert_array_equal(again.item, log.item)


def test_written_file_loads(tmp_path):
    log = synthetic.generate(5_000, num_users=200, num_items=300, seed=0)
    path = synthetic.write(log, tmp_path / "log.parquet")
    cfg = config.DataConfig(path=path, item_features=config.FeatureFileConfig())
    dataset = data.load(cfg)
    assert len(dataset.interactions) == len(log)
    assert dataset.interactions.num_users == len(np.unique(log.user))


def test_generate_errors():
    with pytest.raises(ValueError, match="num_interactions"):
        synthetic.generate(0)
    with pytest.raises(ValueError, match="do not fit"):
        synthetic.generate(100, num_users=3, num_items=3)
