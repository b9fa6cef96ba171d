"""Top-K retrieval over large catalogs, seen items excluded, bounded memory.

Two routes for dot-product models (two-tower: a user scores an item by
`user_vector . item_vector`):

- `device_top_k`: exact. User blocks are scored against all item vectors
  with `keras.ops.matmul` and ranked with `keras.ops.top_k` on the
  backend's device; the seen-item mask exists for one block at a time,
  never for users x items.
- `FaissIndex`: FAISS (Johnson, Douze & Jegou 2019) inner-product indexes:
  `flat` (exact), `ivf` (inverted lists, `nprobe` of `nlist` visited) and
  `hnsw` (graph search). Seen items are excluded by over-fetching: a block
  of users asks for `k + (most items any of them has seen)` neighbours, and
  the seen ones are dropped with a sorted-key lookup against the CSR
  matrix of seen items. Users are processed in order of their seen count,
  so a block's over-fetch fits its users.

`recall_against_exact` measures what an approximate index loses:
recall@K of its lists against the exact top-K of the same users.
"""

import logging

import keras
import numpy as np
import scipy.sparse as sp
from keras import ops

import config as config_lib
from eval import metrics as metrics_lib

logger = logging.getLogger(__name__)

INDEXES = config_lib.INDEXES
_BLOCK_BYTES = 64 * 2**20  # over-fetched candidates per FAISS search call


def device_top_k(user_vectors, item_vectors, k, exclude=None, block=1024):
    """Exact top-`k` items by inner product, ranked on device.

    Args:
        user_vectors: `(num_users, d)` float array.
        item_vectors: `(num_items, d)` float array.
        k: int >= 1 (clipped to the catalog).
        exclude: optional `(num_users, num_items)` CSR of items to skip
            (e.g. seen); their score is -inf.
        block: users scored at once.

    Returns:
        `(items, scores)`: `(num_users, k)` int64 and float32, best first;
        slots left without a finite score (all items excluded) have score
        -inf.
    """
    num_users = len(user_vectors)
    num_items = len(item_vectors)
    k = min(int(k), num_items)
    items_t = ops.transpose(
        ops.convert_to_tensor(np.asarray(item_vectors, np.float32))
    )
    out_items = np.zeros((num_users, k), np.int64)
    out_scores = np.zeros((num_users, k), np.float32)
    for start in range(0, num_users, block):
        stop = min(start + block, num_users)
        scores = ops.matmul(
            ops.convert_to_tensor(
                np.asarray(user_vectors[start:stop], np.float32)
            ),
            items_t,
        )
        if exclude is not None:
            mask = block_mask(exclude, np.arange(start, stop), num_items)
            scores = ops.where(mask, -np.inf, scores)
        top_scores, top_items = ops.top_k(scores, k)
        out_items[start:stop] = ops.convert_to_numpy(top_items)
        out_scores[start:stop] = ops.convert_to_numpy(top_scores)
    return out_items, out_scores


def block_mask(exclude, rows, num_items):
    """Dense `(len(rows), num_items)` bool mask of `exclude`'s nonzeros in
    `rows`: one block's worth, never the whole users x items matrix."""
    sub = sp.csr_matrix(exclude)[rows]
    mask = np.zeros((len(rows), num_items), bool)
    mask[np.repeat(np.arange(len(rows)), np.diff(sub.indptr)), sub.indices] = (
        True
    )
    return mask


