#!/usr/bin/env bash
# Session 8, GPU call 2 (one H200): long-length multi-key / 2-hop grids of the exports of call 1
# (copied to checkpoints/multikey_{drt,drt_x2,landmark,swa}) and perplexity by position on ONE
# held-out stream (data/heldout_long from scripts/gpu/s8_heldout.sh, >= 1,032,193 tokens) for
# those four and the shipped sotu_{drt,landmark,swa}. Run from the repository root with the
# wheels installed; results tarred into $OUT.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.12   # Landmark's chain: 0.36 (its
# stream cache holds every token's K/V: ~3 GB per 1M-token sequence)
R=/tmp/r2; mkdir -p $R
G="timeout -s TERM 300 python3 eval.py --task passkey_grid --formats official --eval_path data/sotu/valid --progress=false --segment_len 8064"
P="timeout -s TERM 300 python3 eval.py --task ppl_position --eval_path data/heldout_long --length 1032192 --bucket_unit 1008 --bucket_factor 4 --segment_len 8064 --progress=false"
LONG="--lengths 64512,1008000 --depths 0,0.33,0.67,1 --trials 3 --batch_size 4"
for m in multikey_drt multikey_drt_x2 multikey_landmark; do
  [ $m = multikey_landmark ] && export XLA_PYTHON_CLIENT_MEM_FRACTION=0.36
  ( $G --model_dir checkpoints/$m --kinds multikey --num_keys 8 $LONG --out $R/${m}_mk8_long.json > $R/${m}_mk8_long.log 2>&1
    $G --model_dir checkpoints/$m --kinds multikey --num_keys 16 $LONG --out $R/${m}_mk16_long.json > $R/${m}_mk16_long.log 2>&1
    $G --model_dir checkpoints/$m --kinds 2hop $LONG --out $R/${m}_2hop_long.json > $R/${m}_2hop_long.log 2>&1
    $P --model_dir checkpoints/$m --out $R/${m}_pos.json > $R/${m}_pos.log 2>&1 ) &
done
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.12
( $G --model_dir checkpoints/multikey_swa --kinds multikey --num_keys 8 --lengths 64512 --depths 0,0.33,0.67,1 --trials 3 --batch_size 12 --out $R/multikey_swa_mk8_long.json > $R/multikey_swa_mk8_long.log 2>&1
  for m in multikey_swa sotu_drt sotu_landmark sotu_swa; do
    $P --model_dir checkpoints/$m --out $R/${m}_pos.json > $R/${m}_pos.log 2>&1
  done ) &
wait
tar -C $R -czf $OUT/call2.tgz .
for f in $R/*.log; do echo "== $f"; grep -v '^ \|^{\|^}' $f | tail -3; done
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob('/tmp/r2/*.json')):
  try:
    d = json.load(open(f))
  except Exception as e:
    print(f, 'unreadable', e); continue
  if 'passkey_grid' in d:
    g = d['passkey_grid']
    print(f.split('/')[-1], 'first', json.dumps(g['summary']), 'whole', json.dumps(g['summary_whole_key']))
  else:
    p = d['ppl_position']
    print(f.split('/')[-1], ' '.join(f"[{b['start']},{b['end']}) {b['nll']:.4f} ({100*b['rel_to_first']:+.1f}%)" for b in p['buckets']))
PY
