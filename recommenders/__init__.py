"""Recommenders behind one interface: the registry of families, the Keras
wrapper and the persona reranker.

`recommenders.build(cfg, dataset)` is the only way actions get a fresh
recommender for `cfg.model.name`, `recommenders.load(path)` the only way
back from a saved folder, and `recommenders.names()` lists what
`model.name` may be. Importing this package registers every family
(`recommenders/families.py`).
"""

from recommenders import families  # noqa: F401  (registers the families)
from recommenders.registry import Family
from recommenders.registry import Recommender
from recommenders.registry import build
from recommenders.registry import check_names
from recommenders.registry import get
from recommenders.registry import load
from recommenders.registry import names
from recommenders.registry import register

__all__ = [
    "Family",
    "Recommender",
    "build",
    "check_names",
    "get",
    "load",
    "names",
    "register",
]
