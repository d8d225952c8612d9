#!/usr/bin/env bash
# Session 10, GPU call 1 (one H200; repository root; wheels installed on PYTHONPATH; data/sotu
# carried). Issue 15, multi-key: four tiny DRTs trained side by side through train.py on the
# same data, steps and budget, then exported (bf16) and scored on multi-key (8 / 16 needles =
# 2x / 4x top-k) and 2-hop at 1x and 64x:
#   x2      configs/twohop_tiny_x2.py as is (DRT ret x2; the 2-hop model to ship)
#   proj    configs/multikey_tiny.py + model.retrieval_proj (learned query matrix)
#   focus   configs/multikey_tiny.py, multi-key-heavy mix (60%), curriculum from 8 chunks
#   pfocus  proj + focus
# Meanwhile bench/context_memory.py compiled for the GPU backend under a mocked 8-GPU topology.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.2
R=/tmp/r; mkdir -p $R/exp
TRAIN_S=${TRAIN_S:-360}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt
python3 -c "import jax, jaxlib; print(jax.__version__, jaxlib.__version__, jax.devices())" >> $R/gpu.txt 2>&1
git log -1 --format=%H > $R/commit.txt 2>/dev/null; git status --short >> $R/commit.txt 2>/dev/null
MK=configs/multikey_tiny.py
FOCUS="--config.data.recall.p_single=0.15 --config.data.recall.p_named=0.15 --config.data.recall.p_multikey=0.6 --config.data.recall.p_2hop=0.0 --config.data.curriculum.stages=8:2,8:1,16:1 --config.data.curriculum.gate_accuracy=0.6"
declare -A ARGS=(
  [x2]="--config configs/twohop_tiny_x2.py --config.run_dir=runs/x2"
  [proj]="--config $MK --config.model.retrieval_proj=True --config.run_dir=runs/proj"
  [focus]="--config $MK $FOCUS --config.run_dir=runs/focus"
  [pfocus]="--config $MK --config.model.retrieval_proj=True $FOCUS --config.run_dir=runs/pfocus")
for m in "${!ARGS[@]}"; do
  timeout -s TERM $TRAIN_S python3 train.py ${ARGS[$m]} --config.data.num_workers=3 \
    > $R/train_$m.log 2>&1 &
done
( export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.05
  timeout 400 nice -n 10 python3 bench/context_memory.py --platform gpu_mock --seq_lens 65520,262080 \
    --contexts 1,2,4,8 --timeout 150 --out $R/context_memory_gpu_mock.json > $R/context_memory_gpu_mock.log 2>&1 ) &
wait
for m in "${!ARGS[@]}"; do
  python3 -m gca_jax.export --run_dir runs/$m --out $R/exp/$m --dtype bfloat16 > $R/export_$m.log 2>&1 &
done
wait
E="timeout -s TERM 60 python3 eval.py --task passkey_grid --formats official --eval_path data/sotu/valid --progress=false --segment_len 8064 --trials 4 --batch_size 20"
for m in "${!ARGS[@]}"; do
  ( $E --model_dir $R/exp/$m --lengths 1008,64512 --kinds multikey --num_keys 8 --out $R/${m}_mk8.json > $R/${m}_mk8.log 2>&1
    $E --model_dir $R/exp/$m --lengths 1008,64512 --kinds multikey --num_keys 16 --out $R/${m}_mk16.json > $R/${m}_mk16.log 2>&1
    $E --model_dir $R/exp/$m --lengths 1008,64512 --kinds 2hop --out $R/${m}_2hop.json > $R/${m}_2hop.log 2>&1 ) &
done
wait
for m in "${!ARGS[@]}"; do cp runs/$m/metrics.jsonl $R/metrics_$m.jsonl 2>/dev/null; cp runs/$m/config.json $R/config_$m.json 2>/dev/null; done
for m in "${!ARGS[@]}"; do tar -C $R/exp -czf $OUT/exp_$m.tgz $m; done
tar -C $R --exclude exp -czf $OUT/call1_results.tgz .
cat $R/gpu.txt $R/commit.txt
for f in $R/train_*.log; do echo "== $f"; grep -v "^ " $f | grep -E "stage|eval|completed|rror" | tail -5; done
grep -E "mock|error" $R/context_memory_gpu_mock.log | head; tail -2 $R/context_memory_gpu_mock.log
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob('/tmp/r/*.json')):
  try:
    d = json.load(open(f))
    if 'rows' in d:
      for r in d['rows']: print(f.split('/')[-1], json.dumps(r)[:300])
      continue
    if 'passkey_grid' not in d: continue
    g = d['passkey_grid']
    print(f.split('/')[-1], 'first', json.dumps(g['summary']), 'whole', json.dumps(g['summary_whole_key']))
  except Exception as e:
    print(f, 'unreadable', e)
PY
