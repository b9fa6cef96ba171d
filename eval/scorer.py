"""Evaluating a pointwise scorer on held-out (user, item, label) pairs.

A pointwise model (NCF under the BCE loss) gives each pair a like
probability. Ranking metrics (`eval/metrics.py`) say whether liked items come
first; this module asks two other questions, on labelled pairs:

- discrimination: the ROC curve and its AUC (the probability that a random
  positive pair scores above a random negative one, ties counting 1/2), with
  a percentile-bootstrap confidence interval over pairs;
- calibration: in equal-width probability bins on [0, 1], does the observed
  share of positives match the mean predicted probability? The expected
  calibration error (ECE) is the count-weighted mean gap.

`held_out_pairs` builds the pairs: the test interactions (labelled 1, or
graded into like/dislike with `like_threshold`) plus uniformly sampled
unknown items as negatives. Sampled negatives are "not interacted", not
"disliked", so the AUC against them measures ranking of seen over unseen
items, and calibration is relative to the sampling ratio.

Everything runs host-side in NumPy. `evaluate_scorer` can write `roc.png`,
`calibration.png` (matplotlib `Figure`, no pyplot state) and `scorer.json`,
each atomically.
"""

import io
import json
import math
import os
import pathlib

import numpy as np
import scipy.sparse as sp

from eval import metrics

# Draws per vectorised bootstrap chunk (four int64 arrays of this size).
_CHUNK_ELEMENTS = 2**20
# Bootstrap draws allowed, as a multiple of `num_bootstrap`, before giving up
# on resamples that keep missing one class.
_MAX_DRAW_FACTOR = 10


def roc_curve(labels, scores):
    """ROC curve of a scorer, one point per distinct score.

    Tied scores share one threshold, so a tie moves the curve diagonally and
    the trapezoidal area equals the tie-aware AUC of `eval.metrics.auc`.

    Args:
        labels: `(n,)` binary labels (0/1 or bool), both classes present.
        scores: `(n,)` finite scores, higher = more likely positive.

    Returns:
        `(fpr, tpr, thresholds)`, float64 arrays of length
        `num_distinct_scores + 1`: a pair is predicted positive when its
        score is >= the threshold. The first point is `(0, 0)` at threshold
        `+inf`, the last is `(1, 1)` at the lowest score; thresholds
        decrease.
    """
    positive, scores = _validate_binary(labels, scores, "scores")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    # The last index of each run of equal scores.
    last = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    tps = np.cumsum(positive[order])[last]
    fps = last + 1 - tps
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    thresholds = np.r_[np.inf, sorted_scores[last]]
    return fpr, tpr, thresholds


def auc_with_ci(
    labels, scores, num_bootstrap=1000, confidence=0.95, seed=0
) -> dict:
    """ROC-AUC with a percentile-bootstrap confidence interval over pairs.

    Each resample draws n pairs with replacement. A resample that holds one
    class only has no AUC: it is redrawn (and counted in `num_redrawn`), so
    the interval always rests on `num_bootstrap` resamples.

    Args:
        labels: `(n,)` binary labels, both classes present.
        scores: `(n,)` finite scores.
        num_bootstrap: int >= 1, resamples. Defaults to 1000.
        confidence: float in (0, 1). Defaults to 0.95.
        seed: int seed of `np.random.default_rng`. Defaults to 0.

    Returns:
        dict with float `auc` (on the data itself, `eval.metrics.auc`),
        `low` and `high` (the `(1 -+ confidence) / 2` quantiles of the
        resampled AUCs) and int `num_redrawn`.
    """
    positive, scores = _validate_binary(labels, scores, "scores")
    _check_int(num_bootstrap, "num_bootstrap", minimum=1)
    if not 0 < confidence < 1:
        raise ValueError(
            f"`confidence` must be in (0, 1). Received: confidence="
            f"{confidence!r}"
        )
    values, num_redrawn = _bootstrap_aucs(
        positive, scores, num_bootstrap, np.random.default_rng(seed)
    )
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return {
        "auc": metrics.auc(positive, scores),
        "low": float(low),
        "high": float(high),
        "num_redrawn": int(num_redrawn),
    }


