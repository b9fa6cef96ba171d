"""Shared pytest setup: import path, backend, seeds, the `large` marker.

The backend comes from `KERAS_BACKEND` (CI runs the suite once per backend,
see `tests/run_backends.sh`); it defaults to JAX here, as in `config.py`.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "jax")

try:  # torch first: importing it after TensorFlow can crash on some builds
    import torch  # noqa: F401
except ImportError:
    pass

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--run-large",
        action="store_true",
        help="also run tests marked `large` (slow, real-size data)",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "large: slow test on real-size data; needs --run-large"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="large test: pass --run-large to run it")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
