"""Synthetic interaction logs with MovieLens-like long tails, at any size.

Real data that is both large and redistributable is rare, so the scaling
benchmark (`benchmarks/scaling.py`) and a few tests generate their own:
`generate()` draws user activity from a Pareto (power-law) distribution and
item popularity from a Zipf-like law, and gives the log a learnable
structure (users and items belong to latent taste clusters, and a user picks
from their own cluster more often than chance), so a model trained on it has
something to find. Every step is vectorised NumPy; memory is a few arrays of
the output's length. `write()` stores the log as parquet (or CSV) with
MovieLens column names, so `data.load` reads it with only `data.path`
changed.

Defaults follow MovieLens-20M (Harper & Konstan 2015): 20,000,263 ratings,
138,493 users (each with >= 20 ratings, mean 144), 26,744 movies whose
popularity falls off as a power law, half-star ratings.
"""

import dataclasses
import logging
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

ML20M_INTERACTIONS = 20_000_263
ML20M_USERS = 138_493
ML20M_ITEMS = 26_744
_START_TS = 789_652_009  # first MovieLens rating, 1995-01-09
_SPAN_S = 20 * 365 * 86_400  # twenty years of activity
_MAX_ROUNDS = 12  # top-up rounds for users short of distinct items


@dataclasses.dataclass(frozen=True)
class SyntheticLog:
    """A generated interaction log (0-based contiguous indices)."""

    user: np.ndarray  # (n,) int32
    item: np.ndarray  # (n,) int32
    rating: np.ndarray  # (n,) float32, half stars in [0.5, 5]
    ts: np.ndarray  # (n,) int64 unix seconds, increasing per user
    num_users: int
    num_items: int

    def __len__(self) -> int:
        return len(self.user)


def ml20m_shape(num_interactions: int) -> tuple[int, int]:
    """`(num_users, num_items)` for a log of `num_interactions` shaped like
    MovieLens-20M: users grow linearly with the log (mean activity stays
    ~144), items with its square root (catalogs grow slower than
    audiences); exactly ML-20M's shape at 20M interactions."""
    ratio = num_interactions / ML20M_INTERACTIONS
    return (
        max(1, round(ML20M_USERS * ratio)),
        max(1, round(ML20M_ITEMS * np.sqrt(ratio))),
    )