def calibration(labels, probs, num_bins=10) -> dict:
    """Reliability table in equal-width bins on [0, 1], and the ECE.

    Bin b holds the probabilities in `[edge_b, edge_{b+1})`; the last bin
    also holds 1.0.

    Args:
        labels: `(n,)` binary labels.
        probs: `(n,)` predicted probabilities in [0, 1].
        num_bins: int >= 1. Defaults to 10.

    Returns:
        dict with `bin_edges` `(num_bins + 1,)`, `mean_predicted` and
        `observed_rate` `(num_bins,)` float64 (NaN for an empty bin),
        `counts` `(num_bins,)` int64, and float `ece` =
        `sum_b counts_b / n * |observed_rate_b - mean_predicted_b|`.
    """
    positive, probs = metrics.validate_pointwise(labels, probs, "probs")
    _check_probabilities(probs)
    _check_int(num_bins, "num_bins", minimum=1)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.clip(
        np.searchsorted(edges, probs, side="right") - 1, 0, num_bins - 1
    )
    counts = np.bincount(bins, minlength=num_bins)
    prob_sums = np.bincount(bins, weights=probs, minlength=num_bins)
    pos_sums = np.bincount(bins, weights=positive, minlength=num_bins)
    filled = counts > 0
    mean_predicted = np.full(num_bins, np.nan)
    observed_rate = np.full(num_bins, np.nan)
    mean_predicted[filled] = prob_sums[filled] / counts[filled]
    observed_rate[filled] = pos_sums[filled] / counts[filled]
    gaps = np.abs(observed_rate[filled] - mean_predicted[filled])
    return {
        "bin_edges": edges,
        "mean_predicted": mean_predicted,
        "observed_rate": observed_rate,
        "counts": counts.astype(np.int64),
        "ece": float(np.sum(counts[filled] * gaps) / probs.size),
    }


def evaluate_scorer(
    labels,
    probs,
    out_dir=None,
    num_bootstrap=1000,
    seed=0,
    name="scorer",
) -> dict:
    """AUC with a 95% CI, calibration and the Brier score of a scorer.

    Args:
        labels: `(n,)` binary labels, both classes present.
        probs: `(n,)` predicted probabilities in [0, 1] (e.g. the sigmoid of
            NCF's logits).
        out_dir: optional folder (str or `pathlib.Path`, created if needed)
            for `roc.png`, `calibration.png` and `scorer.json`, each written
            to a temporary name and renamed into place.
        num_bootstrap: int >= 1, bootstrap resamples for the AUC interval.
            Defaults to 1000.
        seed: int seed of the bootstrap. Defaults to 0.
        name: str, the scorer's name in the plots and the report.

    Returns:
        A `json.dumps`-ready dict (NaN as `None`): `name`, `num_pairs`,
        `num_positives`, `num_negatives`, `auc`, `auc_ci` (`low`, `high`,
        `confidence`, `num_bootstrap`, `num_redrawn`), `ece`, `brier` (mean
        squared error of the probabilities) and `calibration` (`bin_edges`,
        `mean_predicted`, `observed_rate`, `counts` as lists, 10 bins).
    """
    positive, probs = _validate_binary(labels, probs, "probs")
    _check_probabilities(probs)
    confidence = 0.95
    ci = auc_with_ci(positive, probs, num_bootstrap, confidence, seed)
    table = calibration(positive, probs)
    report = {
        "name": str(name),
        "num_pairs": int(probs.size),
        "num_positives": int(positive.sum()),
        "num_negatives": int(probs.size - positive.sum()),
        "auc": ci["auc"],
        "auc_ci": {
            "low": ci["low"],
            "high": ci["high"],
            "confidence": confidence,
            "num_bootstrap": int(num_bootstrap),
            "num_redrawn": ci["num_redrawn"],
        },
        "ece": table["ece"],
        "brier": float(np.mean(np.square(probs - positive))),
        "calibration": {
            key: [_json_number(v) for v in table[key]]
            for key in (
                "bin_edges",
                "mean_predicted",
                "observed_rate",
                "counts",
            )
        },
    }
    if out_dir is not None:
        out_dir = pathlib.Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        fpr, tpr, _ = roc_curve(positive, probs)
        _save_figure(_plot_roc(fpr, tpr, report), out_dir / "roc.png")
        _save_figure(
            _plot_calibration(table, positive, probs, report),
            out_dir / "calibration.png",
        )
        _atomic_write_bytes(
            out_dir / "scorer.json",
            json.dumps(report, indent=2, allow_nan=False).encode(),
        )
    return report


