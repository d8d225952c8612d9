"""Train (or resume) a DRT / baseline language model.

    python train.py --config configs/tiny.py [--config.section.field=value ...]

Examples:
    python train.py --config configs/tiny.py --config.train.steps=50 --config.run_dir=runs/t50
    python train.py --config configs/drt_128m.py --config.data.train_path=/data/pg19/train \\
        --config.data.tokenizer=/data/tok32k.model --config.run_dir=/ckpt/drt128m
    python train.py --config configs/recall_tiny.py      # the retrieval recipe (docs/results.md)

The run resumes automatically from the latest complete checkpoint in `config.run_dir`.
SIGTERM: the current step finishes, a checkpoint is saved and the process exits 0.
Exit codes: 0 done or preempted-and-saved; 2 invalid config; 3 non-finite loss; 1 other errors.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Run config file (configs/*.py) with get_config(); override fields with "
    "--config.section.field=value.", lock_config=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host; reads the cluster "
    "environment: SLURM, TPU pods, or the JAX_COORDINATOR_* variables).")
_COMPILE_CACHE = flags.DEFINE_string(
    "compilation_cache", "", "Directory for JAX's persistent compilation cache ('' = off).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required (e.g. --config configs/tiny.py)")
  import jax
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  if _COMPILE_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE.value)
  from gca_jax.config import ConfigError
  from gca_jax.data import CorpusError
  from gca_jax.train import (CheckpointError, NonFiniteLossError, RunConfigError, train)
  logging.set_verbosity(logging.WARNING)
  try:
    result = train(config)
  except (RunConfigError, ConfigError, CorpusError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  print(f"{result.status} at step {result.step} (run_dir {result.run_dir})", flush=True)


if __name__ == "__main__":
  app.run(main)
