#!/usr/bin/env bash
# The test command: sets up .venv (Python >= 3.12) and runs the whole CPU test suite.
# Two worker processes (pytest-xdist). Extra arguments go to pytest, e.g. `bash scripts/test.sh -k drt`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh | tail -n 1)
export JAX_PLATFORMS=cpu
exec "$PY" -m pytest tests -n 2 "$@"
