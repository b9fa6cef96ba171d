"""The two benchmark protocols of BENCHMARK.md, as data plus their rules.

- P1, "ml-latest-small chrono": the shipped MovieLens small ratings, split
  per user by time (`data.split(method="chrono")`). Tune on valid, then
  report a model refit on train + valid (`Split.refit = True`).
- P2, "ml-1m_clean": the published DiffRec split of ML-1M, read from the
  shared datasets folder (never copied into the repository: its licence
  forbids redistribution). Tune on valid, report the same model trained on
  train only (`Split.refit = False`), as the paper's code does.
- P3, "amazon chrono": Amazon Musical Instruments 5-core reviews (He &
  McAuley 2016) from the shared folder, with P1's rules (per-user
  chronological 70 / 10 / 20 by review time, refit on train + valid): a
  third dataset, from another domain, so that no result is tuned to one.

`history_for_test`, `exclude_for_test` and `exclude_for_valid` encode which
interactions a reported model is fit on and which items are masked, so
benchmark code never re-derives those rules.
"""

import dataclasses
import pathlib

import numpy as np

import config
import data

P2_FILES = ("train_list.npy", "valid_list.npy", "test_list.npy")
P2_RELATIVE = pathlib.Path("datasets") / "diffrec" / "ml-1m_clean"


class DatasetUnavailable(FileNotFoundError):
    """A benchmark dataset is not where it was looked for."""


@dataclasses.dataclass(frozen=True)
class Split:
    """A protocol's train / valid / test interactions and its report rule.

    Args:
        train: `Interactions` used to fit while tuning.
        valid: `Interactions` scored while tuning (train items masked).
        test: `Interactions` scored for the report.
        name: short protocol name, e.g. `"P1"`.
        description: one line saying where the data came from.
        refit: `True` when the reported model is refit on train + valid
            (P1); `False` when it is the tuned model trained on train only,
            with history train and train + valid masked (P2).
        dataset: the `data.Dataset` the split came from (raw ids, item
            features), or `None` for data read as bare index pairs.
    """

    train: data.Interactions
    valid: data.Interactions
    test: data.Interactions
    name: str
    description: str
    refit: bool
    dataset: object = dataclasses.field(default=None, repr=False)

    @property
    def num_users(self) -> int:
        return self.train.num_users

    @property
    def num_items(self) -> int:
        return self.train.num_items

    def sizes(self) -> dict:
        """Counts for logs and reports."""
        return {
            "num_users": int(self.num_users),
            "num_items": int(self.num_items),
            "train": len(self.train),
            "valid": len(self.valid),
            "test": len(self.test),
        }


def load_p1(ratings_path=None) -> Split:
    """P1: ml-latest-small, per-user chronological 70 / 10 / 20 split.

    Every rating is one implicit interaction; items are indexed in
    ascending movieId order; expected sizes 70,061 / 10,358 / 20,417.

    Args:
        ratings_path: optional path to a `ratings.csv` in the MovieLens
            layout. Defaults to the copy shipped in `data/` (read with its
            item features); a custom file is read without item features.

    Returns:
        A `Split` with `refit=True`.
    """
    cfg = config.DataConfig()
    if ratings_path is not None:
        cfg = dataclasses.replace(
            cfg,
            path=pathlib.Path(ratings_path),
            item_features=config.FeatureFileConfig(),
        )
    dataset = data.load(cfg)
    train, valid, test = data.split(
        dataset.interactions,
        method="chrono",
        valid_fraction=0.1,
        test_fraction=0.2,
        seed=0,
    )
    return Split(
        train=train,
        valid=valid,
        test=test,
        name="P1",
        description=(
            f"ml-latest-small chrono: {pathlib.Path(cfg.path).name}, per "
            "user by (timestamp, item): last 20% test, 10% before valid; "
            "report = refit on train+valid"
        ),
        refit=True,
        dataset=dataset,
    )


