#!/usr/bin/env bash
# Installs the declared minimum versions (every `pkg>=floor` of pyproject.toml's dependencies and
# train / eval / test extras, as `pkg==floor`) into a fresh venv and runs a subset of the tests.
# Usage: bash scripts/check_floors.sh [pytest args]   (default: the tests below)
#   VENV=/tmp/gca_floors (recreated)   PYTHON=/path/to/python3.12
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-/tmp/gca_floors}
find_python() {   # as scripts/setup.sh
  for c in "${PYTHON:-}" python3.12 python3.13 python3; do
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
PY=$(find_python) || { echo "error: needs Python >= 3.12 (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
mapfile -t REQS < <("$PY" - <<'PYEOF'
import re, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(p["dependencies"])
for extra in ("train", "eval", "test"):
  reqs += p["optional-dependencies"][extra]
for r in reqs:
  if r.startswith("gca_jax["):
    continue
  m = re.fullmatch(r"([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)>=([^,;\s]+)", r.replace(" ", ""))
  if not m:
    raise SystemExit(f"error: {r!r} in pyproject.toml is not of the form pkg>=floor")
  print(f"{m[1]}=={m[2]}")
PYEOF
)
echo "floors: ${REQS[*]}" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
t0=$(date +%s)
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q "${REQS[@]}" >&2
t1=$(date +%s)
names=$(printf '%s\n' "${REQS[@]}" jaxlib== chex== scipy== tensorstore== protobuf== \
  | sed 's/\[.*\]//; s/==.*//; s/[-_.]/[-_.]/g' | paste -sd'|')
"$VENV/bin/python" -m pip freeze 2>/dev/null | grep -iE "^($names)==" >&2
if [ $# -eq 0 ]; then
  set -- tests/test_layers.py tests/test_drt.py tests/test_train.py tests/test_checkpoint.py \
    tests/test_tokenizer.py tests/test_packaging.py
fi
rc=0
JAX_PLATFORMS=cpu PYTHONPATH="$ROOT" "$VENV/bin/python" -m pytest -p no:cacheprovider "$@" || rc=$?
echo "install: $((t1 - t0)) s, tests: $(( $(date +%s) - t1 )) s, rc $rc" >&2
exit $rc
