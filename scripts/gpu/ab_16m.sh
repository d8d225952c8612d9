#!/usr/bin/env bash
# GPU call (session 6): 16M streaming bench, the pre-refactor engine (.old = 6b1dbb7) and the new
# one alternated twice in one call (old, new, old, new), then Landmark at 1000x its training length.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1
B="--lengths 16777216 --memories device --host_lengths '' --loop_tokens 0 --timeout 140"
run() {  # $1 = old|new, $2 = index
  if [ "$1" = old ]; then d=.old; else d=.; fi
  (cd $d && PYTHONPATH=/tmp/site:$PWD timeout 150 python3 $OLDPWD/bench/long_context.py --out $OUT/long_$1_$2.json \
     --lengths 16777216 --memories device --host_lengths "" --loop_tokens 0 --timeout 140 >> $OUT/all.log 2>&1)
}
run old 1; run new 1; run old 2; run new 2
PYTHONPATH=/tmp/site:$PWD timeout ${LM_S:-230} python3 eval.py --kinds single --formats official --eval_path data/sotu/valid \
  --progress=false --segment_len 8064 --task passkey_grid --model_dir checkpoints/sotu_landmark --lengths 1008000 \
  --depths 0,0.33,0.67,1 --trials 1 --batch_size 4 --out $OUT/lm_1000x.json >> $OUT/all.log 2>&1
tail -5 $OUT/all.log
