"""Where the prior's item embeddings come from, aligned to the item index.

`diffusion.item_embeddings` names the source:

- `"als"` (default): the item factors of implicit ALS (Hu et al. 2008,
  `eval/baselines.py`) fit here on the prior's own train split, so no
  held-out interaction shapes the space; seconds to fit.
- `"two_tower"`: the item-tower outputs of a two-tower model fit the same
  way (early stopping on valid); every catalog item has one (the tower
  reads genres and title words besides the id).
- `"ncf"`: the GMF and MLP item id embeddings of an NCF fit the same way,
  concatenated.
- `"text"`: MiniLM sentence embeddings (`models/text_encoders.py`) of each
  item's text columns in `data.item_features` (title and genres on
  MovieLens).
- `"posters"`: the poster autoencoder's image embeddings
  (`diffusion/poster_autoencoder.py`), for items that have a poster.
- anything else: a path to an `(n, d)` `.npy` file, whose rows are the raw
  item ids listed in `diffusion.item_ids_path` (a `.npy`, or text with one
  id per line), or the item index order when that is None.

Items without an embedding (no poster, not in the file) are marked
unavailable: the prior never trains on them and evaluation never ranks
them.
"""

import dataclasses
import logging
import pathlib

import keras
import numpy as np
import pandas as pd

import data

logger = logging.getLogger(__name__)

RECOMMENDER_SOURCES = ("two_tower", "ncf")
SOURCES = ("als",) + RECOMMENDER_SOURCES + ("text", "posters")


@dataclasses.dataclass(frozen=True)
class ItemEmbeddings:
    """One embedding per item index.

    Args:
        vectors: `(num_items, dim)` float32; rows of unavailable items are 0.
        available: `(num_items,)` bool, the item has an embedding.
        source: str, where they came from (for reports).
    """

    vectors: np.ndarray
    available: np.ndarray
    source: str

    def __post_init__(self):
        vectors = np.asarray(self.vectors, np.float32)
        available = np.asarray(self.available, bool)
        if vectors.ndim != 2 or available.shape != (len(vectors),):
            raise ValueError(
                "`vectors` must be (num_items, dim) and `available` "
                f"(num_items,). Received: {vectors.shape} and "
                f"{available.shape}"
            )
        if not available.any():
            raise ValueError(
                f"No item has an embedding from source {self.source!r}."
            )
        if not np.isfinite(vectors[available]).all():
            raise ValueError(
                f"Item embeddings from {self.source!r} contain NaN or inf."
            )
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "available", available)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


def align(raw_ids, vectors, item_ids, source) -> ItemEmbeddings:
    """Place embeddings keyed by raw item id at the dataset's item indices.

    Ids are matched by value (`1`, `1.0` and `"1"` are the same id); ids
    that are not in the catalog are ignored.

    Args:
        raw_ids: `(n,)` raw ids, one per row of `vectors`.
        vectors: `(n, dim)` embeddings.
        item_ids: `(num_items,)` the dataset's raw id per item index.
        source: str, named in errors.

    Raises:
        ValueError: shapes disagree, an id repeats, or no id is in the
            catalog.
    """
    vectors = np.asarray(vectors, np.float32)
    raw_ids = np.asarray(raw_ids).reshape(-1)
    if vectors.ndim != 2 or len(vectors) != len(raw_ids):
        raise ValueError(
            f"{source}: needs one id per embedding row. Received "
            f"{len(raw_ids)} ids for embeddings of shape {vectors.shape}."
        )
    keys = id_keys(raw_ids)
    duplicated = pd.Index(keys).duplicated()
    if duplicated.any():
        repeated = keys[duplicated][0]
        raise ValueError(
            f"{source}: item id {repeated} appears "
            f"{int((keys == repeated).sum())} times; each id needs one row."
        )
    index = pd.Index(id_keys(np.asarray(item_ids))).get_indexer(keys)
    found = index >= 0
    if not found.any():
        raise ValueError(
            f"{source}: none of its {len(raw_ids)} item ids is in the "
            f"catalog (e.g. {raw_ids[:3].tolist()} vs catalog ids "
            f"{np.asarray(item_ids)[:3].tolist()})."
        )
    out = np.zeros((len(item_ids), vectors.shape[1]), np.float32)
    out[index[found]] = vectors[found]
    available = np.zeros(len(item_ids), bool)
    available[index[found]] = True
    logger.info(
        "item embeddings from %s: dim=%d, %d of %d catalog items covered",
        source,
        vectors.shape[1],
        int(available.sum()),
        len(item_ids),
    )
    return ItemEmbeddings(out, available, source)


