#!/usr/bin/env bash
# GPU call (session 7): the gpu-marked tests (incl. swa_with_prefix cuDNN parity), then the
# streaming step (bench/stream_step.py, 16M capacity) with the cuDNN window-cache attention at
# segment 8064 / 16128 / 32256 and the previous engine (.old = 776fac8) at 8064 in the same run.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1
mkdir -p $OUT/parity
PYTHONPATH=/tmp/site:$PWD JAX_PLATFORMS=cuda GCA_PARITY_OUT=$OUT/parity timeout 260 python3 -m pytest -m gpu tests/gpu -rs -q -p no:cacheprovider > $OUT/gpu_tests.log 2>&1
tail -4 $OUT/gpu_tests.log
step() {  # $1 = old|new, $2 = segment_len
  if [ "$1" = old ]; then d=.old; else d=.; fi
  (cd $d && PYTHONPATH=/tmp/site:$PWD timeout 90 python3 $OLDPWD/bench/stream_step.py --out $OUT/step_$1_$2.json \
     --capacity 16777216 --segment_len $2 >> $OUT/step.log 2>&1)
  python3 -c "import json;d=json.load(open('$OUT/step_$1_$2.json'));print('$1',$2,d['step_ms_median'],d['tokens_per_s'],d['mean_nll'])"
}
step new 8064; step old 8064; step new 16128; step new 32256
