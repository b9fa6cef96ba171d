"""Pointwise scorer evaluation: ROC/AUC with ties, the bootstrap interval,
calibration and ECE by hand, written files, and held-out pair sampling."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from data import Interactions
from eval import metrics
from eval import scorer

PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def _informative(n, seed=0, noise=1.0):
    """Balanced labels and scores = label + noise (AUC about 0.76)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    return labels, labels + noise * rng.normal(size=n)


def test_roc_curve_with_ties_by_hand():
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.9, 0.7, 0.5, 0.5, 0.1])
    fpr, tpr, thresholds = scorer.roc_curve(labels, scores)
    # Each tie (0.9 and 0.5 hold one positive and one negative) is one
    # diagonal step.
    np.testing.assert_allclose(fpr, [0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.7, 0.5, 0.1])
    # 6 of the 9 (positive, negative) pairs won, ties counting 1/2.
    assert np.trapezoid(tpr, fpr) == pytest.approx(2 / 3)
    assert metrics.auc(labels, scores) == pytest.approx(2 / 3)


def test_roc_area_equals_rank_auc_on_tied_random_scores():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.round(labels * 0.3 + rng.random(300), 1)  # many ties
    fpr, tpr, thresholds = scorer.roc_curve(labels, scores)
    assert len(thresholds) == len(np.unique(scores)) + 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(
        metrics.auc(labels, scores), abs=1e-12
    )


def test_auc_ci_contains_auc_and_narrows_with_n():
    widths = []
    for n in (100, 2000):
        labels, scores = _informative(n)
        ci = scorer.auc_with_ci(labels, scores, num_bootstrap=300, seed=0)
        assert ci["auc"] == pytest.approx(metrics.auc(labels, scores))
        assert ci["low"] < ci["auc"] < ci["high"]
        assert ci["num_redrawn"] == 0
        widths.append(ci["high"] - ci["low"])
    # Width shrinks like 1/sqrt(n): about 4.5x here.
    assert widths[1] < widths[0] / 2.5
    wider = scorer.auc_with_ci(*_informative(2000), 300, confidence=0.99)
    assert wider["high"] - wider["low"] > widths[1]


def test_bootstrap_aucs_match_a_loop_over_resamples():
    labels, scores = _informative(40, seed=2)
    scores = np.round(scores, 1)  # ties
    positive = labels.astype(bool)
    values, redrawn = scorer._bootstrap_aucs(
        positive, scores, 25, np.random.default_rng(7)
    )
    assert redrawn == 0
    # The same draws, replayed one resample at a time over the pairs in
    # the (stable) score order that the vectorised code draws from.
    order = np.argsort(scores, kind="stable")
    draws = np.random.default_rng(7).integers(0, 40, size=(25, 40))
    expected = [
        metrics.auc(positive[order][d], scores[order][d]) for d in draws
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-12)


def test_auc_ci_redraws_one_class_resamples():
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.95])
    ci = scorer.auc_with_ci(labels, scores, num_bootstrap=200, seed=0)
    # P(no positive in a resample of 8) = (7/8)^8, about 0.34.
    assert 30 < ci["num_redrawn"] < 200
    assert ci["auc"] == pytest.approx(6 / 7)
    assert ci["low"] <= ci["auc"] <= ci["high"]
    again = scorer.auc_with_ci(labels, scores, num_bootstrap=200, seed=0)
    assert again == ci


def test_calibration_bins_by_hand():
    labels = np.array([0, 1, 0, 1, 1, 0])
    probs = np.array([0.05, 0.15, 0.12, 0.95, 1.0, 0.5])
    table = scorer.calibration(labels, probs, num_bins=4)
    np.testing.assert_allclose(table["bin_edges"], [0, 0.25, 0.5, 0.75, 1])
    # 0.5 opens bin 2 (bins are left-closed); 1.0 closes the last bin.
    np.testing.assert_array_equal(table["counts"], [3, 0, 1, 2])
    np.testing.assert_allclose(
        table["mean_predicted"], [0.32 / 3, np.nan, 0.5, 0.975]
    )
    np.testing.assert_allclose(
        table["observed_rate"], [1 / 3, np.nan, 0.0, 1.0]
    )
    ece = (3 * abs(1 / 3 - 0.32 / 3) + 1 * 0.5 + 2 * 0.025) / 6
    assert table["ece"] == pytest.approx(ece)