def from_file(path, ids_path, item_ids) -> ItemEmbeddings:
    """Embeddings from an `(n, d)` `.npy`, keyed by `ids_path` or, when
    that is None, by item index (then n must be the catalog size)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Item embedding file not found: {path}. Set "
            "`diffusion.item_embeddings` to one of "
            f"{SOURCES} or to an existing .npy file."
        )
    vectors = np.load(path, allow_pickle=False)
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
        raise ValueError(
            f"{path} must hold a numeric (num_items, dim) array. Received: "
            f"shape={vectors.shape}, dtype={vectors.dtype}"
        )
    if ids_path is None:
        if len(vectors) != len(item_ids):
            raise ValueError(
                f"{path} has {len(vectors)} rows but the catalog has "
                f"{len(item_ids)} items; without "
                "`diffusion.item_ids_path` row i must be item index i."
            )
        return ItemEmbeddings(vectors, np.ones(len(vectors), bool), str(path))
    return align(_read_ids(ids_path), vectors, item_ids, str(path))


def from_recommender(recommender) -> np.ndarray:
    """`(num_items, dim)` item vectors of a fitted `KerasRecommender`: the
    item tower of a two-tower model, or an NCF's GMF and MLP item id
    embeddings side by side."""
    model = recommender.model
    tables = [
        getattr(model, name, None)
        for name in ("gmf_item_embedding", "mlp_item_embedding")
    ]
    tables = [t for t in tables if t is not None]
    if recommender.model_cfg.name == "ncf":
        if not tables:
            raise ValueError(
                "NCF item embeddings need item ids: fit it with "
                "`model.item_input='id'`."
            )
        return np.concatenate(
            [
                keras.ops.convert_to_numpy(t.embeddings).astype(np.float32)
                for t in tables
            ],
            axis=1,
        )
    return np.asarray(recommender.item_embeddings(), np.float32)


def item_texts(feature_cfg, item_ids):
    """Per item, its title and the text the `"text"` source encodes.

    The text joins the file's `text` columns, then its `multivalued`
    columns with their separator replaced by ", " (MovieLens: "Toy Story
    (1995). Adventure, Animation, ...").

    Args:
        feature_cfg: `config.FeatureFileConfig` of the item table.
        item_ids: `(num_items,)` raw ids.

    Returns:
        `(titles, texts)`: two lists of `num_items` str ("" = no row).

    Raises:
        ValueError: no item table or no text column is configured.
    """
    if feature_cfg.path is None:
        raise ValueError(
            "Item texts need an item table: set `data.item_features.path` "
            "(MovieLens: movies.csv with `title` and `genres`)."
        )
    columns = list(feature_cfg.text) + list(feature_cfg.multivalued)
    if not columns:
        raise ValueError(
            f"{feature_cfg.path}: no `text` or `multivalued` column is "
            "configured in `data.item_features`; nothing to embed."
        )
    frame = data.read_table(
        feature_cfg.path,
        feature_cfg.format,
        feature_cfg.sep,
        feature_cfg.header,
        feature_cfg.column_names,
        feature_cfg.encoding,
    )
    missing = [c for c in [feature_cfg.id_col] + columns if c not in frame]
    if missing:
        raise ValueError(
            f"{feature_cfg.path}: columns {missing} not found. Columns in "
            f"the file: {[str(c) for c in frame.columns]}."
        )
    frame = frame.drop_duplicates(feature_cfg.id_col, keep="last")
    parts = []
    for col in feature_cfg.text:
        parts.append(frame[col].fillna("").astype(str))
    for col in feature_cfg.multivalued:
        parts.append(
            frame[col]
            .fillna("")
            .astype(str)
            .str.replace(feature_cfg.multivalued_sep, ", ", regex=False)
        )
    text = parts[0]
    for part in parts[1:]:
        text = text.str.cat(part, sep=". ")
    title = parts[0]
    index = pd.Index(id_keys(frame[feature_cfg.id_col].to_numpy()))
    rows = index.get_indexer(id_keys(np.asarray(item_ids)))
    texts = [text.iloc[r] if r >= 0 else "" for r in rows]
    titles = [title.iloc[r] if r >= 0 else "" for r in rows]
    return titles, texts


def standardise(vectors, weights_rows):
    """Per-dimension mean and std of the rows the prior trains on.

    Args:
        vectors: `(num_items, dim)` embeddings.
        weights_rows: `(n,)` item indices of the training examples (an item
            counts once per interaction, as the prior sees it).

    Returns:
        `(mean, std)`, `(dim,)` float32 each; std is at least 1e-6.
    """
    rows = np.asarray(vectors, np.float64)[np.asarray(weights_rows)]
    if not len(rows):
        raise ValueError("No training example to standardise with.")
    std = np.maximum(rows.std(axis=0), 1e-6)
    return rows.mean(axis=0).astype(np.float32), std.astype(np.float32)


def _read_ids(path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Item id file not found: {path} (`diffusion.item_ids_path`)."
        )
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).reshape(-1)
    lines = path.read_text(encoding="utf-8").split()
    return np.asarray(lines)


def id_keys(ids):
    """Comparable string keys: integral numbers lose any `.0`."""
    ids = np.asarray(ids)
    if np.issubdtype(ids.dtype, np.floating):
        if np.all(np.mod(ids, 1) == 0):
            ids = ids.astype(np.int64)
    elif ids.dtype.kind in ("U", "S", "O"):
        numeric = pd.to_numeric(pd.Series(ids), errors="coerce")
        if numeric.notna().all() and np.all(np.mod(numeric, 1) == 0):
            ids = numeric.to_numpy().astype(np.int64)
    return ids.astype(str)
