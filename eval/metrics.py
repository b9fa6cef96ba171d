"""Full-ranking top-K metrics, segments and AUC for any recommender.

Every model family and every baseline exposes
`score(user_idx) -> (len(user_idx), num_items)`, so one host-side NumPy
evaluator serves them all, on any Keras backend (or none). It ranks the whole
catalog for one block of users at a time, so memory is bounded by the block,
never by users x items.

Definitions (binary relevance, as in `BENCHMARK.md`). For an evaluated user u
with ground-truth set T_u (|T_u| >= 1), the whole catalog is ranked after u's
known items are set to -inf. Ties are broken by the lower item index. A slot
whose score is -inf is never a hit. With h_r = 1 when the item at rank r is
in T_u, for r = 1..K:

- hits@K      = sum_r h_r
- precision@K = hits@K / K (the requested K, even when the catalog is smaller)
- recall@K    = hits@K / |T_u|
- f1@K        = 2 P R / (P + R), and 0 when P + R = 0
- hr@K        = 1 if hits@K > 0 else 0
- ndcg@K      = sum_r h_r / log2(r + 1), divided by the ideal
                sum_{r=1..min(K, |T_u|)} 1 / log2(r + 1)
- mrr@K       = 1 / (rank of the first hit) if there is a hit within K, else 0
- map@K       = sum_r h_r * precision@r, divided by min(K, |T_u|)

Each is a plain mean over users. Corpus-level, over all evaluated users:

- coverage@K  = |union of the users' top-K lists| / num_items
- avg_pop@K   = mean training count of the recommended items, over every
                top-K slot of every user (slots holding -inf left out)

A ground-truth item that is also excluded stays in T_u (it counts in the
denominators) but can never be hit: a leak between the known items and the
ground truth then shows up as lower numbers instead of being hidden.

`evaluate_sampled` is a separate, clearly labelled sampled-candidates mode
kept only for comparison with papers that use it; see its docstring.
"""

import dataclasses
import logging
import math

import numpy as np
import scipy.sparse as sp
import tqdm

logger = logging.getLogger(__name__)

RANKING_METRICS = ("precision", "recall", "f1", "hr", "ndcg", "mrr", "map")

# Working memory per (user, item) cell while one block is ranked: the float64
# scores, the masked copy, np.partition's copy, rank_top_k's three boolean
# masks and its int32 running count.
_BYTES_PER_CELL = 32