def test_ece_near_zero_when_calibrated_and_large_when_not():
    rng = np.random.default_rng(0)
    probs = rng.random(100_000)
    labels = (rng.random(probs.size) < probs).astype(int)
    assert scorer.calibration(labels, probs)["ece"] < 0.01
    # Over-confident predictions of the same outcomes: p -> p^3 / 1-(1-p)^3.
    skewed = np.where(probs < 0.5, probs**3, 1 - (1 - probs) ** 3)
    assert scorer.calibration(labels, skewed)["ece"] > 0.1


def test_evaluate_scorer_writes_files(tmp_path):
    labels, scores = _informative(200)
    probs = 1 / (1 + np.exp(-2 * (scores - 0.5)))
    probs[:3] = [0.0, 1.0, 0.5]
    out = tmp_path / "nested" / "scorer"
    report = scorer.evaluate_scorer(
        labels, probs, out_dir=out, num_bootstrap=100, name="ncf"
    )
    for png in ("roc.png", "calibration.png"):
        assert (out / png).read_bytes()[:8] == PNG_HEADER
    assert json.loads((out / "scorer.json").read_text()) == report
    assert sorted(p.name for p in out.iterdir()) == [
        "calibration.png",
        "roc.png",
        "scorer.json",
    ]
    assert report["name"] == "ncf"
    assert report["num_pairs"] == 200
    assert report["num_positives"] == int(labels.sum())
    assert report["num_negatives"] == 200 - int(labels.sum())
    assert report["auc"] == pytest.approx(metrics.auc(labels, probs))
    assert report["auc_ci"]["low"] < report["auc"] < report["auc_ci"]["high"]
    assert report["auc_ci"]["num_bootstrap"] == 100
    assert report["brier"] == pytest.approx(np.mean((probs - labels) ** 2))
    assert report["ece"] == pytest.approx(
        scorer.calibration(labels, probs)["ece"]
    )
    assert sum(report["calibration"]["counts"]) == 200


def test_evaluate_scorer_reports_empty_bins_as_none(tmp_path):
    labels = np.array([0, 1, 0, 1])
    probs = np.array([0.02, 0.97, 0.08, 0.92])
    report = scorer.evaluate_scorer(
        labels, probs, out_dir=tmp_path, num_bootstrap=20
    )
    table = report["calibration"]
    assert table["counts"] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table["mean_predicted"][1] is None
    assert table["observed_rate"][5] is None
    assert table["mean_predicted"][9] == pytest.approx(0.945)
    saved = json.loads((tmp_path / "scorer.json").read_text())
    assert saved["calibration"]["observed_rate"][0] == 0.0
    assert saved["calibration"]["observed_rate"][9] == 1.0


def _interactions():
    """Users 0-3 over 8 items: user 3 knows all but item 5."""
    test = Interactions(
        user=np.array([0, 0, 1, 2, 3, 3]),
        item=np.array([1, 2, 0, 7, 0, 1]),
        value=np.array([5.0, 2.0, 4.0, 3.5, 1.0, 4.5]),
        ts=np.zeros(6),
        num_users=4,
        num_items=8,
    )
    train = sp.csr_matrix(
        (
            np.ones(10),
            (
                np.array([0, 0, 1, 3, 3, 3, 3, 3, 3, 3]),
                np.array([3, 4, 6, 0, 1, 2, 3, 4, 6, 7]),
            ),
        ),
        shape=(4, 8),
    )
    return test, train


def test_held_out_pairs_counts_labels_and_exclusions():
    test, train = _interactions()
    # The exclusion matrix here omits the test items: they are excluded
    # anyway.
    user, item, label = scorer.held_out_pairs(
        test, train, num_negatives=3, seed=0
    )
    n = len(test)
    assert user.shape == item.shape == label.shape == (n * 4,)
    assert user.dtype == np.int32 and item.dtype == np.int32
    assert label.dtype == np.float32
    np.testing.assert_array_equal(user[:n], test.user)
    np.testing.assert_array_equal(item[:n], test.item)
    np.testing.assert_array_equal(label, [1] * n + [0] * (3 * n))
    np.testing.assert_array_equal(user[n:], np.repeat(test.user, 3))
    known = (train + test.to_csr()).toarray() > 0
    assert not known[user[n:], item[n:]].any()
    # User 3's only unknown item is 5.
    assert (item[n:][user[n:] == 3] == 5).all()
    again = scorer.held_out_pairs(test, train, num_negatives=3, seed=0)
    for a, b in zip(again, (user, item, label)):
        np.testing.assert_array_equal(a, b)


