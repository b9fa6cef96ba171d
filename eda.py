"""Exploratory data analysis: interaction DataFrames in, PNG figures out.

`summarize()` turns one interaction table into a JSON-ready dict of counts,
activity quantiles and popularity skew; `run_eda()` does that for the raw and
the filtered table and draws both into one set of figures, so the effect of
filtering is visible at a glance. Everything is vectorised (`pd.factorize`,
`np.bincount`, `np.histogram`) and runs on tens of millions of rows.

Figures are drawn on `matplotlib.figure.Figure` objects directly, never
through `pyplot`, so no global figure registry or backend switch is touched.
Every file is written to a temporary name in the target folder and then
moved over the final name with `os.replace`, so a failed run never leaves a
half-written file where a good one used to be.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import tempfile

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("user", "item")
FIGURE_NAMES = {
    "user_activity": "interactions_per_user.png",
    "item_popularity": "interactions_per_item.png",
    "long_tail": "long_tail.png",
    "rating": "rating_distribution.png",
    "time": "interactions_over_time.png",
    "summary": "summary.png",
}
SUMMARY_NAME = "eda_summary.json"
QUANTILES = (0.1, 0.5, 0.9, 0.99)
TOP_ITEM_FRACTIONS = (0.01, 0.1, 0.2)
# Above this many distinct rating values the ratings are treated as
# continuous: no per-value counts in the JSON, a histogram in the figure.
MAX_RATING_LEVELS = 100

_DPI = 120
_NUM_BINS = 40
_MAX_CURVE_POINTS = 2000
# 9999-12-31T23:59:59Z: the last second matplotlib dates can draw. Unix
# milliseconds (~1.7e12 today) exceed it, which is the usual mistake.
_MAX_TIMESTAMP = 253_402_300_799
_COLORS = ("tab:blue", "tab:orange")


def summarize(df: pd.DataFrame) -> dict:
    """Describe one interaction table with JSON-ready numbers.

    Density counts distinct `(user, item)` pairs, so repeated interactions
    do not inflate it. "Top k% items" means the `ceil(k% * num_items)` most
    popular items (at least one).

    Args:
        df: `pd.DataFrame` with columns `user` and `item` (any hashable
            ids, no missing values), and optionally `rating` (numeric) and
            `timestamp` (int unix seconds, or datetime64).

    Returns:
        dict with `num_interactions`, `num_users`, `num_items`,
        `num_unique_pairs`, `density`, `sparsity`, `interactions_per_user`
        and `interactions_per_item` (each `min`, `median`, `mean`, `max`,
        `p10`, `p50`, `p90`, `p99`), `item_gini` (Gini coefficient of
        interactions per item, 0 = uniform), `top_item_share` (share of
        interactions on the top 1/10/20% items, keys `top_1pct`...),
        `num_duplicate_pairs` (pairs seen more than once),
        `num_duplicate_rows` (rows beyond the first of each pair), `rating`
        (None without a rating column, else `min`, `max`, `mean`, `std`
        (population), `median`, `num_missing`, `value_counts` keyed by
        `str(value)` or None when continuous) and `time` (None without a
        timestamp column, else `first_date`, `last_date` as ISO dates,
        `span_days`, `num_missing`).

    Example:
    >>> df = pd.DataFrame({"user": [1, 1, 2], "item": ["a", "b", "a"]})
    >>> summarize(df)["density"]
    0.75
    """
    _validate(df, "df")
    return _summary_from_profile(_profile(df, "df"))


def run_eda(
    raw: pd.DataFrame,
    filtered: pd.DataFrame,
    out_dir: pathlib.Path,
    prefix_labels: tuple = ("raw", "filtered"),
) -> dict:
    """Write comparison figures and `eda_summary.json` for two tables.

    Each figure overlays the raw and the filtered table. The rating figure
    is skipped (with a log line) when neither table has any rating, the
    time figure when neither has any timestamp. Files from an
    earlier run that this run does not write are left as they are; the
    `figures` list in the JSON names the ones this run wrote.

    Args:
        raw: interactions before filtering (columns as in `summarize`).
        filtered: interactions after filtering.
        out_dir: `pathlib.Path` folder for the files; created if missing.
        prefix_labels: two legend labels for `raw` and `filtered`.
            Defaults to `("raw", "filtered")`.

    Returns:
        dict `{"raw": summarize(raw), "filtered": summarize(filtered),
        "labels": [...], "figures": [file names]}`, the content of
        `out_dir / "eda_summary.json"`.
    """
    if len(prefix_labels) != 2 or not all(
        isinstance(label, str) for label in prefix_labels
    ):
        raise ValueError(
            "`prefix_labels` must be two strings. "
            f"Received: prefix_labels={prefix_labels!r}"
        )
    _validate(raw, "raw")
    _validate(filtered, "filtered")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = tuple(prefix_labels)
    profiles = (_profile(raw, "raw"), _profile(filtered, "filtered"))
    summaries = tuple(_summary_from_profile(p) for p in profiles)
    for label, s in zip(labels, summaries):
        logger.info(
            "%s: interactions=%d users=%d items=%d density=%.6f "
            "item_gini=%.3f duplicate_rows=%d",
            label,
            s["num_interactions"],
            s["num_users"],
            s["num_items"],
            s["density"],
            s["item_gini"],
            s["num_duplicate_rows"],
        )

    figures = []
    fig = _plot_count_histogram(
        tuple(p.user_counts for p in profiles), labels, "user"
    )
    figures.append(_save_figure(fig, out_dir / FIGURE_NAMES["user_activity"]))
    fig = _plot_count_histogram(
        tuple(p.item_counts for p in profiles), labels, "item"
    )
    figures.append(_save_figure(fig, out_dir / FIGURE_NAMES["item_popularity"]))
    fig = _plot_long_tail(tuple(p.item_counts for p in profiles), labels)
    figures.append(_save_figure(fig, out_dir / FIGURE_NAMES["long_tail"]))

    if any(_has_ratings(s) for s in summaries):
        fig = _plot_ratings(
            tuple(p.rating for p in profiles),
            summaries,
            labels,
        )
        figures.append(_save_figure(fig, out_dir / FIGURE_NAMES["rating"]))
    else:
        logger.info(
            "No ratings in %s or %s: skipping %s.",
            *labels,
            FIGURE_NAMES["rating"],
        )

    if any(_has_times(s) for s in summaries):
        fig = _plot_over_time(tuple(p.ts for p in profiles), labels)
        figures.append(_save_figure(fig, out_dir / FIGURE_NAMES["time"]))
    else:
        logger.info(
            "No timestamps in %s or %s: skipping %s.",
            *labels,
            FIGURE_NAMES["time"],
        )

    fig = _plot_summary_table(summaries, labels)
    figures.append(_save_figure(fig, out_dir / FIGURE_NAMES["summary"]))

    result = {
        "raw": summaries[0],
        "filtered": summaries[1],
        "labels": list(labels),
        "figures": figures,
    }
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    _write_atomic(
        out_dir / SUMMARY_NAME, lambda f: f.write(text.encode("utf-8"))
    )
    logger.info(
        "Wrote %d figures and %s to %s.", len(figures), SUMMARY_NAME, out_dir
    )
    return result


@dataclasses.dataclass(frozen=True)
class _Profile:
    """The vectorised counts every summary and figure is computed from."""

    user_counts: np.ndarray  # (num_users,) interactions per user, >= 1
    item_counts: np.ndarray  # (num_items,) interactions per item, >= 1
    num_unique_pairs: int
    num_duplicate_pairs: int
    rating: np.ndarray | None  # (num non-missing,) float64
    num_missing_rating: int
    ts: np.ndarray | None  # (num non-missing,) int64 unix seconds
    num_missing_ts: int


def _validate(df, name):
    """Raise a ValueError/TypeError naming `name` if `df` is unusable."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"`{name}` must be a pandas DataFrame. "
            f"Received: {type(df).__name__}"
        )
    for column in REQUIRED_COLUMNS:
        if column not in df.columns:
            raise ValueError(
                f"`{name}` has no `{column}` column. Present columns: "
                f"{[str(c) for c in df.columns]}"
            )
    if len(df) == 0:
        raise ValueError(f"`{name}` has no rows. Received: an empty frame.")
    for column in REQUIRED_COLUMNS:
        num_missing = int(df[column].isna().sum())
        if num_missing:
            raise ValueError(
                f"`{name}` column `{column}` has {num_missing} missing ids. "
                "Drop or fill them before the analysis."
            )
    if "rating" in df.columns and not pd.api.types.is_numeric_dtype(
        df["rating"]
    ):
        raise ValueError(
            f"`{name}` column `rating` must be numeric. "
            f"Received: dtype {df['rating'].dtype}"
        )
    if "timestamp" in df.columns:
        ts = _timestamp_seconds(df["timestamp"], name)
        if len(ts) and (ts.max() > _MAX_TIMESTAMP or ts.min() < 0):
            raise ValueError(
                f"`{name}` column `timestamp` must hold unix seconds in "
                f"[0, {_MAX_TIMESTAMP}] (milliseconds are too large). "
                f"Received range [{ts.min()}, {ts.max()}]."
            )


