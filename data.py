"""Load any tabular interaction file into contiguous ids, filter, split, batch.

Everything here is host-side NumPy/pandas: `load()` reads and validates the
files named in `DataConfig`, `split()` makes deterministic train/valid/test
`Interactions`, and `InteractionBatches` feeds Keras `fit()` with vectorised
negative sampling whose content depends only on (seed, epoch, batch index).
"""

import dataclasses
import io
import logging
import math
import pathlib
import zlib

import keras
import numpy as np
import pandas as pd
import scipy.sparse as sp

import config as config_lib
from runtime import runs

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Interactions:
    """User-item interactions over a fixed catalog.

    Args:
        user: `(n,)` int32 contiguous user indices in `[0, num_users)`.
        item: `(n,)` int32 contiguous item indices in `[0, num_items)`.
        value: `(n,)` float32 rating (1.0 for implicit data).
        ts: `(n,)` int64 timestamps (the file row where the data has none).
        num_users: size of the user index space (not only users present).
        num_items: size of the catalog (not only items present).
        weight: optional `(n,)` float32 sample weight of each interaction
            (from a count column, `data.weight_col`); all ones by default.
        ordered: `ts` orders each user's interactions in time (False when
            it is only the file row), so time-based splits are meaningful.
    """

    user: np.ndarray
    item: np.ndarray
    value: np.ndarray
    ts: np.ndarray
    num_users: int
    num_items: int
    weight: np.ndarray | None = None
    ordered: bool = True

    def __post_init__(self):
        n = len(self.user)
        if self.weight is None:
            object.__setattr__(self, "weight", np.ones(n, np.float32))
        for name in ("item", "value", "ts", "weight"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"`{name}` has {len(getattr(self, name))} rows but `user` "
                    f"has {n}."
                )
        object.__setattr__(self, "user", np.asarray(self.user, np.int32))
        object.__setattr__(self, "item", np.asarray(self.item, np.int32))
        object.__setattr__(self, "value", np.asarray(self.value, np.float32))
        object.__setattr__(self, "ts", np.asarray(self.ts, np.int64))
        object.__setattr__(self, "weight", np.asarray(self.weight, np.float32))
        if n and (self.user.min() < 0 or self.user.max() >= self.num_users):
            raise ValueError(
                f"`user` indices must lie in [0, {self.num_users}). Received "
                f"range [{self.user.min()}, {self.user.max()}]."
            )
        if n and (self.item.min() < 0 or self.item.max() >= self.num_items):
            raise ValueError(
                f"`item` indices must lie in [0, {self.num_items}). Received "
                f"range [{self.item.min()}, {self.item.max()}]."
            )

    def __len__(self) -> int:
        return len(self.user)

    @property
    def weighted(self) -> bool:
        """Some interaction weighs other than 1 (count data)."""
        return bool(len(self.weight) and np.any(self.weight != 1.0))

    def to_csr(self, binary: bool = True, weighted: bool = False):
        """`(num_users, num_items)` sparse matrix of ones (`binary`), of the
        sample weights (`weighted`) or of the values; duplicates are summed
        (collapsed to 1.0 when `binary`)."""
        if weighted:
            binary = False
            data = self.weight
        else:
            data = np.ones(len(self), np.float32) if binary else self.value
        m = sp.csr_matrix(
            (data, (self.user, self.item)),
            shape=(self.num_users, self.num_items),
            dtype=np.float32,
        )
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    def select(self, mask: np.ndarray) -> "Interactions":
        """The rows where `mask` is true (or the rows at integer `mask`)."""
        return dataclasses.replace(
            self,
            user=self.user[mask],
            item=self.item[mask],
            value=self.value[mask],
            ts=self.ts[mask],
            weight=self.weight[mask],
        )

    def concat(self, other: "Interactions") -> "Interactions":
        if (other.num_users, other.num_items) != (
            self.num_users,
            self.num_items,
        ):
            raise ValueError(
                "Cannot concatenate interactions over different index "
                f"spaces: {(self.num_users, self.num_items)} vs "
                f"{(other.num_users, other.num_items)}."
            )
        return dataclasses.replace(
            self,
            user=np.concatenate([self.user, other.user]),
            item=np.concatenate([self.item, other.item]),
            value=np.concatenate([self.value, other.value]),
            ts=np.concatenate([self.ts, other.ts]),
            weight=np.concatenate([self.weight, other.weight]),
            ordered=self.ordered and other.ordered,
        )

    def item_counts(self) -> np.ndarray:
        """`(num_items,)` int64 number of interactions per item."""
        return np.bincount(self.item, minlength=self.num_items)

    def user_counts(self) -> np.ndarray:
        """`(num_users,)` int64 number of interactions per user."""
        return np.bincount(self.user, minlength=self.num_users)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


FORMATS = config_lib.FORMATS
DUPLICATE_RULES = config_lib.DUPLICATE_RULES
# `cold_items` is the evaluation-only split of `evaluate_cold_items`.
SPLITS = config_lib.SPLITS + ("cold_items",)
PAD = 0  # history slot meaning "no item"; items are stored as index + 1


@dataclasses.dataclass(frozen=True)
class FeatureTable:
    """Dense float32 features for every user or item index.

    Rows follow the index order of the ids they belong to; rows of ids absent
    from the feature file are zero, and `missing` marks them.
    """

    values: np.ndarray  # (num_entities, num_features) float32
    names: list  # one name per column
    missing: np.ndarray  # (num_entities,) bool: no row in the file
    stats: dict  # vocabularies, means, stds: enough to encode again

    @property
    def num_features(self) -> int:
        return self.values.shape[1]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What `load()` returns: encoded interactions plus everything around.

    `raw` is the interaction table as read (standard column names `user`,
    `item`, and `rating`/`timestamp` where configured) before any filtering,
    kept for exploratory analysis.
    """

    interactions: Interactions
    user_ids: np.ndarray  # raw id of each user index
    item_ids: np.ndarray  # raw id of each item index
    item_features: FeatureTable | None
    user_features: FeatureTable | None
    raw: pd.DataFrame
    source: str
    steps: dict = dataclasses.field(default_factory=dict)  # rows per step

    def filtered_frame(self) -> pd.DataFrame:
        """The kept interactions with raw ids, in the `raw` column layout."""
        x = self.interactions
        frame = {"user": self.user_ids[x.user], "item": self.item_ids[x.item]}
        if "rating" in self.raw:
            frame["rating"] = x.value
        if "timestamp" in self.raw:
            frame["timestamp"] = x.ts
        return pd.DataFrame(frame)

    def encoders(self) -> dict:
        """JSON-ready id maps (index -> raw id) and feature vocabularies."""
        return {
            "user_ids": self.user_ids.tolist(),
            "item_ids": self.item_ids.tolist(),
            "item_features": None
            if self.item_features is None
            else self.item_features.stats,
            "user_features": None
            if self.user_features is None
            else self.user_features.stats,
        }


def read_table(
    path,
    format="auto",
    sep=None,
    header=True,
    column_names=(),
    encoding="utf-8",
    setting="data",
) -> pd.DataFrame:
    """Read a csv/tsv/`::`-dat/parquet/JSON-lines file into a DataFrame.

    Text files go through pandas' pyarrow reader (multi-threaded, no Python
    row loop); multi-character separators such as `::` are rewritten to a
    single control character first, since no fast reader takes them.

    Args:
        setting: the config section that describes the file (`data`,
            `data.item_features`, ...), named in error messages.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown format, an empty file, a wrong text encoding,
            or a file that cannot be parsed (with the separator it seems
            to use, when that differs).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Data file not found: {path} (resolved: {path.resolve()}). "
            f"Point `{setting}.path` in config.py (or `--set "
            f"{setting}.path=...`) at your file."
        )
    if path.stat().st_size == 0:
        raise ValueError(
            f"{path} is empty (0 bytes): `{setting}.path` must point at a "
            "file with a header row and one interaction per line."
        )
    fmt = _detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(
            f"`format` must be one of {('auto',) + FORMATS}. Received: "
            f"{format!r} for {path}."
        )
    if header and column_names:
        raise ValueError(
            f"{path}: give `column_names` only with `header=False`; the "
            "file's first row already names the columns."
        )
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "jsonl":
            # dtype=False: pandas would otherwise turn a column named
            # `timestamp` into datetimes with a guessed unit, unlike csv.
            frame = pd.read_json(
                path, lines=True, encoding=encoding, dtype=False
            )
        else:
            frame = _read_text(path, fmt, sep, header, column_names, encoding)
    except FileNotFoundError:
        raise
    except UnicodeError as e:
        raise _encoding_error(path, encoding, e, setting) from None
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{path} holds no columns to read: is it empty, or not a "
            f"{fmt} file? Check `{setting}.path` and `{setting}.format`."
        ) from None
    except Exception as e:  # parser errors differ by engine
        raise ValueError(
            f"Could not parse {path} as {fmt}: {e}"
            + separator_hint(path, fmt, sep, encoding, setting)
        ) from e
    if column_names and fmt in ("parquet", "jsonl"):
        frame.columns = list(column_names)
    return frame


