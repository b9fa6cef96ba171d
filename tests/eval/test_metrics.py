"""Tests for eval/metrics.py against values worked out by hand."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from eval import metrics

# 1 / log2(3): the discount at rank 2; IDCG with 2 relevant = 1 + D2.
D2 = 1.0 / np.log2(3.0)

# Four users over six items. Rankings (ties -> lower item index):
#   user 0: 0 1 2 3 4 5, but item 0 is excluded -> 1 2 3 4 5 | 0(-inf)
#   user 1: 3 (0.9), 1 (0.5), 2 (0.5), 5, 4, 0 -- item 1 beats tied item 2
#   user 2: 2 (0.9), 4 (0.8), 5 (0.7), 0, 1, 3
#   user 3: no ground truth at all
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.5, 0.5, 0.9, 0.2, 0.3],
        [0.3, 0.2, 0.9, 0.1, 0.8, 0.7],
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
    ],
    dtype=np.float32,
)
TRUTH = sp.csr_matrix(
    np.array(
        [
            [1, 0, 1, 0, 0, 0],  # item 0 is excluded: never a hit
            [0, 0, 1, 0, 0, 0],  # fewer relevant items than K
            [1, 0, 1, 0, 0, 1],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
)
EXCLUDE = sp.csr_matrix(
    np.array(
        [
            [1, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
)
POPULARITY = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])

# Hand-computed, K = 2 and 3. Top-3 lists: u0 [1 2 3] hits [0 1 0],
# u1 [3 1 2] hits [0 0 1], u2 [2 4 5] hits [1 0 1]; |T| = 2, 1, 3.
EXPECTED = {
    # u0: 1 hit at rank 2; u1: none; u2: 1 hit at rank 1.
    "precision@2": [1 / 2, 0.0, 1 / 2],
    "recall@2": [1 / 2, 0.0, 1 / 3],
    # f1 = 2PR / (P + R): u0 2(1/4)/1 = 0.5; u2 2(1/6)/(5/6) = 0.4.
    "f1@2": [0.5, 0.0, 0.4],
    "hr@2": [1.0, 0.0, 1.0],
    # ideal DCG over min(2, |T|) = 2 ranks for u0 and u2: 1 + D2.
    "ndcg@2": [D2 / (1 + D2), 0.0, 1 / (1 + D2)],
    "mrr@2": [1 / 2, 0.0, 1.0],
    # u0: precision@2 = 1/2, / min(2, 2); u2: precision@1 = 1, / min(2, 3).
    "map@2": [0.25, 0.0, 0.5],
    # K = 3: u0 still 1 hit; u1 hits at rank 3; u2 hits at ranks 1 and 3.
    "precision@3": [1 / 3, 1 / 3, 2 / 3],
    "recall@3": [1 / 2, 1.0, 2 / 3],
    # u0 2(1/6)/(5/6) = 0.4; u1 2(1/3)/(4/3) = 0.5; u2 P = R -> 2/3.
    "f1@3": [0.4, 0.5, 2 / 3],
    "hr@3": [1.0, 1.0, 1.0],
    # u1: (1/log2 4) / 1 since |T| = 1; u2: (1 + 1/2) / (1 + D2 + 1/2).
    "ndcg@3": [D2 / (1 + D2), 0.5, 1.5 / (1.5 + D2)],
    "mrr@3": [1 / 2, 1 / 3, 1.0],
    # u1: precision@3 / min(3, 1); u2: (1 + 2/3) / min(3, 3).
    "map@3": [0.25, 1 / 3, (1 + 2 / 3) / 3],
}


def score_rows(user_idx):
    return SCORES[user_idx]


def test_rank_top_k_exclusion_masks_items():
    scores = np.array([[3.0, 2.0, 1.0]])
    exclude = sp.csr_matrix(np.array([[1, 0, 0]]))
    items, top = metrics.rank_top_k(scores, 2, exclude)
    np.testing.assert_array_equal(items, [[1, 2]])
    np.testing.assert_array_equal(top, [[2.0, 1.0]])
    # The caller's array is untouched.
    assert scores[0, 0] == 3.0


def test_rank_top_k_ties_go_to_lower_index():
    items, _ = metrics.rank_top_k(np.ones((1, 4)), 2)
    np.testing.assert_array_equal(items, [[0, 1]])
    # Three items tie at 5: the boundary tie is resolved by lowest index.
    scores = np.array([[0.0, 5.0, 5.0, 1.0, 5.0]])
    np.testing.assert_array_equal(metrics.rank_top_k(scores, 2)[0], [[1, 2]])
    np.testing.assert_array_equal(
        metrics.rank_top_k(scores, 4)[0], [[1, 2, 4, 3]]
    )


def test_rank_top_k_fewer_finite_than_k():
    scores = np.array([[1.0, 2.0, 3.0, 4.0]])
    exclude = sp.csr_matrix(np.array([[0, 1, 0, 1]]))
    items, top = metrics.rank_top_k(scores, 3, exclude)
    # Finite: item 2 (3.0), item 0 (1.0); then -inf items 1, 3 by index.
    np.testing.assert_array_equal(items, [[2, 0, 1]])
    np.testing.assert_array_equal(top, [[3.0, 1.0, -np.inf]])


def test_rank_top_k_clips_k_to_catalog():
    items, top = metrics.rank_top_k(np.array([[1.0, 2.0]]), 5)
    np.testing.assert_array_equal(items, [[1, 0]])
    assert items.dtype == np.int64 and top.dtype == np.float32


@pytest.mark.parametrize("k", [1, 5, 17, 30])
def test_rank_top_k_matches_stable_argsort(k):
    rng = np.random.default_rng(0)
    # Integer scores in [0, 4): many ties at every boundary.
    scores = rng.integers(0, 4, size=(50, 30)).astype(np.float64)
    exclude = sp.random(50, 30, density=0.3, format="csr", random_state=1)
    items, top = metrics.rank_top_k(scores, k, exclude)
    masked = scores.copy()
    masked[exclude.toarray() != 0] = -np.inf
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(items, expected)
    np.testing.assert_array_equal(
        top, np.take_along_axis(masked, expected, 1).astype(np.float32)
    )


def test_rank_top_k_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        metrics.rank_top_k(np.array([[1.0, np.nan]]), 1)
    with pytest.raises(ValueError, match="`k` must be an int >= 1"):
        metrics.rank_top_k(np.ones((1, 3)), 0)
    with pytest.raises(ValueError, match="2-D"):
        metrics.rank_top_k(np.ones(3), 1)


def test_evaluate_hand_computed():
    result = metrics.evaluate(
        score_rows,
        TRUTH,
        EXCLUDE,
        ks=(2, 3),
        item_popularity=POPULARITY,
    )
    np.testing.assert_array_equal(result.users, [0, 1, 2])
    assert result.num_skipped == 0
    assert set(result.per_user) == set(EXPECTED)
    for name, values in EXPECTED.items():
        np.testing.assert_allclose(result.per_user[name], values, err_msg=name)
    # coverage@2: {1, 2} + {3, 1} + {2, 4} = 4 of 6 items; @3 adds 5.
    assert result.corpus["coverage@2"] == pytest.approx(4 / 6)
    assert result.corpus["coverage@3"] == pytest.approx(5 / 6)
    # avg_pop@2: items 1 2 3 1 2 4 -> (20+30+40+20+30+50) / 6.
    assert result.corpus["avg_pop@2"] == pytest.approx(190 / 6)
    # avg_pop@3: (20+30+40) + (40+20+30) + (30+50+60) = 320 over 9 slots.
    assert result.corpus["avg_pop@3"] == pytest.approx(320 / 9)
    summary = result.summary()
    assert summary["num_users"] == 3
    assert summary["recall@3"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)


def test_evaluate_skips_users_without_truth():
    result = metrics.evaluate(
        score_rows, TRUTH, EXCLUDE, ks=(2, 3), users=np.array([3, 0, 1, 2])
    )
    np.testing.assert_array_equal(result.users, [0, 1, 2])
    assert result.num_skipped == 1
    np.testing.assert_allclose(result.per_user["ndcg@3"], EXPECTED["ndcg@3"])


def test_evaluate_excluded_truth_is_never_a_hit():
    # Without exclusion, user 0's item 0 is ranked first and is a hit.
    free = metrics.evaluate(score_rows, TRUTH, ks=(2,), users=np.array([0]))
    assert free.per_user["mrr@2"][0] == 1.0
    masked = metrics.evaluate(
        score_rows, TRUTH, EXCLUDE, ks=(2,), users=np.array([0])
    )
    assert masked.per_user["mrr@2"][0] == 0.5
    # Item 0 still counts in |T_u| = 2.
    assert masked.per_user["recall@2"][0] == 0.5


def test_evaluate_minus_inf_slot_is_never_a_hit():
    # User 0 of a 3-item catalog: everything excluded except item 2, and
    # item 0 is relevant but excluded -> no hit although it sits in the list.
    truth = sp.csr_matrix(np.array([[1, 0, 0]]))
    exclude = sp.csr_matrix(np.array([[1, 1, 0]]))
    result = metrics.evaluate(
        lambda u: np.zeros((len(u), 3)), truth, exclude, ks=(3,)
    )
    assert result.per_user["hr@3"][0] == 0.0
    # Only item 2 was really recommended.
    assert result.corpus["coverage@3"] == pytest.approx(1 / 3)


def test_evaluate_blocks_match_one_block():
    calls = []

    def score_fn(user_idx):
        calls.append(len(user_idx))
        return SCORES[user_idx]

    one = metrics.evaluate(score_fn, TRUTH, EXCLUDE, ks=(2, 3))
    assert calls == [3]
    calls.clear()
    many = metrics.evaluate(score_fn, TRUTH, EXCLUDE, ks=(2, 3), block_size=1)
    assert calls == [1, 1, 1]
    for name in one.per_user:
        np.testing.assert_array_equal(one.per_user[name], many.per_user[name])
    assert one.corpus == many.corpus


def test_evaluate_item_mask_restricts_truth():
    # Items {3, 4, 5}: u0 and u1 have no truth left (skipped); u2 keeps
    # item 5 only, ranked 3rd -> recall@2 = 0, recall@3 = 1, ndcg@3 = 1/2.
    mask = np.array([False, False, False, True, True, True])
    result = metrics.evaluate(
        score_rows, TRUTH, EXCLUDE, ks=(2, 3), item_mask=mask
    )
    np.testing.assert_array_equal(result.users, [2])
    assert result.num_skipped == 2
    assert result.per_user["recall@2"][0] == 0.0
    assert result.per_user["recall@3"][0] == 1.0
    assert result.per_user["ndcg@3"][0] == pytest.approx(0.5)


def test_evaluate_rejects_bad_input():
    with pytest.raises(ValueError, match="`exclude` must have shape"):
        metrics.evaluate(score_rows, TRUTH, EXCLUDE[:2])
    with pytest.raises(ValueError, match="`score_fn` must return shape"):
        metrics.evaluate(lambda u: SCORES[u][:, :3], TRUTH)
    with pytest.raises(ValueError, match="`users` must lie in"):
        metrics.evaluate(score_rows, TRUTH, users=np.array([7]))
    with pytest.raises(ValueError, match="`truth` must be a scipy sparse"):
        metrics.evaluate(score_rows, TRUTH.toarray())


def test_result_subset_and_json():
    result = metrics.evaluate(
        score_rows, TRUTH, EXCLUDE, ks=(2, 3), item_popularity=POPULARITY
    )
    segment = np.array([False, True, False, False])  # over all 4 users
    sub = result.subset(segment[result.users])
    np.testing.assert_array_equal(sub.users, [1])
    assert sub.per_user["mrr@3"][0] == pytest.approx(1 / 3)
    # User 1 alone: top-2 [3, 1], top-3 [3, 1, 2].
    assert sub.corpus["coverage@2"] == pytest.approx(2 / 6)
    assert sub.corpus["coverage@3"] == pytest.approx(3 / 6)
    assert sub.corpus["avg_pop@3"] == pytest.approx((40 + 20 + 30) / 3)
    empty = result.subset(np.zeros(3, bool))
    payload = json.loads(json.dumps(empty.to_json_dict(per_user=True)))
    assert payload["summary"]["recall@2"] is None
    assert payload["num_users"] == 0
    with pytest.raises(ValueError, match="`mask` must be a bool array"):
        result.subset(segment)


def test_block_size_for():
    # 256 MiB / (32 bytes * 9724 items) = 862.7 users.
    assert metrics.block_size_for(9724) == 862
    assert metrics.block_size_for(10**9) == 1
    with pytest.raises(ValueError, match="`n_items` must be an int >= 1"):
        metrics.block_size_for(0)


def test_user_segments_ties_by_index():
    counts = np.array([5, 0, 3, 3, 1, 9, 3, 2, 7, 4])
    # Ascending: u1 (0), u4 (1), u7 (2), then u2, u3, u6 tied at 3.
    segments = metrics.user_segments(counts, fraction=0.2)
    np.testing.assert_array_equal(np.flatnonzero(segments["cold"]), [1, 4])
    np.testing.assert_array_equal(segments["warm"], ~segments["cold"])
    cold = metrics.user_segments(counts, fraction=0.4)["cold"]
    np.testing.assert_array_equal(np.flatnonzero(cold), [1, 2, 4, 7])
    with pytest.raises(ValueError, match="`fraction` must be in"):
        metrics.user_segments(counts, fraction=1.5)


def test_item_segments():
    counts = np.array([0, 5, 1, 5, 0, 2, 8, 1, 3, 0, 4, 1])
    # 9 seen items -> ceil(0.2 * 9) = 2 per end. Head: 6 (8), then 1 and 3
    # tie at 5 -> item 1. Tail: 2, 7, 11 tie at 1 -> items 2 and 7.
    segments = metrics.item_segments(counts)
    np.testing.assert_array_equal(np.flatnonzero(segments["head"]), [1, 6])
    np.testing.assert_array_equal(np.flatnonzero(segments["tail"]), [2, 7])
    np.testing.assert_array_equal(np.flatnonzero(segments["cold"]), [0, 4, 9])
    with pytest.raises(ValueError, match="`train_counts` must be finite"):
        metrics.item_segments(np.array([1.0, -1.0]))


def test_auc_hand_value():
    # Positive pairs: (0.9 vs 0.9) = 1/2, (0.9 vs 0.1) = 1, (0.4 vs 0.9) = 0,
    # (0.4 vs 0.1) = 1 -> 2.5 / 4.
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.9, 0.4, 0.1])
    assert metrics.auc(labels, scores) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="both classes"):
        metrics.auc(np.ones(3), np.arange(3.0))
    with pytest.raises(ValueError, match="`labels` must be binary"):
        metrics.auc(np.array([0, 2]), np.arange(2.0))


def _random_auc_case():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = rng.integers(0, 20, 500) + labels * 3.0  # many ties
    return labels, scores


def test_auc_matches_pairwise_definition():
    labels, scores = _random_auc_case()
    pos = scores[labels == 1][:, None]
    neg = scores[labels == 0][None, :]
    expected = ((pos > neg) + 0.5 * (pos == neg)).mean()
    assert metrics.auc(labels, scores) == pytest.approx(expected)


# Importing sklearn.metrics alone takes seconds, over the suite's budget.
@pytest.mark.large
def test_auc_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    labels, scores = _random_auc_case()
    assert metrics.auc(labels, scores) == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores)
    )


def test_per_user_auc():
    # User 7 rows as in test_auc_hand_value (0.625); user 3 all tied (0.5);
    # user 5 has positives only and is left out. Rows are shuffled.
    user = np.array([7, 3, 7, 5, 3, 7, 3, 7, 5])
    labels = np.array([1, 0, 0, 1, 1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.2, 0.9, 0.3, 0.2, 0.4, 0.2, 0.1, 0.5])
    users, values = metrics.per_user_auc(user, labels, scores)
    np.testing.assert_array_equal(users, [3, 7])
    np.testing.assert_allclose(values, [0.5, 0.625])


def test_per_user_auc_matches_auc_per_group():
    rng = np.random.default_rng(4)
    user = rng.integers(0, 6, 300)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 5, 300).astype(float)
    users, values = metrics.per_user_auc(user, labels, scores)
    expected = [
        metrics.auc(labels[user == u], scores[user == u]) for u in users
    ]
    np.testing.assert_allclose(values, expected)


def _sampled_setup():
    # 5 users, 30 items; user u has seen items 2u and 2u + 1.
    num_users, num_items = 5, 30
    seen = sp.csr_matrix(
        (
            np.ones(2 * num_users),
            (np.repeat(np.arange(num_users), 2), np.arange(2 * num_users)),
        ),
        shape=(num_users, num_items),
    )
    users = np.arange(num_users)
    positives = np.array([20, 0, 29, 25, 12])
    return seen, (users, positives)


def test_evaluate_sampled_oracle_and_negatives():
    seen, (users, positives) = _sampled_setup()
    drawn = []

    def oracle(user_idx, item_idx):
        drawn.append((user_idx.copy(), item_idx.copy()))
        return (item_idx == positives[user_idx]).astype(float)

    result = metrics.evaluate_sampled(
        oracle, (users, positives), 10, exclude=seen, ks=(1, 5)
    )
    assert all(name.startswith("sampled_") for name in result.per_user)
    np.testing.assert_array_equal(result.per_user["sampled_hr@1"], 1.0)
    np.testing.assert_array_equal(result.per_user["sampled_ndcg@5"], 1.0)
    user_idx, item_idx = drawn[0]
    candidates = item_idx.reshape(5, 11)
    np.testing.assert_array_equal(candidates[:, 0], positives)
    negatives = candidates[:, 1:]
    for u in range(5):
        # Distinct, never the positive, never a seen item.
        assert len(set(negatives[u])) == 10
        assert positives[u] not in negatives[u]
        assert not set(negatives[u]) & {2 * u, 2 * u + 1}


def test_evaluate_sampled_ties_and_blocks():
    seen, pairs = _sampled_setup()

    def constant(user_idx, item_idx):
        return np.zeros(len(item_idx))

    # All scores tie, so a negative beats the positive iff its index is
    # lower. Item 0 (user 1) ranks 1st. For item 29 (user 2) every negative
    # is lower, so rank 11.
    one = metrics.evaluate_sampled(constant, pairs, 10, exclude=seen, ks=(10,))
    many = metrics.evaluate_sampled(
        constant, pairs, 10, exclude=seen, ks=(10,), block_size=2
    )
    assert one.per_user["sampled_mrr@10"][1] == 1.0
    assert one.per_user["sampled_hr@10"][2] == 0.0
    for name in one.per_user:
        np.testing.assert_array_equal(one.per_user[name], many.per_user[name])
    with pytest.raises(ValueError, match="`num_negatives`=28 exceeds"):
        metrics.evaluate_sampled(constant, pairs, 28, exclude=seen)


def test_evaluate_k_larger_than_catalog():
    # K = 10 on 6 items: user 1's whole ranking is 3 1 2 5 4 0, hit at rank
    # 3. Precision keeps the requested K: 1 / 10.
    result = metrics.evaluate(score_rows, TRUTH, ks=(10,), users=np.array([1]))
    assert result.per_user["precision@10"][0] == pytest.approx(0.1)
    assert result.per_user["recall@10"][0] == 1.0
    assert result.per_user["ndcg@10"][0] == pytest.approx(0.5)
    assert result.per_user["map@10"][0] == pytest.approx(1 / 3)
    assert result.top_items.shape == (1, 6)


def test_evaluate_matches_per_user_loop():
    # A plain per-user reference of the BENCHMARK.md definitions, on random
    # data with many ties, excluded items and users without truth.
    rng = np.random.default_rng(5)
    num_users, num_items, k = 20, 15, 5
    scores = rng.integers(0, 4, (num_users, num_items)).astype(np.float64)
    truth = sp.random(num_users, num_items, 0.2, "csr", random_state=6)
    exclude = sp.random(num_users, num_items, 0.3, "csr", random_state=7)
    result = metrics.evaluate(
        lambda u: scores[u], truth, exclude, ks=(k,), block_size=3
    )
    expected_users = []
    for u in range(num_users):
        relevant = set(truth[u].indices)
        if not relevant:
            continue
        expected_users.append(u)
        masked = np.where(exclude[u].toarray()[0] != 0, -np.inf, scores[u])
        ranked = np.argsort(-masked, kind="stable")[:k]
        gains = [float(i in relevant and masked[i] > -np.inf) for i in ranked]
        ideal = sum(1 / np.log2(r + 2) for r in range(min(k, len(relevant))))
        dcg = sum(g / np.log2(r + 2) for r, g in enumerate(gains))
        row = result.per_user
        j = len(expected_users) - 1
        assert row[f"recall@{k}"][j] == pytest.approx(
            sum(gains) / len(relevant)
        )
        assert row[f"ndcg@{k}"][j] == pytest.approx(dcg / ideal)
        first = next((r + 1 for r, g in enumerate(gains) if g), None)
        assert row[f"mrr@{k}"][j] == pytest.approx(1 / first if first else 0)
    np.testing.assert_array_equal(result.users, expected_users)