class FaissIndex:
    """A FAISS inner-product index over item vectors.

    Args:
        item_vectors: `(num_items, d)` float array.
        kind: `"flat"` (exact), `"ivf"` or `"hnsw"` (approximate).
        nlist: ivf inverted lists; 0 = `4 * sqrt(num_items)`.
        nprobe: ivf lists visited per query.
        hnsw_m: hnsw neighbours per node.
        hnsw_ef_search: hnsw candidate list size (raised to the number of
            neighbours asked for when that is larger).
        seed: int, for the ivf k-means.

    Example:

    ```python
    index = FaissIndex(item_vectors, "ivf", nprobe=16)
    items, scores = index.search(user_vectors, 10, exclude=seen_csr)
    ```
    """

    def __init__(
        self,
        item_vectors,
        kind="flat",
        nlist=0,
        nprobe=16,
        hnsw_m=32,
        hnsw_ef_search=128,
        seed=0,
    ):
        import faiss  # only for approximate / FAISS retrieval

        if kind not in INDEXES[1:]:
            raise ValueError(
                f"`kind` must be one of {INDEXES[1:]}. Received: {kind!r}"
            )
        vectors = np.ascontiguousarray(item_vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(
                "`item_vectors` must be a non-empty (num_items, d) array. "
                f"Received shape: {vectors.shape}"
            )
        num_items, dim = vectors.shape
        self.kind = kind
        self.num_items = num_items
        self.hnsw_ef_search = hnsw_ef_search
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            nlist = nlist or max(1, int(4 * np.sqrt(num_items)))
            nlist = min(nlist, num_items)
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(
                quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT
            )
            index.cp.seed = seed
            index.train(vectors)
            index.nprobe = min(max(1, nprobe), nlist)
            self._quantizer = quantizer  # FAISS does not own it
        else:
            index = faiss.IndexHNSWFlat(
                dim, max(2, hnsw_m), faiss.METRIC_INNER_PRODUCT
            )
        index.add(vectors)
        self.index = index
        logger.info("faiss %s index over %d items (d=%d)", kind, num_items, dim)

    def search(self, user_vectors, k, exclude=None):
        """Top-`k` items per user by inner product, `exclude`'s items left
        out. Returns `(items, scores)` as `device_top_k` does; missing
        slots (an approximate search that found too few) are item -1 with
        score -inf."""
        user_vectors = np.ascontiguousarray(user_vectors, np.float32)
        num_users = len(user_vectors)
        k = min(int(k), self.num_items)
        items = np.full((num_users, k), -1, np.int64)
        scores = np.full((num_users, k), -np.inf, np.float32)
        if exclude is None:
            seen = np.zeros(num_users, np.int64)
        else:
            exclude = sp.csr_matrix(exclude)
            seen = np.diff(exclude.indptr).astype(np.int64)
        order = np.argsort(seen, kind="stable")
        start = 0
        while start < num_users:
            fetch = min(self.num_items, k + int(seen[order[start]]))
            per_block = max(1, _BLOCK_BYTES // (12 * fetch))
            rows = order[start : start + per_block]
            fetch = min(self.num_items, k + int(seen[rows].max()))
            got_items, got_scores = self._search(user_vectors[rows], fetch)
            if exclude is not None:
                drop = _seen(exclude, rows, got_items)
                got_items = np.where(drop, -1, got_items)
            kept_items, kept_scores = _first_k(got_items, got_scores, k)
            items[rows], scores[rows] = kept_items, kept_scores
            start += len(rows)
        return items, scores

    def _search(self, queries, fetch):
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.hnsw_ef_search, fetch)
        got_scores, got_items = self.index.search(queries, fetch)
        return got_items.astype(np.int64), got_scores


def recall_against_exact(approx_items, exact_items):
    """Mean over users of |approx top-K & exact top-K| / K (K = columns of
    `exact_items`; -1 slots in `exact_items` are not counted)."""
    approx_items = np.asarray(approx_items)
    exact_items = np.asarray(exact_items)
    valid = exact_items >= 0
    hits = (approx_items[:, :, None] == exact_items[:, None, :]).any(1)
    counts = np.maximum(valid.sum(1), 1)
    return float(np.mean((hits & valid).sum(1) / counts))


def _seen(exclude, rows, candidates):
    """`(len(rows), c)` bool: candidate `j` of row `i` is in `exclude`'s
    row `rows[i]` (sorted-key lookup; no dense users x items array)."""
    num_items = exclude.shape[1]
    sub = exclude[rows]
    seen_keys = (
        np.repeat(np.arange(len(rows), dtype=np.int64), np.diff(sub.indptr))
        * num_items
        + sub.indices
    )
    seen_keys.sort()
    keys = np.arange(len(rows), dtype=np.int64)[
        :, None
    ] * num_items + np.maximum(candidates, 0)
    if len(seen_keys) == 0:
        return np.zeros(candidates.shape, bool)
    pos = np.minimum(np.searchsorted(seen_keys, keys), len(seen_keys) - 1)
    return (seen_keys[pos] == keys) & (candidates >= 0)


def _first_k(items, scores, k):
    """The first `k` non-negative items of each row, in order (FAISS
    returns them best first), with their scores; -1 / -inf fill."""
    valid = items >= 0
    # Stable sort on "not valid" moves valid candidates first, in order.
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    kept_items = np.take_along_axis(items, order, axis=1)
    kept_scores = np.take_along_axis(scores, order, axis=1)
    ok = np.take_along_axis(valid, order, axis=1)
    kept_scores = np.where(ok, kept_scores, -np.inf).astype(np.float32)
    kept_items = np.where(ok, kept_items, -1)
    if kept_items.shape[1] < k:
        pad = k - kept_items.shape[1]
        kept_items = np.pad(kept_items, ((0, 0), (0, pad)), constant_values=-1)
        kept_scores = np.pad(
            kept_scores, ((0, 0), (0, pad)), constant_values=-np.inf
        )
    return kept_items, kept_scores


def top_k_by_score(rec, users, exclude, k, budget_mb=256, progress=True):
    """Top-`k` items per user of any recommender, with `exclude`'s items
    masked: `rec.score` in user blocks sized to `budget_mb`, ranked on
    device with `ops.top_k`; the dense mask exists for one block only,
    never for users x items.

    Returns:
        `(items, scores)`: `(len(users), k)` int64 and float32, best first.
    """
    num_items = exclude.shape[1]
    block = metrics_lib.block_size_for(num_items, budget_mb)
    k = min(k, num_items)
    out_items = np.zeros((len(users), k), np.int64)
    out_scores = np.zeros((len(users), k), np.float32)
    bar = keras.utils.Progbar(len(users)) if progress else None
    for start in range(0, len(users), block):
        chunk = np.asarray(users[start : start + block])
        scores = rec.score(chunk)
        mask = block_mask(exclude, chunk, num_items)
        masked = ops.where(mask, -np.inf, ops.convert_to_tensor(scores))
        top_scores, top_items = ops.top_k(masked, k)
        out_items[start : start + len(chunk)] = ops.convert_to_numpy(top_items)
        out_scores[start : start + len(chunk)] = ops.convert_to_numpy(
            top_scores
        )
        if bar is not None:
            bar.add(len(chunk))
    return out_items, out_scores


def recommend(rec, users, exclude, k, scale_cfg, budget_mb=256, seed=0):
    """Top-`k` unseen items for `users` of any recommender. A dot-product
    model (`rec.has_vectors`) is ranked by `scale_cfg.index`: `exact` on
    device (`device_top_k`), `flat` / `ivf` / `hnsw` through a FAISS index,
    an approximate index checked against exact ranking on up to
    `scale_cfg.recall_users` users; any other model by its scores
    (`top_k_by_score`).

    Returns:
        `(items, scores, info)`; `info` holds `recall@k` for approximate
        indexes, else is empty.
    """
    if not getattr(rec, "has_vectors", False):
        items, scores = top_k_by_score(rec, users, exclude, k, budget_mb)
        return items, scores, {}
    if scale_cfg.index not in INDEXES:
        raise ValueError(
            f"`scale.index` must be one of {INDEXES}. Received: "
            f"{scale_cfg.index!r}"
        )
    users = np.asarray(users)
    item_vectors = rec.item_embeddings()
    block = metrics_lib.block_size_for(len(item_vectors), budget_mb)
    user_vectors = (
        np.concatenate(
            [
                rec.user_embeddings(users[i : i + 65536])
                for i in range(0, len(users), 65536)
            ]
        )
        if len(users)
        else np.zeros((0, item_vectors.shape[1]), np.float32)
    )
    seen = sp.csr_matrix(exclude)[users]
    if scale_cfg.index == "exact":
        items, scores = device_top_k(user_vectors, item_vectors, k, seen, block)
        return items, scores, {}
    index = FaissIndex(
        item_vectors,
        scale_cfg.index,
        nlist=scale_cfg.index_nlist,
        nprobe=scale_cfg.index_nprobe,
        hnsw_m=scale_cfg.hnsw_m,
        hnsw_ef_search=scale_cfg.hnsw_ef_search,
        seed=seed,
    )
    items, scores = index.search(user_vectors, k, seen)
    info = {}
    if scale_cfg.index != "flat" and scale_cfg.recall_users > 0:
        rng = np.random.default_rng(seed)
        sample = np.sort(
            rng.choice(
                len(users),
                min(scale_cfg.recall_users, len(users)),
                replace=False,
            )
        )
        exact, _ = device_top_k(
            user_vectors[sample], item_vectors, k, seen[sample], block
        )
        info[f"recall@{k}"] = recall_against_exact(items[sample], exact)
        logger.info(
            "faiss %s recall@%d against exact on %d users: %.4f",
            scale_cfg.index,
            k,
            len(sample),
            info[f"recall@{k}"],
        )
    return items, scores, info
