#!/usr/bin/env bash
# Runs several train_recall.py variants side by side on one GPU (small models leave it mostly
# idle), then collects curves / the best model under $OUT.
#   bash scripts/recipe/sweep.sh VARIANTS_FILE SECONDS
# VARIANTS_FILE: one "name | extra args" per line.  Each run gets a 1/N share of GPU memory.
set -u
VARIANTS=$1; SECS=${2:-420}
RUNS=${RUNS:-/tmp/recall_runs}; mkdir -p "$RUNS"
N=$(grep -c '|' "$VARIANTS")
FRAC=${FRAC:-$(python3 -c "print(round(0.9/$N, 3))")}
COMMON="--steps ${STEPS:-4000} --eval_every ${EVAL_EVERY:-200} --log_every 25 --ckpt_every 500"
while IFS='|' read -r name extra; do
  name=$(echo $name); [ -z "$name" ] && continue
  XLA_PYTHON_CLIENT_MEM_FRACTION=$FRAC PYTHONUNBUFFERED=1 \
    python3 scripts/recipe/train_recall.py --out_dir "$RUNS/$name" $COMMON \
      --max_seconds "$SECS" $extra > "$RUNS/$name.log" 2>&1 &
done < "$VARIANTS"
wait
python3 scripts/recipe/collect.py "$RUNS" "${OUT:-/tmp/out}"
