#!/usr/bin/env bash
# The main job on the embedded default: sets up .venv, trains the tiny DRT on the shipped
# Moby-Dick corpus (CPU, a few minutes), then evaluates it (perplexity + passkey).
# Extra arguments go to train.py, e.g. `bash scripts/demo.sh --config.train.steps=50`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh | tail -n 1)
RUN=${RUN_DIR:-runs/tiny}
"$PY" train.py --config configs/tiny.py --config.run_dir="$RUN" "$@"
"$PY" eval.py --run_dir "$RUN" --task all --lengths 1008,2016,4032 --num_samples 4 \
  --out "$RUN/eval.json"
echo "results: $RUN/eval.json, metrics: $RUN/metrics.jsonl, TensorBoard: tensorboard --logdir $RUN"