def load(cfg) -> Dataset:
    """Read, validate, filter and index the data described by a DataConfig.

    Steps: read -> check columns and types -> implicit threshold -> duplicate
    rule -> iterated k-core -> contiguous int32 ids (sorted raw ids) ->
    feature tables aligned to the ids.
    """
    path = pathlib.Path(cfg.path)
    frame = read_table(
        path, cfg.format, cfg.sep, cfg.header, cfg.column_names, cfg.encoding
    )
    try:
        raw = _standardise(frame, cfg, path)
    except UnicodeError as e:  # pyarrow decodes text lazily
        raise _encoding_error(path, cfg.encoding, e, "data") from None
    steps = {"read": len(raw)}
    logger.info(
        "read %s: rows=%d users=%d items=%d",
        path.name,
        len(raw),
        raw["user"].nunique(),
        raw["item"].nunique(),
    )
    kept = raw
    if cfg.implicit_threshold is not None:
        if "rating" not in kept:
            raise ValueError(
                "`data.implicit_threshold` needs a rating column, but "
                "`data.rating_col` is None."
            )
        kept = kept[kept["rating"] >= cfg.implicit_threshold]
        steps["implicit_threshold"] = len(kept)
        logger.info(
            "kept %d of %d rows with rating >= %g",
            len(kept),
            len(raw),
            cfg.implicit_threshold,
        )
    kept = _deduplicate(kept, cfg.duplicates, path)
    steps["duplicates"] = len(kept)
    kept = _k_core(kept, cfg.min_user_interactions, cfg.min_item_interactions)
    steps["k_core"] = len(kept)
    if kept.empty:
        raise ValueError(
            f"No interactions left in {path} after filtering (rows read: "
            f"{len(raw)}, implicit_threshold={cfg.implicit_threshold}, "
            f"min_user_interactions={cfg.min_user_interactions}, "
            f"min_item_interactions={cfg.min_item_interactions}). Loosen "
            "the filters in config.py."
        )
    user_codes, user_ids = pd.factorize(kept["user"], sort=True)
    item_codes, item_ids = pd.factorize(kept["item"], sort=True)
    value = (
        kept["rating"].to_numpy(np.float32)
        if "rating" in kept
        else np.ones(len(kept), np.float32)
    )
    interactions = Interactions(
        user=user_codes,
        item=item_codes,
        value=value,
        ts=kept["timestamp"].to_numpy(np.int64),
        num_users=len(user_ids),
        num_items=len(item_ids),
        weight=count_weights(kept["weight"].to_numpy(), cfg.weight_transform)
        if "weight" in kept
        else None,
        ordered=cfg.timestamp_col is not None or cfg.order_by_file,
    )
    user_ids = np.asarray(user_ids)
    item_ids = np.asarray(item_ids)
    logger.info(
        "interactions=%d users=%d items=%d density=%.5f",
        len(interactions),
        interactions.num_users,
        interactions.num_items,
        len(interactions) / (interactions.num_users * interactions.num_items),
    )
    return Dataset(
        interactions=interactions,
        user_ids=user_ids,
        item_ids=item_ids,
        item_features=_load_features(
            item_feature_config(cfg), item_ids, "item"
        ),
        user_features=_load_features(cfg.user_features, user_ids, "user"),
        # Without a timestamp column the file row stood in for time; it is
        # no time, so `raw` (and EDA's time figures) leave it out.
        raw=raw.drop(
            columns=["_row"]
            + (["timestamp"] if cfg.timestamp_col is None else [])
        ),
        source=str(path),
        steps=steps,
    )


def count_weights(counts, transform="log1p") -> np.ndarray:
    """Sample weights from counts (plays, clicks, purchases): `log1p`
    (1 + log(1 + count), so one play weighs about 1.7 and a thousand about
    7.9), `linear` (the count itself) or `binary` (1 for any count > 0).

    Returns:
        `(n,)` float32.
    """
    counts = np.asarray(counts, np.float64)
    if transform == "log1p":
        weights = 1.0 + np.log1p(counts)
    elif transform == "linear":
        weights = counts
    elif transform == "binary":
        weights = (counts > 0).astype(np.float64)
    else:
        raise ValueError(
            "`data.weight_transform` must be one of "
            f"{config_lib.WEIGHT_TRANSFORMS}. Received: {transform!r}"
        )
    return weights.astype(np.float32)


def item_feature_config(cfg):
    """`cfg.item_features`, except that the shipped MovieLens feature file
    (the default) is only joined onto the shipped MovieLens ratings: a new
    `data.path` with the default feature file gets no item features."""
    default = config_lib.DataConfig()
    features = cfg.item_features
    uses_default_file = features.path is not None and _same_file(
        features.path, default.item_features.path
    )
    if uses_default_file and not _same_file(cfg.path, default.path):
        logger.warning(
            "data.path is not the shipped MovieLens file, so the shipped "
            "MovieLens item features (%s) are not joined onto it; set "
            "`data.item_features.path` to your own feature file.",
            pathlib.Path(features.path).name,
        )
        return dataclasses.replace(features, path=None)
    return features


def _same_file(a, b) -> bool:
    return pathlib.Path(a).resolve() == pathlib.Path(b).resolve()


