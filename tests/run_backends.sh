#!/usr/bin/env bash
# The project's checks: ruff (lint and format), then the whole test suite
# once per Keras backend (a process cannot switch backend). Extra arguments
# go to pytest. Exits non-zero if anything fails.
# BACKENDS="jax torch" limits the backends; LINT=0 skips ruff.
set -u
cd "$(dirname "$0")/.." || exit 2
python=${PYTHON:-python}
status=0
# Huge-page malloc, as main.py sets it for itself (runtime/malloc.py); an
# older glibc ignores the setting.
case "${GLIBC_TUNABLES:-}" in
  *glibc.malloc.hugetlb*) ;;
  *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1" ;;
esac
if [ "${LINT:-1}" != 0 ]; then
  echo "=== ruff"
  "$python" -m ruff check . && "$python" -m ruff format --check . || status=1
fi
for backend in ${BACKENDS:-jax tensorflow torch}; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend "$python" -m pytest -q -p no:cacheprovider "$@" \
    || status=1
done
if [ "$status" -ne 0 ]; then
  echo "=== FAILED on at least one check"
fi
exit $status
