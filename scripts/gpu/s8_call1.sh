#!/usr/bin/env bash
# Session 8, GPU call 1 (one H200): the four models of issue 15 trained side by side through
# train.py (DRT ret x1, Landmark, SWA-only, DRT ret x2: same data, steps, budget), exported
# (bf16), then multi-key (8 and 16 needles) and 2-hop grids at 1x. Run from the repository root
# with the wheels installed; results tarred into $OUT.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.22
R=/tmp/r; mkdir -p $R/exp
TRAIN_S=${TRAIN_S:-380}
for c in multikey_tiny multikey_tiny_landmark multikey_tiny_swa twohop_tiny_x2; do
  timeout -s TERM $TRAIN_S python3 train.py --config configs/$c.py --config.data.num_workers=3 \
    > $R/train_$c.log 2>&1 &
done
wait
declare -A RUN=([multikey_drt]=runs/multikey_tiny [multikey_landmark]=runs/multikey_tiny_landmark
                [multikey_swa]=runs/multikey_tiny_swa [multikey_drt_x2]=runs/multikey_tiny_x2)
for m in "${!RUN[@]}"; do
  python3 -m gca_jax.export --run_dir ${RUN[$m]} --out $R/exp/$m --dtype bfloat16 > $R/export_$m.log 2>&1 &
done
wait
E="timeout -s TERM 150 python3 eval.py --task passkey_grid --formats official --eval_path data/sotu/valid --progress=false --segment_len 8064 --lengths 1008 --trials 4 --batch_size 20"
for m in "${!RUN[@]}"; do
  ( $E --model_dir $R/exp/$m --kinds multikey --num_keys 8 --out $R/${m}_mk8_1x.json > $R/${m}_mk8_1x.log 2>&1
    $E --model_dir $R/exp/$m --kinds multikey --num_keys 16 --out $R/${m}_mk16_1x.json > $R/${m}_mk16_1x.log 2>&1
    $E --model_dir $R/exp/$m --kinds 2hop --out $R/${m}_2hop_1x.json > $R/${m}_2hop_1x.log 2>&1 ) &
done
wait
for d in runs/*; do cp $d/metrics.jsonl $R/metrics_$(basename $d).jsonl 2>/dev/null; done
tar -C $R -czf $OUT/call1_exports.tgz exp         # 4 x ~3.8 MB
tar -C $R --exclude exp -czf $OUT/call1_results.tgz .
ls -la $R $R/exp/*
for f in $R/train_*.log; do echo "== $f"; grep -v "^ " $f | tail -6; done
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob('/tmp/r/*.json')):
  try:
    g = json.load(open(f))['passkey_grid']
    print(f.split('/')[-1], 'first', json.dumps(g['summary']), 'whole', json.dumps(g['summary_whole_key']))
  except Exception as e:
    print(f, 'unreadable', e)
PY
