"""The one registry of recommender families, and the one interface they share.

Every model family and every baseline is a `Family`: the `model.name` that
selects it, a builder `(cfg, dataset) -> unfitted Recommender`, the config
section that holds its hyper-parameters and, for Keras families, the loss
`model.loss="auto"` resolves to. `recommenders/families.py` registers them
all; `build(cfg, dataset)` is the only door through which actions get a
recommender, and `load(path)` the only way back from a saved folder.

The interface (`Recommender`) is what evaluation, prediction, serving and the
benchmark rely on; nothing outside this package asks which family it has.
"""

import dataclasses
import pathlib
from typing import Callable
from typing import Protocol
from typing import runtime_checkable

import numpy as np

from runtime import runs

KINDS = ("keras", "baseline", "reranker")
INFO_FILE = "recommender.json"  # written by Keras families and rerankers


@runtime_checkable
class Recommender(Protocol):
    """What every fitted model offers.

    - `fit(train, valid=None, **refit)`: train on `train` (`data.
      Interactions`); with `valid`, select (e.g. the epoch) on it. A refit
      on more data passes back what `refit_params()` returned.
    - `score(user_idx, item_idx=None)`: `(len(user_idx), num_items or
      len(item_idx))` float32, higher = better, from the history given to
      `fit`.
    - `refit_params()`: dict of what a refit should reuse (`{}` if none).
    - `save(path)` / `load(path)`: a folder that `recommenders.load` reads
      back on any Keras backend.
    - `metadata()`: JSON-ready description (family, settings, selection).

    Dot-product models also offer `has_vectors = True`,
    `user_embeddings(user_idx)` and `item_embeddings()` (used by FAISS
    retrieval and serving), and pairwise scorers `score_pairs(users,
    items)`.
    """

    def fit(self, train, valid=None, **refit) -> dict: ...

    def score(self, user_idx, item_idx=None) -> np.ndarray: ...

    def refit_params(self) -> dict: ...

    def save(self, path) -> None: ...

    def metadata(self) -> dict: ...


@dataclasses.dataclass(frozen=True)
class Family:
    """One registered recommender family.

    Args:
        name: the `model.name` that selects it.
        kind: `"keras"`, `"baseline"` or `"reranker"`.
        build: `(cfg, dataset) -> Recommender`, fresh and unfitted; `cfg` is
            the whole `Config` (the family reads its own section),
            `dataset` the loaded `data.Dataset`.
        section: the config section(s) with its hyper-parameters, e.g.
            `"model"`, `"model.baseline_params"`, `"persona"`.
        summary: one line for docs and `--help`.
        default_loss: the loss `model.loss="auto"` means (Keras families).
        pointwise: its scores are calibrated logits of single (user, item)
            pairs, so the validation run also evaluates it as a scorer.
        memory: optional `(cfg, num_users, num_items, nnz) -> bytes`, a
            rough peak of fitting it (shown by `check_data`).
    """

    name: str
    kind: str
    build: Callable
    section: str
    summary: str
    default_loss: str | None = None
    pointwise: bool = False
    memory: Callable | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"`kind` must be one of {KINDS}. Received: {self.kind!r}"
            )


_FAMILIES: dict[str, Family] = {}
_LOADERS: dict[str, Callable] = {}


def register(family: Family) -> Family:
    """Add `family`; a name can be registered once."""
    if family.name in _FAMILIES:
        raise ValueError(f"A family named {family.name!r} is registered.")
    _FAMILIES[family.name] = family
    return family


def register_loader(kind: str, load: Callable) -> None:
    """`load(path) -> Recommender` for folders whose `recommender.json`
    says `"kind": kind` (folders without one are baselines)."""
    _LOADERS[kind] = load


def names(kind=None) -> tuple:
    """Registered `model.name`s (of one `kind`), in registration order."""
    return tuple(
        name
        for name, fam in _FAMILIES.items()
        if kind is None or fam.kind == kind
    )


def get(name) -> Family:
    """The family registered as `name`.

    Raises:
        ValueError: naming the valid choices.
    """
    if name not in _FAMILIES:
        raise ValueError(
            f"Unknown `model.name` {name!r}. Choose one of {sorted(names())}."
        )
    return _FAMILIES[name]


def check_names(cfg) -> None:
    """Check every config field that names a family (`model.name`,
    `persona.first_stage`, `eval.baselines`, `eval.benchmark_models`)
    against the registry, before any data is read.

    Raises:
        ValueError: naming the key, the value and the valid names.
    """
    fields = {
        "model.name": (cfg.model.name,),
        "persona.first_stage": (cfg.persona.first_stage,),
        "eval.baselines": cfg.eval.baselines,
        "eval.benchmark_models": cfg.eval.benchmark_models,
    }
    for key, values in fields.items():
        unknown = [v for v in values if v not in _FAMILIES]
        if unknown:
            raise ValueError(
                f"Config key `{key}` names unknown model(s) {unknown}; "
                f"choose from {sorted(names())}."
            )


def build(cfg, dataset):
    """A fresh, unfitted recommender for `cfg.model.name`."""
    return get(cfg.model.name).build(cfg, dataset)


def load(path, rebuild="python main.py train_production_model"):
    """Load whatever a recommender's `save()` wrote into the folder
    `path`.

    Args:
        rebuild: the command that writes the folder, named in errors.

    Raises:
        FileNotFoundError: no saved model there.
        runs.ArtifactError: a file of it is damaged or incomplete (one line
            naming the file and `rebuild`).
    """
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"No saved model in {path}: run `{rebuild}` first."
        )
    info_path = path / INFO_FILE
    kind = "baseline"
    if info_path.is_file():
        kind = runs.read_json(info_path, rebuild).get("kind", "baseline")
    if kind not in _LOADERS:
        raise ValueError(
            f"{info_path}: unknown recommender kind {kind!r}; known: "
            f"{sorted(_LOADERS)}."
        )
    try:
        return _LOADERS[kind](path)
    except runs.ArtifactError as e:
        raise runs.ArtifactError(f"{e} Rebuild it with `{rebuild}`.") from None
