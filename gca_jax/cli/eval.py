"""Evaluate a model: a training run (`--run_dir`) or an export (`--model_dir`), for every task.

    python eval.py --run_dir runs/tiny --task all --lengths 1008,2016 --out runs/tiny/eval.json
    python eval.py --model_dir checkpoints/sotu_drt --task passkey_grid --lengths 1x,64x \\
        --kinds single --formats official --trials 4
    python eval.py --model_dir checkpoints/sotu_drt --task long --lengths 1x,4x --out_dir /tmp/long
    python eval.py --model_dir checkpoints/sotu_drt --task generate --prompt "The Union is"

Models are loaded by `gca_jax.export`: `--run_dir` -> `load_run(run_dir, step)` (params of the
Orbax checkpoint, the model config saved with it, the run's tokenizer and data settings);
`--model_dir` -> `load_model(model_dir)` (an export: model.safetensors + config.json +
tokenizer.model). `--config` (optional) is checked against the loaded model: any difference in
the model section is an error (exit 2), so a result is never attributed to the wrong model.

Tasks:
  ppl, passkey, all   held-out perplexity at one window length (full forward passes,
                      `gca_jax.eval.Evaluator.perplexity`) and the passkey accuracy of --kinds x
                      --formats (default single x official) at --lengths: the same samples and
                      scorer as passkey_grid with log-probs from full forward passes (the
                      cross-check of the streaming result, `Evaluator.passkey`).
  ppl_length          perplexity at each of --lengths (e.g. 1x..64x the training length) on the
                      streaming engine (`gca_jax.eval.ppl_vs_length`), --ppl_windows windows of
                      length+1 held-out tokens each; plus the loss by position bucket.
  passkey_grid        passkey accuracy (first-token and whole-key) for every kind x format x
                      length x depth, --trials samples per cell, on the streaming engine
                      (`gca_jax.eval.passkey_grid`); kinds single|multikey|2hop, formats
                      official|landmark (default: all).
  long                ppl_length and passkey_grid.
  ppl_position        NLL by position on ONE held-out stream (`gca_jax.eval.long.ppl_by_position`):
                      its first --length + 1 tokens (0: the whole stream) streamed once, targets
                      bucketed [0,U), [U,4U), [4U,16U), ... with U = --bucket_unit (default: the
                      training length); the same stream and buckets for every model.
  generate            encodes --prompt with the model's tokenizer, runs
                      `gca_jax.inference.generate` (the stream: prompt in segments, then one token
                      per step) and prints the decoded continuation (only it) on stdout.
  Long-context tasks check every length against the available memory before running (exit 2
  with the length, the bytes needed and available); with --out_dir they write ppl_length.json,
  passkey_grid.json and PNG plots (ppl_vs_length.png, passkey_<kind>_<format>.png,
  passkey_whole_<kind>_<format>.png) there. Other tasks print their JSON result on stdout.

Passkey numbers (docs/method.md §4): first_token_accuracy = share of samples whose most likely next token
at the answer position is the key's first token (the official metric); whole_key_accuracy =
every key token is the most likely one at its position (teacher-forced); key_nll = mean -log p
of the key tokens; a random guess gets ~1/vocab_size first-token accuracy.

Flags:
  --run_dir R         training run directory (this or --model_dir)
  --model_dir D       exported model directory (`python -m gca_jax.export`; e.g. checkpoints/*)
  --step N            --run_dir: checkpoint step (default: latest)
  --task T            ppl | passkey | all | ppl_length | passkey_grid | long | generate |
                      ppl_position
                      (default all)
  --lengths L1,L2     sequence lengths in tokens, or multiples of the training length as "4x"
                      (passkey / passkey_grid default: 1x; ppl_length default: 1x,2x,4x)
  --ppl_length N      window length for perplexity (default: the training length)
  --ppl_windows N     at most N held-out windows (default 64)
  --length N          ppl_position: tokens streamed (default 0 = the whole held-out stream)
  --bucket_unit U     ppl_position: first bucket [0, U) (default: the training length)
  --bucket_factor F   ppl_position: bucket edges grow by F (default 4)
  --eval_path P       held-out corpus, also the passkey filler (default: the run's
                      data.eval_path / the export's meta)
  --tokenizer P       tokenizer model (default: the run's / the export's)
  --trials N          passkey samples per cell (kind x format x length x depth) (default 10)
  --depths D1,D2      needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)
  --kinds K1,K2       passkey kinds: single,multikey,2hop (default: passkey single; grid all)
  --formats F1,F2     passkey formats: official,landmark (default: passkey official; grid both)
  --num_keys N        multikey needles per sample (default 4)
  --batch_size N      sequences per forward pass or stream call (default 4; rounded up to the
                      mesh for the full-forward tasks)
  --seed N            passkey sample seed; generate: sampling seed (default 0)
  --segment_len N     streaming segment length in text tokens (default: the training length)
  --memory M          chunk memory placement of the stream: auto | device | host (default auto)
  --dtype D           override the model's compute dtype (e.g. float32)
  --prompt S          generate: the prompt text (required)
  --max_new_tokens N  generate: tokens to generate (default 64)
  --temperature T     generate: 0 = greedy (default 0)
  --top_k K           generate: sample from the K most likely tokens (default: all)
  --out_dir DIR       long-context tasks: write JSON results and PNG plots here
  --progress B        progress bars on stderr (default true)
  --mesh D,F,T        full-forward tasks: mesh data,fsdp,tensor (default 1,-1,1)
  --out PATH          write the JSON result here (also printed, except for generate)
  --config FILE       optional run config; its model section must equal the loaded model's
  --compilation_cache DIR   JAX persistent compilation cache ('' = off)
Exit codes: 0 ok; 2 bad arguments (the message names the flag) / config mismatch / missing
checkpoint or export / a length that does not fit in memory or is too short for a task.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from gca_jax.train import distributed

TASKS = ["ppl", "passkey", "all", "ppl_length", "passkey_grid", "long", "generate",
         "ppl_position"]
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Training run directory.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Exported model directory (gca_jax.export).")
_STEP = flags.DEFINE_integer("step", None, "--run_dir: checkpoint step (default: latest).")
_TASK = flags.DEFINE_enum("task", "all", TASKS, "What to evaluate (see the module docstring).")
_LENGTHS = flags.DEFINE_list("lengths", [], "Lengths in tokens, or multiples of the training "
                             "length as '4x'.")
_PPL_LENGTH = flags.DEFINE_integer("ppl_length", None, "Perplexity window length.")
_PPL_WINDOWS = flags.DEFINE_integer("ppl_windows", 64, "Max held-out windows.")
_LENGTH = flags.DEFINE_integer("length", 0, "ppl_position: tokens streamed (0 = all).")
_BUCKET_UNIT = flags.DEFINE_integer("bucket_unit", None, "ppl_position: first bucket size.")
_BUCKET_FACTOR = flags.DEFINE_integer("bucket_factor", 4, "ppl_position: bucket growth.")
_EVAL_PATH = flags.DEFINE_string("eval_path", None, "Held-out corpus (default: saved).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer model (default: saved).")
_TRIALS = flags.DEFINE_integer("trials", 10, "Passkey samples per cell.")
_DEPTHS = flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"], "Needle depths.")
_KINDS = flags.DEFINE_list("kinds", [], "Passkey kinds (single,multikey,2hop).")
_FORMATS = flags.DEFINE_list("formats", [], "Passkey formats (official,landmark).")
_NUM_KEYS = flags.DEFINE_integer("num_keys", 4, "Needles per multikey sample.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Sequences per forward pass / stream call.")
_SEED = flags.DEFINE_integer("seed", 0, "Passkey sample seed / generation seed.")
_SEGMENT = flags.DEFINE_integer("segment_len", None, "Streaming segment length (text tokens).")
_MEMORY = flags.DEFINE_enum("memory", "auto", ["auto", "device", "host"],
                            "Chunk memory placement of the stream.")
_DTYPE = flags.DEFINE_string("dtype", None, "Override the model's compute dtype.")
_PROMPT = flags.DEFINE_string("prompt", None, "generate: the prompt text.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "generate: tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "generate: 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", None, "generate: sample from the top k tokens.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Long-context tasks: JSON + PNG output dir.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bars on stderr.")
_MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "Mesh data,fsdp,tensor.")
_OUT = flags.DEFINE_string("out", None, "Output JSON path.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compilation_cache", "", "Directory for JAX's persistent compilation cache ('' = off).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional run config; its model section must equal the loaded one.",
    lock_config=True)
_DIST = distributed.define_flags()   # --distributed, --coordinator_address, ... (multi-process)

_FULL_TASKS = ("ppl", "passkey", "all")
_STREAM_TASKS = ("ppl_length", "passkey_grid", "long", "ppl_position")


class EvalError(ValueError):
  pass


def _say(s: str) -> None:
  print(s, file=sys.stderr, flush=True)


def _ints(name, values):
  try:
    return [int(v) for v in values]
  except ValueError as e:
    raise EvalError(f"--{name}={','.join(values)}: integers expected") from e


def _lengths(seq_len: int, default: list[int]) -> list[int]:
  """--lengths entries: integers, or 'Nx' = N times the training length."""
  out = []
  for v in _LENGTHS.value:
    v = v.strip()
    try:
      n = int(float(v[:-1]) * seq_len) if v.lower().endswith("x") else int(v)
    except ValueError as e:
      raise EvalError(f"--lengths={','.join(_LENGTHS.value)}: {v!r} is neither an integer nor a "
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
  if not depths or any(not 0.0 <= x <= 1.0 for x in depths):
    raise EvalError(f"--depths={','.join(_DEPTHS.value)}: each must lie in [0, 1]")
  return depths


def _choices(flag, default: list[str], allowed) -> list[str]:
  vals = flag.value or default
  bad = [v for v in vals if v not in allowed]
  if bad:
    raise EvalError(f"--{flag.name}={','.join(vals)}: expected some of {','.join(allowed)}")
  return vals


def _positive(flag) -> int:
  if flag.value is None or flag.value < 1:
    raise EvalError(f"--{flag.name}={flag.value}: must be >= 1")
  return flag.value


# ----------------------------------------------------------------------------- loading


def load() -> tuple[object, dict]:
  """(LoadedModel, info) from --run_dir or --model_dir (`gca_jax.export`); info: {"run_dir" or
  "model_dir", "step", "seq_len", "eval_path", "cache_dir", "tokenizer"} (flags override the
  saved values)."""
  import dataclasses

  from gca_jax import export
  if bool(_RUN_DIR.value) == bool(_MODEL_DIR.value):
    raise EvalError("give exactly one of --run_dir (a training run) or --model_dir (an export)")
  if _STEP.value is not None and _MODEL_DIR.value:
    raise EvalError("--step applies to --run_dir only (an export holds one step)")
  if _MODEL_DIR.value:
    path, flag = _MODEL_DIR.value, "model_dir"
    if not os.path.isdir(path):
      raise EvalError(f"--model_dir={path!r} is not a directory (cwd {os.getcwd()})")
  else:
    path, flag = _RUN_DIR.value, "run_dir"
  try:
    m = export.load_model(path) if flag == "model_dir" else export.load_run(path, _STEP.value)
  except (OSError, ValueError, KeyError) as e:
    raise EvalError(f"--{flag}={path!r}: {e}") from e
  meta = dict(m.meta or {})
  data = (meta.get("run_config") or {}).get("data") or {}
  chunks = meta.get("train_chunks")
  seq_len = meta.get("train_seq_len") or (int(chunks) * m.config.text_per_chunk if chunks
                                          else 16 * m.config.text_per_chunk)
  info = {flag: os.path.abspath(path), "step": meta.get("step"), "seq_len": int(seq_len),
          "eval_path": _EVAL_PATH.value or meta.get("eval_path"),
          "tokenizer": _TOKENIZER.value or m.tokenizer, "cache_dir": data.get("cache_dir") or None}
  if _CONFIG.value is not None:
    from gca_jax.train import run_config as rc
    diff = rc.model_diff(m.config.to_dict(), rc.to_dict(_CONFIG.value.model))
    if diff:
      raise EvalError(f"--config does not match the model of --{flag}={path!r} (loaded != "
                      "given):\n  " + "\n  ".join(diff))
  if _DTYPE.value:
    try:
      m = dataclasses.replace(m, config=m.config.replace(dtype=_DTYPE.value))
    except ValueError as e:
      raise EvalError(f"--dtype={_DTYPE.value!r}: {e}") from e
  return m, info


def _tokenizer(info: dict, vocab_size: int):
  from gca_jax.data import Tokenizer
  p = info["tokenizer"]
  if not p or not os.path.exists(p):
    raise EvalError(f"--tokenizer={p!r} does not exist (cwd {os.getcwd()}); the model has no "
                    "saved tokenizer there, give --tokenizer")
  tok = Tokenizer.load(p)
  if tok.vocab_size > vocab_size:
    raise EvalError(f"--tokenizer={p!r} has {tok.vocab_size} pieces, the model only {vocab_size}")
  return tok


def _eval_stream(info: dict, tok):
  import numpy as np

  from gca_jax.data import tokenize_corpus
  p = info["eval_path"]
  if not p or not os.path.exists(p):
    raise EvalError(f"--eval_path={p!r} does not exist (cwd {os.getcwd()}); give the held-out "
                    "corpus with --eval_path")
  return np.asarray(tokenize_corpus(p, tok, info["cache_dir"]).tokens)


# ----------------------------------------------------------------------------- tasks


def _generate(m, info: dict) -> dict:
  import numpy as np

  from gca_jax import inference
  if not _PROMPT.value:
    raise EvalError("--task generate needs --prompt \"...\" (non-empty)")
  n_new = _positive(_MAX_NEW)
  if _TEMPERATURE.value < 0:
    raise EvalError(f"--temperature={_TEMPERATURE.value}: must be >= 0 (0 = greedy)")
  if _TOP_K.value is not None and _TOP_K.value < 1:
    raise EvalError(f"--top_k={_TOP_K.value}: must be >= 1")
  tok = _tokenizer(info, m.config.vocab_size)
  ids = tok.encode(_PROMPT.value)
  if not ids:
    raise EvalError(f"--prompt={_PROMPT.value!r} encodes to no tokens")
  generate = getattr(inference, "generate", None)
  if generate is None:
    raise EvalError("--task generate needs gca_jax.inference.generate, missing in this build")
  kw = {"segment_len": _SEGMENT.value} if _SEGMENT.value else {}
  t0 = time.time()
  out = np.asarray(generate(m.params, m.config, np.asarray([ids], np.int32), n_new,
                            temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                            seed=_SEED.value, **kw))
  new = [int(t) for t in out[0, len(ids):]]
  return {"prompt": _PROMPT.value, "prompt_tokens": len(ids), "max_new_tokens": n_new,
          "temperature": _TEMPERATURE.value, "top_k": _TOP_K.value, "seed": _SEED.value,
          "tokens": new, "continuation": tok.decode(new), "seconds": round(time.time() - t0, 2)}


def _full_forward(m, tok, stream, seq_len: int) -> dict:
  import jax

  from gca_jax.data import make_eval_windows
  from gca_jax.eval import KINDS, FORMATS, Evaluator
  from gca_jax.models.drt import DRT
  from gca_jax.sharding import make_mesh
  from gca_jax.train.state import abstract_params

  todo = ["ppl", "passkey"] if _TASK.value == "all" else [_TASK.value]
  batch = _positive(_BATCH)
  if "ppl" in todo:
    length = _PPL_LENGTH.value or seq_len
    if length < 1:
      raise EvalError(f"--ppl_length={length}: must be >= 1")
    _positive(_PPL_WINDOWS)
  if "passkey" in todo:
    pk_kw = dict(lengths=_lengths(seq_len, [seq_len]), depths=_depths(), trials=_positive(_TRIALS),
                 kinds=_choices(_KINDS, ["single"], KINDS),
                 formats=_choices(_FORMATS, ["official"], FORMATS), num_keys=_NUM_KEYS.value)
  d, f, t = _ints("mesh", _MESH.value)
  try:
    mesh = make_mesh(d, f, t)
  except ValueError as e:
    raise EvalError(f"--mesh={','.join(_MESH.value)}: {e}") from e
  model = DRT(m.config)
  _, shardings = abstract_params(model, mesh)
  params = distributed.put_global(m.params, shardings)   # any process count
  ev = Evaluator(model, mesh, shardings)
  result = {}
  if "ppl" in todo:
    t0 = time.time()
    r = ev.perplexity(params, make_eval_windows(stream, length, _PPL_WINDOWS.value), batch)
    r.update(length=length, seconds=round(time.time() - t0, 2))
    result["ppl"] = r
    _say(f"perplexity @ {length}: loss {r['loss']:.4f} ppl {r['ppl']:.2f} "
         f"({r['windows']} windows, {r['tokens']} tokens)")
  if "passkey" in todo:
    from gca_jax.eval import summary
    t0 = time.time()
    try:
      g = ev.passkey(params, tok, stream, batch_size=batch, seed=_SEED.value, log=_say, **pk_kw)
    except ValueError as e:
      raise EvalError(f"passkey: {e}") from e
    g["summary"] = summary(g)
    g["summary_whole_key"] = summary(g, "whole_key_accuracy")
    g["seconds_total"] = round(time.time() - t0, 2)
    result["passkey"] = g
  return result


def _long_context(m, tok, stream, seq_len: int) -> dict:
  """ppl_length / passkey_grid on the streaming engine; JSON + PNGs to --out_dir."""
  from gca_jax import eval as ev
  from gca_jax.eval import plots

  segment_len = _SEGMENT.value or seq_len
  if segment_len < 1:
    raise EvalError(f"--segment_len={segment_len}: must be >= 1")
  batch = _positive(_BATCH)
  cfg, params = m.config, m.params
  if _TASK.value == "ppl_position":
    return _ppl_position(m, stream, seq_len, segment_len)
  common = dict(segment_len=segment_len, memory=_MEMORY.value, batch_size=batch,
                progress=_PROGRESS.value, log=_say)
  todo = ["ppl_length", "passkey_grid"] if _TASK.value == "long" else [_TASK.value]
  if "ppl_length" in todo:  # every argument of every requested task before running any
    ppl_lengths = _lengths(seq_len, [seq_len, 2 * seq_len, 4 * seq_len])
    windows = _positive(_PPL_WINDOWS)
  if "passkey_grid" in todo:
    grid_kw = dict(lengths=_lengths(seq_len, [seq_len]), depths=_depths(),
                   trials=_positive(_TRIALS), kinds=_choices(_KINDS, list(ev.KINDS), ev.KINDS),
                   formats=_choices(_FORMATS, list(ev.FORMATS), ev.FORMATS),
                   num_keys=_NUM_KEYS.value)
  result, out_dir = {}, _OUT_DIR.value
  try:  # every check (lengths, samples, memory) of every requested task before running any
    if "ppl_length" in todo:
      ev.plan_ppl_vs_length(cfg, stream, ppl_lengths, windows=windows, segment_len=segment_len,
                            batch_size=batch, memory=_MEMORY.value)
    if "passkey_grid" in todo:
      ev.plan_passkey_grid(cfg, tok, stream, segment_len=segment_len, memory=_MEMORY.value,
                           batch_size=batch, **grid_kw)
    if "ppl_length" in todo:
      r = ev.ppl_vs_length(params, cfg, stream, ppl_lengths, windows=windows, **common)
      result["ppl_length"] = {"lengths": r, "train_length": seq_len,
                              "segment_len": segment_len, "engine": "stream"}
      if out_dir:
        plots.write_json(result["ppl_length"], os.path.join(out_dir, "ppl_length.json"))
        plots.plot_ppl_vs_length(r, os.path.join(out_dir, "ppl_vs_length.png"),
                                 train_length=seq_len)
    if "passkey_grid" in todo:
      g = ev.passkey_grid(params, cfg, tok, stream, seed=_SEED.value, **grid_kw, **common)
      g["summary"] = ev.summary(g)
      g["summary_whole_key"] = ev.summary(g, "whole_key_accuracy")
      g["train_length"] = seq_len
      result["passkey_grid"] = g
      if out_dir:
        plots.write_json(g, os.path.join(out_dir, "passkey_grid.json"))
        plots.plot_passkey_grid(g, out_dir)
        plots.plot_passkey_grid(g, out_dir, metric="whole_key_accuracy", prefix="passkey_whole")
  except NotImplementedError as e:
    raise EvalError(f"streaming engine: {e} (try --memory=device)") from e
  except ValueError as e:  # LengthFitError / StreamMemoryError included
    raise EvalError(_as_flags(str(e))) from e
  return result


def _as_flags(msg: str) -> str:
  """The API's remedies in a memory error as this script's flags."""
  msg = re.sub(r'memory="(\w+)"', r"--memory=\1", msg)
  return re.sub(r"a smaller batch \(batch (\d+) -> (\d+)\)", r"--batch_size \2 (now \1)", msg)


def _ppl_position(m, stream, seq_len: int, segment_len: int) -> dict:
  """--task ppl_position (module docstring)."""
  from gca_jax.eval import long
  n = int(len(stream)) - 1
  length = _LENGTH.value or n
  if length < 1 or length > n:
    raise EvalError(f"--length={_LENGTH.value}: the held-out stream has {n + 1} tokens "
                    f"(at most {n} targets)")
  unit = _BUCKET_UNIT.value or seq_len
  if unit < 1 or _BUCKET_FACTOR.value < 2:
    raise EvalError(f"--bucket_unit={unit} must be >= 1 and --bucket_factor="
                    f"{_BUCKET_FACTOR.value} >= 2")
  try:
    r = long.ppl_by_position(m.params, m.config, stream, length=length, unit=unit,
                             factor=_BUCKET_FACTOR.value, segment_len=segment_len,
                             memory=_MEMORY.value, progress=_PROGRESS.value, log=_say)
  except NotImplementedError as e:
    raise EvalError(f"streaming engine: {e} (try --memory=device)") from e
  except ValueError as e:
    raise EvalError(_as_flags(str(e))) from e
  r.update(train_length=seq_len, stream_tokens=n + 1, engine="stream")
  return {"ppl_position": r}


def evaluate() -> dict:
  distributed.initialize_from_flags(_DIST)   # before anything touches jax devices
  import jax

  if _COMPILE_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE.value)
  m, info = load()
  result = {k: v for k, v in info.items() if k != "cache_dir"}
  result.update(task=_TASK.value, model=m.config.to_dict(),
                devices=f"{jax.device_count()} x {jax.devices()[0].platform}")
  if _TASK.value == "generate":
    result.update(_generate(m, info))
    return result
  tok = _tokenizer(info, m.config.vocab_size)
  stream = _eval_stream(info, tok)
  seq_len = info["seq_len"]
  if _TASK.value in _FULL_TASKS:
    result.update(_full_forward(m, tok, stream, seq_len))
  else:
    result.update(_long_context(m, tok, stream, seq_len))
  return result


def _parse_flags(argv):
  """absl flag parsing whose errors exit 2 with the flag's message (not absl's exit 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}\nSee `python eval.py --help` for the flags.", file=sys.stderr)
    sys.exit(2)


