"""The run config: its sections, defaults, validation, and the DRTConfig built from `config.model`.

A run config is an `ml_collections.ConfigDict` (configs/*.py `get_config()`, overridable on the
command line as `--config.section.field=value`). Sections:

  model       every `DRTConfig` field (gca_jax/config.py), same names and meaning.
  data        train_path, eval_path, tokenizer (SentencePiece .model), seq_len (text tokens per
              training sample), passkey_fraction (share of training samples rewritten as passkey
              samples, docs/method.md §4), passkey_key_len (10), passkey_answer_offset (4), cache_dir
              (token-stream cache; "" = none), shuffle_seed, eval_windows (held-out windows of
              seq_len scored at each in-training eval), format ("auto" | "text" | "arrayrecord":
              whether train_path and eval_path are text corpora or shard dirs written by
              scripts/pretokenize.py; "auto" tells each path by its manifest.json).
  train       steps, global_batch_size, grad_accum, lr, lr_end_frac, warmup_frac, b1, b2, eps,
              weight_decay, weight_decay_mask ("all" | "matrices"), clip (<= 0: off), seed,
              log_every, eval_every (0: only at the end; -1: never), eval_batch_size,
              progress_bar.
  mesh        data, fsdp, tensor (one may be -1 = all remaining devices), context (>= 1: each
              sample's sequence split by whole chunks over that many devices, docs/method.md §10;
              model_kind "drt" / "swa", tensor 1).
  checkpoint  every (steps between saves; 0: only at the end/preemption), keep, async_save
              (named so because `async` is a Python keyword that `--config.` overrides cannot
              parse).
  run_dir     where checkpoints, metrics.jsonl, tensorboard/ and config.json go.

`validate(config)` checks everything before any work starts and raises `RunConfigError` whose
message starts with the dotted name of the offending field, e.g.
`config.train.global_batch_size=12: must be divisible by mesh data*fsdp (8) * grad_accum (1) = 8`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import ml_collections

from gca_jax.config import ConfigError, DRTConfig
from gca_jax.sharding import MeshError, mesh_shape
from gca_jax.train.optim import WEIGHT_DECAY_MASKS

SECTIONS = ("model", "data", "train", "mesh", "checkpoint")


class RunConfigError(ValueError):
  """An invalid run config; the message starts with the offending `config.<section>.<field>`."""


def base_config() -> ml_collections.ConfigDict:
  """All fields with their defaults (docs/method.md §4 optimiser settings; the tiny model)."""
  c = ml_collections.ConfigDict()
  model = DRTConfig().to_dict()
  model["upper_groups"] = tuple(model["upper_groups"])
  c.model = ml_collections.ConfigDict(model)
  c.data = ml_collections.ConfigDict(dict(
      train_path="data/corpus/train",
      eval_path="data/corpus/valid",
      tokenizer="data/tokenizer/gca_tiny.model",
      seq_len=1008,
      passkey_fraction=0.0,
      passkey_key_len=10,
      passkey_answer_offset=4,
      cache_dir=".cache/tokens",
      shuffle_seed=0,
      eval_windows=16,
      num_workers=0,
      format="auto",
  ))
  c.data.recall = ml_collections.ConfigDict(dict(
      p_single=0.0,
      p_named=0.0,
      n_queries=4,
      key_len=5,
      answer_offset=4,
      answer_weight=1.0,
      p_landmark_filler=0.0,
      p_multikey=0.0,
      multikey_needles=16,
      p_2hop=0.0,
      eval_samples=64,
  ))
  c.data.curriculum = ml_collections.ConfigDict(dict(
      stages="",
      gate_accuracy=0.8,
      min_steps=50,
      window=25,
      tokens_per_step=0,
  ))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      global_batch_size=8,
      grad_accum=1,
      lr=2e-3,
      lr_end_frac=0.0,
      warmup_frac=0.02,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=1e-3,
      weight_decay_mask="all",
      clip=1.0,
      seed=0,
      log_every=10,
      eval_every=0,
      eval_batch_size=8,
      progress_bar=True,
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, context=1))
  c.checkpoint = ml_collections.ConfigDict({"every": 1000, "keep": 3, "async_save": True})
  c.run_dir = "runs/default"
  return c


# -- conversion --------------------------------------------------------------------------------

def to_dict(config) -> dict:
  """Plain JSON-able dict of a ConfigDict (tuples become lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  return json.loads(json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def from_dict(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """ConfigDict of a saved run config; `model.upper_groups` back to a tuple."""
  d = json.loads(json.dumps(d))
  if "model" in d and "upper_groups" in d["model"]:
    d["model"]["upper_groups"] = tuple(d["model"]["upper_groups"])
  return ml_collections.ConfigDict(d)


def model_config(config) -> DRTConfig:
  """`DRTConfig` from `config.model`; errors name `config.model.<field>`."""
  m = config["model"]
  d = m.to_dict() if isinstance(m, ml_collections.ConfigDict) else dict(m)
  try:
    return DRTConfig.from_dict(d)
  except ConfigError as e:
    raise RunConfigError(f"config.model: {e}".replace("DRTConfig.", "config.model.")) from e
  except TypeError as e:
    raise RunConfigError(f"config.model: {e}") from e


def model_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
  """Human-readable differences between two model sections (dicts), one line per field. A field
  one side lacks (a run saved before the field existed) counts as its `DRTConfig` default."""
  import dataclasses
  dflt = {f.name: f.default for f in dataclasses.fields(DRTConfig)
          if f.default is not dataclasses.MISSING}
  a, b = to_dict(dict(a)), to_dict(dict(b))
  a, b = {**{k: v for k, v in dflt.items() if k in b}, **a}, \
      {**{k: v for k, v in dflt.items() if k in a}, **b}
  out = []
  for k in sorted(set(a) | set(b)):
    if a.get(k, "<missing>") != b.get(k, "<missing>"):
      out.append(f"model.{k}: {a.get(k, '<missing>')!r} != {b.get(k, '<missing>')!r}")
  return out


# -- validation --------------------------------------------------------------------------------

def _validate_recall(config, mcfg: DRTConfig, seq_len: int) -> None:
  """config.data.recall / config.data.curriculum (see the module docstring)."""
  from gca_jax.data.pipeline import parse_stages
  for sec in ("recall", "curriculum"):
    if sec not in config.data:
      raise RunConfigError(f"config.data.{sec}: missing section (see "
                           f"gca_jax/train/run_config.py)")
  ps = _float(config, "data.recall.p_single", lo=0.0, hi=1.0)
  pn = _float(config, "data.recall.p_named", lo=0.0, hi=1.0)
  if ps + pn > 1.0 + 1e-9:
    _fail("data.recall.p_named", pn, f"p_single ({ps}) + p_named must be <= 1 (the rest is "
          f"plain text)")
  r = config.data.recall
  pm = _float(config, "data.recall.p_multikey", lo=0.0, hi=1.0) if "p_multikey" in r else 0.0
  ph = _float(config, "data.recall.p_2hop", lo=0.0, hi=1.0) if "p_2hop" in r else 0.0
  if ps + pn + pm + ph > 1.0 + 1e-9:
    _fail("data.recall.p_2hop" if ph else "data.recall.p_multikey", ph or pm,
          f"p_single ({ps}) + p_named ({pn}) + p_multikey ({pm}) + p_2hop ({ph}) must be <= 1 "
          f"(the rest is plain text)")
  if "multikey_needles" in r:
    _int(config, "data.recall.multikey_needles", minimum=1)
  _float(config, "data.recall.p_landmark_filler", lo=0.0, hi=1.0)
  _int(config, "data.recall.n_queries", minimum=1)
  key_len = _int(config, "data.recall.key_len", minimum=1)
  offset = _int(config, "data.recall.answer_offset", minimum=1)
  _float(config, "data.recall.answer_weight", lo=0.0)
  _int(config, "data.recall.eval_samples", minimum=0)
  _float(config, "data.curriculum.gate_accuracy", lo=0.0, hi=1.0)
  _int(config, "data.curriculum.min_steps", minimum=0)
  _int(config, "data.curriculum.window", minimum=1)
  _int(config, "data.curriculum.tokens_per_step", minimum=0)
  spec = config.data.curriculum.stages
  if not isinstance(spec, str):
    _fail("data.curriculum.stages", spec, "must be a string 'chunks:repeat,...' ('' = none)")
  if not recall_enabled(config):
    if spec:
      _fail("data.curriculum.stages", spec, "the curriculum gates on the answer accuracy of "
            "recall samples: set data.recall.p_single, p_named, p_multikey or p_2hop > 0")
    return
  if config.data.passkey_fraction > 0:
    _fail("data.passkey_fraction", config.data.passkey_fraction, "must be 0 with the recall "
          "mix (data.recall.p_single is its passkey share)")
  tpc = mcfg.text_per_chunk
  if offset + key_len > tpc:
    _fail("data.recall.key_len", key_len, f"answer_offset ({offset}) + key length must fit in "
          f"one chunk of {tpc} text tokens")
  if spec:
    try:
      pairs = parse_stages(spec)
    except ValueError as e:
      _fail("data.curriculum.stages", spec, str(e))
    last = pairs[-1][0] * tpc
    if last != seq_len:
      _fail("data.curriculum.stages", spec, f"the last stage ({pairs[-1][0]} chunks x {tpc} = "
            f"{last} tokens) must be the training length data.seq_len={seq_len}")
    for chunks, _ in pairs:
      if chunks < 3:
        _fail("data.curriculum.stages", spec, f"a stage of {chunks} chunk(s): recall samples "
              f"need at least 3 chunks")
  elif seq_len < 3 * tpc:
    _fail("data.seq_len", seq_len, f"recall samples need at least 3 chunks = {3 * tpc} tokens")


def _fail(name: str, value: Any, why: str):
  raise RunConfigError(f"config.{name}={value!r}: {why}")


def _get(config, name: str):
  v = config
  for part in name.split("."):
    v = v[part]
  return v


def recall_enabled(config) -> bool:
  """The recall mix is on (p_single + p_named + p_multikey + p_2hop > 0)."""
  r = config.data.get("recall")
  return r is not None and (float(r.p_single) + float(r.p_named) + float(r.get("p_multikey", 0.0))
                            + float(r.get("p_2hop", 0.0))) > 0


def _int(config, name: str, *, minimum: int | None = None) -> int:
  v = _get(config, name)
  if not isinstance(v, int) or isinstance(v, bool):
    _fail(name, v, "must be an integer")
  if minimum is not None and v < minimum:
    _fail(name, v, f"must be >= {minimum}")
  return v


def _float(config, name: str, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> float:
  v = _get(config, name)
  if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
    _fail(name, v, "must be a finite number")
  if lo is not None and (v < lo or (lo_open and v == lo)):
    _fail(name, v, f"must be {'>' if lo_open else '>='} {lo}")
  if hi is not None and (v > hi or (hi_open and v == hi)):
    _fail(name, v, f"must be {'<' if hi_open else '<='} {hi}")
  return float(v)


def _path(config, name: str, *, required: bool = True, kind: str = "any") -> None:
  from etils import epath
  sec, field = name.split(".")
  v = config[sec][field]
  if not isinstance(v, str) or not v:
    if required:
      _fail(name, v, "must be a non-empty path")
    return
  from gca_jax.data.corpus import GLOB_CHARS
  if GLOB_CHARS.search(v) is None and not epath.Path(v).exists():
    _fail(name, v, f"path does not exist (cwd: {os.getcwd()})")
  if kind == "file" and not epath.Path(v).is_file():
    _fail(name, v, "must be a file")


def _data_format(config, name: str) -> None:
  """config.data.<name> is a shard dir iff config.data.format is "arrayrecord"."""
  from gca_jax.data.shards import is_shard_dir
  v, fmt = config.data[name], config.data.format
  shard = is_shard_dir(v)
  if fmt == "arrayrecord" and not shard:
    _fail(f"data.{name}", v, "is not a shard dir (no manifest.json) but config.data.format="
          "'arrayrecord': write one with scripts/pretokenize.py, or set format 'auto'")
  if fmt == "text" and shard:
    _fail(f"data.{name}", v, "is a shard dir (holds manifest.json) but config.data.format="
          "'text': set format 'arrayrecord' or 'auto'")


def _validate_context(config, mcfg: DRTConfig, context: int, tensor: int) -> None:
  """mesh.context > 1: model kind, tensor 1, seq_len in whole chunks per shard, halo <= shard."""
  if mcfg.model_kind not in ("drt", "swa"):
    _fail("mesh.context", context, f"context parallelism supports model_kind 'drt' and 'swa', "
          f"not model.model_kind={mcfg.model_kind!r}")
  if tensor != 1:
    _fail("mesh.context", context, f"context parallelism needs mesh.tensor=1, got {tensor}")
  seq_len = config.data.seq_len
  if not isinstance(seq_len, int) or isinstance(seq_len, bool):
    return  # reported by the data section
  L = mcfg.text_per_chunk
  unit = L * context if mcfg.model_kind == "drt" else context
  if seq_len % unit:
    what = (f"whole chunks per context shard: a multiple of text_per_chunk ({L}) * mesh.context "
            f"({context}) = {unit}" if mcfg.model_kind == "drt"
            else f"a multiple of mesh.context = {context}")
    _fail("data.seq_len", seq_len, f"must split into {what}")
  rows = seq_len // context
  if mcfg.model_kind == "drt":
    rows += rows // L
  if rows < mcfg.window - 1:
    _fail("data.seq_len", seq_len, f"gives {rows} rows per context shard (mesh.context="
          f"{context}), fewer than model.window - 1 = {mcfg.window - 1} (the SWA halo)")


def validate(config, *, num_devices: int | None = None, check_paths: bool = True,
             tokenizer_vocab: int | None = None) -> DRTConfig:
  """Checks the whole run config; returns the model's `DRTConfig`. Raises RunConfigError.

  num_devices: devices the mesh must cover (default: `jax.device_count()`).
  tokenizer_vocab: the tokenizer's vocabulary size, if already loaded (else it is loaded from
  `config.data.tokenizer` when `check_paths`).
  """
  for sec in SECTIONS:
    if sec not in config:
      raise RunConfigError(f"config.{sec}: missing section (see gca_jax/train/run_config.py)")
  if "run_dir" not in config or not isinstance(config.run_dir, str) or not config.run_dir:
    raise RunConfigError(f"config.run_dir={config.get('run_dir')!r}: must be a non-empty path")
  mcfg = model_config(config)

  # train
  _int(config, "train.steps", minimum=1)
  gbs = _int(config, "train.global_batch_size", minimum=1)
  accum = _int(config, "train.grad_accum", minimum=1)
  _float(config, "train.lr", lo=0.0, lo_open=True)
  _float(config, "train.lr_end_frac", lo=0.0, hi=1.0)
  _float(config, "train.warmup_frac", lo=0.0, hi=1.0)
  _float(config, "train.b1", lo=0.0, hi=1.0, hi_open=True)
  _float(config, "train.b2", lo=0.0, hi=1.0, hi_open=True)
  _float(config, "train.eps", lo=0.0, lo_open=True)
  _float(config, "train.weight_decay", lo=0.0)
  _float(config, "train.clip")
  if config.train.weight_decay_mask not in WEIGHT_DECAY_MASKS:
    _fail("train.weight_decay_mask", config.train.weight_decay_mask,
          f"must be one of {WEIGHT_DECAY_MASKS}")
  _int(config, "train.seed", minimum=0)
  _int(config, "train.log_every", minimum=1)
  _int(config, "train.eval_every", minimum=-1)
  _int(config, "train.eval_batch_size", minimum=1)

  # mesh
  import jax  # late: keeps `validate` importable before XLA flags are set
  n_dev = jax.device_count() if num_devices is None else num_devices
  for ax in ("data", "fsdp", "tensor"):
    _int(config, f"mesh.{ax}", minimum=-1)
  context = _int(config, "mesh.context", minimum=1) if "context" in config.mesh else 1
  try:
    data, fsdp, tensor = mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, n_dev,
                                    context)
  except MeshError as e:
    raise RunConfigError(f"config.mesh: {e}") from e
  if context > 1:
    _validate_context(config, mcfg, context, tensor)
  batch_div = data * fsdp
  if gbs % (batch_div * accum):
    _fail("train.global_batch_size", gbs,
          f"must be divisible by mesh data*fsdp ({data}*{fsdp}={batch_div}) * grad_accum "
          f"({accum}) = {batch_div * accum}")
  if gbs % jax.process_count():
    _fail("train.global_batch_size", gbs,
          f"must be divisible by the number of processes ({jax.process_count()})")
  if config.train.eval_batch_size % batch_div:
    _fail("train.eval_batch_size", config.train.eval_batch_size,
          f"must be divisible by mesh data*fsdp = {batch_div}")
  for name, size in (("num_heads", mcfg.num_heads), ("mlp_dim", mcfg.mlp_dim),
                     ("vocab_size", mcfg.vocab_size)):
    if size % tensor:
      _fail(f"model.{name}", size, f"must be divisible by mesh.tensor={tensor}")
  if mcfg.d_model % fsdp:
    _fail("model.d_model", mcfg.d_model, f"must be divisible by mesh.fsdp={fsdp} (params are "
          f"sharded over 'fsdp' along d_model)")

  # data
  seq_len = _int(config, "data.seq_len", minimum=1)
  if mcfg.model_kind == "drt" and seq_len < mcfg.text_per_chunk:
    _fail("data.seq_len", seq_len, f"must hold at least one chunk of "
          f"{mcfg.text_per_chunk} text tokens (model.chunk_size={mcfg.chunk_size})")
  pk = _float(config, "data.passkey_fraction", lo=0.0, hi=1.0)
  key_len = _int(config, "data.passkey_key_len", minimum=1)
  offset = _int(config, "data.passkey_answer_offset", minimum=1)
  if pk > 0:
    if offset + key_len > mcfg.text_per_chunk:
      _fail("data.passkey_key_len", key_len, f"passkey_answer_offset ({offset}) + key length "
            f"must fit in one chunk of {mcfg.text_per_chunk} text tokens")
    if seq_len < 3 * mcfg.text_per_chunk:
      _fail("data.seq_len", seq_len, f"passkey samples (passkey_fraction={pk}) need at least 3 "
            f"chunks = {3 * mcfg.text_per_chunk} tokens")
  _int(config, "data.shuffle_seed", minimum=0)
  _int(config, "data.eval_windows", minimum=1)
  if not isinstance(config.data.cache_dir, str):
    _fail("data.cache_dir", config.data.cache_dir, "must be a path string ('' = no cache)")
  _int(config, "data.num_workers", minimum=0)
  from gca_jax.data.pipeline import FORMATS
  if config.data.get("format", "auto") not in FORMATS:
    _fail("data.format", config.data.format, f"must be one of {FORMATS}")
  _validate_recall(config, mcfg, seq_len)

  # checkpoint
  _int(config, "checkpoint.every", minimum=0)
  _int(config, "checkpoint.keep", minimum=1)
  if not isinstance(config.checkpoint.async_save, bool):
    _fail("checkpoint.async_save", config.checkpoint.async_save, "must be true or false")

  if check_paths:
    _path(config, "data.train_path")
    _path(config, "data.tokenizer", kind="file")
    if config.train.eval_every >= 0:
      _path(config, "data.eval_path")
    if config.data.get("format", "auto") != "auto":
      _data_format(config, "train_path")
      if config.train.eval_every >= 0:
        _data_format(config, "eval_path")
    if tokenizer_vocab is None:
      from gca_jax.data import Tokenizer
      try:
        tokenizer_vocab = Tokenizer.load(config.data.tokenizer).vocab_size
      except Exception as e:
        _fail("data.tokenizer", config.data.tokenizer, f"cannot be loaded: {e}")
  if tokenizer_vocab is not None and tokenizer_vocab > mcfg.vocab_size:
    _fail("model.vocab_size", mcfg.vocab_size, f"is smaller than the tokenizer's vocabulary "
          f"({tokenizer_vocab} pieces in {config.data.tokenizer})")
  return mcfg
