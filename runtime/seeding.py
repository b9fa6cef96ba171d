"""One seed for Python, NumPy, Keras and the active backend, without
importing TensorFlow under JAX or torch.

`keras.utils.set_random_seed` also seeds TensorFlow whenever it is
installed, which imports it (seconds of start-up, hundreds of MiB and its
log lines) even when the backend is JAX or torch. This does the same for
the backend in use only.
"""

import random

import keras
import numpy as np

# TODO(keras 3.15): no public API resets the global SeedGenerator without
# importing TensorFlow; these two names are what set_random_seed sets.
from keras.src.backend.common import global_state
from keras.src.random import seed_generator

_GLOBAL_RANDOM_SEED = "global_random_seed"


def set_seed(seed: int) -> None:
    """Seed Python's `random`, NumPy, the global Keras `SeedGenerator` (used
    by initializers and `keras.random` calls without a seed) and the
    backend's own generator (TensorFlow or torch)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(
            f"`seed` must be an int. Received: {seed!r} ({type(seed)})"
        )
    backend = keras.backend.backend()
    if backend == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    global_state.set_global_attribute(_GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(
        seed_generator.GLOBAL_SEED_GENERATOR, None
    )
    random.seed(seed)
    np.random.seed(seed)
    if backend == "torch":
        import torch  # the backend's own package, loaded by Keras already

        torch.manual_seed(seed)
