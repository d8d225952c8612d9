#!/usr/bin/env bash
# GPU call 3: 16M streaming bench, new engine then the pre-refactor engine (.old, commit 6b1dbb7), then the gpu-marked tests.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1
B="bench/long_context.py --lengths 16777216 --memories device --host_lengths '' --loop_tokens 0 --timeout 140"
(PYTHONPATH=/tmp/site:$PWD timeout 150 python3 bench/long_context.py --out $OUT/long_new.json --lengths 16777216 --memories device --host_lengths "" --loop_tokens 0 --timeout 140 > $OUT/long_new.log 2>&1)
(cd .old && PYTHONPATH=/tmp/site:$PWD timeout 150 python3 bench/long_context.py --out $OUT/long_old.json --lengths 16777216 --memories device --host_lengths "" --loop_tokens 0 --timeout 140 > $OUT/long_old.log 2>&1)
tail -3 $OUT/long_new.log $OUT/long_old.log
mkdir -p $OUT/parity
PYTHONPATH=/tmp/site:$PWD JAX_PLATFORMS=cuda GCA_PARITY_OUT=$OUT/parity timeout 200 python3 -m pytest -m gpu tests/gpu -rs -q -p no:cacheprovider -k "not paper" > $OUT/gpu_tests.log 2>&1
tail -15 $OUT/gpu_tests.log