def held_out_pairs(
    test_interactions,
    exclude_csr,
    num_negatives=1,
    seed=0,
    like_threshold=None,
):
    """Labelled (user, item) pairs: the test interactions plus negatives.

    Every test interaction is a pair, labelled 1, or with `like_threshold`
    1 when its `value` (the rating) is >= the threshold and 0 otherwise.
    Each test interaction also gets `num_negatives` items drawn uniformly,
    with replacement, from the items its user does not know: not in
    `exclude_csr`'s row and not among the user's test items. Sampling is
    exact and vectorised: a draw r in [0, num_free) is mapped to the r-th
    free item with one `searchsorted` over the known items, so no draw is
    ever rejected and no Python loop runs per interaction.

    Args:
        test_interactions: a `data.Interactions` (fields `user`, `item`,
            `value`, `num_users`, `num_items`).
        exclude_csr: `(num_users, num_items)` scipy sparse matrix of the
            users' known items (train, validation and test); test items are
            excluded in any case.
        num_negatives: int >= 0, sampled negatives per test interaction.
            Defaults to 1.
        seed: int seed of `np.random.default_rng`. Defaults to 0.
        like_threshold: optional float; grade the test interactions into
            likes (1) and dislikes (0) by `value`. Defaults to None (all 1).

    Returns:
        `(user, item, label)`: `(n * (1 + num_negatives),)` int32, int32 and
        float32 arrays, n = number of test interactions: first the test
        pairs in their order, then the negatives, `num_negatives` per test
        pair in the same order.
    """
    users, items, values, num_users, num_items = _interaction_fields(
        test_interactions
    )
    _check_int(num_negatives, "num_negatives", minimum=0)
    if like_threshold is not None and not (
        isinstance(like_threshold, (int, float, np.number))
        and not isinstance(like_threshold, bool)
        and math.isfinite(like_threshold)
    ):
        raise ValueError(
            "`like_threshold` must be a finite number or None. Received: "
            f"like_threshold={like_threshold!r}"
        )
    if not sp.issparse(exclude_csr) or exclude_csr.shape != (
        num_users,
        num_items,
    ):
        raise ValueError(
            "`exclude_csr` must be a scipy sparse matrix of shape "
            f"{(num_users, num_items)}. Received: {type(exclude_csr).__name__}"
            f" of shape {getattr(exclude_csr, 'shape', None)}"
        )
    if like_threshold is None:
        labels = np.ones(users.size, np.float32)
    else:
        labels = (values >= like_threshold).astype(np.float32)
    if num_negatives == 0:
        return users, items, labels

    test = sp.csr_matrix(
        (np.ones(users.size, np.int8), (users, items)),
        shape=(num_users, num_items),
    )
    known = sp.csr_matrix(exclude_csr, copy=True)
    known.sum_duplicates()
    known.eliminate_zeros()  # a stored 0 is not a known item
    known.data = np.ones(known.nnz, np.int8)
    known = (known + test).tocsr()
    known.sum_duplicates()  # canonical: sorted indices, no duplicates
    num_known = np.diff(known.indptr)
    full = np.flatnonzero(num_known[np.unique(users)] >= num_items)
    if full.size:
        raise ValueError(
            "Some test users know every item, so no negative can be "
            f"sampled for them. Received: {full.size} such users, e.g. user "
            f"{np.unique(users)[full[0]]}"
        )
    rng = np.random.default_rng(seed)
    neg_user = np.repeat(users, num_negatives)
    num_free = num_items - num_known[neg_user]
    draw = np.floor(rng.random(neg_user.size) * num_free).astype(np.int64)
    draw = np.minimum(draw, num_free - 1)  # guards rounding at the top
    neg_item = _nth_free_item(known, neg_user, draw, num_items)
    return (
        np.concatenate([users, neg_user]).astype(np.int32),
        np.concatenate([items, neg_item]).astype(np.int32),
        np.concatenate([labels, np.zeros(neg_user.size, np.float32)]),
    )


def _nth_free_item(known, user, rank, num_items):
    """The `rank`-th (0-based) item of `user` that is not in `known`.

    With the user's known items sorted, e_0 < e_1 < ..., the r-th free item
    x is r plus the number of known items below it, which is the number of
    j with e_j - j <= r. `e_j - j` never decreases along a row, so keying
    it by row makes one global sorted array and one `searchsorted` answers
    every draw.
    """
    rows = np.repeat(
        np.arange(known.shape[0], dtype=np.int64), np.diff(known.indptr)
    )
    position = np.arange(known.nnz, dtype=np.int64) - known.indptr[rows]
    stride = num_items + 1
    keys = rows * stride + (known.indices.astype(np.int64) - position)
    query = user.astype(np.int64) * stride + rank
    below = np.searchsorted(keys, query, side="right") - known.indptr[user]
    return rank + below


