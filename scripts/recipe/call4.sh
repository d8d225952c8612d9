#!/usr/bin/env bash
# GPU call 4: the side-by-side evaluation (scripts/recipe/side_by_side.py) of the three models
# trained in call 3 (checkpoints/sotu_{drt,swa,landmark}), each model in its own process (0.3
# of GPU memory each), held-out SOTU text as filler; then one merged table + plots. Everything
# lands in $OUT/sbs.tgz (one file).
set -u
OUT=${OUT:-/tmp/out}; R=/tmp/sbs; mkdir -p $OUT $R
COMMON="--out_dir $R --filler data/sotu/valid --lengths 1008,4032,16128,64512 --trials 4 \
  --kinds single,2hop --ppl_lengths 1008,4032,16128,64512 --ppl_windows 2 --batch 10"
run() {  # name, seconds, extra args
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 PYTHONUNBUFFERED=1 timeout $2 python3 \
    scripts/recipe/side_by_side.py $COMMON --model $1=checkpoints/sotu_$1 "${@:3}" \
    > $R/$1.log 2>&1; echo "$1 exit $?" >> $R/status.txt
}
run drt ${DRT_SECS:-500} --long_lengths 1008000,4032000 --long_depths 0,0.33,0.67,1 \
  --long_trials 3 --long_batch 12 &
run landmark ${BASE_SECS:-450} &
run swa ${BASE_SECS:-450} &
wait
python3 scripts/recipe/side_by_side.py --out_dir $R --merge $R/drt.json,$R/landmark.json,$R/swa.json \
  > $R/merge.log 2>&1
cat $R/status.txt; grep -v "^\[" $R/merge.log | head -60
cd $R && tar czf $OUT/sbs.tgz .
