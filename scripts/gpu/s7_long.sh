#!/usr/bin/env bash
# GPU call (session 7): bench/long_context.py at 16M, device memory: the cuDNN window-cache
# attention (this tree) at segment 8064 and 16128 and the previous engine (.old = 776fac8, its own
# bench copy) at 8064, interleaved new/old/new16128; then 64M at segment 16128.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1
run() {  # $1 = old|new, $2 = length, $3 = segment_len, $4 = timeout
  if [ "$1" = old ]; then d=.old; else d=.; fi
  (cd $d && PYTHONPATH=/tmp/site:$PWD timeout $(($4 + 10)) python3 bench/long_context.py --out $OUT/long_$1_$2_$3.json \
     --lengths $2 --memories device --host_lengths "" --loop_tokens 0 --segment_len $3 --timeout $4 >> $OUT/all.log 2>&1)
  python3 -c "import json;d=json.load(open('$OUT/long_$1_$2_$3.json'))['cases'][0];print('$1',$2,$3,{k:d.get(k) for k in ('total_s','setup_s','first_segment_s','steady_s','steady_tokens_per_s','mean_nll','peak_device_GiB')})"
}
run new 16777216 8064 140; run old 16777216 8064 140; run new 16777216 16128 140
run new 67108864 16128 230