@dataclasses.dataclass
class RankingResult:
    """Per-user and corpus-level ranking metrics for one evaluation.

    Args:
        users: `(n,)` int64 indices of the evaluated users, in evaluation
            order.
        per_user: metric name (`"recall@20"`, ...) to an `(n,)` float64
            array aligned with `users`.
        corpus: metric name (`"coverage@20"`, `"avg_pop@20"`) to a float
            computed over all evaluated users together.
        num_skipped: users asked for but left out because they had no
            ground-truth item (after `item_mask`, if any).
        ks: the cut-offs the metrics were computed at.
        top_items: `(n, min(max(ks), num_items))` int32 recommended items
            per user, `-1` in slots whose score was -inf; kept so
            `subset()` can recompute the corpus metrics. `None` when not
            recorded.
        num_items: catalog size, needed for coverage.
        item_popularity: `(num_items,)` training counts used for
            `avg_pop@K`, or `None`.
    """

    users: np.ndarray
    per_user: dict
    corpus: dict
    num_skipped: int
    ks: tuple = (10, 20)
    top_items: np.ndarray | None = dataclasses.field(default=None, repr=False)
    num_items: int | None = None
    item_popularity: np.ndarray | None = dataclasses.field(
        default=None, repr=False
    )

    @property
    def num_users(self) -> int:
        return int(len(self.users))

    def summary(self) -> dict:
        """Means of the per-user metrics, the corpus metrics and `num_users`.

        Returns:
            dict of metric name to float (NaN for per-user metrics when no
            user was evaluated), plus `"num_users"` as an int.
        """
        out = {}
        for name, values in self.per_user.items():
            out[name] = float(values.mean()) if len(values) else math.nan
        out.update({name: float(v) for name, v in self.corpus.items()})
        out["num_users"] = self.num_users
        return out

    def to_json_dict(self, per_user: bool = False) -> dict:
        """A `json.dumps`-ready dict; non-finite floats become `None`.

        Args:
            per_user: bool, also include `users` and the per-user arrays as
                lists. Defaults to `False` (summary only).

        Returns:
            dict with `summary`, `num_users`, `num_skipped`, `ks` and,
            when asked, `users` and `per_user`.
        """
        out = {
            "summary": {k: _json_number(v) for k, v in self.summary().items()},
            "num_users": self.num_users,
            "num_skipped": int(self.num_skipped),
            "ks": [int(k) for k in self.ks],
        }
        if per_user:
            out["users"] = [int(u) for u in self.users]
            out["per_user"] = {
                name: [_json_number(v) for v in values]
                for name, values in self.per_user.items()
            }
        return out

    def subset(self, mask) -> "RankingResult":
        """The same evaluation restricted to some of its users.

        Args:
            mask: `(len(self.users),)` bool array aligned with `self.users`.
                For a segment defined over all user indices (e.g. from
                `user_segments`), pass `segment[result.users]`.

        Returns:
            A `RankingResult` over the selected users, with the corpus
            metrics recomputed for them (empty when `top_items` is `None`)
            and `num_skipped` set to 0.
        """
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != self.users.shape:
            raise ValueError(
                "`mask` must be a bool array aligned with `users`, of shape "
                f"{self.users.shape}. Received: dtype={mask.dtype}, "
                f"shape={mask.shape}."
            )
        top_items = None if self.top_items is None else self.top_items[mask]
        corpus = {}
        if top_items is not None:
            corpus = _corpus_metrics(
                top_items, self.ks, self.num_items, self.item_popularity
            )
        return dataclasses.replace(
            self,
            users=self.users[mask],
            per_user={k: v[mask] for k, v in self.per_user.items()},
            corpus=corpus,
            num_skipped=0,
            top_items=top_items,
        )


