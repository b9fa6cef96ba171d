"""Bootstrap confidence intervals and paired significance tests over users.

Top-K metrics are means over a few hundred to a few thousand users, so a gap
of 0.005 in NDCG@20 can be noise. Two models evaluated on the same split
give per-user metric vectors on the same users, and a paired test on the
per-user differences is far more sensitive than comparing two separate
intervals. The resampling unit is always the user, matching how the metrics
are averaged (`eval/metrics.py`).

Resampling is vectorised in chunks of about `_CHUNK_ELEMENTS` draws, so
memory stays bounded whatever the number of users or samples.
"""

import numpy as np

PAIRED_METHODS = ("bootstrap", "permutation")

# Draws per vectorised chunk: about 32 MiB of int64 indices.
_CHUNK_ELEMENTS = 2**22


def bootstrap_ci(
    values, num_samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Percentile-bootstrap confidence interval of a mean over users.

    Args:
        values: `(num_users,)` finite per-user metric values.
        num_samples: int >= 1, bootstrap resamples. Defaults to 1000.
        confidence: float in (0, 1). Defaults to 0.95.
        seed: int seed of `np.random.default_rng`. Defaults to 0.

    Returns:
        dict with float `mean` (of `values` itself), `low` and `high` (the
        `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles of the
        resampled means).
    """
    values = _validate_vector(values, "values")
    _validate_num_samples(num_samples)
    if not 0 < confidence < 1:
        raise ValueError(
            f"`confidence` must be in (0, 1). Received: confidence="
            f"{confidence!r}"
        )
    means = _bootstrap_means(values, num_samples, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {
        "mean": float(values.mean()),
        "low": float(low),
        "high": float(high),
    }


def paired_test(
    a,
    b,
    method: str = "bootstrap",
    num_samples: int = 10000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Two-sided paired test of mean(a) == mean(b) over the same users.

    Both methods work on the per-user differences d = a - b:

    - "permutation": under the null, each user's d is as likely to be +d as
      -d, so the null distribution is the mean of d under random sign flips.
    - "bootstrap": the resampled means of d, shifted to mean 0, stand in
      for the null distribution.

    p = (1 + #{|null mean| >= |observed mean|}) / (1 + num_samples), the +1
    counting the observed sample itself so that p is never 0. The interval
    `[ci_low, ci_high]` is the percentile-bootstrap `1 - alpha` interval of
    mean(d) for both methods.

    Args:
        a: `(num_users,)` finite per-user metric of the first model.
        b: `(num_users,)` the same metric of the second model, same users in
            the same order.
        method: "bootstrap" or "permutation". Defaults to "bootstrap".
        num_samples: int >= 1, resamples. Defaults to 10000.
        seed: int seed of `np.random.default_rng`. Defaults to 0.
        alpha: float in (0, 1), significance level. Defaults to 0.05.

    Returns:
        dict with `mean_a`, `mean_b`, `diff` (mean_a - mean_b), `ci_low`,
        `ci_high`, `p_value` (floats), `significant` (bool, p < alpha),
        `method`, `num_users`, `alpha`.
    """
    a = _validate_vector(a, "a")
    b = _validate_vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            "`a` and `b` must hold the same users, so the same shape. "
            f"Received: a.shape={a.shape}, b.shape={b.shape}"
        )
    if method not in PAIRED_METHODS:
        raise ValueError(
            f"`method` must be one of {PAIRED_METHODS}. Received: "
            f"method={method!r}"
        )
    _validate_num_samples(num_samples)
    if not 0 < alpha < 1:
        raise ValueError(
            f"`alpha` must be in (0, 1). Received: alpha={alpha!r}"
        )
    rng = np.random.default_rng(seed)
    diff = a - b
    observed = diff.mean()
    boot = _bootstrap_means(diff, num_samples, rng)
    ci_low, ci_high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    if method == "bootstrap":
        null = boot - observed
    else:
        null = _sign_flip_means(diff, num_samples, rng)
    # Resampled means that equal the observed one in exact arithmetic can
    # differ from it by rounding; they must count as "as extreme".
    tolerance = 1e-9 * float(np.abs(diff).max())
    extreme = np.count_nonzero(np.abs(null) >= abs(observed) - tolerance)
    p_value = (1 + extreme) / (1 + num_samples)
    return {
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": float(observed),
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "p_value": float(p_value),
        "significant": bool(p_value < alpha),
        "method": method,
        "num_users": int(a.size),
        "alpha": float(alpha),
    }


def describe_difference(result: dict, name_a: str, name_b: str, metric: str):
    """One plain sentence for a `paired_test` result.

    Args:
        result: dict returned by `paired_test`.
        name_a: str, name of the model behind `a`.
        name_b: str, name of the model behind `b`.
        metric: str, e.g. "ndcg@20".

    Returns:
        str such as "ease vs two_tower on ndcg@20: +0.0123 [0.0040,
        0.0210], p=0.003 (significant)"; a positive difference means
        `name_a` scores higher.
    """
    verdict = "significant" if result["significant"] else "not significant"
    return (
        f"{name_a} vs {name_b} on {metric}: {result['diff']:+.4f} "
        f"[{result['ci_low']:.4f}, {result['ci_high']:.4f}], "
        f"p={result['p_value']:.3g} ({verdict})"
    )


def confidence_intervals(per_user, metrics, num_samples=1000, seed=0):
    """`{metric: bootstrap_ci(...)}` for each of `metrics` present in
    `per_user` (a dict of `(num_users,)` arrays, e.g.
    `RankingResult.per_user`)."""
    return {
        m: bootstrap_ci(per_user[m], num_samples, seed=seed)
        for m in metrics
        if m in per_user
    }


def compare(
    per_user,
    anchor,
    metrics,
    seed=0,
    num_samples=10000,
    method="bootstrap",
    anchor_first=True,
):
    """Paired tests between the model `anchor` and every other model.

    Args:
        per_user: dict of model name to a dict of `(num_users,)` arrays
            per metric, all on the same users.
        anchor: the name every other model is compared with.
        metrics: metric names to test.
        seed, num_samples, method: as in `paired_test`.
        anchor_first: test `anchor - other` (True) or `other - anchor`.

    Returns:
        `(results, lines)`: `{other: {metric: paired_test result}}` and one
        `describe_difference` sentence per test.
    """
    results, lines = {}, []
    for name, values in per_user.items():
        if name == anchor:
            continue
        for metric in metrics:
            a, b = per_user[anchor][metric], values[metric]
            names = (anchor, name)
            if not anchor_first:
                a, b, names = b, a, (name, anchor)
            result = paired_test(
                a, b, method=method, num_samples=num_samples, seed=seed
            )
            results.setdefault(name, {})[metric] = result
            lines.append(describe_difference(result, *names, metric))
    return results, lines


def _bootstrap_means(values, num_samples, rng):
    """Means of `num_samples` resamples (with replacement) of `values`."""
    n = values.size
    chunk = max(1, _CHUNK_ELEMENTS // n)
    out = np.empty(num_samples)
    for start in range(0, num_samples, chunk):
        stop = min(start + chunk, num_samples)
        idx = rng.integers(0, n, size=(stop - start, n))  # (chunk, n)
        out[start:stop] = values[idx].mean(axis=1)
    return out


def _sign_flip_means(values, num_samples, rng):
    """Means of `values` under `num_samples` random sign flips."""
    n = values.size
    chunk = max(1, _CHUNK_ELEMENTS // n)
    out = np.empty(num_samples)
    for start in range(0, num_samples, chunk):
        stop = min(start + chunk, num_samples)
        signs = rng.integers(0, 2, size=(stop - start, n), dtype=np.int8)
        out[start:stop] = (2.0 * signs - 1.0) @ values / n
    return out


def _validate_vector(values, name):
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 1-D array of per-user values. "
            f"Received: shape={values.shape}"
        )
    if not np.isfinite(values).all():
        raise ValueError(
            f"`{name}` must be finite. Received: "
            f"{int(np.isnan(values).sum())} NaN and "
            f"{int(np.isinf(values).sum())} infinite values."
        )
    return values


def _validate_num_samples(num_samples):
    if (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, (int, np.integer))
        or num_samples < 1
    ):
        raise ValueError(
            "`num_samples` must be an int >= 1. Received: "
            f"num_samples={num_samples!r}"
        )