def _bootstrap_aucs(positive, scores, num_bootstrap, rng):
    """`num_bootstrap` AUCs of resamples with both classes, and how many
    one-class resamples were redrawn.

    Pairs are sorted by score once; a resample is a vector of counts per
    sorted pair, summed per tie group, and AUC = sum over groups of
    positives x (negatives below + negatives tied / 2), / (P x N).
    """
    n = scores.size
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    sorted_positive = positive[order].astype(np.int64)
    starts = np.flatnonzero(
        np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    )
    chunk = max(1, _CHUNK_ELEMENTS // n)
    out = np.empty(num_bootstrap)
    filled = 0
    redrawn = 0
    drawn = 0
    while filled < num_bootstrap:
        if drawn >= _MAX_DRAW_FACTOR * num_bootstrap:
            raise ValueError(
                "Too many bootstrap resamples hold one class only: "
                f"{redrawn} of {drawn}. Received: {int(positive.sum())} "
                f"positives and {int(n - positive.sum())} negatives."
            )
        b = min(chunk, num_bootstrap - filled)
        drawn += b
        draws = rng.integers(0, n, size=(b, n))
        draws += np.arange(b)[:, None] * n
        counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n)
        pos = counts * sorted_positive
        neg = counts - pos
        pos_groups = np.add.reduceat(pos, starts, axis=1)  # (b, groups)
        neg_groups = np.add.reduceat(neg, starts, axis=1)
        neg_below = np.cumsum(neg_groups, axis=1) - neg_groups
        wins = np.sum(pos_groups * (neg_below + 0.5 * neg_groups), axis=1)
        num_pos = pos_groups.sum(axis=1)
        num_neg = neg_groups.sum(axis=1)
        ok = (num_pos > 0) & (num_neg > 0)
        redrawn += int(b - ok.sum())
        values = wins[ok] / (num_pos[ok] * num_neg[ok])
        out[filled : filled + values.size] = values
        filled += values.size
    return out, redrawn


def _plot_roc(fpr, tpr, report):
    from matplotlib.figure import Figure  # slow import; plots only

    ci = report["auc_ci"]
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(
        fpr,
        tpr,
        label=(
            f"{report['name']}: AUC {report['auc']:.3f} "
            f"[{ci['low']:.3f}, {ci['high']:.3f}]"
        ),
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(
        f"ROC, {report['num_positives']} pos / {report['num_negatives']} neg"
    )
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_calibration(table, positive, probs, report):
    from matplotlib.figure import Figure  # slow import; plots only

    edges = table["bin_edges"]
    filled = table["counts"] > 0
    fig = Figure(figsize=(5.0, 6.0))
    top = fig.add_subplot(2, 1, 1)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    top.plot(
        table["mean_predicted"][filled],
        table["observed_rate"][filled],
        marker="o",
        label=f"{report['name']} (ECE {report['ece']:.3f})",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_xlabel("mean predicted probability")
    top.set_ylabel("observed positive rate")
    top.set_title("Reliability diagram")
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom = fig.add_subplot(2, 1, 2)
    bottom.hist(
        [probs[positive], probs[~positive]],
        bins=edges,
        stacked=True,
        label=["positives", "negatives"],
    )
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("pairs")
    bottom.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _save_figure(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _atomic_write_bytes(path, buffer.getvalue())


def _atomic_write_bytes(path, payload: bytes):
    """Write to a temporary sibling, then rename over `path`, so a crash
    never leaves a half-written file where a good one was."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _interaction_fields(interactions):
    missing = [
        field
        for field in ("user", "item", "value", "num_users", "num_items")
        if not hasattr(interactions, field)
    ]
    if missing:
        raise ValueError(
            "`test_interactions` must be a `data.Interactions`. Received: "
            f"{type(interactions).__name__} without {missing}"
        )
    users = np.asarray(interactions.user).astype(np.int64)
    items = np.asarray(interactions.item).astype(np.int64)
    values = np.asarray(interactions.value, dtype=np.float64)
    num_users = int(interactions.num_users)
    num_items = int(interactions.num_items)
    if users.size == 0:
        raise ValueError(
            "`test_interactions` must not be empty. Received: 0 rows."
        )
    if not users.shape == items.shape == values.shape:
        raise ValueError(
            "`test_interactions` fields must be aligned. Received: shapes "
            f"{users.shape}, {items.shape}, {values.shape}"
        )
    if users.min() < 0 or users.max() >= num_users:
        raise ValueError(
            f"`test_interactions.user` must lie in [0, {num_users}). "
            f"Received: range [{users.min()}, {users.max()}]"
        )
    if items.min() < 0 or items.max() >= num_items:
        raise ValueError(
            f"`test_interactions.item` must lie in [0, {num_items}). "
            f"Received: range [{items.min()}, {items.max()}]"
        )
    return users, items, values, num_users, num_items


def _validate_binary(labels, scores, name):
    """`metrics.validate_pointwise`, and both classes present."""
    positive, scores = metrics.validate_pointwise(labels, scores, name)
    num_pos = int(positive.sum())
    if num_pos == 0 or num_pos == positive.size:
        raise ValueError(
            "`labels` must contain both classes. Received: "
            f"{num_pos} positives and {positive.size - num_pos} negatives."
        )
    return positive, scores


def _check_probabilities(probs):
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            "`probs` must lie in [0, 1] (apply a sigmoid to logits). "
            f"Received: range [{probs.min()}, {probs.max()}]"
        )


def _check_int(value, name, minimum):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise ValueError(
            f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}"
        )


def _json_number(value):
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None