def load_p3(reviews_path=None) -> Split:
    """P3: Amazon Musical Instruments 5-core, per-user chronological 70 /
    10 / 20 split by review time (P1's rules; `refit=True`).

    Args:
        reviews_path: optional path to `Musical_Instruments.json` (JSON
            lines with `reviewerID`, `asin`, `overall`, `unixReviewTime`).
            Defaults to the shared datasets folder's copy.

    Raises:
        DatasetUnavailable: the file is missing.
    """
    cfg = config.amazon().data
    if reviews_path is not None:
        cfg = dataclasses.replace(cfg, path=pathlib.Path(reviews_path))
    if not pathlib.Path(cfg.path).is_file():
        raise DatasetUnavailable(
            f"P3 data not found: {cfg.path}. Pass `reviews_path=` to "
            f"`load_p3`, or set {config.SHARED_ENV} to the shared folder "
            "that holds datasets/amazon-musical-instruments."
        )
    dataset = data.load(cfg)
    train, valid, test = data.split(
        dataset.interactions,
        method="chrono",
        valid_fraction=0.1,
        test_fraction=0.2,
        seed=0,
    )
    return Split(
        train=train,
        valid=valid,
        test=test,
        name="P3",
        description=(
            "Amazon Musical Instruments 5-core chrono: per user by (review "
            "time, item): last 20% test, 10% before valid; report = refit "
            "on train+valid"
        ),
        refit=True,
        dataset=dataset,
    )


def load_p2(folder=None) -> Split:
    """P2: the DiffRec ML-1M split, `(user, item)` pairs used as given.

    Args:
        folder: optional folder holding `train_list.npy`, `valid_list.npy`
            and `test_list.npy`. Defaults to
            `$RECSYS_SHARED/datasets/diffrec/ml-1m_clean` when the variable
            is set, else `<repo>/../shared/datasets/diffrec/ml-1m_clean`.

    Returns:
        A `Split` with `refit=False`. `num_users` / `num_items` are the
        largest ids + 1 (5,949 / 2,810); `ts` is the row order across the
        three files, so their order is kept.

    Raises:
        DatasetUnavailable: a file is missing.
    """
    folder = p2_folder() if folder is None else pathlib.Path(folder)
    missing = [name for name in P2_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetUnavailable(
            f"P2 data not found: {', '.join(missing)} missing in {folder} "
            f"(looked for {', '.join(P2_FILES)}). Pass `folder=` to "
            f"`load_p2`, or set {config.SHARED_ENV} to the shared folder that "
            f"holds {P2_RELATIVE}. It is not shipped with the project: its "
            "licence forbids redistribution."
        )
    pairs = [_read_pairs(folder / name) for name in P2_FILES]
    num_users = int(max(p[:, 0].max(initial=-1) for p in pairs)) + 1
    num_items = int(max(p[:, 1].max(initial=-1) for p in pairs)) + 1
    parts, offset = [], 0
    for p in pairs:
        parts.append(
            data.Interactions(
                user=p[:, 0],
                item=p[:, 1],
                value=np.ones(len(p), np.float32),
                ts=np.arange(offset, offset + len(p), dtype=np.int64),
                num_users=num_users,
                num_items=num_items,
            )
        )
        offset += len(p)
    train, valid, test = parts
    return Split(
        train=train,
        valid=valid,
        test=test,
        name="P2",
        description=(
            "ml-1m_clean (DiffRec, SIGIR 2023) published split; report = "
            "model trained on train, history train, train+valid masked"
        ),
        refit=False,
    )


def p2_folder() -> pathlib.Path:
    """Where `load_p2` looks by default (see its docstring)."""
    return config.shared_root() / P2_RELATIVE


def load_protocol(name: str, path=None) -> Split:
    """`load_p1(path)` for `"p1"`, `load_p2(path)` for `"p2"`,
    `load_p3(path)` for `"p3"`."""
    loaders = {"p1": load_p1, "p2": load_p2, "p3": load_p3}
    key = str(name).lower()
    if key not in loaders:
        raise ValueError(
            f"`name` must be one of {sorted(loaders)}. Received: {name!r}"
        )
    return loaders[key](path)


def history_for_test(split: Split):
    """Interactions the reported model is fit on and scores from.

    train + valid when `split.refit` (P1), train alone otherwise (P2).
    """
    return split.train.concat(split.valid) if split.refit else split.train


def exclude_for_test(split: Split):
    """Items masked when scoring test: train + valid, in both protocols."""
    return split.train.concat(split.valid).to_csr(binary=True)


def exclude_for_valid(split: Split):
    """Items masked when scoring valid while tuning: train."""
    return split.train.to_csr(binary=True)


def _read_pairs(path):
    pairs = np.load(path)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(
            f"{path} must hold an (n, 2) array of (user, item) ids. "
            f"Received: shape={pairs.shape}"
        )
    if not np.issubdtype(pairs.dtype, np.integer) or (
        pairs.size and pairs.min() < 0
    ):
        raise ValueError(
            f"{path} must hold non-negative integer ids. Received: "
            f"dtype={pairs.dtype}, min={pairs.min() if pairs.size else None}"
        )
    return pairs.astype(np.int64)