def _timestamp_seconds(series, name):
    """Non-missing timestamps of `series` as int64 unix seconds."""
    series = series.dropna()
    if pd.api.types.is_datetime64_any_dtype(series):
        if getattr(series.dt, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series.to_numpy().astype("datetime64[s]").astype(np.int64)
    if not pd.api.types.is_numeric_dtype(series):
        raise ValueError(
            f"`{name}` column `timestamp` must be int unix seconds or "
            f"datetime64. Received: dtype {series.dtype}"
        )
    return series.to_numpy().astype(np.int64)


def _profile(df, name):
    """Count users, items and pairs of a validated frame in O(n)."""
    user_codes, users = pd.factorize(df["user"], sort=False)
    item_codes, items = pd.factorize(df["item"], sort=False)
    user_counts = np.bincount(user_codes, minlength=len(users))
    item_counts = np.bincount(item_codes, minlength=len(items))
    pair_key = user_codes.astype(np.int64) * len(items) + item_codes
    # Sorting beats hashing here: ~3x faster on 20M mostly-unique keys.
    pair_key.sort()
    starts = np.flatnonzero(
        np.concatenate([[True], pair_key[1:] != pair_key[:-1]])
    )
    pair_counts = np.diff(np.append(starts, len(pair_key)))
    rating, num_missing_rating = None, 0
    if "rating" in df.columns:
        values = df["rating"].to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
        rating, num_missing_rating = values[~missing], int(missing.sum())
    ts, num_missing_ts = None, 0
    if "timestamp" in df.columns:
        ts = _timestamp_seconds(df["timestamp"], name)
        num_missing_ts = len(df) - len(ts)
    return _Profile(
        user_counts=user_counts,
        item_counts=item_counts,
        num_unique_pairs=len(pair_counts),
        num_duplicate_pairs=int((pair_counts > 1).sum()),
        rating=rating,
        num_missing_rating=num_missing_rating,
        ts=ts,
        num_missing_ts=num_missing_ts,
    )


def _summary_from_profile(p):
    """The `summarize()` dict for one `_Profile`."""
    num_interactions = int(p.user_counts.sum())
    num_users, num_items = len(p.user_counts), len(p.item_counts)
    density = p.num_unique_pairs / (num_users * num_items)
    by_popularity = np.sort(p.item_counts)[::-1]
    cumulative = np.cumsum(by_popularity)
    top_share = {}
    for fraction in TOP_ITEM_FRACTIONS:
        k = _top_k(fraction, num_items)
        key = f"top_{round(fraction * 100)}pct"
        top_share[key] = float(cumulative[k - 1] / num_interactions)
    return {
        "num_interactions": num_interactions,
        "num_users": num_users,
        "num_items": num_items,
        "num_unique_pairs": p.num_unique_pairs,
        "density": float(density),
        "sparsity": float(1.0 - density),
        "interactions_per_user": _count_stats(p.user_counts),
        "interactions_per_item": _count_stats(p.item_counts),
        "item_gini": _gini(p.item_counts),
        "top_item_share": top_share,
        "num_duplicate_pairs": p.num_duplicate_pairs,
        "num_duplicate_rows": num_interactions - p.num_unique_pairs,
        "rating": _rating_stats(p.rating, p.num_missing_rating),
        "time": _time_stats(p.ts, p.num_missing_ts),
    }


def _has_ratings(summary):
    """Whether a `summarize()` dict saw at least one rating."""
    return bool(summary["rating"]) and summary["rating"]["mean"] is not None


def _has_times(summary):
    """Whether a `summarize()` dict saw at least one timestamp."""
    return bool(summary["time"]) and summary["time"]["first_date"] is not None


def _top_k(fraction, n):
    """`ceil(fraction * n)`, at least 1; the epsilon absorbs 0.1 * 30."""
    return max(1, math.ceil(fraction * n - 1e-9))


def _count_stats(counts):
    """min/median/mean/max and `QUANTILES` of a count array, as floats."""
    stats = {
        "min": int(counts.min()),
        "median": float(np.median(counts)),
        "mean": float(counts.mean()),
        "max": int(counts.max()),
    }
    for q, value in zip(QUANTILES, np.quantile(counts, QUANTILES)):
        stats[f"p{round(q * 100)}"] = float(value)
    return stats


def _gini(counts):
    """Gini coefficient of non-negative `counts` (0 uniform, ->1 skewed).

    Uses the sorted-rank form `2 * sum(i * x_i) / (n * sum(x)) - (n+1)/n`
    with `x` ascending and `i` from 1, equal to the mean absolute
    difference over twice the mean.
    """
    x = np.sort(counts).astype(np.float64)
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * (ranks @ x) / (n * total) - (n + 1) / n)