def block_size_for(n_items: int, budget_mb: float = 256) -> int:
    """Users per block so that ranking one block fits in `budget_mb`.

    Args:
        n_items: int, catalog size.
        budget_mb: float, working-memory budget in MiB. Defaults to 256.

    Returns:
        int >= 1 (a single user per block when even one row exceeds the
        budget).
    """
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)):
        raise ValueError(
            f"`n_items` must be an int >= 1. Received: n_items={n_items!r}"
        )
    if n_items < 1:
        raise ValueError(
            f"`n_items` must be an int >= 1. Received: n_items={n_items}"
        )
    if not budget_mb > 0:
        raise ValueError(
            f"`budget_mb` must be > 0. Received: budget_mb={budget_mb!r}"
        )
    return max(1, int(budget_mb * 2**20) // (_BYTES_PER_CELL * int(n_items)))


def rank_top_k(scores, k: int, exclude=None):
    """Top-k items per row, ties broken by the lower item index.

    Runs in O(num_items) per row: `np.partition` finds the k-th largest
    score, every item above it is taken, the ties at it are filled by lowest
    index with a running count, and only the k chosen items are sorted.

    Args:
        scores: `(b, num_items)` float array, higher is better. NaN is
            rejected: it has no place in a ranking and usually means a
            diverged model.
        k: int >= 1; clipped to `num_items`.
        exclude: optional `(b, num_items)` scipy sparse matrix (or dense
            bool array) whose nonzeros are set to -inf before ranking.
            `scores` itself is never modified.

    Returns:
        `(items, top_scores)`: `(b, k)` int64 item indices and `(b, k)`
        float32 scores, sorted by score descending, then item index
        ascending. Rows with fewer than k finite scores are filled with
        -inf items, lowest index first.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(
            "`scores` must be 2-D `(batch, num_items)`. Received: "
            f"shape={scores.shape}"
        )
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be an int >= 1. Received: k={k!r}")
    if np.isnan(scores).any():
        raise ValueError(
            "`scores` must not contain NaN. Received: "
            f"{int(np.isnan(scores).sum())} NaN values."
        )
    b, n = scores.shape
    k = min(int(k), n)
    if exclude is not None:
        rows, cols = _mask_positions(exclude, scores.shape)
        scores = scores.copy()
        scores[rows, cols] = -np.inf
    if k == 0:
        return np.empty((b, 0), np.int64), np.empty((b, 0), np.float32)
    kth = np.partition(scores, n - k, axis=1)[:, n - k : n - k + 1]  # (b, 1)
    above = scores > kth
    at = scores == kth
    # At least one and at most all of the `at` items are needed, so exactly
    # k are chosen per row; the running count takes the lowest indices.
    need = k - above.sum(axis=1, keepdims=True)
    chosen = above | (at & (np.cumsum(at, axis=1, dtype=np.int32) <= need))
    cols = np.nonzero(chosen)[1].reshape(b, k)  # ascending index per row
    top = np.take_along_axis(scores, cols, axis=1)
    # Stable sort: among equal scores the lower index (earlier) stays first.
    order = np.argsort(-top, axis=1, kind="stable")
    items = np.take_along_axis(cols, order, axis=1).astype(np.int64)
    top = np.take_along_axis(top, order, axis=1).astype(np.float32)
    return items, top


def evaluate(
    score_fn,
    truth,
    exclude=None,
    ks=(10, 20),
    users=None,
    block_size=None,
    item_popularity=None,
    item_mask=None,
    progress=False,
) -> RankingResult:
    """Full-ranking top-K evaluation, one block of users at a time.

    See the module docstring for the metric definitions.

    Args:
        score_fn: callable `(user_idx int64 array) -> (len(user_idx),
            num_items)` float scores, e.g. `Recommender.score`.
        truth: `(num_users, num_items)` scipy sparse matrix; its nonzeros
            are the ground-truth items.
        exclude: optional `(num_users, num_items)` scipy sparse matrix of
            known items, set to -inf before ranking (never hits).
        ks: iterable of int cut-offs. Defaults to `(10, 20)`.
        users: optional 1-D int array of the users to evaluate. Defaults to
            every user with at least one ground-truth item before
            `item_mask`. Users with no ground-truth item (after `item_mask`)
            are left out and counted in `num_skipped`.
        block_size: users scored per call of `score_fn`. Defaults to
            `block_size_for(num_items, budget_mb=256)`.
        item_popularity: optional `(num_items,)` training counts; adds
            `avg_pop@K` to the corpus metrics.
        item_mask: optional `(num_items,)` bool array restricting the ground
            truth to a segment of items (head, tail, cold). The ranking is
            still over the whole catalog.
        progress: bool, show a `keras.utils.Progbar` (or tqdm) over blocks.

    Returns:
        A `RankingResult`.
    """
    truth = _binary_csr(truth, "truth")
    num_users, num_items = truth.shape
    ks = _validate_ks(ks)
    if exclude is not None:
        exclude = _binary_csr(exclude, "exclude", shape=truth.shape)
    if users is None:
        users = np.flatnonzero(np.diff(truth.indptr) > 0)
    else:
        users = _validate_users(users, num_users)
    if item_mask is not None:
        truth = _mask_items(truth, item_mask)
    if item_popularity is not None:
        item_popularity = _validate_popularity(item_popularity, num_items)
    if block_size is None:
        block_size = block_size_for(num_items)
    elif isinstance(block_size, bool) or not isinstance(
        block_size, (int, np.integer)
    ):
        raise ValueError(
            f"`block_size` must be an int >= 1. Received: {block_size!r}"
        )
    elif block_size < 1:
        raise ValueError(
            f"`block_size` must be an int >= 1. Received: {block_size}"
        )

    num_relevant = np.diff(truth.indptr)[users]
    evaluated = users[num_relevant > 0].astype(np.int64)
    num_relevant = num_relevant[num_relevant > 0]
    num_skipped = int(len(users) - len(evaluated))
    logger.info(
        "evaluating users=%d items=%d skipped=%d (no ground truth) "
        "block_size=%d",
        len(evaluated),
        num_items,
        num_skipped,
        block_size,
    )

    k_rank = min(max(ks), num_items)
    n = len(evaluated)
    top_items = np.empty((n, k_rank), np.int32)
    per_user = {
        f"{m}@{k}": np.empty(n, np.float64) for k in ks for m in RANKING_METRICS
    }
    num_blocks = -(-n // block_size)
    advance, close = _progress(num_blocks, progress)
    for i in range(num_blocks):
        block = slice(i * block_size, min((i + 1) * block_size, n))
        block_users = evaluated[block]
        scores = np.asarray(score_fn(block_users))
        if scores.shape != (len(block_users), num_items):
            raise ValueError(
                "`score_fn` must return shape (len(user_idx), num_items) = "
                f"{(len(block_users), num_items)}. Received: "
                f"shape={scores.shape}"
            )
        block_exclude = None if exclude is None else exclude[block_users]
        items, top = rank_top_k(scores, k_rank, block_exclude)
        finite = top > -np.inf
        hits = _lookup(truth[block_users], items) & finite
        top_items[block] = np.where(finite, items, -1)
        metrics = _user_metrics(hits, num_relevant[block], ks)
        for name, values in metrics.items():
            per_user[name][block] = values
        advance(i + 1)
    close()
    if n == 0:
        logger.warning("no user with ground truth to evaluate")
    return RankingResult(
        users=evaluated,
        per_user=per_user,
        corpus=_corpus_metrics(top_items, ks, num_items, item_popularity),
        num_skipped=num_skipped,
        ks=ks,
        top_items=top_items,
        num_items=num_items,
        item_popularity=item_popularity,
    )


def user_segments(train_counts, fraction: float = 0.2) -> dict:
    """Split users into "cold" and "warm" by training interaction count.

    All users take part, those with no training interaction included: they
    are the coldest and rank first. Users are ordered by count, ties by the
    lower user index (a stable sort), and the first
    `ceil(fraction * num_users)` are "cold". Tie handling is arbitrary but
    deterministic, and keeps the segment size exact.

    Args:
        train_counts: `(num_users,)` training interaction count per user.
        fraction: float in (0, 1), share of users that are "cold".
            Defaults to 0.2.

    Returns:
        dict with bool `(num_users,)` arrays "cold" and "warm"
        (complements).
    """
    counts = _validate_counts(train_counts, "train_counts")
    if not 0 < fraction < 1:
        raise ValueError(
            f"`fraction` must be in (0, 1). Received: fraction={fraction!r}"
        )
    order = np.argsort(counts, kind="stable")
    cold = np.zeros(counts.size, bool)
    cold[order[: _segment_size(fraction, counts.size)]] = True
    return {"cold": cold, "warm": ~cold}


def item_segments(train_counts, fraction: float = 0.2) -> dict:
    """Split items into popularity "head", "tail" and "cold".

    "head" and "tail" are ranked among the items seen in training (count >
    0): head = the `ceil(fraction * num_seen)` most frequent, tail = as many
    least frequent; ties go to the lower item index (a stable sort).
    "cold" = the items never seen in training, which pure collaborative
    filtering cannot recommend. The three are disjoint; the middle of the
    distribution belongs to none.

    Args:
        train_counts: `(num_items,)` training interaction count per item.
        fraction: float in (0, 0.5], so head and tail cannot overlap.
            Defaults to 0.2.

    Returns:
        dict with bool `(num_items,)` arrays "head", "tail" and "cold".
    """
    counts = _validate_counts(train_counts, "train_counts")
    if not 0 < fraction <= 0.5:
        raise ValueError(
            f"`fraction` must be in (0, 0.5]. Received: fraction={fraction!r}"
        )
    seen = np.flatnonzero(counts > 0)
    size = _segment_size(fraction, seen.size)
    head = np.zeros(counts.size, bool)
    tail = np.zeros(counts.size, bool)
    head[seen[np.argsort(-counts[seen], kind="stable")[:size]]] = True
    tail[seen[np.argsort(counts[seen], kind="stable")[:size]]] = True
    return {"head": head, "tail": tail, "cold": counts == 0}


def auc(labels, scores) -> float:
    """ROC-AUC of a pointwise scorer; tied scores count 1/2.

    Computed from average ranks (Mann-Whitney U): the probability that a
    random positive scores above a random negative.

    Args:
        labels: `(n,)` binary labels (0/1 or bool), both classes present.
        scores: `(n,)` finite scores, higher = more likely positive.

    Returns:
        float in [0, 1].
    """
    positive, scores = validate_pointwise(labels, scores)
    num_pos = int(positive.sum())
    num_neg = positive.size - num_pos
    if num_pos == 0 or num_neg == 0:
        raise ValueError(
            "`labels` must contain both classes. Received: "
            f"{num_pos} positives and {num_neg} negatives."
        )
    ranks = _average_ranks(scores)
    u = ranks[positive].sum() - num_pos * (num_pos + 1) / 2
    return float(u / (num_pos * num_neg))


def per_user_auc(user, labels, scores):
    """ROC-AUC computed separately for each user's rows.

    Args:
        user: `(n,)` int user index of each row.
        labels: `(n,)` binary labels.
        scores: `(n,)` finite scores.

    Returns:
        `(users, values)`: the sorted users that have both a positive and a
        negative row, and their AUC (ties count 1/2). Users with one class
        only have no AUC and are left out.
    """
    positive, scores = validate_pointwise(labels, scores)
    user = np.asarray(user)
    if user.shape != scores.shape or not np.issubdtype(user.dtype, np.integer):
        raise ValueError(
            "`user` must be an int array shaped like `scores`. Received: "
            f"dtype={user.dtype}, shape={user.shape}"
        )
    order = np.lexsort((scores, user))
    u, s, y = user[order], scores[order], positive[order]
    n = u.size
    new_user = np.ones(n, bool)
    new_user[1:] = u[1:] != u[:-1]
    new_group = new_user.copy()
    new_group[1:] |= s[1:] != s[:-1]
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], n)
    # 1-based mean position of each tie group, minus the position just
    # before the user's first row, is the average rank within the user.
    group_rank = (starts + ends + 1) / 2
    user_id = np.cumsum(new_user) - 1
    first = np.flatnonzero(new_user)
    ranks = group_rank[np.cumsum(new_group) - 1] - first[user_id]
    count = np.bincount(user_id)
    num_pos = np.bincount(user_id, weights=y)
    rank_sum = np.bincount(user_id, weights=ranks * y)
    num_neg = count - num_pos
    valid = (num_pos > 0) & (num_neg > 0)
    values = (rank_sum - num_pos * (num_pos + 1) / 2)[valid] / (
        num_pos * num_neg
    )[valid]
    return u[first][valid], values


def evaluate_sampled(
    score_pairs_fn,
    truth_pairs,
    num_negatives: int = 100,
    *,
    exclude,
    ks=(10,),
    seed: int = 0,
    block_size=None,
) -> RankingResult:
    """SAMPLED-CANDIDATES mode: rank 1 positive among N sampled negatives.

    Only for comparison with papers that report it. Sampled metrics are
    biased estimates of the full-ranking ones and can order models
    differently (Krichene & Rendle, "On Sampled Metrics for Item
    Recommendation", KDD 2020), so they are never the headline; the metric
    names carry a `sampled_` prefix so they cannot be mistaken for
    `evaluate()`'s.

    For each held-out `(user, item)` pair, `num_negatives` distinct items
    are drawn uniformly, without replacement, from the items that are
    neither in the user's `exclude` row nor the positive itself. The
    positive's rank is 1 + the number of negatives that beat it; a negative
    with an equal score beats it when its item index is lower, the same
    tie rule as `rank_top_k`. With one relevant item:
    `sampled_hr@K` = 1 if rank <= K, `sampled_ndcg@K` = 1 / log2(rank + 1)
    if rank <= K else 0, `sampled_mrr@K` = 1 / rank if rank <= K else 0.

    Args:
        score_pairs_fn: callable `(user_idx, item_idx) -> (n,)` scores for
            aligned 1-D arrays of (user, item) pairs.
        truth_pairs: `(user_idx, item_idx)` pair of aligned int arrays, or
            an `(n, 2)` int array: the held-out positives.
        num_negatives: int >= 1, negatives per positive. Defaults to 100.
        exclude: `(num_users, num_items)` scipy sparse matrix of items never
            to sample as negatives (pass training plus all held-out items).
        ks: iterable of int cut-offs. Defaults to `(10,)`.
        seed: int, seed of the negative sampler. Results do not depend on
            `block_size`.
        block_size: pairs per block. Defaults to `block_size_for(num_items)`.

    Returns:
        A `RankingResult` whose `users` holds the user of each pair (one
        row per pair, so a user may repeat) and whose metrics are the
        per-pair `sampled_*` values; `corpus` is empty.
    """
    exclude = _binary_csr(exclude, "exclude")
    num_users, num_items = exclude.shape
    ks = _validate_ks(ks)
    pair_users, pair_items = _validate_pairs(truth_pairs, num_users, num_items)
    if (
        isinstance(num_negatives, bool)
        or not isinstance(num_negatives, (int, np.integer))
        or num_negatives < 1
    ):
        raise ValueError(
            "`num_negatives` must be an int >= 1. Received: "
            f"num_negatives={num_negatives!r}"
        )
    if block_size is None:
        block_size = block_size_for(num_items)
    rng = np.random.default_rng(seed)
    n = pair_users.size
    rank = np.empty(n, np.int64)
    for start in range(0, n, block_size):
        block = slice(start, min(start + block_size, n))
        users, positives = pair_users[block], pair_items[block]
        b = users.size
        # Top-N of i.i.d. uniform keys over the allowed items is a uniform
        # draw without replacement, and it reuses rank_top_k's masking.
        keys = rng.random((b, num_items))
        keys[np.arange(b), positives] = -np.inf
        negatives, key_top = rank_top_k(keys, num_negatives, exclude[users])
        if negatives.shape[1] < num_negatives or not np.all(key_top > -np.inf):
            raise ValueError(
                f"`num_negatives`={num_negatives} exceeds the items left to "
                "sample for some user once `exclude` and the positive are "
                f"removed. Received: num_items={num_items}."
            )
        candidates = np.concatenate([positives[:, None], negatives], axis=1)
        scores = np.asarray(
            score_pairs_fn(
                np.repeat(users, num_negatives + 1), candidates.ravel()
            ),
            dtype=np.float64,
        )
        if scores.size != candidates.size:
            raise ValueError(
                "`score_pairs_fn` must return one score per pair "
                f"({candidates.size}). Received: shape={scores.shape}"
            )
        if np.isnan(scores).any():
            raise ValueError("`score_pairs_fn` returned NaN scores.")
        scores = scores.reshape(candidates.shape)  # (b, 1 + num_negatives)
        pos_score, neg_score = scores[:, :1], scores[:, 1:]
        beats = (neg_score > pos_score) | (
            (neg_score == pos_score) & (negatives < positives[:, None])
        )
        rank[block] = 1 + beats.sum(axis=1)
    logger.info(
        "sampled evaluation pairs=%d negatives=%d (not full ranking)",
        n,
        num_negatives,
    )
    per_user = {}
    for k in ks:
        inside = rank <= k
        per_user[f"sampled_hr@{k}"] = inside.astype(np.float64)
        per_user[f"sampled_ndcg@{k}"] = np.where(
            inside, 1.0 / np.log2(rank + 1.0), 0.0
        )
        per_user[f"sampled_mrr@{k}"] = np.where(inside, 1.0 / rank, 0.0)
    return RankingResult(
        users=pair_users,
        per_user=per_user,
        corpus={},
        num_skipped=0,
        ks=ks,
        num_items=num_items,
    )


def _user_metrics(hits, num_relevant, ks) -> dict:
    """Per-user metrics from `(b, k_rank)` hit flags; see the module doc."""
    b, k_rank = hits.shape
    max_k = max(ks)
    hits_f = hits.astype(np.float64)
    cum_hits = np.cumsum(hits_f, axis=1)  # (b, k_rank)
    precision_at_r = cum_hits / np.arange(1, k_rank + 1)
    discount = 1.0 / np.log2(np.arange(2, max_k + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discount)])  # ideal[m], m hits
    has_hit = hits.any(axis=1)
    first_hit = np.argmax(hits, axis=1)
    num_relevant = num_relevant.astype(np.float64)
    out = {}
    for k in ks:
        kk = min(k, k_rank)
        num_hits = cum_hits[:, kk - 1] if kk else np.zeros(b)
        precision = num_hits / k
        recall = num_hits / num_relevant
        total = precision + recall
        f1 = np.divide(
            2 * precision * recall, total, out=np.zeros(b), where=total > 0
        )
        ideal_hits = np.minimum(k, num_relevant)
        dcg = hits_f[:, :kk] @ discount[:kk]
        hit_in_k = has_hit & (first_hit < kk)
        out[f"precision@{k}"] = precision
        out[f"recall@{k}"] = recall
        out[f"f1@{k}"] = f1
        out[f"hr@{k}"] = (num_hits > 0).astype(np.float64)
        out[f"ndcg@{k}"] = dcg / ideal[ideal_hits.astype(np.int64)]
        out[f"mrr@{k}"] = np.where(hit_in_k, 1.0 / (first_hit + 1.0), 0.0)
        hit_precision = precision_at_r[:, :kk] * hits_f[:, :kk]
        out[f"map@{k}"] = hit_precision.sum(axis=1) / ideal_hits
    return out


def _corpus_metrics(top_items, ks, num_items, item_popularity) -> dict:
    """coverage@K and avg_pop@K from `(n, k_rank)` lists (-1 = empty)."""
    out = {}
    for k in ks:
        slots = top_items[:, :k]
        recommended = slots[slots >= 0]
        distinct = np.count_nonzero(np.bincount(recommended, minlength=1))
        out[f"coverage@{k}"] = distinct / num_items
        if item_popularity is not None:
            out[f"avg_pop@{k}"] = (
                float(item_popularity[recommended].mean())
                if recommended.size
                else math.nan
            )
    return out


def _lookup(matrix, items):
    """`matrix[row, items[row, j]] != 0` for a CSR block, as `(b, k)` bool."""
    b = matrix.shape[0]
    rows = np.repeat(np.arange(b, dtype=np.int64), np.diff(matrix.indptr))
    stored = rows * matrix.shape[1] + matrix.indices
    query = np.arange(b, dtype=np.int64)[:, None] * matrix.shape[1] + items
    return np.isin(query, stored)


def _binary_csr(matrix, name, shape=None):
    """A CSR copy with explicit zeros and duplicates removed, data all 1."""
    if not sp.issparse(matrix):
        raise ValueError(
            f"`{name}` must be a scipy sparse matrix. Received: "
            f"{type(matrix).__name__}"
        )
    if shape is not None and matrix.shape != shape:
        raise ValueError(
            f"`{name}` must have shape {shape}. Received: shape={matrix.shape}"
        )
    out = sp.csr_matrix(matrix, copy=True)
    out.sum_duplicates()
    out.eliminate_zeros()
    out.data = np.ones(out.nnz, np.int8)
    return out


def _mask_items(truth, item_mask):
    """Drop the ground-truth entries whose item is outside `item_mask`."""
    item_mask = np.asarray(item_mask)
    if item_mask.dtype != bool or item_mask.shape != (truth.shape[1],):
        raise ValueError(
            f"`item_mask` must be a bool array of shape ({truth.shape[1]},). "
            f"Received: dtype={item_mask.dtype}, shape={item_mask.shape}"
        )
    keep = item_mask[truth.indices]
    rows = np.repeat(np.arange(truth.shape[0]), np.diff(truth.indptr))
    indptr = np.zeros(truth.shape[0] + 1, np.int64)
    indptr[1:] = np.cumsum(np.bincount(rows[keep], minlength=truth.shape[0]))
    return sp.csr_matrix(
        (np.ones(int(keep.sum()), np.int8), truth.indices[keep], indptr),
        shape=truth.shape,
    )


def _mask_positions(exclude, shape):
    """(rows, cols) of the nonzeros of a sparse or dense `exclude`."""
    if sp.issparse(exclude):
        if exclude.shape != shape:
            raise ValueError(
                f"`exclude` must have shape {shape}. Received: "
                f"shape={exclude.shape}"
            )
        return exclude.nonzero()
    exclude = np.asarray(exclude)
    if exclude.shape != shape:
        raise ValueError(
            f"`exclude` must have shape {shape}. Received: "
            f"shape={exclude.shape}"
        )
    return np.nonzero(exclude)


def _validate_ks(ks):
    ks = tuple(ks) if np.ndim(ks) else (ks,)
    if not ks or any(
        isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
        for k in ks
    ):
        raise ValueError(f"`ks` must be ints >= 1. Received: ks={ks!r}")
    return tuple(sorted({int(k) for k in ks}))


def _validate_users(users, num_users):
    users = np.asarray(users)
    if users.ndim != 1 or not (
        users.size == 0 or np.issubdtype(users.dtype, np.integer)
    ):
        raise ValueError(
            "`users` must be a 1-D int array. Received: "
            f"dtype={users.dtype}, shape={users.shape}"
        )
    users = users.astype(np.int64)
    if users.size and (users.min() < 0 or users.max() >= num_users):
        raise ValueError(
            f"`users` must lie in [0, {num_users}). Received: range "
            f"[{users.min()}, {users.max()}]"
        )
    return users


def _validate_popularity(item_popularity, num_items):
    item_popularity = np.asarray(item_popularity, dtype=np.float64)
    if item_popularity.shape != (num_items,):
        raise ValueError(
            f"`item_popularity` must have shape ({num_items},). Received: "
            f"shape={item_popularity.shape}"
        )
    return item_popularity


def _validate_counts(counts, name):
    counts = np.asarray(counts)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.number):
        raise ValueError(
            f"`{name}` must be a 1-D numeric array. Received: "
            f"dtype={counts.dtype}, shape={counts.shape}"
        )
    if np.isnan(counts).any() or (counts < 0).any():
        raise ValueError(
            f"`{name}` must be finite and >= 0. Received: min={counts.min()}"
        )
    return counts


def validate_pointwise(labels, scores, name="scores"):
    """Binary labels as bool and finite float64 scores, same 1-D shape."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape or labels.size == 0:
        raise ValueError(
            f"`labels` and `{name}` must be non-empty 1-D arrays of the "
            f"same length. Received: labels.shape={labels.shape}, "
            f"{name}.shape={scores.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(
            "`labels` must be binary (0/1 or bool). Received: values "
            f"{np.unique(labels)[:5]}"
        )
    if not np.isfinite(scores).all():
        raise ValueError(
            f"`{name}` must be finite. Received: "
            f"{int((~np.isfinite(scores)).sum())} non-finite values."
        )
    return labels.astype(bool), scores


def _validate_pairs(truth_pairs, num_users, num_items):
    if isinstance(truth_pairs, np.ndarray) and truth_pairs.ndim == 2:
        if truth_pairs.shape[1] != 2:
            raise ValueError(
                "`truth_pairs` as an array must have shape (n, 2). "
                f"Received: shape={truth_pairs.shape}"
            )
        pair_users, pair_items = truth_pairs[:, 0], truth_pairs[:, 1]
    elif len(truth_pairs) == 2:
        pair_users, pair_items = truth_pairs
    else:
        raise ValueError(
            "`truth_pairs` must be (user_idx, item_idx) or an (n, 2) array. "
            f"Received: {type(truth_pairs).__name__} of length "
            f"{len(truth_pairs)}"
        )
    pair_users = _validate_users(pair_users, num_users)
    pair_items = np.asarray(pair_items)
    if pair_items.shape != pair_users.shape or not (
        pair_items.size == 0 or np.issubdtype(pair_items.dtype, np.integer)
    ):
        raise ValueError(
            "`truth_pairs` items must be ints aligned with its users. "
            f"Received: dtype={pair_items.dtype}, shape={pair_items.shape}"
        )
    pair_items = pair_items.astype(np.int64)
    if pair_items.size and (
        pair_items.min() < 0 or pair_items.max() >= num_items
    ):
        raise ValueError(
            f"`truth_pairs` items must lie in [0, {num_items}). Received: "
            f"range [{pair_items.min()}, {pair_items.max()}]"
        )
    return pair_users, pair_items


def _segment_size(fraction, n):
    # The small tolerance keeps 0.2 * 15 = 3.0000000000000004 at 3.
    return min(n, math.ceil(fraction * n - 1e-9))


def _average_ranks(values):
    """1-based ranks, tied values sharing their average rank."""
    _, inverse, counts = np.unique(
        values, return_inverse=True, return_counts=True
    )
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _json_number(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _progress(total, enabled):
    """(advance(done), close()) callables for a bar over `total` blocks."""
    if not enabled:
        return (lambda done: None), (lambda: None)
    bar = tqdm.tqdm(total=total, unit="block")
    return (lambda done: bar.update(done - bar.n)), bar.close
