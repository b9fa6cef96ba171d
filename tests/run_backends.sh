#!/usr/bin/env bash
# Run the whole test suite once per Keras backend (a process cannot switch
# backend). Extra arguments go to pytest. Exits non-zero if any run fails.
# BACKENDS="jax torch" limits the backends.
set -u
cd "$(dirname "$0")/.." || exit 2
python=${PYTHON:-python}
status=0
for backend in ${BACKENDS:-jax tensorflow torch}; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend "$python" -m pytest -q -p no:cacheprovider "$@" \
    || status=1
done
if [ "$status" -ne 0 ]; then
  echo "=== FAILED on at least one backend"
fi
exit $status
