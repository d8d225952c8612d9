#!/usr/bin/env bash
# Creates .venv with Python >= 3.12 and installs gca_jax (+ test extras). Idempotent.
# Usage: source-free; `bash scripts/setup.sh` prints the venv's python path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
find_python() {
  for c in "${PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  for c in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.1[2-9]*/bin/python3; do
    if [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
  PY=$(find_python) || { echo "error: gca_jax needs Python >= 3.12 (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
  echo "creating .venv with $PY ($("$PY" --version))" >&2
  rm -rf .venv
  "$PY" -m venv .venv
fi
stamp=.venv/.gca_jax_installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".[test]" >&2
  touch "$stamp"
fi
echo "$PWD/.venv/bin/python"
