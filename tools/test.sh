#!/usr/bin/env bash
# The whole test suite: the Python tests (which also drive the real R, the real server on
# loopback and the R package's testthat suite) and R CMD check of the R package.
# Extra arguments go to pytest (e.g. tools/test.sh -k arrow).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${SCBRIDGE_PYTHON:-.venv/bin/python}"
# The R package's python engine (reticulate) and its tests use the same interpreter.
SCBRIDGE_PYTHON="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
export SCBRIDGE_PYTHON
export SCBRIDGE_CLI="${SCBRIDGE_CLI:-$(dirname "$SCBRIDGE_PYTHON")/scbridge}"

status=0
"$PY" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "tools/test.sh: pytest collected no tests; that is a failure, not a pass" >&2
fi
if [ "$status" -ne 0 ]; then exit "$status"; fi

if [ $# -eq 0 ] && [ -f r-package/tools/check.sh ]; then
  if command -v R >/dev/null; then
    bash r-package/tools/check.sh
  elif [ "${SCBRIDGE_REQUIRE_R:-0}" = "1" ]; then
    echo "tools/test.sh: SCBRIDGE_REQUIRE_R=1 but R is not installed" >&2
    exit 1
  else
    echo "tools/test.sh: R not found; skipping R CMD check" >&2
  fi
fi