def _rating_stats(rating, num_missing):
    """Rating summary, or None when the frame has no rating column."""
    if rating is None:
        return None
    if len(rating) == 0:
        return {
            "min": None,
            "max": None,
            "mean": None,
            "std": None,
            "median": None,
            "num_missing": num_missing,
            "value_counts": {},
        }
    levels = pd.Series(rating).value_counts().sort_index()
    value_counts = None
    if len(levels) <= MAX_RATING_LEVELS:
        value_counts = {
            str(value): int(count) for value, count in levels.items()
        }
    return {
        "min": float(rating.min()),
        "max": float(rating.max()),
        "mean": float(rating.mean()),
        "std": float(rating.std()),
        "median": float(np.median(rating)),
        "num_missing": num_missing,
        "value_counts": value_counts,
    }


def _time_stats(ts, num_missing):
    """Time span as ISO dates, or None without a timestamp column."""
    if ts is None:
        return None
    if len(ts) == 0:
        return {
            "first_date": None,
            "last_date": None,
            "span_days": None,
            "num_missing": num_missing,
        }
    first, last = int(ts.min()), int(ts.max())
    return {
        "first_date": str(np.datetime64(first, "s").astype("datetime64[D]")),
        "last_date": str(np.datetime64(last, "s").astype("datetime64[D]")),
        "span_days": (last - first) / 86400.0,
        "num_missing": num_missing,
    }


