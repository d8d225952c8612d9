"""Evaluate a training run's checkpoint: held-out perplexity and single-needle passkey accuracy.

    python eval.py --run_dir runs/tiny --task all --lengths 1008,2016 --out runs/tiny/eval.json

The model is rebuilt from the run config saved in the checkpoint. `--config` (optional) is
checked against it: any difference in the model section is an error (exit 2), so a result is
never attributed to the wrong architecture. Everything is scored by full forward passes
(`gca_jax.evaluation.score_fn`).

Flags:
  --run_dir R         training run directory (required)
  --step N            checkpoint step (default: latest)
  --task T            ppl | passkey | all (default all)
  --lengths L1,L2     passkey sequence lengths in tokens (default: the run's data.seq_len)
  --ppl_length N      window length for perplexity (default: the run's data.seq_len)
  --ppl_windows N     at most N held-out windows (default 64)
  --eval_path P       held-out corpus (default: the run's data.eval_path); also the passkey filler
  --tokenizer P       tokenizer model (default: the run's data.tokenizer)
  --num_samples N     passkey samples per (length, depth) (default 10)
  --depths D1,D2      needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)
  --batch_size N      sequences per forward pass (default 4; rounded up to the mesh)
  --seed N            passkey sample seed (default 0)
  --mesh D,F,T        mesh data,fsdp,tensor (default 1,-1,1)
  --out PATH          write the JSON result here (also printed)
  --compilation_cache DIR   JAX persistent compilation cache ('' = off)
Exit codes: 0 ok; 2 bad arguments / config mismatch / missing checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Training run directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_TASK = flags.DEFINE_enum("task", "all", ["ppl", "passkey", "all"], "What to evaluate.")
_LENGTHS = flags.DEFINE_list("lengths", [], "Passkey lengths (tokens).")
_PPL_LENGTH = flags.DEFINE_integer("ppl_length", None, "Perplexity window length.")
_PPL_WINDOWS = flags.DEFINE_integer("ppl_windows", 64, "Max held-out windows.")
_EVAL_PATH = flags.DEFINE_string("eval_path", None, "Held-out corpus (default: saved).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer model (default: saved).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10, "Passkey samples per length and depth.")
_DEPTHS = flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"], "Needle depths.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Sequences per forward pass.")
_SEED = flags.DEFINE_integer("seed", 0, "Passkey sample seed.")
_MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "Mesh data,fsdp,tensor.")
_OUT = flags.DEFINE_string("out", None, "Output JSON path.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compilation_cache", "", "Directory for JAX's persistent compilation cache ('' = off).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional run config; its model section must equal the saved one.",
    lock_config=True)


class EvalError(ValueError):
  pass


def _ints(name, values):
  try:
    out = [int(v) for v in values]
  except ValueError as e:
    raise EvalError(f"--{name}={','.join(values)}: integers expected") from e
  return out


def evaluate() -> dict:
  import jax
  import numpy as np

  if _COMPILE_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE.value)
  from gca_jax.data import Tokenizer, make_eval_windows, tokenize_corpus
  from gca_jax.evaluation import Evaluator
  from gca_jax.models.drt import DRT
  from gca_jax.sharding import make_mesh
  from gca_jax.train import run_config as rc
  from gca_jax.train.checkpoint import Checkpointer
  from gca_jax.train.state import abstract_params

  if not _RUN_DIR.value:
    raise EvalError("--run_dir is required")
  ckpt = Checkpointer(_RUN_DIR.value, read_only=True)
  step, saved = ckpt.restore_config(_STEP.value)
  saved_cfg = rc.from_dict(saved)
  if _CONFIG.value is not None:
    diff = rc.model_diff(saved["model"], rc.to_dict(_CONFIG.value.model))
    if diff:
      raise EvalError(f"--config does not match the model saved in {ckpt.directory}/{step} "
                      f"(saved != given):\n  " + "\n  ".join(diff))
  model_cfg = rc.model_config(saved_cfg)
  d, f, t = _ints("mesh", _MESH.value)
  mesh = make_mesh(d, f, t)
  model = DRT(model_cfg)
  abstract, shardings = abstract_params(model, mesh)
  _, params = ckpt.restore_params(step, abstract)
  ckpt.close()

  eval_path = _EVAL_PATH.value or saved_cfg.data.eval_path
  tok_path = _TOKENIZER.value or saved_cfg.data.tokenizer
  for name, p in (("eval_path", eval_path), ("tokenizer", tok_path)):
    if not os.path.exists(p):
      raise EvalError(f"--{name}={p!r} does not exist (cwd {os.getcwd()})")
  tok = Tokenizer.load(tok_path)
  if tok.vocab_size > model_cfg.vocab_size:
    raise EvalError(f"tokenizer {tok_path!r} has {tok.vocab_size} pieces, the model only "
                    f"{model_cfg.vocab_size}")
  cache = saved_cfg.data.get("cache_dir", "") or None
  stream = np.asarray(tokenize_corpus(eval_path, tok, cache).tokens)
  ev = Evaluator(model, mesh, shardings)
  seq_len = int(saved_cfg.data.seq_len)
  result = {"run_dir": os.path.abspath(_RUN_DIR.value), "step": step,
            "model": saved["model"], "eval_path": eval_path, "tokenizer": tok_path,
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}"}
  say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
  if _TASK.value in ("ppl", "all"):
    length = _PPL_LENGTH.value or seq_len
    if length < 1:
      raise EvalError(f"--ppl_length={length}: must be positive")
    t0 = time.time()
    windows = make_eval_windows(stream, length, _PPL_WINDOWS.value)
    r = ev.perplexity(params, windows, _BATCH.value)
    r.update(length=length, seconds=round(time.time() - t0, 2))
    result["ppl"] = r
    say(f"perplexity @ {length}: loss {r['loss']:.4f} ppl {r['ppl']:.2f} "
        f"({r['windows']} windows, {r['tokens']} tokens)")
  if _TASK.value in ("passkey", "all"):
    lengths = _ints("lengths", _LENGTHS.value) or [seq_len]
    try:
      depths = [float(x) for x in _DEPTHS.value]
    except ValueError as e:
      raise EvalError(f"--depths={','.join(_DEPTHS.value)}: numbers expected") from e
    if any(not 0.0 <= x <= 1.0 for x in depths):
      raise EvalError(f"--depths={depths}: each must lie in [0, 1]")
    if _NUM_SAMPLES.value < 1:
      raise EvalError(f"--num_samples={_NUM_SAMPLES.value}: must be >= 1")
    t0 = time.time()
    try:
      r = ev.passkey(params, tok, stream, lengths, num_samples=_NUM_SAMPLES.value,
                     depths=depths, batch_size=_BATCH.value, seed=_SEED.value,
                     chunk_text=model_cfg.text_per_chunk, log=say)
    except ValueError as e:
      raise EvalError(f"passkey: {e}") from e
    result["passkey"] = {"lengths": r, "num_samples": _NUM_SAMPLES.value, "depths": depths,
                         "key_len": 5, "seconds": round(time.time() - t0, 2)}
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from gca_jax.config import ConfigError
  from gca_jax.data import CorpusError
  from gca_jax.train import CheckpointError, RunConfigError
  try:
    result = evaluate()
  except (EvalError, CheckpointError, RunConfigError, ConfigError, CorpusError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  text = json.dumps(result, indent=2)
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    tmp = _OUT.value + ".tmp"
    with open(tmp, "w") as f:
      f.write(text + "\n")
    os.replace(tmp, _OUT.value)
  print(text)


if __name__ == "__main__":
  app.run(main)
