"""The text around a dataset, aligned to its user and item indices: item
names and metadata terms (genres, categories, tags) and per-interaction
review text, the evidence that data-driven personas are described with.
"""

import dataclasses
import logging
import re

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

import data

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z][a-z'\-]+[a-z]")
_REVIEW_CHARS = 300  # own-review characters kept in an interaction text


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
        keys = (
            interactions.user.astype(np.int64) * self.num_items
            + interactions.item
        )
        pos = np.searchsorted(self.review_keys, keys)
        pos = np.minimum(pos, max(len(self.review_keys) - 1, 0))
        found = (
            self.review_keys[pos] == keys
            if len(self.review_keys)
            else np.zeros(len(keys), bool)
        )
        return pos, found


def build_corpus(dataset, data_cfg, persona_cfg) -> Corpus:
    """Read item names and metadata terms (the item features file of
    `data_cfg`, the tags file of `persona_cfg`) and per-interaction review
    text (`persona_cfg.interaction_text` columns of `data_cfg.path`) for
    `dataset`.

    Raises:
        FileNotFoundError: a configured file is missing.
        ValueError: a configured column is not in its file.
    """
    pc, fc = persona_cfg, data_cfg.item_features
    num_users = dataset.interactions.num_users
    num_items = dataset.interactions.num_items
    names = np.asarray([str(i) for i in dataset.item_ids], dtype=object)
    meta = [pd.DataFrame({"doc": np.zeros(0, np.int64), "term": []})]
    if fc.path is not None:
        frame = data.read_table(
            fc.path, fc.format, fc.sep, fc.header, fc.column_names, fc.encoding
        )
        _require_columns(
            frame,
            [fc.id_col, *fc.text, *fc.categorical, *fc.multivalued],
            fc.path,
            "item feature",
        )
        idx = index_of(frame[fc.id_col], dataset.item_ids)
        ok = idx >= 0
        if fc.text:
            title = (
                frame[list(fc.text)]
                .fillna("")
                .astype(str)
                .agg(" ".join, axis=1)
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
        _require_columns(
            tags, [pc.tags_item_col, pc.tags_col], pc.tags_path, "tag"
        )
        idx = index_of(tags[pc.tags_item_col], dataset.item_ids)
        ok = idx >= 0
        meta.append(_terms_frame(idx[ok], tags[pc.tags_col][ok], None))
    meta = pd.concat(meta, ignore_index=True)
    keys, review_text, review_words = _read_reviews(
        dataset, data_cfg, pc.interaction_text
    )
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
        has_ratings=bool(
            data_cfg.rating_col is not None
            and len(values)
            and values.min() < values.max()
        ),
    )
    logger.info(
        "persona corpus: terms=%d item-term pairs=%d reviews=%d",
        len(vocab),
        item_terms.nnz,
        len(keys),
    )
    return corpus


def index_of(raw, ids):
    """Index of each raw id in `ids` (-1 when absent), comparing numbers as
    numbers and anything else as strings, like `data.load`."""
    ids = np.asarray(ids)
    raw = pd.Series(raw)
    if np.issubdtype(ids.dtype, np.number):
        raw = pd.to_numeric(raw, errors="coerce")
        index = pd.Index(ids.astype(np.float64))
        return index.get_indexer(raw.to_numpy(np.float64))
    return pd.Index(ids.astype(str)).get_indexer(raw.astype(str).to_numpy())


def _read_reviews(dataset, data_cfg, columns):
    """`(keys, text, words)` for the interactions with review text: sorted
    `user * num_items + item` keys, the start of each review, and a
    `doc, term` frame of its words."""
    columns = list(columns)
    empty = (
        np.zeros(0, np.int64),
        np.zeros(0, dtype=object),
        pd.DataFrame({"doc": np.zeros(0, np.int64), "term": []}),
    )
    if not columns:
        return empty
    d = data_cfg
    frame = data.read_table(
        d.path, d.format, d.sep, d.header, d.column_names, d.encoding
    )
    _require_columns(frame, columns, d.path, "interaction text")
    if len(frame) != len(dataset.raw):
        raise ValueError(
            f"{d.path} has {len(frame)} rows but the loaded data had "
            f"{len(dataset.raw)}; reload the data."
        )
    user = index_of(dataset.raw["user"], dataset.user_ids)
    item = index_of(dataset.raw["item"], dataset.item_ids)
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
    frame = pd.DataFrame(
        {"doc": np.asarray(doc, np.int64), "term": values.to_numpy()}
    )
    bad = frame["term"].isin(["", "(no genres listed)", "nan"])
    return frame[~bad]


def _vocabulary(meta, words):
    """Terms in at least two documents (metadata and review words alike),
    sorted."""
    pairs = pd.concat(
        [
            meta.assign(kind=0).drop_duplicates(["doc", "term"]),
            words.assign(kind=1).drop_duplicates(["doc", "term"]),
        ]
    )
    df = pairs["term"].value_counts()
    return sorted(df.index[df.to_numpy() >= 2].astype(str))


def _count_matrix(doc, term, num_docs, vocab):
    col = pd.Index(vocab).get_indexer(np.asarray(term, dtype=object))
    ok = col >= 0
    m = sp.csr_matrix(
        (
            np.ones(int(ok.sum()), np.float32),
            (np.asarray(doc, np.int64)[ok], col[ok]),
        ),
        shape=(num_docs, len(vocab)),
    )
    m.sum_duplicates()
    return m


def _require_columns(frame, columns, path, kind):
    present = [str(c) for c in frame.columns]
    for col in columns:
        if col not in frame.columns:
            raise ValueError(
                f"{path}: {kind} column `{col}` not found. Columns in the "
                f"file: {present}."
            )
