#!/usr/bin/env bash
# Session 8: stage branch `ret` for the device tool (which sends /work/main): its tracked files,
# data/sotu and the long held-out stream into /work/main/.ret (ignored via .git/info/exclude),
# with docs/results/session8_2026-12-03/trainer_mix_spec.patch applied there (train.py reads the
# multi-key / 2-hop mix fields only with it). Then: run(carry=[".ret", ".whl"], command=
#   "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/.ret || exit; cd .ret; bash scripts/gpu/s8_call1.sh")
#   bash scripts/gpu/s8_stage.sh [WORKTREE] [HELDOUT_DIR]
set -euo pipefail
WT=${1:-/work/wt_ret}; HELD=${2:-$WT/data/heldout_long}; DST=/work/main/.ret
grep -qx '/.ret/' /work/main/.git/info/exclude || echo '/.ret/' >> /work/main/.git/info/exclude
[ -d "$HELD" ] || (cd "$WT" && bash scripts/gpu/s8_heldout.sh "$HELD")
rm -rf "$DST" && mkdir -p "$DST/data"
(cd "$WT" && git ls-files | grep -v '^checkpoints/recall_drt/' | tar -cf - -T -) | tar -xf - -C "$DST"
cp -r "$WT/data/sotu" "$DST/data/" && cp -r "$HELD" "$DST/data/heldout_long"
(cd "$DST" && patch -p1 -s < docs/results/session8_2026-12-03/trainer_mix_spec.patch)
du -sh "$DST"
