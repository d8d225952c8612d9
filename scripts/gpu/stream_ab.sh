#!/usr/bin/env bash
# GPU call (session 6): the streaming step of the new engine vs the pre-refactor engine (.old =
# commit 6b1dbb7) at 4M and 16M capacity, kernel profiles + HLO; then the gpu-marked tests.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1
A="--steps 30 --profile_steps 5"
for cap in 4194304 16777216; do
  PYTHONPATH=/tmp/site:$PWD timeout 120 python3 bench/stream_step.py --out $OUT/step_new_$cap.json --capacity $cap $A --hlo_out $OUT/hlo_new_$cap.txt > $OUT/step_new_$cap.log 2>&1
  (cd .old && PYTHONPATH=/tmp/site:$PWD timeout 120 python3 ../bench/stream_step.py --out $OUT/step_old_$cap.json --capacity $cap $A --hlo_out $OUT/hlo_old_$cap.txt > $OUT/step_old_$cap.log 2>&1)
  tail -1 $OUT/step_new_$cap.log $OUT/step_old_$cap.log
done
mkdir -p $OUT/parity
PYTHONPATH=/tmp/site:$PWD JAX_PLATFORMS=cuda GCA_PARITY_OUT=$OUT/parity timeout ${GPU_TESTS_S:-280} python3 -m pytest -m gpu tests/gpu/test_gpu_gca_kernel.py tests/gpu/test_gpu_attention.py -rs -q -p no:cacheprovider --durations=0 > $OUT/gpu_tests.log 2>&1
tail -40 $OUT/gpu_tests.log
