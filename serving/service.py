"""The recommendation service behind the HTTP API: a run's production model
loaded once, with everything a request needs, and the logic of each route;
it knows nothing about HTTP (`serving/app.py` does).

`load_service(cfg)` loads `<run>/production/` (the model, the id encoders,
the interactions it was trained on, item metadata from the item feature
file, an optional FAISS index and an optional reranker).

Two stages. Retrieval scores the whole catalog with the production model:
by one inner product of precomputed user and item vectors for vector
models (`has_vectors`: two-tower embeddings, ALS/BPR factors), searched
exactly with NumPy or through a FAISS index (`serve.use_faiss`;
`serve.faiss_index` flat|ivf|hnsw, a `retrieval.FaissIndex`), or by the
model's own `score()` for the others (EASE, ItemKNN, NCF...). With
`serve.reranker` (another run's model folder over the same ids, e.g. an NCF
run), the top `serve.candidates` retrieved items are re-scored by that
model and the best k returned.

Fold-in (a user not in training, given the items they just interacted
with), by model: a model whose user tower reads only the history
(`folds_in_history`: two-tower with `use_user_id=False`, the default)
encodes that history exactly as for a known user; ALS solves one
least-squares user step (`ALS.fold_in`); other vector models use the
item-similarity aggregate (sum of cosine similarities of item vectors to
the given items); models without vectors (EASE, ItemKNN, NCF...) use the
same aggregate over item co-occurrence cosines in the training
interactions. Fold-in results come from the retrieval stage only: a
reranker needs a known user.
"""

import dataclasses
import hashlib
import logging
import pathlib
import threading

import keras
import numpy as np
import pandas as pd
import scipy.sparse as sp

import config as config_lib
import data
import recommenders
from runtime import runs
from serving import retrieval

logger = logging.getLogger(__name__)

API_VERSION = "1"
REBUILD = "python main.py train_production_model"  # writes what is served
FOLD_IN_METHODS = (
    "history",
    "least_squares",
    "item_similarity",
    "item_cooccurrence",
)


ECHO_CHARS = 64  # longest piece of a request repeated in an error


def shorten(text, limit=ECHO_CHARS) -> str:
    """`text` cut to `limit` characters (with "..."), so an error never
    echoes a large request back."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UnknownIdError(LookupError):
    """A requested user or item id is not in the model's id maps."""


# ---------------------------------------------------------------------------
# The service: loaded state and recommendation logic
# ---------------------------------------------------------------------------