def describe(dataset: Dataset, cfg) -> dict:
    """Facts about a loaded dataset and the file it came from, for
    `check_data`: format, separator and encoding, rows per filter step,
    users and items, sample rows, timestamps, duplicates, feature coverage.

    Args:
        dataset: what `load(cfg)` returned.
        cfg: the `config.DataConfig` it was loaded with.
    """
    path = pathlib.Path(cfg.path)
    fmt = _detect_format(path) if cfg.format == "auto" else cfg.format
    x = dataset.interactions
    raw = dataset.raw
    facts = {
        "file": str(path),
        "bytes": path.stat().st_size,
        "format": fmt,
        "encoding": cfg.encoding,
        "header": cfg.header,
        "steps": dict(dataset.steps),
        "users": int(x.num_users),
        "items": int(x.num_items),
        "interactions": len(x),
        "density": len(x) / max(x.num_users * x.num_items, 1),
        "per_user": _spread(x.user_counts()),
        "per_item": _spread(x.item_counts()),
        "sample": raw.head(5).astype(str).to_dict("records"),
        "duplicate_rows": int(raw.duplicated(["user", "item"]).sum()),
        "ratings": None,
        "weights": None,
        "time": {
            "column": cfg.timestamp_col,
            "order_by_file": cfg.order_by_file,
            "ordered": x.ordered,
        },
        "item_features": _coverage(dataset.item_features, cfg, "item"),
        "user_features": _coverage(dataset.user_features, cfg, "user"),
    }
    if fmt not in ("parquet", "jsonl"):
        facts["separator"] = (
            cfg.sep or {"csv": ",", "tsv": "\t", "dat": "::"}[fmt]
        )
        facts["separator_detected"] = sniff_separator(path, cfg.encoding)
    if "rating" in raw:
        values = raw["rating"].to_numpy()
        facts["ratings"] = {
            "min": float(values.min()),
            "max": float(values.max()),
            "distinct": int(len(np.unique(values))),
            "integral": bool(np.all(np.mod(values, 1) == 0)),
        }
    if x.weighted:
        facts["weights"] = {
            "transform": cfg.weight_transform,
            **_spread(x.weight),
        }
    if cfg.timestamp_col is not None and len(x):
        first, last = int(x.ts.min()), int(x.ts.max())
        facts["time"].update(
            {
                "first": first,
                "last": last,
                "first_date": _as_date(first),
                "last_date": _as_date(last),
            }
        )
    return facts


def _spread(values) -> dict:
    values = np.asarray(values)
    if not len(values):
        return {"min": 0, "median": 0, "max": 0}
    return {
        "min": runs.plain(values.min()),
        "median": float(np.median(values)),
        "max": runs.plain(values.max()),
    }


def _coverage(table, cfg, kind):
    features = (
        item_feature_config(cfg) if kind == "item" else (cfg.user_features)
    )
    configured = getattr(cfg, f"{kind}_features").path
    if table is None:
        return {
            "path": None if configured is None else str(configured),
            "used": False,
        }
    covered = int((~table.missing).sum())
    return {
        "path": str(features.path),
        "used": True,
        "columns": int(table.num_features),
        "covered": covered,
        "share": covered / max(len(table.missing), 1),
    }


def _as_date(seconds):
    """A unix time in seconds (or milliseconds) as an ISO date."""
    if abs(seconds) > 10**11:  # milliseconds
        seconds //= 1000
    try:
        return pd.Timestamp(seconds, unit="s").date().isoformat()
    except (OverflowError, ValueError):
        return None


# ---------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------


