#!/usr/bin/env bash
# Session 9, GPU call 2 (one H200; repository root, wheels on PYTHONPATH, data/sotu and .exp
# (call 1's exports) carried): (a) configs/drt_20m_text.py trained through train.py (22.2M-param
# DRT, 4032-token samples), exported, single-needle grid at 1x, 64x, 1000x of 4032 tokens;
# (b) meanwhile the call-1 DRT exports on 2-hop and 8-needle multi-key at 1000x and 4000x of 1008.
export PYTHONUNBUFFERED=1
R=/tmp/r2; mkdir -p $R/exp
git log -1 --format=%H > $R/commit.txt 2>/dev/null || true
( export XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
  timeout -s TERM ${TRAIN_S:-400} python3 train.py --config configs/drt_20m_text.py \
    --config.data.num_workers=6 > $R/train_drt_20m_text.log 2>&1
  python3 -m gca_jax.export --run_dir runs/drt_20m_text --out $R/exp/drt_20m_text --dtype bfloat16 > $R/export_20m.log 2>&1
  timeout -s TERM 60 python3 eval.py --model_dir $R/exp/drt_20m_text --task passkey_grid --kinds single \
    --formats official --eval_path data/sotu/valid --progress=false --segment_len 8064 \
    --lengths 4032,258048 --trials 4 --batch_size 10 --out $R/drt20m_short.json > $R/drt20m_short.log 2>&1
  timeout -s TERM 80 python3 eval.py --model_dir $R/exp/drt_20m_text --task passkey_grid --kinds single \
    --formats official --eval_path data/sotu/valid --progress=false --segment_len 16128 \
    --lengths 4032000 --depths 0,0.33,0.67,1 --trials 2 --batch_size 4 --out $R/drt20m_1000x.json > $R/drt20m_1000x.log 2>&1
) &
( export XLA_PYTHON_CLIENT_MEM_FRACTION=0.15
  G="python3 eval.py --task passkey_grid --formats official --eval_path data/sotu/valid --progress=false --segment_len 8064 --depths 0,0.33,0.67,1 --batch_size 4"
  for m in multikey_drt_x2 multikey_drt; do
    timeout -s TERM 70 $G --model_dir .exp/$m --kinds 2hop --lengths 1008000 --trials 3 --out $R/${m}_2hop_1000x.json > $R/${m}_2hop_1000x.log 2>&1
    timeout -s TERM 70 $G --model_dir .exp/$m --kinds multikey --num_keys 8 --lengths 1008000 --trials 3 --out $R/${m}_mk8_1000x.json > $R/${m}_mk8_1000x.log 2>&1
  done
  timeout -s TERM 90 $G --model_dir .exp/multikey_drt_x2 --kinds 2hop --lengths 4032000 --trials 2 --out $R/multikey_drt_x2_2hop_4000x.json > $R/multikey_drt_x2_2hop_4000x.log 2>&1
) &
wait
cp runs/drt_20m_text/metrics.jsonl $R/metrics_drt_20m_text.jsonl 2>/dev/null
tar -C $R -czf $OUT/call2.tgz .
grep -v "^ " $R/train_drt_20m_text.log | grep -E "^model|^step 1:|eval loss|completed|rror" | tail -12
for f in $R/*.log; do echo "== $f"; grep -iE "error|Traceback" $f | tail -2; done
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob('/tmp/r2/*.json')):
  try:
    g = json.load(open(f))['passkey_grid']
    print(f.split('/')[-1], 'first', json.dumps(g['summary']), 'whole', json.dumps(g['summary_whole_key']))
  except Exception as e:
    print(f, 'unreadable', e)
PY
