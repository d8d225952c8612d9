#!/usr/bin/env bash
# GPU call 2: passkey grid + ppl of the three retrained exports (new engine).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.3
mkdir -p /tmp/r
E="timeout -s TERM 520 python3 eval.py --kinds single --formats official --eval_path data/sotu/valid --progress=false --segment_len 8064"
P="--task passkey_grid"
L="--task ppl_length --lengths 1008,4032,16128,64512 --ppl_windows 2 --batch_size 2"
( $E $P --model_dir checkpoints/sotu_drt --lengths 1008,64512 --trials 4 --batch_size 10 --out /tmp/r/drt_short.json > /tmp/r/drt_short.log 2>&1
  $E $P --model_dir checkpoints/sotu_drt --lengths 1008000,4032000 --depths 0,0.33,0.67,1 --trials 3 --batch_size 6 --out /tmp/r/drt_long.json > /tmp/r/drt_long.log 2>&1
  $E $P --model_dir checkpoints/sotu_drt --lengths 16128000 --depths 0,0.33,0.67,1 --trials 1 --batch_size 4 --out /tmp/r/drt_16m.json > /tmp/r/drt_16m.log 2>&1
  $E $L --model_dir checkpoints/sotu_drt --out /tmp/r/drt_ppl.json > /tmp/r/drt_ppl.log 2>&1 ) &
( $E $P --model_dir checkpoints/sotu_landmark --lengths 1008,64512 --trials 4 --batch_size 10 --out /tmp/r/lm_short.json > /tmp/r/lm_short.log 2>&1
  $E $L --model_dir checkpoints/sotu_landmark --out /tmp/r/lm_ppl.json > /tmp/r/lm_ppl.log 2>&1
  $E $P --model_dir checkpoints/sotu_landmark --lengths 1008000 --depths 0,0.33,0.67,1 --trials 2 --batch_size 8 --out /tmp/r/lm_long.json > /tmp/r/lm_long.log 2>&1 ) &
( $E $P --model_dir checkpoints/sotu_swa --lengths 1008,64512 --trials 4 --batch_size 10 --out /tmp/r/swa_short.json > /tmp/r/swa_short.log 2>&1
  $E $L --model_dir checkpoints/sotu_swa --out /tmp/r/swa_ppl.json > /tmp/r/swa_ppl.log 2>&1 ) &
wait
tar -C /tmp/r -cf $OUT/results.tar .
ls -la /tmp/r
for f in /tmp/r/*.log; do echo "== $f"; grep -v '^ \|^{\|^}' $f | tail -4; done
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob('/tmp/r/*.json')):
  try:
    d = json.load(open(f))
  except Exception as e:
    print(f, 'unreadable', e); continue
  r = d.get('passkey_grid') or d.get('ppl_length') or d
  for k in ('summary', 'summary_whole_key', 'ppl'):
    if k in r:
      print(f.split('/')[-1], k, json.dumps(r[k]))
PY
