#!/usr/bin/env bash
# Session 10, GPU call 3 (one H200; repository root; wheels on PYTHONPATH; data/sotu/valid,
# data/sotu/train and data/text20m carried):
# (a) configs/drt_20m_text.py again with the curriculum gate at 0.6 and the stages
#     5:8,5:2,5:1,16:1,64:1 (call 2's run stayed at 16 chunks: the named multi-query answers held
#     the gate below 0.8), exported, single-needle grid at 1x, 64x, 1000x of 4032 (s10_call2.sh's part a);
# (b) meanwhile the Landmark and SWA-only baselines of configs/multikey_tiny.py (same data, steps
#     and budget as call 1's DRTs), exported, multi-key (8, 16) and 2-hop at 1x.
export PYTHONUNBUFFERED=1
R=/tmp/r3; mkdir -p $R/exp
( export XLA_PYTHON_CLIENT_MEM_FRACTION=0.2
  for k in landmark swa; do
    timeout -s TERM ${TRAIN_S:-360} python3 train.py --config configs/multikey_tiny_$k.py \
      --config.data.num_workers=3 --config.run_dir=runs/mk3_$k > $R/train_mk_$k.log 2>&1 &
  done
  wait
  for k in landmark swa; do
    python3 -m gca_jax.export --run_dir runs/mk3_$k --out $R/exp/mk_$k --dtype bfloat16 > $R/export_$k.log 2>&1
    cp runs/mk3_$k/metrics.jsonl $R/metrics_mk_$k.jsonl
  done
  E="python3 eval.py --task passkey_grid --formats official --eval_path data/sotu/valid --progress=false --segment_len 8064 --trials 4 --batch_size 20 --lengths 1008"
  for k in landmark swa; do
    ( timeout -s TERM 100 $E --model_dir $R/exp/mk_$k --kinds multikey --num_keys 8 --out $R/mk_${k}_mk8.json > $R/mk_${k}_mk8.log 2>&1
      timeout -s TERM 60 $E --model_dir $R/exp/mk_$k --kinds multikey --num_keys 16 --out $R/mk_${k}_mk16.json > $R/mk_${k}_mk16.log 2>&1
      timeout -s TERM 60 $E --model_dir $R/exp/mk_$k --kinds 2hop --out $R/mk_${k}_2hop.json > $R/mk_${k}_2hop.log 2>&1 ) &
  done
  wait
  tar -C $R/exp -czf $OUT/exp_baselines.tgz . ) &
R2=/tmp/r3/v2 RUN=runs/drt_20m_text_v2 OVERRIDES="--config.data.curriculum.gate_accuracy=0.6 --config.data.curriculum.stages=5:8,5:2,5:1,16:1,64:1" \
  TRAIN_S=${TRAIN_S:-360} bash scripts/gpu/s10_call2.sh --only20m
wait
tar -C $R --exclude exp --exclude v2/exp -czf $OUT/call3_results.tgz .
for f in $R/train_*.log; do echo "== $f"; grep -v "^ " $f | grep -E "eval|completed|rror" | tail -3; done
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob('/tmp/r3/*.json')):
  try:
    g = json.load(open(f))['passkey_grid']
    print(f.split('/')[-1], 'first', json.dumps(g['summary']), 'whole', json.dumps(g['summary_whole_key']))
  except Exception as e:
    print(f, 'unreadable', e)
PY