class RecommendationService:
    """Everything a request needs, loaded once, and the logic behind the
    routes; it knows nothing about HTTP.

    Args:
        recommender: a fitted recommender (`recommenders.Recommender`).
        user_ids: raw id of each user index (list).
        item_ids: raw id of each item index (list).
        seen: `(num_users, num_items)` CSR of the training interactions:
            masked with `exclude_seen`, and the co-occurrence source for
            models without item vectors.
        metadata: optional list of dicts (one per item index) returned
            beside each item, e.g. `{"title": ..., "genres": ...}`.
        reranker: optional fitted recommender over the same ids.
        num_candidates: int >= 1, retrieved items the reranker re-scores.
        faiss: optional dict of `retrieval.FaissIndex` keyword arguments
            (`kind` = flat|ivf|hnsw, ...): search vector models through
            FAISS instead of exactly with NumPy.
        info: dict merged into `version()`.
    """

    def __init__(
        self,
        recommender,
        user_ids,
        item_ids,
        seen,
        metadata=None,
        reranker=None,
        num_candidates=200,
        faiss=None,
        info=None,
    ):
        seen = sp.csr_matrix(seen, dtype=np.float32)
        if seen.shape != (len(user_ids), len(item_ids)):
            raise ValueError(
                f"`seen` must be (num_users, num_items) = "
                f"{(len(user_ids), len(item_ids))}. Received: {seen.shape}"
            )
        if metadata is not None and len(metadata) != len(item_ids):
            raise ValueError(
                f"`metadata` needs one entry per item ({len(item_ids)}). "
                f"Received: {len(metadata)}"
            )
        if int(num_candidates) < 1:
            raise ValueError(
                f"`serve.candidates` must be >= 1. Received: {num_candidates}"
            )
        self.recommender = recommender
        self.reranker = reranker
        self.num_candidates = int(num_candidates)
        self.user_ids = list(user_ids)
        self.item_ids = list(item_ids)
        self.seen = seen
        self.metadata = metadata
        self._user_index = {str(u): i for i, u in enumerate(self.user_ids)}
        self._item_index = {str(v): i for i, v in enumerate(self.item_ids)}
        # Keras models are not safe to call from several request threads.
        self._model_lock = threading.Lock()
        self._cooccurrence = _Cooccurrence(seen)
        users, items = _retrieval_vectors(recommender)
        if faiss is not None and items is None:
            raise ValueError(
                "`serve.use_faiss=True` needs a model with user and item "
                "vectors (two_tower, als, bpr). Received a "
                f"{type(recommender).__name__}; set serve.use_faiss=False."
            )
        self._user_vectors = users
        self._retrieval = None if items is None else _VectorIndex(items, faiss)
        self._similarity = None
        if items is not None:
            norms = np.linalg.norm(items, axis=1, keepdims=True)
            unit = items / np.maximum(norms, 1e-12)
            # Two-tower item vectors are already unit length: share one index.
            self._similarity = (
                self._retrieval
                if np.allclose(norms[norms > 0], 1.0, atol=1e-3)
                else _VectorIndex(unit, faiss)
            )
        self.fold_in_method = _fold_in_method(recommender, items is not None)
        self.info = {
            "retrieval": (
                "model.score"
                if items is None
                else f"faiss:{faiss['kind']}"
                if faiss
                else "exact"
            ),
            "fold_in": self.fold_in_method,
            "num_users": len(self.user_ids),
            "num_items": len(self.item_ids),
            **(info or {}),
        }

    # --- id maps ------------------------------------------------------------

    def user_index(self, raw_ids) -> np.ndarray:
        """Indices of raw user ids (compared as text).

        Raises:
            UnknownIdError: naming the ids not in training.
        """
        return self._lookup(raw_ids, self._user_index, "user")

    def item_index(self, raw_ids) -> np.ndarray:
        """Indices of raw item ids (compared as text).

        Raises:
            UnknownIdError: naming the ids not in the catalog.
        """
        return self._lookup(raw_ids, self._item_index, "item")

    # --- recommendation -----------------------------------------------------

    def recommend_users(self, users, k, exclude_seen=True):
        """Top-`k` items for known users (indices).

        Returns:
            `(items, scores, source)`: `(len(users), k')` int and float32
            arrays (non-finite scores mark missing slots, e.g. when fewer
            than k unseen items exist) and how they were made.
        """
        users = np.asarray(users, np.int64)
        exclude = self.seen[users] if exclude_seen else None
        width = max(k, self.num_candidates) if self.reranker else k
        if self._retrieval is not None:
            items, scores = self._retrieval.search(
                self._user_vectors[users], width, exclude
            )
        else:
            with self._model_lock:
                dense = self.recommender.score(users)
            items, scores = _dense_top(dense, width, exclude)
        if self.reranker is None:
            return items, scores, "retrieval"
        items, scores = self._rerank(users, items, scores, k)
        return items, scores, "retrieval+rerank"

    def recommend_history(self, items, k, exclude_seen=True):
        """Top-`k` for a user unseen in training, from the item indices they
        interacted with (oldest first), by `fold_in_method`.

        Returns:
            `(items, scores, source)` as `recommend_users`, one row.
        """
        given = np.asarray(items, np.int64)
        exclude = None
        if exclude_seen:
            cols = np.unique(given)
            exclude = sp.csr_matrix(
                (np.ones(len(cols), np.float32), cols, [0, len(cols)]),
                shape=(1, len(self.item_ids)),
            )
        method = self.fold_in_method
        if method == "item_cooccurrence":
            dense = self._cooccurrence.aggregate(given)[None, :]
            found, scores = _dense_top(dense, k, exclude)
        elif method == "item_similarity":
            query = self._similarity.vectors[given].sum(axis=0)[None, :]
            found, scores = self._similarity.search(query, k, exclude)
        else:
            query = self._fold_in_vector(given)[None, :]
            found, scores = self._retrieval.search(query, k, exclude)
        return found, scores, f"fold_in:{method}"

    def similar(self, item, k):
        """The `k` items nearest to item index `item` (itself excluded):
        cosine of item vectors, or of co-occurrence columns.

        Returns:
            `(items, scores)`, `(k',)` arrays, best first.
        """
        exclude = sp.csr_matrix(
            (np.ones(1, np.float32), [int(item)], [0, 1]),
            shape=(1, len(self.item_ids)),
        )
        if self._similarity is None:
            dense = self._cooccurrence.similar(int(item))[None, :]
            found, scores = _dense_top(dense, k, exclude)
        else:
            query = self._similarity.vectors[[int(item)]]
            found, scores = self._similarity.search(query, k, exclude)
        return found[0], scores[0]

    def item_entries(self, items, scores) -> list:
        """JSON-ready `[{"item", "score", "metadata"}]` for one row,
        dropping slots without a finite score."""
        out = []
        for item, score in zip(items.tolist(), scores.tolist()):
            if not np.isfinite(score):
                continue
            out.append(
                {
                    "item": self.item_ids[item],
                    "score": round(float(score), 6),
                    "metadata": self.metadata[item] if self.metadata else {},
                }
            )
        return out

    def version(self) -> dict:
        return {
            "api_version": API_VERSION,
            "backend": keras.backend.backend(),
            **self.info,
        }

    # --- private --------------------------------------------------------------

    def _lookup(self, raw_ids, table, kind):
        raw = [str(r) for r in raw_ids]
        index = [table.get(r, -1) for r in raw]
        unknown = [r for r, i in zip(raw, index) if i < 0]
        if unknown:
            hint = (
                " To recommend for a new user, POST /recommend with the "
                "`items` they interacted with."
                if kind == "user"
                else ""
            )
            shown = [shorten(r) for r in unknown[:10]]
            raise UnknownIdError(
                f"Unknown {kind} id(s) {shown}"
                f"{' ...' if len(unknown) > 10 else ''}: not in the "
                f"production model's {kind}s.{hint}"
            )
        return np.asarray(index, np.int64)

    def _fold_in_vector(self, given):
        """The retrieval-space vector of an unseen user."""
        rec = self.recommender
        if self.fold_in_method == "least_squares":
            return rec.fold_in(given)
        with self._model_lock:
            return rec.history_embedding(given)

    def _rerank(self, users, items, scores, k):
        """Re-score the retrieved candidates with the reranker, keep the
        best `k`; slots retrieval left empty stay empty."""
        candidates = np.where(np.isfinite(scores), items, 0)
        with self._model_lock:
            if hasattr(self.reranker, "score_pairs"):
                flat = self.reranker.score_pairs(
                    np.repeat(users, candidates.shape[1]), candidates.ravel()
                )
                rescored = flat.reshape(candidates.shape).astype(np.float32)
            else:
                rescored = np.take_along_axis(
                    self.reranker.score(users), candidates, axis=1
                )
        rescored = np.where(np.isfinite(scores), rescored, -np.inf)
        order = _top_k(rescored, k)
        return (
            np.take_along_axis(candidates, order, axis=1),
            np.take_along_axis(rescored, order, axis=1),
        )


