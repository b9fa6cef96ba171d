"""Shared pytest setup: backend, seeds, the `large` marker, tiny data.

The backend comes from `KERAS_BACKEND` (CI runs the suite once per backend,
see `tests/run_backends.sh`); it defaults to JAX here, as in `config.py`.
The repository root is on the import path through `pyproject.toml`
(`pythonpath = ["."]`).
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("KERAS_BACKEND", "jax")

try:  # torch first: importing it after TensorFlow can crash on some builds
    import torch  # noqa: F401
except ImportError:
    pass

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from runtime import seeding  # noqa: E402
from runtime import startup  # noqa: E402

startup.prepare()


def pytest_addoption(parser):
    parser.addoption(
        "--run-large",
        action="store_true",
        help="also run tests marked `large` (slow, real-size data)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="large test: pass --run-large to run it")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


def large_on(*backends):
    """`pytest.mark.large` when the current Keras backend is one of
    `backends` (a test too slow there for every run), else no mark."""
    if keras.backend.backend() in backends:
        return pytest.mark.large
    return pytest.mark.usefixtures()


@pytest.fixture(autouse=True)
def _seed():
    seeding.set_seed(0)
    yield


def write_ratings(path, num_users=24, num_items=30, per_user=12, seed=0):
    """A tiny ratings CSV with structure a model can learn: users in two
    groups, each preferring one half of the catalog; ids are not contiguous
    (raw ids = 100 + 3 * index) so id mapping is exercised."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    half = num_items // 2
    for u in range(num_users):
        group = u % 2
        liked = rng.choice(half, size=per_user, replace=False) + group * half
        for j, item in enumerate(liked):
            rows.append(
                (
                    u + 1,
                    100 + 3 * int(item),
                    float(rng.integers(1, 6)),
                    1_000_000 + 1000 * j + u,
                )
            )
    frame = pd.DataFrame(
        rows, columns=["userId", "movieId", "rating", "timestamp"]
    )
    frame.to_csv(path, index=False)
    return frame


def tiny_config(tmp_path, *extra):
    """`config.tiny()` pointed at a fresh synthetic dataset in tmp_path,
    with the two-tower model: most action tests were written against it
    (the shipped default, SASRec, runs through every action in
    tests/test_main.py and tests/eval/test_quality.py)."""
    import config

    ratings = tmp_path / "ratings.csv"
    if not ratings.exists():
        write_ratings(ratings)
    sets = [
        f"data.path={str(ratings)!r}",
        "data.item_features.path=None",
        f"output.runs_dir={str(tmp_path / 'runs')!r}",
        "train.batch_size=32",
        "train.epochs=2",
        "model.name='two_tower'",
    ]
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        # XLA compiles each fit/predict shape for seconds, which dominates
        # runs this small (3.5x slower end to end); tf.function graphs
        # still run. The CLI smoke test keeps the XLA path covered on TF.
        sets.append("train.jit_compile=False")
    sets += list(extra)
    return config.override(config.tiny(), sets)


@pytest.fixture
def tiny_cfg(tmp_path):
    return tiny_config(tmp_path)


def with_item_features(cfg, tmp_path):
    """`cfg` with an item feature file for `write_ratings` data: the group
    each item belongs to (items 0-14 vs 15-29, raw id 100 + 3 * index) as
    a genre, which separates the two user groups perfectly."""
    import pandas as pd

    import config

    ids = 100 + 3 * np.arange(30)
    genres = np.where(np.arange(30) < 15, "Comedy|Drama", "Horror")
    path = tmp_path / "items.csv"
    pd.DataFrame({"movieId": ids, "genres": genres}).to_csv(path, index=False)
    return config.override(
        cfg,
        [
            f"data.item_features.path={str(path)!r}",
            "data.item_features.id_col='movieId'",
            "data.item_features.multivalued=('genres',)",
            "data.item_features.text=()",
        ],
    )