def generate(
    num_interactions: int,
    num_users: int | None = None,
    num_items: int | None = None,
    seed: int = 0,
    min_per_user: int = 20,
    user_exponent: float = 1.2,
    item_exponent: float = 1.2,
    item_offset: float = 10.0,
    num_clusters: int = 32,
    affinity: float = 0.6,
    chunk_users: int = 20_000,
) -> SyntheticLog:
    """Draw a log of `num_interactions` distinct (user, item) pairs.

    Args:
        num_interactions: int >= 1, rows to generate (met exactly unless
            users exhaust the catalog; a warning then gives the shortfall).
        num_users, num_items: ints >= 1; None = `ml20m_shape(...)`.
        seed: int, the only source of randomness.
        min_per_user: int >= 1, interactions of the least active user
            before scaling to the total (MovieLens keeps users with >= 20).
        user_exponent: float > 1, Pareto tail index of user activity
            (smaller = heavier tail).
        item_exponent: float > 0, Zipf exponent: the item of popularity
            rank r is drawn with weight `(r + item_offset) ** -exponent`.
        item_offset: float >= 0, flattens the head of the Zipf curve.
        num_clusters: int >= 1, latent taste groups of users and items.
        affinity: float in [0, 1], probability that a draw comes from the
            user's own cluster (by popularity within it) rather than from
            the whole catalog.
        chunk_users: int, users generated at once (bounds memory).

    Returns:
        `SyntheticLog` sorted by user, then time.
    """
    if num_interactions < 1:
        raise ValueError(
            f"`num_interactions` must be >= 1. Received: {num_interactions}"
        )
    default_users, default_items = ml20m_shape(num_interactions)
    num_users = default_users if num_users is None else int(num_users)
    num_items = default_items if num_items is None else int(num_items)
    if num_users < 1 or num_items < 1:
        raise ValueError(
            "`num_users` and `num_items` must be >= 1. Received: "
            f"{num_users}, {num_items}"
        )
    if num_interactions > num_users * num_items:
        raise ValueError(
            f"{num_interactions} distinct pairs do not fit in {num_users} "
            f"users x {num_items} items."
        )
    if not user_exponent > 1.0 or not item_exponent > 0.0:
        raise ValueError(
            "`user_exponent` must be > 1 and `item_exponent` > 0. Received: "
            f"{user_exponent}, {item_exponent}"
        )
    if not 0.0 <= affinity <= 1.0:
        raise ValueError(f"`affinity` must be in [0, 1]. Received: {affinity}")
    rng = np.random.default_rng(seed)
    counts = _user_counts(
        rng,
        num_interactions,
        num_users,
        num_items,
        min_per_user,
        user_exponent,
    )
    # Popularity rank -> weight; items get a random rank so that id order
    # says nothing about popularity.
    rank = rng.permutation(num_items)
    weight = (rank + item_offset + 1.0) ** -item_exponent
    num_clusters = max(1, min(num_clusters, num_items))
    item_cluster = rng.integers(0, num_clusters, num_items)
    user_cluster = rng.integers(0, num_clusters, num_users)
    sampler = _ClusterSampler(weight, item_cluster, num_clusters)
    parts = []
    for start in range(0, num_users, chunk_users):
        users = np.arange(start, min(start + chunk_users, num_users))
        parts.append(
            _draw_chunk(
                rng,
                users,
                counts[users],
                user_cluster[users],
                sampler,
                affinity,
            )
        )
    user = np.concatenate([p[0] for p in parts])
    item = np.concatenate([p[1] for p in parts])
    home = np.concatenate([p[2] for p in parts])
    if len(user) < num_interactions:
        logger.warning(
            "generated %d of %d interactions: the most active users ran out "
            "of distinct items",
            len(user),
            num_interactions,
        )
    ts = _timestamps(rng, user, num_users)
    # Liked clusters get better ratings, so explicit-feedback models have a
    # signal too; half stars in [0.5, 5] like MovieLens.
    raw = 3.2 + 0.8 * home + rng.normal(0.0, 0.9, len(user))
    rating = (np.clip(np.round(raw * 2.0), 1, 10) / 2.0).astype(np.float32)
    log = SyntheticLog(
        user=user.astype(np.int32),
        item=item.astype(np.int32),
        rating=rating,
        ts=ts,
        num_users=num_users,
        num_items=num_items,
    )
    logger.info(
        "synthetic log: interactions=%d users=%d items=%d",
        len(log),
        num_users,
        num_items,
    )
    return log


