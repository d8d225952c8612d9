#!/usr/bin/env bash
# Session 10, GPU call 2 (call 3: OVERRIDES=... and BASELINES=1, see s10_call3.sh) (one H200; repository root; wheels on PYTHONPATH; data/sotu,
# data/text20m (scripts/prepare_sword.py --out data/text20m/train --also data/sotu/train) and
# .exp/x2 (call 1's ret x2 export) carried):
# (a) configs/drt_20m_text.py through train.py (22.2M-param DRT, 4032-token samples, window
#     128, SOTU + WEB + TDavid text), exported, single-needle grid at 1x, 64x, 1000x of 4032;
# (b) meanwhile the ret x2 export on 2-hop at 1000x / 4000x and 8-needle multi-key at 1000x of 1008.
export PYTHONUNBUFFERED=1
R=${R2:-/tmp/r2}; mkdir -p $R/exp
RUN=${RUN:-runs/drt_20m_text}
git log -1 --format=%H > $R/commit.txt 2>/dev/null; git status --short >> $R/commit.txt 2>/dev/null
( export XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
  timeout -s TERM ${TRAIN_S:-370} python3 train.py --config configs/drt_20m_text.py \
    --config.data.num_workers=8 --config.run_dir=$RUN ${OVERRIDES:-} > $R/train_drt_20m_text.log 2>&1
  python3 -m gca_jax.export --run_dir $RUN --out $R/exp/drt_20m_text --dtype bfloat16 > $R/export_20m.log 2>&1
  timeout -s TERM 60 python3 eval.py --model_dir $R/exp/drt_20m_text --task passkey_grid --kinds single \
    --formats official --eval_path data/sotu/valid --progress=false --segment_len 8064 \
    --lengths 4032,258048 --trials 4 --batch_size 10 --out $R/drt20m_short.json > $R/drt20m_short.log 2>&1
  timeout -s TERM 90 python3 eval.py --model_dir $R/exp/drt_20m_text --task passkey_grid --kinds single \
    --formats official --eval_path data/sotu/valid --progress=false --segment_len 16128 \
    --lengths 4032000 --depths 0,0.33,0.67,1 --trials 2 --batch_size 4 --out $R/drt20m_1000x.json > $R/drt20m_1000x.log 2>&1
) &
[ "${1:-}" = --only20m ] || ( export XLA_PYTHON_CLIENT_MEM_FRACTION=0.15
  G="python3 eval.py --task passkey_grid --formats official --eval_path data/sotu/valid --progress=false --segment_len 8064 --depths 0,0.33,0.67,1 --batch_size 4 --model_dir .exp/x2"
  timeout -s TERM 80 $G --kinds 2hop --lengths 1008000 --trials 3 --out $R/x2_2hop_1000x.json > $R/x2_2hop_1000x.log 2>&1
  timeout -s TERM 100 $G --kinds 2hop --lengths 4032000 --trials 2 --out $R/x2_2hop_4000x.json > $R/x2_2hop_4000x.log 2>&1
  timeout -s TERM 80 $G --kinds multikey --num_keys 8 --lengths 1008000 --trials 3 --out $R/x2_mk8_1000x.json > $R/x2_mk8_1000x.log 2>&1
) &
wait
cp $RUN/metrics.jsonl $R/metrics_drt_20m_text.jsonl 2>/dev/null
cp $RUN/config.json $R/config_drt_20m_text.json 2>/dev/null
tar -C $R/exp -cf - drt_20m_text 2>/dev/null | split -b 15m - $OUT/exp_20m.tar.part_
tar -C $R --exclude exp -czf $OUT/call2_results.tgz .
cat $R/commit.txt | head -3
grep -v "^ " $R/train_drt_20m_text.log | grep -E "^model|recall mix|stage [0-9]* \(|eval loss|completed|rror" | awk 'NR%4==1 || /eval|completed|rror|model|recall/' | tail -30
for f in $R/*.log; do echo "== $f"; grep -iE "error|Traceback" $f | tail -2; done
python3 - <<'PY'
import json, glob, os
for f in sorted(glob.glob(os.environ.get('R2', '/tmp/r2') + '/*.json')):
  try:
    g = json.load(open(f))['passkey_grid']
    print(f.split('/')[-1], 'first', json.dumps(g['summary']), 'whole', json.dumps(g['summary_whole_key']))
  except Exception as e:
    print(f, 'unreadable', e)
PY
