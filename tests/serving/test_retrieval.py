"""Tests for retrieval.py: exact on-device top-K and FAISS indexes against a
NumPy brute force, seen-item exclusion, recall of approximate indexes."""

import numpy as np
import pytest
import scipy.sparse as sp

import config
from serving import retrieval


def _data(num_users=40, num_items=300, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(num_users, dim)).astype(np.float32)
    items = rng.normal(size=(num_items, dim)).astype(np.float32)
    # Seen counts from 0 to 150: over-fetching must adapt per block.
    rows, cols = [], []
    for u in range(num_users):
        seen = rng.choice(num_items, size=(u * 37) % 151, replace=False)
        rows += [u] * len(seen)
        cols += seen.tolist()
    exclude = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)),
        shape=(num_users, num_items),
    )
    return users, items, exclude


def _brute_force(users, items, k, exclude):
    scores = users @ items.T
    scores[exclude.toarray() > 0] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(scores, top, axis=1)


def test_device_top_k_matches_brute_force_with_exclusion():
    users, items, exclude = _data()
    got_items, got_scores = retrieval.device_top_k(
        users, items, 10, exclude, block=7
    )
    want_items, want_scores = _brute_force(users, items, 10, exclude)
    np.testing.assert_array_equal(got_items, want_items)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-4)
    rows = np.arange(len(users))[:, None]
    assert not exclude[rows, got_items].toarray().any()


def test_flat_index_is_exact_and_skips_seen_items():
    users, items, exclude = _data()
    index = retrieval.FaissIndex(items, "flat")
    got_items, got_scores = index.search(users, 10, exclude)
    want_items, want_scores = _brute_force(users, items, 10, exclude)
    np.testing.assert_array_equal(got_items, want_items)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_recall_and_exclusion(kind):
    users, items, exclude = _data(num_items=2000, dim=16)
    index = retrieval.FaissIndex(
        items, kind, nlist=32, nprobe=32, hnsw_ef_search=256
    )
    got_items, _ = index.search(users, 10, exclude)
    want_items, _ = _brute_force(users, items, 10, exclude)
    rows = np.arange(len(users))[:, None]
    assert not exclude[rows, np.maximum(got_items, 0)].toarray().any()
    # nprobe = nlist makes IVF exhaustive; HNSW at this size is near-exact.
    assert retrieval.recall_against_exact(got_items, want_items) >= 0.95
    few = retrieval.FaissIndex(items, "ivf", nlist=64, nprobe=1)
    approx, _ = few.search(users, 10, exclude)
    assert retrieval.recall_against_exact(approx, want_items) < 1.0


def test_everything_seen_leaves_empty_slots():
    rng = np.random.default_rng(1)
    users = rng.normal(size=(2, 4)).astype(np.float32)
    items = rng.normal(size=(5, 4)).astype(np.float32)
    exclude = sp.csr_matrix(np.array([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]))
    got_items, got_scores = retrieval.FaissIndex(items, "flat").search(
        users, 3, exclude
    )
    assert (got_items[0] == -1).all() and np.isneginf(got_scores[0]).all()
    assert got_items[1, 0] == 0 and (got_items[1, 1:] == -1).all()
    dev_items, dev_scores = retrieval.device_top_k(users, items, 3, exclude)
    assert dev_items[1, 0] == 0 and np.isneginf(dev_scores[1, 1:]).all()


def test_recall_against_exact_counts_overlap():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, -1]])
    approx = np.array([[4, 3, 9, 8], [5, 6, 7, 0]])
    assert retrieval.recall_against_exact(approx, exact) == pytest.approx(
        (2 / 4 + 3 / 3) / 2
    )


def test_block_mask_covers_only_the_block():
    _, _, exclude = _data()
    rows = np.array([3, 10, 11])
    mask = retrieval.block_mask(exclude, rows, exclude.shape[1])
    assert mask.shape == (3, exclude.shape[1])
    np.testing.assert_array_equal(mask, exclude[rows].toarray() > 0)


class _DotModel:
    """What `retrieval.recommend` needs from a dot-product recommender."""

    has_vectors = True

    def __init__(self, users, items):
        self.users, self.items = users, items

    def item_embeddings(self):
        return self.items

    def user_embeddings(self, user_idx):
        return self.users[user_idx]


def test_recommend_routes_and_reports_recall():
    users, items, exclude = _data(num_items=1000, dim=16)
    rec = _DotModel(users, items)
    want, _ = _brute_force(users, items, 5, exclude)
    exact_cfg = config.ScaleConfig()
    got, _, info = retrieval.recommend(
        rec, np.arange(40), exclude, 5, exact_cfg
    )
    np.testing.assert_array_equal(got, want)
    assert info == {}
    ivf_cfg = config.ScaleConfig(
        index="ivf", index_nlist=16, index_nprobe=16, recall_users=20
    )
    got, _, info = retrieval.recommend(rec, np.arange(40), exclude, 5, ivf_cfg)
    assert info["recall@5"] == pytest.approx(1.0)
    hnsw_cfg = config.ScaleConfig(
        index="hnsw", hnsw_m=8, hnsw_ef_search=64, recall_users=40
    )
    _, _, info = retrieval.recommend(rec, np.arange(40), exclude, 5, hnsw_cfg)
    assert 0.5 <= info["recall@5"] <= 1.0
    with pytest.raises(ValueError, match="scale.index"):
        retrieval.recommend(
            rec, np.arange(3), exclude, 5, config.ScaleConfig(index="annoy")
        )
    with pytest.raises(ValueError, match="`kind`"):
        retrieval.FaissIndex(items, "lsh")


def test_top_k_by_score_masks_and_matches_argsort():
    class Fixed:
        def __init__(self, scores):
            self.scores = scores

        def score(self, user_idx, item_idx=None):
            return self.scores[user_idx]

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 12)).astype("float32")
    exclude = sp.csr_matrix((rng.random((7, 12)) < 0.3).astype("float32"))
    items, top = retrieval.top_k_by_score(
        Fixed(scores),
        np.arange(7),
        exclude,
        k=4,
        budget_mb=1e-4,
        progress=False,
    )
    masked = np.where(exclude.toarray() > 0, -np.inf, scores)
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(items, expected)
    np.testing.assert_allclose(top, np.take_along_axis(masked, expected, 1))
