#!/usr/bin/env bash
# GPU call 2: ablations + same-recipe baselines (parallel) while the shipped DRT is evaluated
# far beyond its training length with the streaming engine; then the baselines at 1x / 4x.
set -u
OUT=${OUT:-/tmp/out}; RUNS=/tmp/recall_runs2; mkdir -p $OUT $RUNS
XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 PYTHONUNBUFFERED=1 timeout ${EVAL_SECS:-370} \
  bash -c "python3 scripts/recipe/eval_long.py --model checkpoints/recall_drt \
  --lengths 1008,64512,1008000 --samples 8 --batch 8 --segment_len 16384 \
  --out $OUT/long_drt.json; python3 scripts/recipe/eval_long.py --model checkpoints/recall_drt \
  --lengths 4032000 --samples 2 --batch 2 --segment_len 16384 --out $OUT/long_drt4m.json" \
  > $RUNS/long_drt.log 2>&1 &
EV=$!
FRAC=0.08 STEPS=1000 EVAL_EVERY=100 KEEP_CKPT=0 KEEP_MODELS=0 RUNS=$RUNS \
  bash scripts/recipe/sweep.sh scripts/recipe/sweep2.txt ${TRAIN_SECS:-220}
for b in b1_swa b2_landmark; do
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 timeout 40 python3 scripts/recipe/eval_long.py \
    --model $RUNS/$b/final --lengths 1008,4032 --samples 8 --batch 8 --full \
    --out $RUNS/long_$b.json > $RUNS/long_$b.log 2>&1 &
done
wait
cat $RUNS/long_*.log | grep length
cd $RUNS && tar czf $OUT/curves2.tar.gz */curve.json *.log long_*.json
