#!/usr/bin/env bash
# GPU call (session 7, 3rd): the window-cache attention kernel (Pallas Triton): its gpu tests, the
# per-call bench, then bench/long_context.py at 16M (segment 8064; new and .old = 776fac8) and 64M
# (segment 16128), device memory.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1
mkdir -p $OUT/parity
PYTHONPATH=/tmp/site:$PWD JAX_PLATFORMS=cuda GCA_PARITY_OUT=$OUT/parity timeout 150 python3 -m pytest -m gpu tests/gpu/test_gpu_attention.py -rs -q -p no:cacheprovider > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log
PYTHONPATH=/tmp/site:$PWD timeout 90 python3 bench/swa_prefix.py --out $OUT/swa_prefix.json > $OUT/swa_prefix.log 2>&1; tail -2 $OUT/swa_prefix.log
run() {  # $1 = old|new, $2 = length, $3 = segment_len, $4 = timeout
  if [ "$1" = old ]; then d=.old; else d=.; fi
  (cd $d && PYTHONPATH=/tmp/site:$PWD timeout $(($4 + 10)) python3 bench/long_context.py --out $OUT/long_$1_$2_$3.json \
     --lengths $2 --memories device --host_lengths "" --loop_tokens 0 --segment_len $3 --timeout $4 >> $OUT/all.log 2>&1)
  python3 -c "import json;d=json.load(open('$OUT/long_$1_$2_$3.json'))['cases'][0];print('$1',$2,$3,{k:d.get(k) for k in ('total_s','setup_s','first_segment_s','steady_s','steady_tokens_per_s','mean_nll','peak_device_GiB')})"
}
run new 16777216 8064 120; run old 16777216 8064 120; run new 67108864 16128 200
