"""Import TensorFlow without its start-up lines.

TensorFlow's C++ runtime prints a few INFO lines when it loads (oneDNN,
CUDA probing), before it reads `TF_CPP_MIN_LOG_LEVEL`, so no setting
silences them. `import_tensorflow()` imports it with the process's stderr
(file descriptor 2) captured, and writes back every captured line that is
not one of those. It must run before Keras is imported (Keras imports
TensorFlow with it under the TensorFlow backend); this module imports
neither.
"""

import contextlib
import importlib
import os
import re
import sys
import tempfile

NOISE = re.compile(
    r"absl::InitializeLog|port\.cc:\d+\] oneDNN custom operations|"
    r"cudart_stub\.cc|cpu_feature_guard\.cc|This TensorFlow binary is "
    r"optimized|rebuild TensorFlow with the appropriate compiler flags|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer"
)


def import_tensorflow():
    """`import tensorflow` with its start-up noise filtered out of stderr.
    Returns the module (None when TensorFlow is not installed)."""
    with _filtered_stderr():
        try:
            return importlib.import_module("tensorflow")
        except ImportError:
            return None


@contextlib.contextmanager
def _filtered_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read()
                .decode(errors="replace")
                .splitlines()
                if line.strip() and not NOISE.search(line)
            ]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