def _save_figure(fig, path):
    """Write `fig` as PNG to `path` atomically; returns the file name."""
    try:
        _write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=_DPI))
    finally:
        # Figures made without pyplot are not registered anywhere; clearing
        # frees the artists (and any large arrays they hold) right away.
        fig.clear()
    logger.info("Wrote %s.", path)
    return path.name


def _write_atomic(path, write):
    """Call `write(binary_file)` on a temp file, then move it to `path`."""
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; outputs are meant to be shared.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _new_figure(title, ncols=1, width=7.5):
    """A constrained-layout figure with `ncols` axes and a title."""
    fig = Figure(figsize=(width, 4.8), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.suptitle(title, fontsize=13)
    return fig, axes


def _plot_count_histogram(counts, labels, noun):
    """Log-binned histograms of interactions per `noun`, overlaid."""
    title = f"Interactions per {noun}"
    fig, (ax,) = _new_figure(title)
    low = min(int(c.min()) for c in counts)
    top = max(int(c.max()) for c in counts)
    # Integer edges: every bin holds at least one possible count, so small
    # counts show no empty "comb" bins between consecutive integers.
    edges = np.unique(np.floor(np.geomspace(low, top + 1, _NUM_BINS + 1)))
    edges[-1] = top + 1
    for c, label, color in zip(counts, labels, _COLORS):
        hist, _ = np.histogram(c, bins=edges)
        name = f"{label} ({len(c):,} {noun}s)"
        ax.hist(
            edges[:-1],
            bins=edges,
            weights=hist,
            histtype="stepfilled",
            alpha=0.3,
            color=color,
        )
        ax.hist(
            edges[:-1],
            bins=edges,
            weights=hist,
            histtype="step",
            linewidth=1.5,
            color=color,
            label=name,
        )
        median = float(np.median(c))
        ax.axvline(
            median,
            color=color,
            linestyle="--",
            linewidth=1,
            label=f"{label} median = {median:g}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"interactions per {noun} (log-spaced bins)")
    ax.set_ylabel(f"number of {noun}s per bin")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def _plot_long_tail(item_counts, labels):
    """Cumulative interaction share by item rank, and popularity by rank."""
    fig, (ax_cum, ax_rank) = _new_figure(
        "Item popularity long tail", ncols=2, width=12
    )
    ax_cum.plot(
        [0, 100], [0, 100], color="gray", linestyle=":", label="uniform"
    )
    mark = TOP_ITEM_FRACTIONS[-1]
    # The filtered head usually equals the raw head; a thinner line on top
    # keeps both visible.
    widths = (2.6, 1.3)
    for counts, label, color, lw in zip(item_counts, labels, _COLORS, widths):
        by_popularity = np.sort(counts)[::-1]
        n = len(by_popularity)
        share = np.cumsum(by_popularity) / by_popularity.sum()
        idx = _curve_points(n)
        x = np.concatenate([[0.0], (idx + 1) / n * 100])
        y = np.concatenate([[0.0], share[idx] * 100])
        ax_cum.plot(x, y, color=color, linewidth=lw, label=label)
        k = _top_k(mark, n)
        at_mark = share[k - 1] * 100
        ax_cum.plot(
            [k / n * 100],
            [at_mark],
            "o",
            color=color,
            label=f"{label}: top {mark:.0%} items = {at_mark:.1f}%",
        )
        ranks = idx + 1
        ax_rank.plot(
            ranks,
            by_popularity[idx],
            color=color,
            linewidth=lw,
            label=f"{label} ({n:,} items)",
        )
    ax_cum.axvline(mark * 100, color="black", linestyle="--", linewidth=1)
    ax_cum.set_xlim(0, 100)
    ax_cum.set_ylim(0, 100)
    ax_cum.set_xlabel("items, most popular first (% of catalog)")
    ax_cum.set_ylabel("cumulative share of interactions (%)")
    ax_cum.set_title("Cumulative share (dashed line: 20% of items)")
    ax_cum.grid(True, alpha=0.3)
    ax_cum.legend(fontsize=9, loc="lower right")
    ax_rank.set_xscale("log")
    ax_rank.set_yscale("log")
    ax_rank.set_xlabel("item popularity rank")
    ax_rank.set_ylabel("interactions per item")
    ax_rank.set_title("Popularity by rank")
    ax_rank.grid(True, which="major", alpha=0.3)
    ax_rank.legend(fontsize=9)
    return fig


def _curve_points(n):
    """At most `_MAX_CURVE_POINTS` sorted indices in `[0, n)`, log-dense.

    Log spacing keeps the head (few, very popular items) resolved on the
    log-rank plot; the linear part keeps the cumulative curve smooth.
    """
    half = _MAX_CURVE_POINTS // 2
    lin = np.linspace(0, n - 1, min(n, half))
    log = np.geomspace(1, n, min(n, half)) - 1
    return np.unique(np.concatenate([lin, log]).astype(np.int64))


def _plot_ratings(ratings, summaries, labels):
    """Share of interactions per rating value, grouped bars side by side.

    Discrete scales reuse the summaries' `value_counts`, so the ratings are
    not counted twice; continuous ones are histogrammed over shared bins.
    """
    fig, (ax,) = _new_figure("Rating distribution")
    drawn = []
    for r, s, label, color in zip(ratings, summaries, labels, _COLORS):
        if _has_ratings(s):
            drawn.append((r, s["rating"], label, color))
        else:
            logger.info("No ratings in %s: left out of the figure.", label)
    discrete = all(st["value_counts"] is not None for _, st, _, _ in drawn)
    levels = []
    if discrete:
        levels = sorted(
            {float(v) for _, st, _, _ in drawn for v in st["value_counts"]}
        )
        discrete = len(levels) <= MAX_RATING_LEVELS
    low = min(st["min"] for _, st, _, _ in drawn)
    high = max(max(st["max"] for _, st, _, _ in drawn), low + 1e-9)
    edges = np.linspace(low, high, _NUM_BINS + 1)
    width = 0.8 / len(drawn)
    for i, (r, st, label, color) in enumerate(drawn):
        name = f"{label} ({len(r):,} ratings, mean {st['mean']:.2f})"
        if discrete:
            counts = np.array(
                [st["value_counts"].get(str(v), 0) for v in levels]
            )
            # Positions by level index, so uneven scales (0.5 steps) still
            # give evenly spaced, equally wide bars.
            x = np.arange(len(levels)) + (i - (len(drawn) - 1) / 2) * width
            share = counts / len(r) * 100
            ax.bar(x, share, width=width, color=color, label=name)
        else:
            hist, _ = np.histogram(r, bins=edges)
            ax.stairs(hist / len(r) * 100, edges, color=color, label=name)
    if discrete:
        ax.set_xticks(np.arange(len(levels)))
        ax.set_xticklabels([f"{v:g}" for v in levels])
    ax.set_xlabel("rating")
    ax.set_ylabel("share of interactions (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def _plot_over_time(timestamps, labels):
    """Interactions per calendar month (UTC), one line per table."""
    fig, (ax,) = _new_figure("Interactions over time")
    for ts, label, color in zip(timestamps, labels, _COLORS):
        if ts is None or len(ts) == 0:
            logger.info("No timestamps in %s: left out of the figure.", label)
            continue
        months = ts.astype("datetime64[s]").astype("datetime64[M]")
        first = months.min()
        counts = np.bincount((months - first).astype(np.int64))
        # One extra edge so the last month gets its full width.
        x = (first + np.arange(len(counts) + 1)).astype("datetime64[D]")
        ax.stairs(
            counts,
            x,
            fill=True,
            alpha=0.3,
            color=color,
        )
        ax.stairs(
            counts,
            x,
            color=color,
            linewidth=1.0,
            label=f"{label} ({len(ts):,} interactions)",
        )
    ax.set_ylim(bottom=0)
    ax.set_xlabel("month (UTC)")
    ax.set_ylabel("interactions per month")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def _plot_summary_table(summaries, labels):
    """A table of the headline numbers of both summaries."""
    fig, (ax,) = _new_figure("Dataset summary", width=8)
    ax.axis("off")
    rows = [
        ("interactions", lambda s: f"{s['num_interactions']:,}"),
        ("users", lambda s: f"{s['num_users']:,}"),
        ("items", lambda s: f"{s['num_items']:,}"),
        ("density", lambda s: f"{s['density']:.4%}"),
        ("sparsity", lambda s: f"{s['sparsity']:.4%}"),
        (
            "duplicate (user, item) rows",
            lambda s: f"{s['num_duplicate_rows']:,}",
        ),
        (
            "per user: min / median / mean / max",
            lambda s: _stats_cell(s["interactions_per_user"]),
        ),
        (
            "per item: min / median / mean / max",
            lambda s: _stats_cell(s["interactions_per_item"]),
        ),
        ("item popularity Gini", lambda s: f"{s['item_gini']:.3f}"),
    ]
    for fraction in TOP_ITEM_FRACTIONS:
        key = f"top_{round(fraction * 100)}pct"
        rows.append(
            (
                f"share on top {fraction:.0%} items",
                lambda s, key=key: f"{s['top_item_share'][key]:.1%}",
            )
        )
    rows += [
        ("mean rating", _rating_cell),
        ("time span", _time_cell),
    ]
    table = ax.table(
        cellText=[[cell(s) for s in summaries] for _, cell in rows],
        rowLabels=[name for name, _ in rows],
        colLabels=list(labels),
        loc="center",
        cellLoc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.35)
    return fig


def _stats_cell(stats):
    """`min / median / mean / max` of one count-stats dict."""
    return (
        f"{stats['min']:,} / {stats['median']:g} / "
        f"{stats['mean']:.1f} / {stats['max']:,}"
    )


def _rating_cell(summary):
    """Mean rating (and std) for the summary table, or "n/a"."""
    rating = summary["rating"]
    if not rating or rating["mean"] is None:
        return "n/a"
    return f"{rating['mean']:.2f} (std {rating['std']:.2f})"


def _time_cell(summary):
    """First and last date for the summary table, or "n/a"."""
    time = summary["time"]
    if not time or time["first_date"] is None:
        return "n/a"
    return f"{time['first_date']} to {time['last_date']}"
