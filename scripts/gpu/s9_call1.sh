#!/usr/bin/env bash
# Session 9, GPU call 1 (one H200, run from the repository root with the wheels on PYTHONPATH and
# data/sotu carried): (a) the four issue-15 models trained side by side through train.py
# (multikey_tiny DRT ret x1, Landmark, SWA-only, twohop_tiny_x2 DRT ret x2: same data, steps,
# budget), exported (bf16), multi-key (8, 16 needles) and 2-hop grids at 1x and 64x;
# (b) meanwhile, bench/context_memory.py compiled for the GPU backend (mocked 8-GPU topology)
# and for the one real GPU (context 1). Results tarred into $OUT.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.22
R=/tmp/r; mkdir -p $R/exp
TRAIN_S=${TRAIN_S:-370}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt
python3 -c "import jax, jaxlib; print(jax.__version__, jaxlib.__version__, jax.devices())" >> $R/gpu.txt 2>&1
git log -1 --format=%H > $R/commit.txt 2>/dev/null || true
for c in multikey_tiny multikey_tiny_landmark multikey_tiny_swa twohop_tiny_x2; do
  timeout -s TERM $TRAIN_S python3 train.py --config configs/$c.py --config.data.num_workers=2 \
    > $R/train_$c.log 2>&1 &
done
( export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.08
  timeout 330 nice -n 10 python3 bench/context_memory.py --platform gpu_mock --seq_lens 65520,262080 \
    --contexts 1,2,4,8 --out $R/context_memory_gpu_mock.json > $R/context_memory_gpu_mock.log 2>&1 ) &
wait
declare -A RUN=([multikey_drt]=runs/multikey_tiny [multikey_landmark]=runs/multikey_tiny_landmark
                [multikey_swa]=runs/multikey_tiny_swa [multikey_drt_x2]=runs/multikey_tiny_x2)
for m in "${!RUN[@]}"; do
  python3 -m gca_jax.export --run_dir ${RUN[$m]} --out $R/exp/$m --dtype bfloat16 > $R/export_$m.log 2>&1 &
done
wait
E="timeout -s TERM 75 python3 eval.py --task passkey_grid --formats official --eval_path data/sotu/valid --progress=false --segment_len 8064 --trials 4 --batch_size 20"
for m in "${!RUN[@]}"; do
  L=1008,64512; [ $m = multikey_swa ] && L=1008
  ( $E --model_dir $R/exp/$m --lengths $L --kinds multikey --num_keys 8 --out $R/${m}_mk8.json > $R/${m}_mk8.log 2>&1
    $E --model_dir $R/exp/$m --lengths $L --kinds multikey --num_keys 16 --out $R/${m}_mk16.json > $R/${m}_mk16.log 2>&1
    $E --model_dir $R/exp/$m --lengths $L --kinds 2hop --out $R/${m}_2hop.json > $R/${m}_2hop.log 2>&1 ) &
done
wait
for d in runs/*; do cp $d/metrics.jsonl $R/metrics_$(basename $d).jsonl 2>/dev/null; done
tar -C $R -czf $OUT/call1_exports.tgz exp
tar -C $R --exclude exp -czf $OUT/call1_results.tgz .
cat $R/gpu.txt; ls -la $R/exp/*
for f in $R/train_*.log; do echo "== $f"; grep -v "^ " $f | tail -4; done
tail -3 $R/context_memory_gpu_mock.log
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob('/tmp/r/*.json')):
  try:
    d = json.load(open(f))
    if 'rows' in d:
      for r in d['rows']: print(f.split('/')[-1], json.dumps(r))
      continue
    g = d['passkey_grid']
    print(f.split('/')[-1], 'first', json.dumps(g['summary']), 'whole', json.dumps(g['summary_whole_key']))
  except Exception as e:
    print(f, 'unreadable', e)
PY
