"""Tests for eval/baselines.py: shapes, determinism, known answers, saving."""

import json

import numpy as np
import pytest

from data import Interactions
from eval import baselines

# Small settings so the whole file runs in a few seconds.
FAST_PARAMS = {
    "random": {"seed": 3},
    "most_popular": {},
    "itemknn": {"k": 3},
    "userknn": {"k": 3},
    "ease": {"l2": 10.0},
    "als": {"factors": 4, "iterations": 3, "num_threads": 1},
    "bpr": {"factors": 4, "iterations": 5, "num_threads": 1},
}

# 4 users x 4 items: item 1 co-occurs most with 0 and 2, no cosine ties at
# k=1 (column tops: 0->1, 1->2, 2->1, 3->2).
HAND = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [0, 1, 1, 1],
        [1, 0, 0, 1],
    ],
    np.float64,
)


def _from_dense(matrix, num_items=None):
    users, items = np.nonzero(matrix)
    return Interactions(
        user=users,
        item=items,
        value=np.ones(len(users)),
        ts=np.arange(len(users)),
        num_users=matrix.shape[0],
        num_items=num_items or matrix.shape[1],
    )


def _blocks(num_users=40, num_items=20, seed=0):
    """Two user groups, each liking one half of the items.

    Returns train (6 of the 10 in-block items per user) and the held-out
    in-block items as a (num_users, num_items) bool array.
    """
    rng = np.random.default_rng(seed)
    half = num_items // 2
    train = np.zeros((num_users, num_items))
    held = np.zeros((num_users, num_items), bool)
    for u in range(num_users):
        block = np.arange(half) + (half if u >= num_users // 2 else 0)
        chosen = rng.permutation(block)
        train[u, chosen[:6]] = 1
        held[u, chosen[6:]] = True
    return _from_dense(train), held


def _cosine_reference(x, k, shrink=0.0):
    """Numpy ItemKNN: cosine, no self, top-k per target column, x @ W."""
    norms = np.sqrt(x.sum(axis=0))
    sim = (x.T @ x) / (np.outer(norms, norms) + shrink)
    np.fill_diagonal(sim, 0.0)
    weights = np.zeros_like(sim)
    for j in range(sim.shape[1]):
        top = np.argsort(-sim[:, j], kind="stable")[:k]
        weights[top, j] = sim[top, j]
    return x @ weights


@pytest.fixture(scope="module")
def tiny():
    return _blocks(num_users=12, num_items=10)[0]


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_score_shape_and_dtype(name, tiny):
    model = baselines.make_baseline(name, **FAST_PARAMS[name])
    info = model.fit(tiny)
    assert info["num_items"] == 10 and info["fit_seconds"] >= 0
    users = np.array([0, 5, 11])
    scores = model.score(users)
    assert scores.shape == (3, 10)
    assert scores.dtype == np.float32
    assert np.isfinite(scores).all()
    items = np.array([7, 2])
    np.testing.assert_array_equal(model.score(users, items), scores[:, items])


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_fit_is_deterministic(name, tiny):
    users = np.arange(12)
    first = baselines.make_baseline(name, **FAST_PARAMS[name])
    second = baselines.make_baseline(name, **FAST_PARAMS[name])
    first.fit(tiny)
    second.fit(tiny)
    np.testing.assert_array_equal(first.score(users), second.score(users))


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_save_load_round_trip(name, tiny, tmp_path):
    model = baselines.make_baseline(name, **FAST_PARAMS[name])
    model.fit(tiny)
    model.save(tmp_path / name)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == [
        "arrays.npz",
        "config.json",
    ]
    meta = json.loads((tmp_path / name / "config.json").read_text())
    assert meta["config"] == model.get_config()
    users = np.arange(12)
    for loader in (baselines.Baseline, type(model)):
        loaded = loader.load(tmp_path / name)
        assert type(loaded) is type(model)
        assert loaded.get_config() == model.get_config()
        np.testing.assert_array_equal(loaded.score(users), model.score(users))


def test_load_checks_the_class(tiny, tmp_path):
    model = baselines.MostPopular()
    model.fit(tiny)
    model.save(tmp_path)
    with pytest.raises(ValueError, match="holds a MostPopular, not a EASE"):
        baselines.EASE.load(tmp_path)


def test_random_is_per_user_and_block_independent(tiny):
    model = baselines.Random(seed=1)
    model.fit(tiny)
    together = model.score(np.array([2, 7]))
    np.testing.assert_array_equal(model.score(np.array([7]))[0], together[1])
    assert not np.array_equal(together[0], together[1])
    other = baselines.Random(seed=2)
    other.fit(tiny)
    assert not np.array_equal(other.score(np.array([2])), together[:1])


def test_most_popular_order():
    x = np.array([[1, 0, 1, 0], [1, 0, 1, 1], [1, 0, 0, 0]])
    model = baselines.MostPopular()
    model.fit(_from_dense(x))
    scores = model.score(np.array([0, 2]))
    np.testing.assert_array_equal(scores[0], [3, 0, 2, 1])
    np.testing.assert_array_equal(scores[0], scores[1])
    assert list(np.argsort(-scores[0], kind="stable")) == [0, 2, 3, 1]


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("shrink", [0.0, 1.0])
def test_itemknn_matches_numpy_reference(k, shrink):
    model = baselines.ItemKNN(k=k, shrink=shrink)
    model.fit(_from_dense(HAND))
    np.testing.assert_allclose(
        model.score(np.arange(4)),
        _cosine_reference(HAND, k, shrink),
        rtol=1e-6,
    )


def test_itemknn_k1_keeps_the_single_nearest_item():
    model = baselines.ItemKNN(k=1)
    model.fit(_from_dense(HAND))
    # User 0 holds items {0, 1}. Nearest items per target: 0 -> 1 (2/3),
    # 1 -> 2, 2 -> 1 (2/sqrt(6)), 3 -> 2; so items 1 and 3 score 0 (their
    # single neighbour, item 2, is not held) though both co-occur with 0.
    np.testing.assert_allclose(
        model.score(np.array([0])),
        [[2 / 3, 0.0, 2 / np.sqrt(6), 0.0]],
        rtol=1e-6,
    )


def test_userknn_matches_numpy_reference():
    norms = np.sqrt(HAND.sum(axis=1))
    sim = (HAND @ HAND.T) / np.outer(norms, norms)
    np.fill_diagonal(sim, 0.0)
    k = 2
    weights = np.zeros_like(sim)
    for u in range(4):
        top = np.argsort(-sim[u], kind="stable")[:k]
        weights[u, top] = sim[u, top]
    expected = weights @ HAND
    model = baselines.UserKNN(k=k)
    model.fit(_from_dense(HAND))
    # User 0's 2nd and 3rd neighbours tie (cosine 1/sqrt(6)); only rows
    # without ties are compared exactly.
    np.testing.assert_allclose(
        model.score(np.array([1, 2, 3])), expected[1:], rtol=1e-6
    )


def _ease_reference(x, l2):
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    return x @ (np.eye(x.shape[1]) - p / np.diag(p))


def test_ease_matches_numpy_reference():
    l2 = 2.0
    # A fifth item nobody has: its column and row of B are zero.
    model = baselines.EASE(l2=l2)
    model.fit(_from_dense(HAND, num_items=5))
    scores = model.score(np.arange(4))
    np.testing.assert_allclose(
        scores[:, :4], _ease_reference(HAND, l2), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(scores[:, 4], 0.0)


def test_ease_with_fewer_users_than_items_uses_the_same_formula():
    # 3 users, 6 items (plus an empty user row): the Woodbury branch.
    x = np.array(
        [
            [1, 1, 0, 0, 1, 0],
            [0, 1, 1, 0, 0, 1],
            [1, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        np.float64,
    )
    model = baselines.EASE(l2=0.5)
    model.fit(_from_dense(x))
    np.testing.assert_allclose(
        model.score(np.arange(4)),
        _ease_reference(x, 0.5),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "name,params",
    [
        # Two blocks: rank 2 is the true structure.
        ("als", {"factors": 2, "iterations": 10, "num_threads": 1}),
        (
            "bpr",
            {
                "factors": 8,
                "learning_rate": 0.05,
                "iterations": 50,
                "num_threads": 1,
            },
        ),
    ],
)
def test_factor_models_learn_block_structure(name, params):
    train, held = _blocks()

    def auc(scores):
        # Per user: held-out in-block items vs other-block items.
        half = scores.shape[1] // 2
        out = []
        for u, row in enumerate(scores):
            other = np.arange(half) + (0 if u >= len(scores) // 2 else half)
            pos = row[held[u]]
            neg = row[other]
            out.append((pos[:, None] > neg[None, :]).mean())
        return np.mean(out)

    model = baselines.make_baseline(name, **params)
    model.fit(train)
    random = baselines.Random()
    random.fit(train)
    users = np.arange(train.num_users)
    learned = auc(model.score(users))
    chance = auc(random.score(users))
    assert learned > 0.9 > chance + 0.2


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Received: 'nope'") as info:
        baselines.make_baseline("nope")
    for name in baselines.BASELINES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: baselines.ItemKNN(k=0), "`k`"),
        (lambda: baselines.UserKNN(shrink=-1.0), "`shrink`"),
        (lambda: baselines.EASE(l2=0.0), "`l2`"),
        (lambda: baselines.ALS(alpha=0.0), "`alpha`"),
        (lambda: baselines.BPR(learning_rate=-1.0), "`learning_rate`"),
    ],
)
def test_invalid_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_score_validates_users(tiny):
    model = baselines.MostPopular()
    with pytest.raises(RuntimeError, match="not fitted"):
        model.score(np.array([0]))
    model.fit(tiny)
    with pytest.raises(ValueError, match="`user_idx` must lie in"):
        model.score(np.array([12]))
    with pytest.raises(ValueError, match="`user_idx` must be a 1-D integer"):
        model.score(np.array([0.5]))


def test_ease_warns_before_a_fit_over_the_memory_budget(caplog):
    x = Interactions(
        user=[0, 1, 1, 2],
        item=[0, 1, 2, 2],
        value=[1, 1, 1, 1],
        ts=[0, 1, 2, 3],
        num_users=3,
        num_items=3,
    )
    model = baselines.EASE(l2=1.0)
    estimate = baselines.EASE.memory_bytes(3, 3, 4)
    model.memory_warning_bytes = estimate - 1
    with caplog.at_level("WARNING"):
        model.fit(x)
    assert "EASE on users=3 items=3 needs about" in caplog.text
    assert "eval.memory_warning_gb" in caplog.text
    # Items squared: ten times the items, about a hundred times the memory.
    small = baselines.EASE.memory_bytes(10**4, 10**3, 0)
    large = baselines.EASE.memory_bytes(10**4, 10**4, 0)
    assert 80 < large / small < 120


def test_ease_float32_matches_float64():
    rng = np.random.default_rng(0)
    dense = (rng.random((40, 25)) < 0.3).astype(np.float32)
    users, items = np.nonzero(dense)
    x = Interactions(
        user=users,
        item=items,
        value=np.ones(len(users)),
        ts=np.arange(len(users)),
        num_users=40,
        num_items=25,
    )
    scores = {}
    for dtype in ("float32", "float64"):
        model = baselines.EASE(l2=10.0, dtype=dtype)
        model.fit(x)
        scores[dtype] = model.score(np.arange(40))
    np.testing.assert_allclose(scores["float32"], scores["float64"], atol=1e-4)


def test_ease_and_als_read_count_weights():
    x = Interactions(
        user=[0, 0, 1, 1, 2],
        item=[0, 1, 1, 2, 0],
        value=np.ones(5),
        ts=np.arange(5),
        num_users=3,
        num_items=3,
        weight=[1, 5, 1, 1, 2],
    )
    plain = Interactions(
        user=x.user,
        item=x.item,
        value=x.value,
        ts=x.ts,
        num_users=3,
        num_items=3,
    )
    for model_a, model_b in (
        (baselines.EASE(l2=1.0), baselines.EASE(l2=1.0)),
        (
            baselines.ALS(factors=2, iterations=3),
            baselines.ALS(factors=2, iterations=3),
        ),
    ):
        model_a.fit(x)
        model_b.fit(plain)
        assert not np.allclose(
            model_a.score([0, 1, 2]), model_b.score([0, 1, 2])
        )
        # The mask of known items stays binary.
        assert set(model_a._history.data) == {1.0}