class _VectorIndex:
    """Inner-product search over item vectors: exact with NumPy (fastest
    for the few query rows of a request), or a `retrieval.FaissIndex`
    given as `faiss` (a dict of its keyword arguments)."""

    def __init__(self, vectors, faiss=None):
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        self.index = None
        if faiss is not None:
            self.index = retrieval.FaissIndex(self.vectors, **faiss)

    def search(self, queries, count, exclude=None):
        """Top-`count` items per query row, `exclude` (CSR, one row per
        query) removed; missing slots have score -inf."""
        queries = np.ascontiguousarray(queries, np.float32)
        if self.index is None:
            return _dense_top(queries @ self.vectors.T, count, exclude)
        return self.index.search(queries, count, exclude)


class _Cooccurrence:
    """Item-item cosine similarity of interaction columns, computed per
    request in O(nnz) without an items x items matrix."""

    def __init__(self, seen):
        self.by_item = sp.csr_matrix(seen.T, dtype=np.float32)  # items x users
        counts = np.asarray(self.by_item.sum(axis=1)).ravel()
        self.inv_norm = np.where(
            counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0
        ).astype(np.float32)

    def aggregate(self, items):
        """`(num_items,)` sum of cosines to `items`; zero = unrelated, so
        non-positive scores are -inf (not recommended)."""
        weights = (
            np.bincount(items, minlength=len(self.inv_norm)).astype(np.float32)
            * self.inv_norm
        )
        users = self.by_item.T @ weights  # (num_users,)
        scores = (self.by_item @ users) * self.inv_norm
        return np.where(scores > 0, scores, -np.inf).astype(np.float32)

    def similar(self, item):
        return self.aggregate(np.asarray([item]))


