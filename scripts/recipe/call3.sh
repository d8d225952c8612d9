#!/usr/bin/env bash
# GPU call 3: the recipe on the larger SOTU corpus (scripts/prepare_sotu.py, carried to the GPU):
# DRT, SWA-only and Landmark trained side by side with the same data, size, flags and budget
# (steps and wall-clock cap), each with a 0.3 share of GPU memory. Models land in $OUT/<name>/final.
set -u
OUT=${OUT:-/tmp/out}; RUNS=/tmp/recall_runs3; mkdir -p $OUT $RUNS
SECS=${TRAIN_SECS:-330}
FLAGS="--steps 4000 --eval_every 200 --log_every 25 --ckpt_every 1000 --max_seconds $SECS \
  --stages 5:8,5:4,5:2,5:1,8:2,8:1,16:1 --p_single 0.4 --p_named 0.5 \
  --train_text data/sotu/train --eval_text data/sotu/valid"
for kind in drt swa landmark; do
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 PYTHONUNBUFFERED=1 \
    python3 scripts/recipe/train_recall.py --out_dir $RUNS/sotu_$kind --model_kind $kind $FLAGS \
    > $RUNS/sotu_$kind.log 2>&1 &
done
wait
for kind in drt swa landmark; do
  tail -n 2 $RUNS/sotu_$kind.log
  mkdir -p $OUT/sotu_$kind && cp -r $RUNS/sotu_$kind/final $RUNS/sotu_$kind/curve.json $OUT/sotu_$kind/
  cp $RUNS/sotu_$kind.log $OUT/
done