def split(
    interactions: Interactions,
    method: str = "chrono",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Interactions, Interactions, Interactions]:
    """Deterministic train / valid / test split.

    - `chrono` (default, protocol P1): per user, order by (timestamp, item
      index); test = the last ceil(test_fraction * n), valid = the
      ceil(valid_fraction * n) before those, train = the rest.
    - `leave_last_out`: per user, the last interaction is test and the one
      before is valid; users with fewer than 3 interactions stay in train.
    - `time_cut`: one global cut: test = the latest `test_fraction` of all
      interactions by time, valid = the `valid_fraction` before.
    - `random`: per user like `chrono`, over a seeded random order.
    - `cold_items`: a seeded random `test_fraction` of the *items* is held
      out entirely: all their interactions are test, so they have none in
      train or valid (cold-start evaluation); the remaining interactions
      are split per user like `chrono` with `valid_fraction` and no test.
    """
    if method not in SPLITS:
        raise ValueError(
            f"`split` must be one of {SPLITS}. Received: {method!r}"
        )
    if method != "random" and not interactions.ordered:
        raise ValueError(
            f"The `{method}` split orders each user's interactions by time, "
            "but the data has no timestamps (`data.timestamp_col` is None): "
            "set `data.timestamp_col`, use `data.split='random'`, or set "
            "`data.order_by_file=True` if the file's rows are in time order."
        )
    for name, frac in (
        ("valid_fraction", valid_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"`{name}` must lie in [0, 1). Received: {frac}")
    if method != "leave_last_out" and valid_fraction + test_fraction >= 1.0:
        raise ValueError(
            "`valid_fraction` + `test_fraction` must be < 1 so that train "
            f"keeps data. Received: {valid_fraction} + {test_fraction}"
        )
    x = interactions
    n = len(x)
    if method == "cold_items":
        present = np.flatnonzero(x.item_counts() > 0)
        rng = np.random.default_rng(seed)
        num_cold = int(_ceil_fraction(len(present), test_fraction))
        cold = np.zeros(x.num_items, bool)
        cold[rng.choice(present, size=num_cold, replace=False)] = True
        is_cold = cold[x.item]
        warm = x.select(~is_cold)
        train, valid, _ = split(warm, "chrono", valid_fraction, 0.0, seed)
        test = x.select(is_cold)
        logger.info(
            "split=cold_items cold items=%d train=%d valid=%d test=%d",
            num_cold,
            len(train),
            len(valid),
            len(test),
        )
        return train, valid, test
    if method == "time_cut":
        order = _lexsort((x.item, x.user, x.ts))
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        n_test = _ceil_fraction(n, test_fraction)
        n_valid = _ceil_fraction(n, valid_fraction)
        part = np.where(
            rank >= n - n_test, 2, np.where(rank >= n - n_test - n_valid, 1, 0)
        )
    else:
        if method == "random":
            tiebreak = np.random.default_rng(seed).permutation(n)
            order = _lexsort((tiebreak, x.user))
        else:
            order = _lexsort((x.item, x.ts, x.user))
        users = x.user[order]
        counts = np.bincount(users, minlength=x.num_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos = np.arange(n) - starts[users]
        total = counts[users]
        if method == "leave_last_out":
            enough = total >= 3
            n_test = np.where(enough, 1, 0)
            n_valid = np.where(enough, 1, 0)
        else:
            n_test = _ceil_fraction(total, test_fraction)
            n_valid = _ceil_fraction(total, valid_fraction)
        sorted_part = np.where(
            pos >= total - n_test,
            2,
            np.where(pos >= total - n_test - n_valid, 1, 0),
        )
        part = np.empty(n, np.int8)
        part[order] = sorted_part
    train, valid, test = (x.select(part == p) for p in (0, 1, 2))
    logger.info(
        "split=%s train=%d valid=%d test=%d",
        method,
        len(train),
        len(valid),
        len(test),
    )
    return train, valid, test


# ---------------------------------------------------------------------------
# Model inputs
# ---------------------------------------------------------------------------


def history_matrix(interactions: Interactions, length: int) -> np.ndarray:
    """`(num_users, length)` int32: each user's most recent items.

    Entries are item index + 1, newest first, padded with `PAD` (0), so the
    model can mask padding without a separate length array.
    """
    if length < 1:
        raise ValueError(f"`length` must be >= 1. Received: {length}")
    x = interactions
    order = _lexsort((-x.item.astype(np.int64), -x.ts, x.user))
    users = x.user[order]
    counts = np.bincount(users, minlength=x.num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(x)) - starts[users]
    keep = pos < length
    out = np.full((x.num_users, length), PAD, np.int32)
    out[users[keep], pos[keep]] = x.item[order][keep] + 1
    return out


def user_sequences(interactions: Interactions):
    """Every user's interactions oldest first, in one flat order.

    Ties in time are broken by item index, so reversing a user's run gives
    the order of `history_matrix`.

    Returns:
        `(order, starts, counts)`: `order` indexes `interactions` so that
        user `u`'s run is `order[starts[u] : starts[u] + counts[u]]`.
    """
    x = interactions
    order = _lexsort((x.item.astype(np.int64), x.ts, x.user))
    counts = np.bincount(x.user, minlength=x.num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def age_buckets(age_seconds, num_buckets: int) -> np.ndarray:
    """int32 buckets `1..num_buckets` of an age in seconds: 1 for the same
    day, then one bucket per doubling of the age in days (log2), the last
    one open-ended. 0 is kept for "no item / age unknown"."""
    days = np.maximum(np.asarray(age_seconds, np.float64), 0.0) / 86400.0
    bucket = 1 + np.floor(np.log2(1.0 + days)).astype(np.int64)
    return np.minimum(bucket, num_buckets).astype(np.int32)


def history_ages(
    interactions: Interactions, length: int, num_buckets: int
) -> np.ndarray:
    """`(num_users, length)` int32 age buckets (`age_buckets`) of the slots
    of `history_matrix`: each item's age relative to the user's newest
    item; 0 in padding."""
    if not interactions.ordered:
        raise ValueError(
            "Time gaps need timestamps, and these interactions are ordered by "
            "file row only: set `data.timestamp_col`, or "
            "`model.time_buckets=0`."
        )
    x = interactions
    order = _lexsort((-x.item.astype(np.int64), -x.ts, x.user))
    users = x.user[order]
    counts = np.bincount(users, minlength=x.num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(x)) - starts[users]
    keep = pos < length
    ts = x.ts[order]
    newest = ts[starts[users]]
    out = np.zeros((x.num_users, length), np.int32)
    out[users[keep], pos[keep]] = age_buckets((newest - ts)[keep], num_buckets)
    return out


def item_log_probs(item_counts: np.ndarray) -> np.ndarray:
    """log of each item's share of interactions (the logQ correction term);
    unseen items get the log of half a count so the value stays finite."""
    counts = np.maximum(item_counts.astype(np.float64), 0.5)
    return np.log(counts / counts.sum()).astype(np.float32)


def negative_sampler(
    item_counts: np.ndarray, method: str = "uniform", alpha: float = 0.75
):
    """Return `sample(rng, shape) -> int32 items`, vectorised.

    `popularity` draws proportionally to count**alpha (word2vec-style
    smoothing) with inverse-CDF lookup (`searchsorted`), so each call costs
    O(size * log num_items) and no per-item Python work.
    """
    num_items = len(item_counts)
    if method == "uniform":
        return lambda rng, shape: rng.integers(
            0, num_items, size=shape, dtype=np.int32
        )
    if method == "popularity":
        weights = np.power(item_counts.astype(np.float64), alpha)
        if weights.sum() <= 0:
            raise ValueError("Popularity sampling needs interactions.")
        cdf = np.cumsum(weights / weights.sum())
        cdf[-1] = 1.0
        return lambda rng, shape: np.searchsorted(
            cdf, rng.random(size=shape), side="right"
        ).astype(np.int32)
    raise ValueError(
        "`negative_sampling` must be 'uniform' or 'popularity'. "
        f"Received: {method!r}"
    )


class InteractionBatches(keras.utils.PyDataset):
    """Shuffled training batches for `fit()`, built with vectorised NumPy.

    Every batch holds `batch_size` examples (the last one is filled up with
    the first examples of the epoch's order, so a few are seen twice).
    Batch `idx` of epoch `e` depends only on `(seed, e, idx)`: the epoch's
    order comes from `default_rng([seed, e])` and the batch's negatives and
    history dropout from `default_rng([seed, e, idx])`. Worker processes
    therefore produce the same batches as the main process, and no two
    batches share random state.

    Args:
        interactions: the training `Interactions`.
        batch_size: int, examples per batch.
        seed: int.
        history: optional `(num_users, L)` output of `history_matrix`; the
            batch gets each user's row with the target item hidden, and a
            `history_dropout` share of the other items hidden at random.
        history_dropout: float in `[0, 1)`.
        user_features, item_features: optional `(num, F)` float32 tables
            gathered per batch.
        num_negatives: int, sampled negatives per positive (0 = none).
        sampler: `negative_sampler(...)` result, needed with negatives.
        item_logq: optional `(num_items,)` log sampling probabilities.
        labels: optional `(len(interactions),)` float32 target per
            interaction (see `scaled_labels`, `graded_labels`); default 1.
        shuffle: bool.
        use_weights: bool; with weighted interactions (count data) each
            batch also returns their sample weights.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size`.

    Returns per batch `(x, y)` or, with weights, `(x, y, sample_weight)`:
    `x` a dict of arrays (`user`, `item`, `history`, `user_features`,
    `item_features`, `neg_item`, `neg_item_features`, `item_logq` as
    configured), `y` float32 labels.
    """

    def __init__(
        self,
        interactions,
        batch_size,
        seed=0,
        history=None,
        history_dropout=0.0,
        user_features=None,
        item_features=None,
        num_negatives=0,
        sampler=None,
        item_logq=None,
        labels=None,
        shuffle=True,
        use_weights=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.weights = (
            interactions.weight
            if use_weights and interactions.weighted
            else None
        )
        if batch_size < 1:
            raise ValueError(
                f"`batch_size` must be >= 1. Received: {batch_size}"
            )
        if len(interactions) == 0:
            raise ValueError("Cannot make batches from zero interactions.")
        if num_negatives and sampler is None:
            raise ValueError("`num_negatives` > 0 needs a `sampler`.")
        if not 0.0 <= history_dropout < 1.0:
            raise ValueError(
                "`history_dropout` must be in [0, 1). Received: "
                f"{history_dropout}"
            )
        self.x = interactions
        self.batch_size = batch_size
        self.seed = seed
        self.history = history
        self.history_dropout = history_dropout
        self.user_features = user_features
        self.item_features = item_features
        self.num_negatives = num_negatives
        self.sampler = sampler
        self.item_logq = item_logq
        if labels is not None and len(labels) != len(interactions):
            raise ValueError(
                f"`labels` has {len(labels)} entries for "
                f"{len(interactions)} interactions."
            )
        self.labels = labels
        self.shuffle = shuffle
        self.epoch = 0
        self._order_epoch = None
        self._order = None

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, idx):
        order = self._epoch_order()
        rows = order[idx * self.batch_size : (idx + 1) * self.batch_size]
        if len(rows) < self.batch_size and len(order) >= self.batch_size:
            # Fill the last batch from the start of this epoch's order: every
            # batch then has one shape, which XLA compiles once instead of
            # twice per fit, and in-batch softmax keeps its full negatives.
            rows = np.concatenate([rows, order[: self.batch_size - len(rows)]])
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        user = self.x.user[rows]
        item = self.x.item[rows]
        batch = {"user": user, "item": item}
        if self.history is not None:
            hist = self.history[user]
            keep = hist != item[:, None] + 1
            if self.history_dropout > 0:
                keep &= rng.random(hist.shape) >= self.history_dropout
            batch["history"] = np.where(keep, hist, PAD).astype(np.int32)
        if self.user_features is not None:
            batch["user_features"] = self.user_features[user]
        if self.item_features is not None:
            batch["item_features"] = self.item_features[item]
        if self.item_logq is not None:
            batch["item_logq"] = self.item_logq[item]
        if self.num_negatives:
            neg = self.sampler(rng, (len(rows), self.num_negatives))
            batch["neg_item"] = neg
            if self.item_features is not None:
                batch["neg_item_features"] = self.item_features[neg]
        if self.labels is not None:
            label = self.labels[rows]
        else:
            label = np.ones(len(rows), np.float32)
        if self.weights is not None:
            return batch, np.asarray(label, np.float32), self.weights[rows]
        return batch, np.asarray(label, np.float32)

    def _epoch_order(self):
        if self._order_epoch != self.epoch:
            n = len(self.x)
            self._order = (
                np.random.default_rng([self.seed, self.epoch]).permutation(n)
                if self.shuffle
                else np.arange(n)
            )
            self._order_epoch = self.epoch
        return self._order


class SequenceBatches(keras.utils.PyDataset):
    """Next-item training windows of every user's sequence, for `fit()`.

    Each user's items (oldest first) are cut into windows of `length`
    predictions, the newest window first: a window ending at item `e` has
    the `length` items before `e` as input (newest first, 0-padded, the
    layout of `history_matrix`) and, at slot `k`, the item after slot
    `k`'s input as target. Every interaction but each user's first is a
    target exactly once per epoch. Windows are shuffled per epoch with
    `default_rng([seed, epoch])`; batches are vectorised gathers.

    Args:
        interactions: the training `Interactions`.
        length: int >= 1, slots per window (`model.history_length`).
        batch_size: int, predicted slots per step; a step holds
            `max(1, batch_size // length)` windows, so a step's
            full-catalog logits take `batch_size * num_items` floats.
        seed: int.
        time_buckets: int; > 0 adds `"history_age"` (`history_ages`
            layout: each item's age relative to the window's newest).
        shuffle: bool.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size`.

    Returns per batch `(x, y)`: `x` with `"history"`, `"target"` (ids + 1,
    0 = no target) and optionally `"history_age"`, `y` unused zeros.
    """

    def __init__(
        self,
        interactions,
        length,
        batch_size,
        seed=0,
        time_buckets=0,
        shuffle=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if length < 1 or batch_size < 1:
            raise ValueError(
                "`length` and `batch_size` must be >= 1. Received: "
                f"{length}, {batch_size}"
            )
        if time_buckets and not interactions.ordered:
            history_ages(interactions, 1, time_buckets)  # raises
        order, starts, counts = user_sequences(interactions)
        self.items = interactions.item[order].astype(np.int32) + 1
        self.ts = interactions.ts[order]
        # Window c of user u ends at local index e = n_u - 1 - c * length
        # (its slot-0 target); users with one item have none.
        windows = np.where(counts >= 2, (counts - 2) // length + 1, 0)
        users = np.repeat(np.arange(len(counts)), windows)
        if not len(users):
            raise ValueError(
                "No user has two interactions: there is no next item to "
                "learn from."
            )
        first = np.concatenate([[0], np.cumsum(windows)[:-1]])
        c = np.arange(len(users)) - first[users]
        self.end = (starts[users] + counts[users] - 1 - c * length).astype(
            np.int64
        )
        self.first = starts[users].astype(np.int64)
        self.length = int(length)
        self.windows_per_batch = max(1, int(batch_size) // self.length)
        self.seed = seed
        self.time_buckets = int(time_buckets)
        self.shuffle = shuffle
        self.epoch = 0
        self._order_epoch = None
        self._order = None

    @property
    def num_windows(self) -> int:
        return len(self.end)

    def __len__(self):
        return -(-self.num_windows // self.windows_per_batch)

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, idx):
        if self._order_epoch != self.epoch:
            n = self.num_windows
            self._order = (
                np.random.default_rng([self.seed, self.epoch]).permutation(n)
                if self.shuffle
                else np.arange(n)
            )
            self._order_epoch = self.epoch
        order, size = self._order, self.windows_per_batch
        rows = order[idx * size : (idx + 1) * size]
        if len(rows) < size and len(order) >= size:
            rows = np.concatenate([rows, order[: size - len(rows)]])
        end, first = self.end[rows, None], self.first[rows, None]
        source = end - 1 - np.arange(self.length)[None, :]
        valid = source >= first
        source = np.where(valid, source, 0)
        x = {
            "history": np.where(valid, self.items[source], PAD),
            "target": np.where(valid, self.items[source + 1], PAD),
        }
        if self.time_buckets:
            newest = self.ts[end - 1]
            x["history_age"] = np.where(
                valid,
                age_buckets(newest - self.ts[source], self.time_buckets),
                0,
            ).astype(np.int32)
        return x, np.zeros(len(rows), np.float32)


class InteractionRows(keras.utils.PyDataset):
    """Shuffled rows of the binary user-item matrix, for `fit()` of models
    that read a user's whole interaction vector (autoencoders, diffusion
    over interactions). Only users with an interaction are used. A batch is
    densified from the CSR matrix, so memory is `batch_size * num_items`
    floats, whatever the number of users.

    Args:
        interactions: the training `Interactions`.
        batch_size: int, users per step.
        seed: int; epoch `e` shuffles with `default_rng([seed, e])`.
        shuffle: bool.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size`.

    Returns per batch `(x, y)`: `x = {"interactions": (batch, num_items)
    float32}`, `y` unused zeros.
    """

    def __init__(
        self, interactions, batch_size, seed=0, shuffle=True, **kwargs
    ):
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(
                f"`batch_size` must be >= 1. Received: {batch_size}"
            )
        self.rows = interactions.to_csr().astype(np.float32)
        self.users = np.flatnonzero(np.diff(self.rows.indptr))
        if not len(self.users):
            raise ValueError("Cannot make batches from zero interactions.")
        self.batch_size = int(batch_size)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._order_epoch = None
        self._order = None

    def __len__(self):
        return -(-len(self.users) // self.batch_size)

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, idx):
        if self._order_epoch != self.epoch:
            self._order = (
                np.random.default_rng([self.seed, self.epoch]).permutation(
                    self.users
                )
                if self.shuffle
                else self.users
            )
            self._order_epoch = self.epoch
        order = self._order
        users = order[idx * self.batch_size : (idx + 1) * self.batch_size]
        if len(users) < self.batch_size and len(order) >= self.batch_size:
            users = np.concatenate(
                [users, order[: self.batch_size - len(users)]]
            )
        rows = self.rows[users].toarray()
        return {"interactions": rows}, np.zeros(len(users), np.float32)


def scaled_labels(value, low=None, high=None) -> np.ndarray:
    """Ratings rescaled linearly from `[low, high]` (default: their range)
    to [-1, 1], the range of a cosine score."""
    value = np.asarray(value, np.float64)
    low = value.min() if low is None else low
    high = value.max() if high is None else high
    return (2.0 * (value - low) / max(high - low, 1e-12) - 1.0).astype(
        np.float32
    )


def graded_labels(value, like=None, dislike=None) -> np.ndarray:
    """Graded like/dislike targets in [0, 1] from ratings: 1 at or above
    `like`, 0 at or below `dislike`, linear in between. With no thresholds
    every interaction is a like (1.0)."""
    value = np.asarray(value, np.float64)
    if like is None and dislike is None:
        return np.ones(len(value), np.float32)
    if like is None or dislike is None or not dislike < like:
        raise ValueError(
            "Graded labels need `dislike` < `like`. Received: "
            f"dislike={dislike}, like={like}"
        )
    return np.clip((value - dislike) / (like - dislike), 0.0, 1.0).astype(
        np.float32
    )


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


SEPARATORS = ("\t", ",", ";", "|", "::", " ")
_SEPARATOR_NAMES = {"\t": "tab", " ": "space", "::": "'::'"}


def sniff_separator(path, encoding="utf-8", lines=20):
    """The separator that splits the first `lines` lines of a text file
    into the same number (> 1) of fields, preferring the most fields; None
    when none does."""
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode(encoding, errors="replace")
    rows = [r for r in head.splitlines()[:lines] if r.strip()]
    if len(head) == 1 << 16 and len(rows) > 1:
        rows = rows[:-1]  # the last line may be cut
    best, best_fields = None, 1
    for sep in SEPARATORS:
        counts = {len(r.split(sep)) for r in rows}
        if len(counts) == 1 and (fields := counts.pop()) > best_fields:
            best, best_fields = sep, fields
    return best


def separator_hint(path, fmt, sep, encoding="utf-8", setting="data"):
    """ " The file looks tab-separated: ..." when the file's lines split
    evenly on another separator than the one used, else ""."""
    if fmt in ("parquet", "jsonl"):
        return ""
    used = sep or {"csv": ",", "tsv": "\t", "dat": "::"}[fmt]
    try:
        found = sniff_separator(path, encoding)
    except OSError:
        return ""
    if found is None or found == used:
        return ""
    name = _SEPARATOR_NAMES.get(found, repr(found))
    return (
        f" The file looks {name}-separated, not "
        f"{_SEPARATOR_NAMES.get(used, repr(used))}-separated: set "
        f"`{setting}.sep={found!r}`"
        + (f" (or `{setting}.format='tsv'`)" if found == "\t" else "")
        + "."
    )


def looks_headerless(frame) -> bool:
    """The column names read from the first row look like data (numbers),
    so the file probably has no header row."""
    names = [str(c) for c in frame.columns]
    numeric = pd.to_numeric(pd.Series(names), errors="coerce").notna()
    return bool(len(names) and numeric.mean() >= 0.5)


def _encoding_error(path, encoding, error, setting):
    where = ""
    if isinstance(error, UnicodeDecodeError):
        where = (
            f" (byte {error.object[error.start]:#04x} at position "
            f"{error.start} of a value)"
        )
    return ValueError(
        f"{path} is not {encoding} text{where}: set `{setting}.encoding` to "
        "the file's encoding, e.g. 'latin-1' (ISO-8859-1) or 'cp1252'."
    )


def _detect_format(path: pathlib.Path) -> str:
    suffix = path.suffix.lower()
    return {
        ".csv": "csv",
        ".tsv": "tsv",
        ".txt": "tsv",
        ".dat": "dat",
        ".parquet": "parquet",
        ".pq": "parquet",
        ".jsonl": "jsonl",
        ".json": "jsonl",
    }.get(suffix, "csv")


def _read_text(path, fmt, sep, header, column_names, encoding):
    sep = sep or {"csv": ",", "tsv": "\t", "dat": "::"}[fmt]
    names = list(column_names) if column_names else None
    kwargs = dict(header=0 if header else None, names=names)
    if len(sep) > 1:
        # No fast reader takes multi-character separators; swap in a byte
        # that cannot occur in text data and parse with the fast reader.
        text = path.read_bytes().decode(encoding).replace(sep, "\x1f")
        return pd.read_csv(
            io.StringIO(text), sep="\x1f", engine="c", quoting=3, **kwargs
        )
    try:
        return pd.read_csv(
            path, sep=sep, engine="pyarrow", encoding=encoding, **kwargs
        )
    except Exception:
        # pyarrow refuses some files (ragged rows, odd quoting) that the C
        # engine reads; its error then names the offending line.
        return pd.read_csv(
            path, sep=sep, engine="c", encoding=encoding, **kwargs
        )


def _standardise(frame, cfg, path) -> pd.DataFrame:
    """Rename configured columns to user/item/rating/timestamp and type them,
    raising on missing columns or bad values with file, column and row."""
    first_line = 2 if cfg.header else 1
    wanted = {"user": cfg.user_col, "item": cfg.item_col}
    if cfg.rating_col is not None:
        wanted["rating"] = cfg.rating_col
    if cfg.timestamp_col is not None:
        wanted["timestamp"] = cfg.timestamp_col
    if cfg.weight_col is not None:
        wanted["weight"] = cfg.weight_col
    present = [str(c) for c in frame.columns]
    fmt = _detect_format(path) if cfg.format == "auto" else cfg.format
    for role, col in wanted.items():
        if col not in frame.columns:
            hint = separator_hint(path, fmt, cfg.sep, cfg.encoding)
            if cfg.header and looks_headerless(frame):
                hint += (
                    " The first row looks like data, not column names: "
                    "set `data.header=False` and name the columns with "
                    "`data.column_names=(...)`."
                )
            raise ValueError(
                f"{path}: column `{col}` (data.{role}_col) not found. "
                f"Columns in the file: {present}.{hint}"
            )
    out = pd.DataFrame(
        {role: frame[col].to_numpy() for role, col in wanted.items()}
    )
    out["_row"] = np.arange(len(out), dtype=np.int64)
    for role in ("user", "item"):
        missing = out[role].isna().to_numpy()
        if not pd.api.types.is_numeric_dtype(out[role].dtype):
            blank = out[role].astype(str).str.strip() == ""
            missing = missing | blank.to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            article = "an" if role == "item" else "a"
            raise ValueError(
                f"{path}: column `{wanted[role]}` is empty at data row "
                f"{row + 1} (line {row + first_line}); every interaction "
                f"needs {article} {role} id. {int(missing.sum())} rows are "
                "empty." + separator_hint(path, fmt, cfg.sep, cfg.encoding)
            )
        out[role] = _numeric_ids(out[role])
    if "rating" in out:
        out["rating"] = _to_float(
            out["rating"], path, wanted["rating"], first_line
        )
    if "weight" in out:
        out["weight"] = _to_float(
            out["weight"], path, wanted["weight"], first_line
        )
        negative = out["weight"].to_numpy() < 0
        if negative.any():
            row = int(np.flatnonzero(negative)[0])
            raise ValueError(
                f"{path}: column `{wanted['weight']}` (data.weight_col) "
                f"must hold counts >= 0; data row {row + 1} (line "
                f"{row + first_line}) holds {out['weight'].iloc[row]:g}."
            )
    if "timestamp" in out:
        out["timestamp"] = _to_timestamp(
            out["timestamp"], path, wanted["timestamp"], first_line
        )
    else:
        # Without timestamps, file order stands in for time.
        out["timestamp"] = out["_row"]
    return out


def _numeric_ids(col: pd.Series) -> pd.Series:
    """Ids stored as digit strings (parquet, JSON) become integers so that
    sorting and joins with feature files behave numerically."""
    if pd.api.types.is_numeric_dtype(col.dtype):
        if pd.api.types.is_float_dtype(col.dtype) and np.all(
            np.mod(col.to_numpy(), 1) == 0
        ):
            return col.astype(np.int64)
        return col
    as_num = pd.to_numeric(col, errors="coerce")
    if as_num.notna().all() and np.all(np.mod(as_num.to_numpy(), 1) == 0):
        return as_num.astype(np.int64)
    return col.astype(str)


def _to_float(
    col: pd.Series, path, name: str, first_line: int, allow_missing=False
):
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna().to_numpy()
    if allow_missing:
        bad = bad & col.notna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        cell = col.iloc[row]
        empty = pd.isna(cell) or not str(cell).strip()
        holds = "is empty" if empty else f"holds {runs.plain(cell)!r}"
        raise ValueError(
            f"{path}: column `{name}` must be numeric; data row {row + 1} "
            f"(line {row + first_line}) {holds}. {int(bad.sum())} rows "
            "are empty or not numbers."
        )
    return values.astype(np.float32)


def _to_timestamp(col: pd.Series, path, name: str, first_line: int):
    if pd.api.types.is_numeric_dtype(col.dtype):
        bad = col.isna().to_numpy()
        values = col
    elif pd.api.types.is_datetime64_any_dtype(col.dtype):
        bad = col.isna().to_numpy()
        values = _unix_seconds(col)
    else:
        numeric = pd.to_numeric(col, errors="coerce")
        if numeric.notna().any():
            # Unix times as text; a cell that is no number is the error.
            bad = numeric.isna().to_numpy()
            values = numeric
        else:
            parsed = pd.to_datetime(col, errors="coerce", utc=True)
            if parsed.isna().any():
                # The format is inferred from the first value; a column that
                # mixes "2020-01-01" and "2020-01-02 10:00" needs per-value.
                parsed = pd.to_datetime(
                    col, errors="coerce", utc=True, format="mixed"
                )
            bad = parsed.isna().to_numpy()
            values = _unix_seconds(parsed)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: column `{name}` must hold unix times or dates; data "
            f"row {row + 1} (line {row + first_line}) holds "
            f"{runs.plain(col.iloc[row])!r}."
        )
    # Numbers past int64 (or infinite) would wrap to the oldest time.
    as_float = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    out_of_range = ~np.isfinite(as_float) | (np.abs(as_float) >= 2.0**63)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(
            f"{path}: column `{name}` holds a time out of range at data row "
            f"{row + 1} (line {row + first_line}): "
            f"{runs.plain(col.iloc[row])!r}; unix times must fit in 64 bits "
            "(seconds, or milliseconds since 1970)."
        )
    return values.to_numpy().astype(np.int64)


def _unix_seconds(col: pd.Series) -> pd.Series:
    """Datetimes to int64 unix seconds whatever their resolution (pandas 3
    and pyarrow give `s`/`ms`/`us`, not only `ns`); NaT becomes 0."""
    if col.dt.tz is None:
        col = col.dt.tz_localize("UTC")
    seconds = (col - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.fillna(0).astype(np.int64)


def _deduplicate(frame: pd.DataFrame, rule: str, path) -> pd.DataFrame:
    """Apply the documented duplicate rule to repeated (user, item) rows:
    `last`/`first` keep the latest/earliest by (timestamp, file row), `max`
    keeps the highest rating, `sum` adds ratings (latest timestamp), and
    `error` refuses."""
    if rule not in DUPLICATE_RULES:
        raise ValueError(
            f"`data.duplicates` must be one of {DUPLICATE_RULES}. "
            f"Received: {rule!r}"
        )
    if not _may_have_duplicate_pairs(frame):
        return frame
    dup = frame.duplicated(["user", "item"], keep=False)
    if not dup.any():
        return frame
    count = int(frame.duplicated(["user", "item"]).sum())
    if rule == "error":
        first = frame[dup].sort_values("_row").iloc[0]
        # Read the ids from their own columns: the row Series `first` is
        # upcast to float when the frame mixes int and float columns.
        user = frame.at[first.name, "user"]
        item = frame.at[first.name, "item"]
        rows = frame.loc[
            (frame["user"] == user) & (frame["item"] == item), "_row"
        ].to_numpy()
        raise ValueError(
            f"{path}: {count} duplicate (user, item) rows; e.g. user "
            f"{runs.plain(user)!r} and item {runs.plain(item)!r} at data rows "
            f"{(rows + 1).tolist()}. Set `data.duplicates` to one of "
            f"{DUPLICATE_RULES[:-1]} to resolve them."
        )
    logger.info("resolving %d duplicate (user, item) rows by %r", count, rule)
    if rule == "sum":
        agg = {"_row": "max", "timestamp": "max"}
        if "rating" in frame:
            agg["rating"] = "sum"
        return frame.groupby(["user", "item"], as_index=False, sort=False).agg(
            agg
        )
    if rule == "max" and "rating" in frame:
        keys = ["rating", "timestamp", "_row"]
    else:
        keys = ["timestamp", "_row"]
    ordered = frame.sort_values(keys, kind="stable")
    keep = "first" if rule == "first" else "last"
    return ordered.drop_duplicates(["user", "item"], keep=keep).sort_values(
        "_row"
    )


def _k_core(frame: pd.DataFrame, min_user: int, min_item: int):
    """Drop users and items below the thresholds until nothing changes
    (removing items can push users under theirs, and back)."""
    if min_user <= 1 and min_item <= 1:
        return frame
    for _ in range(100):
        before = len(frame)
        if min_item > 1:
            counts = frame["item"].map(frame["item"].value_counts())
            frame = frame[counts.to_numpy() >= min_item]
        if min_user > 1:
            counts = frame["user"].map(frame["user"].value_counts())
            frame = frame[counts.to_numpy() >= min_user]
        if len(frame) == before:
            break
    logger.info(
        "k-core (users>=%d, items>=%d): rows=%d",
        min_user,
        min_item,
        len(frame),
    )
    return frame


def _may_have_duplicate_pairs(frame) -> bool:
    """False when no (user, item) pair repeats, decided by sorting one int64
    key (much faster than hashing two columns on millions of rows); True
    when one may repeat, or when the ids are not integers."""
    key = _mixed_radix_key([frame["item"].to_numpy(), frame["user"].to_numpy()])
    if key is None:
        return True
    key.sort()
    return bool(np.any(key[1:] == key[:-1]))


def _lexsort(keys):
    """`np.lexsort(keys)` (last key primary, stable), computed as one stable
    argsort of a mixed-radix int64 key when the keys' ranges fit: about 5-10x
    faster on millions of rows, and the same order."""
    key = _mixed_radix_key(keys)
    return np.lexsort(keys) if key is None else np.argsort(key, kind="stable")


def _mixed_radix_key(keys):
    """One int64 per row that orders like the tuple (keys[-1], ..., keys[0]),
    or None when a key is not integer or the ranges need more than 63 bits
    even after replacing keys by their dense ranks."""
    keys = [np.asarray(k) for k in keys]
    if (
        not keys
        or len(keys[0]) == 0
        or not all(np.issubdtype(k.dtype, np.integer) for k in keys)
    ):
        return None
    lows = [int(k.min()) for k in keys]
    highs = [int(k.max()) for k in keys]
    if max(highs) >= 2**63:  # uint64 beyond int64
        return None
    spans = [high - low + 1 for high, low in zip(highs, lows)]
    ranked = set()
    while math.prod(spans) >= 2**63:
        widest = max(
            (i for i in range(len(keys)) if i not in ranked),
            key=lambda i: spans[i],
            default=None,
        )
        if widest is None:
            return None
        # Dense ranks keep the order and shrink the range to the distinct
        # values (e.g. nanosecond timestamps).
        _, keys[widest] = np.unique(keys[widest], return_inverse=True)
        lows[widest], spans[widest] = 0, int(keys[widest].max()) + 1
        ranked.add(widest)
    key = np.zeros(len(keys[0]), np.int64)
    scale = 1
    for k, low, span in zip(keys, lows, spans):
        key += (k.astype(np.int64) - low) * scale
        scale *= span
    return key


def _ceil_fraction(n, fraction: float):
    """ceil(n * fraction) without float error (0.07 * 100 is 7.000000000000001
    in floating point, which a plain ceil turns into 8)."""
    return np.ceil(np.round(np.asarray(n) * fraction, 9)).astype(np.int64)


def _load_features(cfg, ids: np.ndarray, kind: str) -> FeatureTable | None:
    if cfg.path is None:
        return None
    try:
        return _feature_table(cfg, ids, kind)
    except UnicodeError as e:  # pyarrow decodes text lazily
        raise _encoding_error(
            cfg.path, cfg.encoding, e, f"data.{kind}_features"
        ) from None


def _feature_table(cfg, ids, kind):
    path = pathlib.Path(cfg.path)
    frame = read_table(
        path,
        cfg.format,
        cfg.sep,
        cfg.header,
        cfg.column_names,
        cfg.encoding,
        setting=f"data.{kind}_features",
    )
    columns = (
        [cfg.id_col]
        + list(cfg.categorical)
        + list(cfg.multivalued)
        + list(cfg.numeric)
        + list(cfg.text)
    )
    present = [str(c) for c in frame.columns]
    for col in columns:
        if col not in frame.columns:
            raise ValueError(
                f"{path}: {kind} feature column `{col}` not found. Columns "
                f"in the file: {present}."
            )
    frame = frame.reset_index(drop=True)
    for col in cfg.numeric:
        frame[col] = _to_float(
            frame[col], path, col, 2 if cfg.header else 1, allow_missing=True
        )
    frame = frame.drop_duplicates(cfg.id_col, keep="last")
    feature_ids = _numeric_ids(frame[cfg.id_col])
    index = pd.Index(ids).get_indexer(feature_ids.to_numpy())
    rows = frame[index >= 0]
    index = index[index >= 0]
    n = len(ids)
    missing = np.ones(n, bool)
    missing[index] = False
    blocks, names, stats = [], [], {}
    for col in cfg.categorical:
        values = rows[col].astype(str).to_numpy()
        block, vocab = _one_hot(values, index, n, cfg.max_categories)
        blocks.append(block)
        names += [f"{col}={v}" for v in vocab]
        stats[col] = {"type": "categorical", "vocabulary": vocab}
    for col in cfg.multivalued:
        lists = (
            rows[col]
            .fillna("")
            .astype(str)
            .str.split(cfg.multivalued_sep, regex=False)
        )
        exploded = lists.explode()
        owner = np.repeat(index, lists.str.len().to_numpy())
        block, vocab = _one_hot(
            exploded.to_numpy().astype(str), owner, n, cfg.max_categories
        )
        blocks.append(block)
        names += [f"{col}={v}" for v in vocab]
        stats[col] = {"type": "multivalued", "vocabulary": vocab}
    for col in cfg.numeric:
        values = rows[col].to_numpy(np.float64)
        block, info = _standardise_numeric(values, index, n)
        blocks.append(block)
        names += [col, f"{col}_missing"]
        stats[col] = {"type": "numeric", **info}
    for col in cfg.text:
        block = _hashed_text(rows[col], index, n, cfg.text_buckets)
        blocks.append(block)
        names += [f"{col}#{b}" for b in range(cfg.text_buckets)]
        stats[col] = {"type": "text", "buckets": cfg.text_buckets}
    covered = 1.0 - missing.mean() if n else 1.0
    if covered < cfg.min_coverage:
        raise ValueError(
            f"{path}: the {kind} feature file has rows for only "
            f"{n - int(missing.sum())} of the {n} {kind}s ({covered:.0%}; "
            f"`data.{kind}_features.min_coverage` is "
            f"{cfg.min_coverage:.0%}). Its id column "
            f"`{cfg.id_col}` does not match the {kind} ids of the data "
            f"(e.g. {runs.plain(ids[0])!r}): fix "
            f"`data.{kind}_features.id_col`, or set "
            f"`data.{kind}_features.path=None`."
        )
    blocks.append(missing[:, None].astype(np.float32))
    names.append("_missing_row")
    values = np.concatenate(blocks, axis=1).astype(np.float32)
    logger.info(
        "%s features from %s: columns=%d, %d of %d %ss have no row",
        kind,
        path.name,
        values.shape[1],
        int(missing.sum()),
        n,
        kind,
    )
    return FeatureTable(
        values=values, names=names, missing=missing, stats=stats
    )


def _one_hot(values, owner, n, max_categories):
    counts = pd.Series(values).value_counts(sort=True)
    counts = counts[counts.index != ""]
    vocab = sorted(counts.index[:max_categories].tolist())
    col = pd.Index(vocab).get_indexer(values)
    ok = col >= 0
    block = np.zeros((n, len(vocab)), np.float32)
    block[owner[ok], col[ok]] = 1.0
    return block, vocab


def standardise_numeric(values):
    """`(len(values), 2)` float32 columns for one numeric feature: the
    z-score (of log1p when the values are non-negative and skewed) and a
    missing flag (NaN/inf rows get z = 0 and flag 1), plus the statistics
    used, so the same transform can be reported and re-applied."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    v = values[finite]
    use_log = bool(v.size and v.min() >= 0 and _skew(v) > 2.0)
    if use_log:
        v = np.log1p(v)
    mean = float(v.mean()) if v.size else 0.0
    std = float(v.std()) if v.size and v.std() > 0 else 1.0
    out = np.zeros((len(values), 2), np.float32)
    x = np.log1p(values[finite]) if use_log else values[finite]
    out[finite, 0] = (x - mean) / std
    out[~finite, 1] = 1.0
    return out, {"mean": mean, "std": std, "log1p": use_log}


def _standardise_numeric(values, owner, n):
    """`standardise_numeric` scattered to rows `owner` of `n`; rows with no
    value are flagged missing."""
    block = np.zeros((n, 2), np.float32)
    block[:, 1] = 1.0
    columns, stats = standardise_numeric(values)
    block[owner] = columns
    return block, stats


def _skew(v):
    std = v.std()
    return 0.0 if std == 0 else float(np.mean(((v - v.mean()) / std) ** 3))


def _hashed_text(col, owner, n, buckets):
    """Bag of lower-cased words hashed into `buckets` columns, L2-normalised
    per row. crc32 is stable across processes, unlike Python's `hash`."""
    tokens = col.fillna("").astype(str).str.lower().str.findall(r"[a-z0-9]+")
    exploded = tokens.explode().dropna()
    rows = np.repeat(owner, tokens.str.len().to_numpy())
    unique, inverse = np.unique(
        exploded.to_numpy().astype(str), return_inverse=True
    )
    bucket_of = np.array(
        [zlib.crc32(t.encode()) % buckets for t in unique], np.int64
    )
    block = np.zeros((n, buckets), np.float32)
    np.add.at(block, (rows, bucket_of[inverse]), 1.0)
    norm = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norm, 1e-12)
