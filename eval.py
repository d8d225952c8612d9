"""Evaluate a training run's checkpoint: perplexity and passkey accuracy, short and long context.

    python eval.py --run_dir runs/tiny --task all --lengths 1008,2016 --out runs/tiny/eval.json
    python eval.py --run_dir runs/tiny --task long --lengths 1x,4x,16x --out_dir runs/tiny/long

The model is rebuilt from the run config saved in the checkpoint. `--config` (optional) is
checked against it: any difference in the model section is an error (exit 2), so a result is
never attributed to the wrong architecture.

Tasks:
  ppl, passkey, all   held-out perplexity at one window length and single-needle passkey accuracy,
                      by full forward passes (`gca_jax.evaluation`).
  ppl_length          perplexity at each of --lengths (e.g. 1x..64x the training length) by the
                      streaming engine (`gca_jax.inference.tasks.ppl_vs_length`), --ppl_windows
                      windows of length+1 held-out tokens each; plus the loss by position bucket.
  passkey_grid        passkey accuracy (first-token and whole-key) for every kind x format x
                      length x depth, --trials samples per cell, by the streaming engine
                      (`gca_jax.inference.tasks.passkey_grid`); kinds single|multikey|2hop,
                      formats official|landmark.
  long                ppl_length and passkey_grid.
  Long-context tasks check every length against the available memory before running (exit 2
  with the length, the bytes needed and available); with --out_dir they write ppl_length.json,
  passkey_grid.json and PNG plots (ppl_vs_length.png, passkey_<kind>_<format>.png,
  passkey_whole_<kind>_<format>.png) there.

Flags:
  --run_dir R         training run directory (required)
  --step N            checkpoint step (default: latest)
  --task T            ppl | passkey | all | ppl_length | passkey_grid | long (default all)
  --lengths L1,L2     sequence lengths in tokens, or multiples of the training length as "4x"
                      (passkey / passkey_grid default: the run's data.seq_len; ppl_length
                      default: 1x,2x,4x)
  --ppl_length N      window length for perplexity (default: the run's data.seq_len)
  --ppl_windows N     at most N held-out windows (default 64)
  --eval_path P       held-out corpus (default: the run's data.eval_path); also the passkey filler
  --tokenizer P       tokenizer model (default: the run's data.tokenizer)
  --num_samples N     passkey samples per (length, depth) (default 10)
  --depths D1,D2      needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)
  --batch_size N      sequences per forward pass or stream call (default 4; rounded up to the
                      mesh for the full-forward tasks)
  --seed N            passkey sample seed (default 0)
  --trials N          passkey_grid samples per cell (default: --num_samples)
  --kinds K1,K2       passkey_grid kinds: single,multikey,2hop (default all three)
  --formats F1,F2     passkey_grid formats: official,landmark (default both)
  --num_keys N        multikey needles per sample (default 4)
  --segment_len N     streaming segment length in text tokens (default: the run's data.seq_len)
  --memory M          chunk memory placement of the stream: auto | device | host (default auto)
  --out_dir DIR       long-context tasks: write JSON results and PNG plots here
  --progress B        progress bars on stderr (default true)
  --mesh D,F,T        mesh data,fsdp,tensor (default 1,-1,1)
  --out PATH          write the JSON result here (also printed)
  --compilation_cache DIR   JAX persistent compilation cache ('' = off)
Exit codes: 0 ok; 2 bad arguments / config mismatch / missing checkpoint / a length that does
not fit in memory or is too short for a task.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Training run directory.")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Instead of --run_dir: an exported model directory (params.npz + "
    "config.json, `gca_jax.data.recall.save_model`, e.g. checkpoints/recall_drt); streaming "
    "tasks (ppl_length, passkey_grid, long) only.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_TASK = flags.DEFINE_enum("task", "all",
                          ["ppl", "passkey", "all", "ppl_length", "passkey_grid", "long"],
                          "What to evaluate (see the module docstring).")
_LENGTHS = flags.DEFINE_list("lengths", [], "Lengths in tokens, or multiples of the training "
                             "length as '4x' (passkey, passkey_grid, ppl_length).")
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
_TRIALS = flags.DEFINE_integer("trials", None, "passkey_grid samples per cell (default: "
                               "--num_samples).")
_KINDS = flags.DEFINE_list("kinds", ["single", "multikey", "2hop"], "passkey_grid kinds.")
_FORMATS = flags.DEFINE_list("formats", ["official", "landmark"], "passkey_grid formats.")
_NUM_KEYS = flags.DEFINE_integer("num_keys", 4, "Needles per multikey sample.")
_SEGMENT = flags.DEFINE_integer("segment_len", None, "Streaming segment length (text tokens; "
                                "default: the run's data.seq_len).")
_MEMORY = flags.DEFINE_enum("memory", "auto", ["auto", "device", "host"],
                            "Chunk memory placement of the streaming engine.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Long-context tasks: JSON + PNG output dir.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bars on stderr.")
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


def _lengths(values, seq_len: int, default: list[int]) -> list[int]:
  """--lengths entries: integers, or 'Nx' = N times the training length."""
  out = []
  for v in values:
    v = v.strip()
    try:
      n = int(float(v[:-1]) * seq_len) if v.lower().endswith("x") else int(v)
    except ValueError as e:
      raise EvalError(f"--lengths={','.join(values)}: {v!r} is neither an integer nor a "
                      "multiple of the training length like '4x'") from e
    if n < 2:
      raise EvalError(f"--lengths: {v!r} gives {n} tokens; at least 2 needed")
    out.append(n)
  return out or default


def _depths() -> list[float]:
  try:
    depths = [float(x) for x in _DEPTHS.value]
  except ValueError as e:
    raise EvalError(f"--depths={','.join(_DEPTHS.value)}: numbers expected") from e
  if any(not 0.0 <= x <= 1.0 for x in depths):
    raise EvalError(f"--depths={depths}: each must lie in [0, 1]")
  return depths


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

  if _MODEL_DIR.value:
    return _evaluate_export()
  if not _RUN_DIR.value:
    raise EvalError("--run_dir (or --model_dir) is required")
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
    lengths = _lengths(_LENGTHS.value, seq_len, [seq_len])
    depths = _depths()
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
  if _TASK.value in ("ppl_length", "passkey_grid", "long"):
    result.update(_long_context(params, model_cfg, tok, stream, seq_len, say))
  return result


def _evaluate_export() -> dict:
  """--model_dir: an exported model (params.npz + config.json), streaming tasks only."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from gca_jax.data import Tokenizer, tokenize_corpus
  from gca_jax.data.recall import load_model

  path = _MODEL_DIR.value
  if _RUN_DIR.value:
    raise EvalError("give --run_dir or --model_dir, not both")
  for f in ("params.npz", "config.json"):
    if not os.path.isfile(os.path.join(path, f)):
      raise EvalError(f"--model_dir={path!r}: no {f} there (expected a save_model export)")
  if _TASK.value not in ("ppl_length", "passkey_grid", "long"):
    raise EvalError(f"--task={_TASK.value} needs --run_dir; with --model_dir use ppl_length, "
                    "passkey_grid or long")
  params, model_cfg, meta = load_model(path)
  params = jax.tree.map(jnp.asarray, params)
  args = meta.get("args", {})
  eval_path = _EVAL_PATH.value or args.get("eval_text", "")
  tok_path = _TOKENIZER.value or args.get("tokenizer", "")
  for name, p in (("eval_path", eval_path), ("tokenizer", tok_path)):
    if not p or not os.path.exists(p):
      raise EvalError(f"--{name}={p!r} does not exist (cwd {os.getcwd()})")
  tok = Tokenizer.load(tok_path)
  if tok.vocab_size > model_cfg.vocab_size:
    raise EvalError(f"tokenizer {tok_path!r} has {tok.vocab_size} pieces, the model only "
                    f"{model_cfg.vocab_size}")
  stream = np.asarray(tokenize_corpus(eval_path, tok).tokens)
  seq_len = int(meta.get("train_chunks", 16)) * model_cfg.text_per_chunk
  result = {"model_dir": os.path.abspath(path), "step": meta.get("step"),
            "model": model_cfg.to_dict(), "eval_path": eval_path, "tokenizer": tok_path,
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}"}
  say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
  result.update(_long_context(params, model_cfg, tok, stream, seq_len, say))
  return result