# ---------------------------------------------------------------------------
# Loading a run
# ---------------------------------------------------------------------------


def load_service(cfg) -> RecommendationService:
    """Load the production model of `cfg.run_dir` and what serving needs.

    Raises:
        FileNotFoundError: no production model (says which commands make
            one).
        ValueError: the data no longer matches the model's id maps, or a
            bad `serve.*` setting.
    """
    production = cfg.run_dir / "production"
    model_dir = production / "model"
    if not (model_dir.is_dir() and (production / "encoders.json").is_file()):
        raise FileNotFoundError(
            f"No production model in {model_dir}: run `python main.py "
            "train_validation_model` and then `python main.py "
            "train_production_model` first (with the same --set options), "
            "or set `output.run_name` to a trained run."
        )
    sc = cfg.serve
    for key in ("max_k", "max_batch", "candidates"):
        if getattr(sc, key) < 1:
            raise ValueError(
                f"`serve.{key}` must be >= 1. Received: {getattr(sc, key)}"
            )
    encoders_path = production / "encoders.json"
    encoders = runs.read_json(encoders_path, REBUILD)
    dataset = data.load(cfg.data)
    if not (
        np.array_equal(dataset.user_ids, np.asarray(encoders["user_ids"]))
        and np.array_equal(dataset.item_ids, np.asarray(encoders["item_ids"]))
    ):
        raise ValueError(
            f"The data at {cfg.data.path} no longer matches the production "
            f"model's id maps ({encoders_path}): retrain with "
            "train_production_model."
        )
    recommender = recommenders.load(model_dir, REBUILD)
    reranker = None
    if sc.reranker is not None:
        reranker = _load_reranker(pathlib.Path(sc.reranker), encoders)
    config_path = production / "config.json"
    saved = runs.read_json(config_path, REBUILD)
    info = {
        "model": saved.get("model", {}).get("name", cfg.model.name),
        "config_hash": hashlib.sha256(config_path.read_bytes()).hexdigest()[
            :16
        ],
        "trained_backend": saved.get("keras_backend"),
        "run_dir": str(cfg.run_dir),
        "reranker": None if sc.reranker is None else str(sc.reranker),
    }
    service = RecommendationService(
        recommender,
        encoders["user_ids"],
        encoders["item_ids"],
        dataset.interactions.to_csr(),
        metadata=load_item_metadata(
            cfg.data.item_features, encoders["item_ids"]
        ),
        reranker=reranker,
        num_candidates=sc.candidates,
        faiss=_faiss_options(cfg) if sc.use_faiss else None,
        info=info,
    )
    logger.info(
        "serving %s from %s: users=%d items=%d retrieval=%s fold_in=%s "
        "reranker=%s",
        info["model"],
        production,
        len(service.user_ids),
        len(service.item_ids),
        service.info["retrieval"],
        service.fold_in_method,
        info["reranker"],
    )
    return service


def config_from_run(run_dir) -> config_lib.Config:
    """The config a run's production model was trained with, pointed at
    that run folder (serve settings at their defaults)."""
    run_dir = pathlib.Path(run_dir)
    path = run_dir / "production" / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {run_dir} holds no production model; run "
            "`python main.py train_production_model` for it first."
        )
    cfg = config_lib.from_dict(runs.read_json(path, REBUILD))
    output = dataclasses.replace(
        cfg.output, runs_dir=run_dir.parent, run_name=run_dir.name
    )
    return dataclasses.replace(cfg, output=output)


