"""Tests for eval/stats.py: intervals, paired tests, input checks."""

import numpy as np
import pytest

from eval import stats


def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(0)
    small = stats.bootstrap_ci(rng.normal(0.3, 0.1, 100), seed=1)
    large = stats.bootstrap_ci(rng.normal(0.3, 0.1, 2500), seed=1)
    for ci in (small, large):
        assert ci["low"] < ci["mean"] < ci["high"]
    # The standard error shrinks by sqrt(25) = 5 from 100 to 2500 users.
    small_width = small["high"] - small["low"]
    large_width = large["high"] - large["low"]
    assert 3 < small_width / large_width < 7
    # A 95% interval of a mean with sd 0.1 over 100 users: 2 * 1.96 * 0.01.
    assert small_width == pytest.approx(0.039, rel=0.2)


def test_bootstrap_ci_constant_and_deterministic():
    ci = stats.bootstrap_ci(np.full(10, 0.25))
    assert ci == {"mean": 0.25, "low": 0.25, "high": 0.25}
    values = np.arange(20.0)
    assert stats.bootstrap_ci(values, seed=3) == stats.bootstrap_ci(
        values, seed=3
    )


@pytest.mark.parametrize("method", ["bootstrap", "permutation"])
def test_paired_test_detects_clear_shift(method):
    rng = np.random.default_rng(0)
    b = rng.random(300)
    a = b + 0.05 + rng.normal(0, 0.02, 300)
    result = stats.paired_test(a, b, method=method, num_samples=2000)
    assert result["significant"]
    assert result["diff"] == pytest.approx(0.05, abs=0.005)
    assert result["ci_low"] < result["diff"] < result["ci_high"]
    assert result["ci_low"] > 0
    # Nothing as extreme in 2000 resamples: p is the +1-corrected minimum.
    assert result["p_value"] == pytest.approx(1 / 2001)
    assert result["num_users"] == 300 and result["method"] == method


@pytest.mark.parametrize("method", ["bootstrap", "permutation"])
def test_paired_test_equal_vectors_not_significant(method):
    rng = np.random.default_rng(1)
    a = rng.random(200)
    same = stats.paired_test(a, a.copy(), method=method, num_samples=500)
    assert not same["significant"]
    assert same["p_value"] == 1.0 and same["diff"] == 0.0
    # Noisy but equal on average: differences of exactly +-0.1, mean 0.
    noise = np.tile([0.1, -0.1], 100)
    noisy = stats.paired_test(a, a + noise, method=method, num_samples=500)
    assert not noisy["significant"]
    assert noisy["p_value"] > 0.5


def test_permutation_and_bootstrap_agree():
    rng = np.random.default_rng(2)
    b = rng.random(400)
    z = rng.normal(size=400)
    # Differences with mean exactly 0.01 and sd 0.1: t = 0.01 / (0.1 / 20)
    # = 2, so the normal approximation gives p = 2 (1 - Phi(2)) = 0.0455.
    a = b + 0.01 + 0.1 * (z - z.mean()) / z.std()
    boot = stats.paired_test(a, b, "bootstrap", num_samples=4000)
    perm = stats.paired_test(a, b, "permutation", num_samples=4000)
    assert boot["p_value"] == pytest.approx(0.0455, abs=0.015)
    assert perm["p_value"] == pytest.approx(0.0455, abs=0.015)
    assert boot["ci_low"] == perm["ci_low"]


def test_describe_difference():
    result = {
        "diff": 0.0123,
        "ci_low": 0.004,
        "ci_high": 0.021,
        "p_value": 0.003,
        "significant": True,
    }
    text = stats.describe_difference(result, "ease", "two_tower", "ndcg@20")
    assert text == (
        "ease vs two_tower on ndcg@20: +0.0123 [0.0040, 0.0210], p=0.003 "
        "(significant)"
    )
    result.update(diff=-0.002, ci_low=-0.01, p_value=0.41, significant=False)
    text = stats.describe_difference(result, "a", "b", "recall@20")
    assert text.endswith("-0.0020 [-0.0100, 0.0210], p=0.41 (not significant)")


def test_input_validation():
    with pytest.raises(ValueError, match="same shape. Received: a.shape"):
        stats.paired_test(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="`values` must be a non-empty"):
        stats.bootstrap_ci(np.array([]))
    with pytest.raises(ValueError, match="`b` must be finite. Received: 1 NaN"):
        stats.paired_test(np.ones(2), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="`method` must be one of"):
        stats.paired_test(np.ones(2), np.ones(2), method="t")
    with pytest.raises(ValueError, match="`confidence` must be in"):
        stats.bootstrap_ci(np.ones(2), confidence=95)
    with pytest.raises(ValueError, match="`num_samples` must be an int"):
        stats.bootstrap_ci(np.ones(2), num_samples=0)