def write(log: SyntheticLog, path, format: str = "parquet") -> pathlib.Path:
    """Write `log` with MovieLens columns (`userId`, `movieId`, `rating`,
    `timestamp`; raw ids are index + 1) to `path` as parquet or CSV,
    through a temporary name renamed on success."""

    if format not in ("parquet", "csv"):
        raise ValueError(
            f"`format` must be 'parquet' or 'csv'. Received: {format!r}"
        )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "userId": log.user + 1,
            "movieId": log.item + 1,
            "rating": log.rating,
            "timestamp": log.ts,
        }
    )
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if format == "parquet":
            pq.write_table(table, tmp, row_group_size=1 << 20)
        else:
            pacsv.write_csv(table, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


class _ClusterSampler:
    """Inverse-CDF sampling of items by popularity, from the whole catalog
    or from one cluster: items are laid out cluster by cluster, so a
    cluster is a contiguous range of one cumulative array."""

    def __init__(self, weight, item_cluster, num_clusters):
        self.item_cluster = item_cluster
        self.order = np.argsort(item_cluster, kind="stable")
        cdf = np.cumsum(weight[self.order])
        self.cdf = cdf / cdf[-1]
        bounds = np.searchsorted(
            item_cluster[self.order], np.arange(num_clusters + 1)
        )
        edges = np.concatenate([[0.0], self.cdf])
        self.low = edges[bounds[:-1]]
        self.high = edges[bounds[1:]]
        self.global_weight = weight / weight.sum()

    def draw(self, rng, cluster, own):
        """One item per entry of `cluster`; from that cluster where `own`,
        from the whole catalog elsewhere."""
        low = np.where(own, self.low[cluster], 0.0)
        high = np.where(own, self.high[cluster], 1.0)
        u = low + rng.random(len(cluster)) * (high - low)
        pos = np.searchsorted(self.cdf, u, side="right")
        return self.order[np.minimum(pos, len(self.order) - 1)]


def _user_counts(rng, total, num_users, num_items, min_per_user, exponent):
    """Pareto activity `min_per_user * U ** (-1 / exponent)`, scaled so the
    counts sum to `total`, each in `[1, num_items // 4]`."""
    raw = (1.0 - rng.random(num_users)) ** (-1.0 / exponent)
    cap = max(1, num_items // 4)
    if total > cap * num_users:
        cap = -(-total // num_users)
    low_count = max(1, min(min_per_user, total // num_users))

    def counts_at(scale):
        return np.clip(np.round(raw * scale), low_count, cap).astype(np.int64)

    low, high = 0.0, float(total)
    for _ in range(100):  # bisection on the scale; the sum is monotone in it
        mid = 0.5 * (low + high)
        if counts_at(mid).sum() < total:
            low = mid
        else:
            high = mid
    counts = counts_at(low)
    remaining = total - counts.sum()
    # Whatever rounding left over goes one by one to random users with room.
    room = np.flatnonzero(counts < cap)
    extra = rng.choice(room, size=min(int(remaining), len(room)), replace=False)
    counts[extra] += 1
    return counts


def _draw_chunk(rng, users, counts, clusters, sampler, affinity):
    """Distinct items for a block of users, in draw order, topping up the
    users whose draws repeated items."""
    num_items = len(sampler.order)
    have_user, have_item, have_home = [], [], []
    need = counts.copy()
    taken = np.zeros(0, np.int64)  # sorted keys user * num_items + item
    for round_ in range(_MAX_ROUNDS):
        active = need > 0
        if not active.any():
            break
        # Oversample: repeats of popular items are common for heavy users.
        draws = np.ceil(need[active] * 1.25 + 2).astype(np.int64)
        row = np.repeat(np.flatnonzero(active), draws)
        # Later rounds leave the cluster, and the last ones draw uniformly:
        # the users still short are the heaviest, who have used up the
        # popular items of their cluster, then of the catalog.
        own = rng.random(len(row)) < (affinity if round_ < 2 else 0.0)
        item = (
            sampler.draw(rng, clusters[row], own)
            if round_ < _MAX_ROUNDS // 2
            else rng.integers(0, num_items, len(row))
        )
        key = users[row].astype(np.int64) * num_items + item
        _, first = np.unique(key, return_index=True)
        first.sort()  # back to draw order
        fresh = first[~_isin_sorted(key[first], taken)]
        row, item, key = row[fresh], item[fresh], key[fresh]
        # Keep each user's first `need` new items.
        order = np.argsort(row, kind="stable")
        row, item, key = row[order], item[order], key[order]
        starts = np.searchsorted(row, row, side="left")
        keep = np.arange(len(row)) - starts < need[row]
        row, item, key = row[keep], item[keep], key[keep]
        need -= np.bincount(row, minlength=len(users))
        taken = np.sort(np.concatenate([taken, key]))  # key is all new
        have_user.append(users[row])
        have_item.append(item)
        have_home.append(sampler.item_cluster[item] == clusters[row])
    user = np.concatenate(have_user)
    order = np.argsort(user, kind="stable")  # by user, then draw order
    return (
        user[order],
        np.concatenate(have_item)[order],
        np.concatenate(have_home)[order].astype(np.float32),
    )


def _isin_sorted(values, sorted_keys):
    if len(sorted_keys) == 0:
        return np.zeros(len(values), bool)
    pos = np.searchsorted(sorted_keys, values)
    pos = np.minimum(pos, len(sorted_keys) - 1)
    return sorted_keys[pos] == values


def _timestamps(rng, user, num_users):
    """Per user: a start in a 20-year window, then exponential gaps, so each
    user's interactions are increasing in time (ties are rare)."""
    counts = np.bincount(user, minlength=num_users)
    start = _START_TS + rng.integers(0, _SPAN_S // 2, num_users)
    gaps = rng.exponential(86_400.0 * 3, len(user)).astype(np.int64) + 1
    order = np.argsort(user, kind="stable")
    ts_sorted = np.cumsum(gaps[order])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first = np.zeros(num_users, np.int64)
    nonempty = counts > 0
    first[nonempty] = (
        ts_sorted[offsets[nonempty]] - gaps[order][offsets[nonempty]]
    )
    users_sorted = user[order]
    ts_sorted = ts_sorted - first[users_sorted] + start[users_sorted]
    ts = np.empty(len(user), np.int64)
    ts[order] = ts_sorted
    return ts