def load_item_metadata(feature_cfg, item_ids):
    """One dict per item index with the item feature file's configured
    columns as written there (`title`, `genres` on MovieLens), or None
    when there is no feature file. A configured file that has gone
    missing only costs the metadata (logged)."""
    if feature_cfg.path is None:
        return None
    path = pathlib.Path(feature_cfg.path)
    if not path.is_file():
        logger.warning("item feature file %s not found: no metadata", path)
        return None
    frame = data.read_table(
        path,
        feature_cfg.format,
        feature_cfg.sep,
        feature_cfg.header,
        feature_cfg.column_names,
        feature_cfg.encoding,
    )
    if feature_cfg.id_col not in frame.columns:
        raise ValueError(
            f"{path}: item id column `{feature_cfg.id_col}` not found. "
            f"Columns in the file: {[str(c) for c in frame.columns]}."
        )
    columns = list(
        dict.fromkeys(
            c
            for c in feature_cfg.text
            + feature_cfg.categorical
            + feature_cfg.multivalued
            + feature_cfg.numeric
            if c in frame.columns
        )
    )
    frame = frame.drop_duplicates(feature_cfg.id_col, keep="last")
    keys = _id_text(frame[feature_cfg.id_col])
    index = pd.Index([str(i) for i in item_ids]).get_indexer(keys)
    rows = frame.loc[index >= 0, columns]
    metadata = [{} for _ in item_ids]
    for idx, record in zip(index[index >= 0], rows.to_dict("records")):
        metadata[idx] = {k: _metadata_value(v) for k, v in record.items()}
    return metadata


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _retrieval_vectors(rec):
    """`(user_vectors, item_vectors)` whose inner product is the model's
    score, or `(None, None)` for models that score otherwise."""
    if not getattr(rec, "has_vectors", False):
        return None, None
    users = rec.user_embeddings(np.arange(rec.num_users))
    return users.astype(np.float32), rec.item_embeddings()


def _faiss_options(cfg):
    """`retrieval.FaissIndex` arguments: the kind from `serve.faiss_index`,
    its tuning from the `scale.*` fields that compute_predictions uses."""
    kinds = ("flat", "ivf", "hnsw")
    if cfg.serve.faiss_index not in kinds:
        raise ValueError(
            f"`serve.faiss_index` must be one of {kinds}. Received: "
            f"{cfg.serve.faiss_index!r}"
        )
    sc = cfg.scale
    return {
        "kind": cfg.serve.faiss_index,
        "nlist": sc.index_nlist,
        "nprobe": sc.index_nprobe,
        "hnsw_m": sc.hnsw_m,
        "hnsw_ef_search": sc.hnsw_ef_search,
        "seed": cfg.seed,
    }


def _fold_in_method(rec, has_vectors):
    if getattr(rec, "folds_in_history", False):
        return "history"
    if hasattr(rec, "fold_in"):
        return "least_squares"
    return "item_similarity" if has_vectors else "item_cooccurrence"


def _load_reranker(path, encoders):
    """A saved model folder over the same ids as the served model."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"`serve.reranker` {path} is not a model folder: point it at "
            "another run's `production/model` (e.g. an NCF run)."
        )
    theirs_path = path.parent / "encoders.json"
    if not theirs_path.is_file():
        raise FileNotFoundError(
            f"`serve.reranker` needs {theirs_path} beside the model folder "
            "to check that it uses the same user and item ids."
        )
    theirs = runs.read_json(theirs_path, REBUILD)
    if (
        theirs["user_ids"] != encoders["user_ids"]
        or theirs["item_ids"] != encoders["item_ids"]
    ):
        raise ValueError(
            f"`serve.reranker` {path} was trained on other user/item ids "
            "than the served model: train both on the same data."
        )
    return recommenders.load(path)


def _top_k(scores, k):
    """`(rows, k')` column indices of the largest scores per row, best
    first, ties to the lower index; NaN ranks last."""
    k = min(int(k), scores.shape[1])
    scores = np.where(np.isnan(scores), -np.inf, scores)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -picked), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _dense_top(scores, count, exclude=None):
    """Top-`count` (items, scores) of dense score rows with the `exclude`
    CSR entries set to -inf."""
    scores = np.array(scores, np.float32)  # a copy we may mask
    if exclude is not None and exclude.nnz:
        rows = np.repeat(np.arange(exclude.shape[0]), np.diff(exclude.indptr))
        scores[rows, exclude.indices] = -np.inf
    top = _top_k(scores, count)
    return top.astype(np.int64), np.take_along_axis(scores, top, axis=1)


def _id_text(col):
    """Raw ids as text, integral floats written as integers (a feature file
    may store `12` as `12.0`)."""
    if pd.api.types.is_float_dtype(col.dtype):
        values = col.to_numpy()
        if np.all(np.mod(values[np.isfinite(values)], 1) == 0):
            return col.astype("Int64").astype(str).to_numpy()
    return col.astype(str).to_numpy()


def _metadata_value(value):
    """A JSON-ready scalar: NumPy types unwrapped, NaN as None, anything
    else (dates, ...) as text."""
    value = runs.jsonable(value)
    if isinstance(value, (str, int, float)) or value is None:
        return value
    return str(value)
