"""Process start-up for every action: quiet, and never the slow path.

`prepare()` runs once in `main.py`, right after the Keras backend is chosen
and before any model is built.

- Under JAX or torch, Keras itself never imports TensorFlow: Keras checks
  `tf.available` while saving a model, which imports TensorFlow when it is
  installed (seconds of start-up, hundreds of MiB and its log lines). Here
  that check answers "available" only once something else (a feature that
  needs TensorFlow, such as keras-hub's tokenizers) has imported it.
"""

import sys

import keras

# TODO(keras 3.15): Keras has no switch for this; its lazy TensorFlow
# module is private (keras/src/utils/module_utils.py).
from keras.src.utils import module_utils


class _ImportedTensorFlow(module_utils.LazyModule):
    """Keras's lazy `tensorflow` module that never imports TensorFlow to
    answer `available`."""

    @property
    def available(self):
        if self._available is None and "tensorflow" not in sys.modules:
            return False  # not cached: a later import is still seen
        return module_utils.LazyModule.available.fget(self)


def prepare() -> None:
    """Start-up settings for the active Keras backend (idempotent)."""
    if keras.backend.backend() != "tensorflow":
        module_utils.tensorflow.__class__ = _ImportedTensorFlow