def _long_context(params, model_cfg, tok, stream, seq_len: int, say) -> dict:
  """The streaming tasks ppl_length / passkey_grid (module docstring); JSON + PNGs to --out_dir."""
  from gca_jax.inference import plots, tasks

  segment_len = _SEGMENT.value or seq_len
  if segment_len < 1:
    raise EvalError(f"--segment_len={segment_len}: must be positive")
  if _BATCH.value < 1:
    raise EvalError(f"--batch_size={_BATCH.value}: must be >= 1")
  out_dir = _OUT_DIR.value
  common = dict(segment_len=segment_len, memory=_MEMORY.value, batch_size=_BATCH.value,
                progress=_PROGRESS.value, log=say)
  result = {}
  todo = ["ppl_length", "passkey_grid"] if _TASK.value == "long" else [_TASK.value]
  # validate the arguments of every requested task before running any of them
  if "ppl_length" in todo:
    ppl_lengths = _lengths(_LENGTHS.value, seq_len, [seq_len, 2 * seq_len, 4 * seq_len])
    if _PPL_WINDOWS.value < 1:
      raise EvalError(f"--ppl_windows={_PPL_WINDOWS.value}: must be >= 1")
  if "passkey_grid" in todo:
    grid_lengths = _lengths(_LENGTHS.value, seq_len, [seq_len])
    depths = _depths()
    trials = _TRIALS.value if _TRIALS.value is not None else _NUM_SAMPLES.value
    if trials < 1:
      raise EvalError(f"--trials={trials}: must be >= 1")
    for name, vals, allowed in (("kinds", _KINDS.value, tasks.KINDS),
                                ("formats", _FORMATS.value, tasks.FORMATS)):
      bad = [v for v in vals if v not in allowed]
      if bad or not vals:
        raise EvalError(f"--{name}={','.join(vals)}: expected some of {','.join(allowed)}")
  grid_kw = {}
  if "passkey_grid" in todo:
    grid_kw = dict(lengths=grid_lengths, depths=depths, trials=trials, kinds=_KINDS.value,
                   formats=_FORMATS.value, num_keys=_NUM_KEYS.value)
  try:
    # every check (lengths, samples, memory) of every requested task before running any
    if "ppl_length" in todo:
      tasks.plan_ppl_vs_length(model_cfg, stream, ppl_lengths, windows=_PPL_WINDOWS.value,
                               segment_len=segment_len, batch_size=_BATCH.value,
                               memory=_MEMORY.value)
    if "passkey_grid" in todo:
      tasks.plan_passkey_grid(model_cfg, tok, stream, segment_len=segment_len,
                              memory=_MEMORY.value, batch_size=_BATCH.value, **grid_kw)
    if "ppl_length" in todo:
      r = tasks.ppl_vs_length(params, model_cfg, stream, ppl_lengths,
                              windows=_PPL_WINDOWS.value, **common)
      result["ppl_length"] = {"lengths": r, "train_length": seq_len,
                              "segment_len": segment_len, "engine": tasks.engine_name(model_cfg)}
      if out_dir:
        plots.write_json(result["ppl_length"], os.path.join(out_dir, "ppl_length.json"))
        plots.plot_ppl_vs_length(r, os.path.join(out_dir, "ppl_vs_length.png"),
                                 train_length=seq_len)
    if "passkey_grid" in todo:
      g = tasks.passkey_grid(params, model_cfg, tok, stream, seed=_SEED.value, **grid_kw,
                             **common)
      g["summary"] = tasks.summary(g)
      g["summary_whole_key"] = tasks.summary(g, "whole_key_accuracy")
      result["passkey_grid"] = g
      if out_dir:
        plots.write_json(g, os.path.join(out_dir, "passkey_grid.json"))
        plots.plot_passkey_grid(g, out_dir)
        plots.plot_passkey_grid(g, out_dir, metric="whole_key_accuracy", prefix="passkey_whole")
  except tasks.LengthFitError as e:
    raise EvalError(str(e)) from e
  except NotImplementedError as e:
    raise EvalError(f"streaming engine: {e} (try --memory=device)") from e
  except ValueError as e:
    raise EvalError(str(e)) from e
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