def test_held_out_pairs_graded_labels_and_no_negatives():
    test, train = _interactions()
    user, item, label = scorer.held_out_pairs(
        test, train, num_negatives=0, like_threshold=4.0
    )
    assert len(user) == len(test)
    np.testing.assert_array_equal(label, [1, 0, 1, 0, 0, 1])


def test_held_out_pairs_samples_free_items_uniformly():
    num_users, num_items = 3, 12
    known_items = {0: [0, 3, 4, 5, 11], 1: [], 2: list(range(11))}
    rows = [u for u, its in known_items.items() for _ in its]
    cols = [i for its in known_items.values() for i in its]
    exclude = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(num_users, num_items)
    )
    test = Interactions(
        user=np.array([0, 1, 2]),
        item=np.array([0, 2, 0]),
        value=np.ones(3),
        ts=np.zeros(3),
        num_users=num_users,
        num_items=num_items,
    )
    k = 6000
    user, item, _ = scorer.held_out_pairs(test, exclude, num_negatives=k)
    for u, free in ((0, [1, 2, 6, 7, 8, 9, 10]), (1, None), (2, [11])):
        if free is None:  # user 1 knows only its test item 2
            free = [i for i in range(num_items) if i != 2]
        sampled = item[3:][user[3:] == u]
        counts = np.bincount(sampled, minlength=num_items)
        assert set(np.flatnonzero(counts)) == set(free)
        expected = k / len(free)
        # Binomial counts: within 5 standard deviations of uniform.
        assert np.all(
            np.abs(counts[free] - expected) < 5 * np.sqrt(expected) + 1
        )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: scorer.roc_curve([1, 1], [0.2, 0.3]), "both classes"),
        (lambda: scorer.roc_curve([1, 0], [0.2]), "same length"),
        (lambda: scorer.roc_curve([1, 2], [0.2, 0.3]), "binary"),
        (lambda: scorer.roc_curve([1, 0], [0.2, np.nan]), "finite"),
        (lambda: scorer.auc_with_ci([1, 0], [1, 0], 0), "num_bootstrap"),
        (
            lambda: scorer.auc_with_ci([1, 0], [1, 0], confidence=1.0),
            "confidence",
        ),
        (lambda: scorer.calibration([1, 0], [0.5, 1.2]), r"\[0, 1\]"),
        (lambda: scorer.calibration([1, 0], [0.5, 0.2], 0), "num_bins"),
        (lambda: scorer.evaluate_scorer([1, 0], [2.0, 0.1]), "probs"),
        (lambda: scorer.evaluate_scorer([0, 0], [0.9, 0.1]), "both classes"),
    ],
)
def test_metric_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_held_out_pairs_errors():
    test, train = _interactions()
    with pytest.raises(ValueError, match="exclude_csr"):
        scorer.held_out_pairs(test, train.toarray())
    with pytest.raises(ValueError, match="exclude_csr"):
        scorer.held_out_pairs(test, train[:3])
    with pytest.raises(ValueError, match="num_negatives"):
        scorer.held_out_pairs(test, train, num_negatives=-1)
    with pytest.raises(ValueError, match="like_threshold"):
        scorer.held_out_pairs(test, train, like_threshold=float("nan"))
    with pytest.raises(ValueError, match="test_interactions"):
        scorer.held_out_pairs((test.user, test.item), train)
    with pytest.raises(ValueError, match="every item"):
        full = train.tolil()
        full[3, 5] = 1
        scorer.held_out_pairs(test, full.tocsr())
    with pytest.raises(ValueError, match="empty"):
        scorer.held_out_pairs(test.select(np.zeros(6, bool)), train)