def _check_output(flag, is_dir: bool) -> None:
  """The output path of `flag` can be written (checked before any work)."""
  path = flag.value
  if not path:
    return
  target = os.path.abspath(path) if is_dir else os.path.dirname(os.path.abspath(path))
  if not is_dir and os.path.isdir(path):
    raise EvalError(f"--{flag.name}={path!r} is a directory; give a file path")
  try:
    os.makedirs(target, exist_ok=True)
  except OSError as e:
    raise EvalError(f"--{flag.name}={path!r}: cannot create {target!r} ({e.strerror})") from e
  probe = os.path.join(target, f".eval_write_check.{os.getpid()}")
  try:
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise EvalError(f"--{flag.name}={path!r}: {target!r} is not writable ({e.strerror})") from e


def check_arguments() -> None:
  """Checks that need no model, before anything is loaded: counts and output paths."""
  for flag in (_BATCH, _PPL_WINDOWS, _TRIALS, _MAX_NEW, _NUM_KEYS):
    _positive(flag)
  for flag in (_PPL_LENGTH, _SEGMENT):
    if flag.value is not None:
      _positive(flag)
  _check_output(_OUT, is_dir=False)
  _check_output(_OUT_DIR, is_dir=True)


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]} (flags are --name=value)", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)
  try:
    check_arguments()
  except EvalError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
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
  print(result["continuation"] if _TASK.value == "generate" else text, flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
