"""The one model export format: a directory with `model.safetensors` + `config.json`
(+ `tokenizer.model`), written atomically; and loading models from it or from a train.py run.

Layout of an export directory:
  model.safetensors - every parameter leaf, keyed by its Flax path joined with "/"
                      (e.g. `upper_0/gca/q_proj/kernel`), in its own dtype (or the one asked).
  config.json       - {"format": "gca_jax-export", "version": 1, "model": DRTConfig.to_dict(),
                      "tokenizer": "tokenizer.model" | null, "meta": {...},
                      "files": {"model.safetensors": {"sha256": hex, "bytes": n}, ...}}.
  tokenizer.model   - the SentencePiece model the run was trained with, when known.

`meta` is free-form JSON; the keys written here: "step" (optimizer updates), "train_seq_len"
(training length in text tokens), "eval_path" (held-out text of the run), "source".

`files` holds the sha256 and size of every other file of the directory; `load_model` checks them
before reading (a mismatch is an ExportError naming the file). An export without `files` (written
before checksums existed) loads with one warning; `python -m gca_jax.export.checksums DIR` adds
them to such an export after checking that it loads.

API: `save_model`, `load_model`, `load_run` (params of an Orbax checkpoint of a train.py run
dir, without the optimizer state), `export_run`, `check_params`, and the CLI
`python -m gca_jax.export --run_dir R --out DIR [--step N] [--dtype bfloat16|float32]`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Mapping

import numpy as np

from gca_jax.config import DRTConfig
from gca_jax.export import safetensors_io
from gca_jax.export.safetensors_io import SafetensorsError

FORMAT = "gca_jax-export"
VERSION = 1
PARAMS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
FILES_KEY = "files"

__all__ = ["ExportError", "LoadedModel", "SafetensorsError", "abstract_params", "check_params",
           "export_run", "file_checksums", "flatten_params", "load_model", "load_run",
           "read_config", "save_model", "unflatten_params", "verify_files"]


class ExportError(ValueError):
  """An export or run cannot be written or read; the message names the file/field and cause."""


@dataclasses.dataclass
class LoadedModel:
  """A model ready for `DRT(config).apply({"params": params}, tokens)`.

  params: nested dict of jax arrays (Flax parameter tree); config: the architecture;
  tokenizer: path of the SentencePiece model file (None if unknown); meta: dict (see module doc).
  """
  params: Any
  config: DRTConfig
  tokenizer: str | None
  meta: dict


# -- parameter trees ---------------------------------------------------------------------------

def _key_str(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def flatten_params(params) -> dict[str, np.ndarray]:
  """{"a/b/kernel": numpy array} of a nested parameter tree (Flax path joined with "/");
  `nn.Partitioned` boxes (from `init`) are unboxed."""
  import flax.linen as nn
  import jax
  flat = {}
  for path, x in jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]:
    parts = [_key_str(k) for k in path]
    bad = [p for p in parts if "/" in p or not p]
    if bad:
      raise ExportError(f"parameter path {parts}: name {bad[0]!r} is empty or contains '/'")
    flat["/".join(parts)] = np.asarray(jax.device_get(x))
  return flat


def unflatten_params(flat: Mapping[str, Any]) -> dict:
  """Nested dict from {"a/b/kernel": array}; the inverse of `flatten_params`."""
  tree: dict = {}
  for key, x in flat.items():
    node = tree
    parts = key.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ExportError(f"parameter {key!r}: {p!r} is both a leaf and a prefix")
    if parts[-1] in node:
      raise ExportError(f"parameter {key!r} is both a leaf and a prefix")
    node[parts[-1]] = x
  return tree


@functools.lru_cache(maxsize=16)
def _expected_shapes(config: DRTConfig) -> dict[str, tuple[tuple[int, ...], str]]:
  """{path: (shape, param dtype)} of `DRT(config).init` (abstract: no memory, no compute)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from gca_jax.models.drt import DRT

  def init():
    k1, k2 = jax.random.split(jax.random.key(0))
    tokens = jnp.zeros((1, 8), jnp.int32)
    return DRT(config).init({"params": k1, "gumbel": k2}, tokens, train=False)["params"]

  abstract = nn.unbox(jax.eval_shape(init))
  return {k: (tuple(v.shape), str(v.dtype)) for k, v in _flatten_abstract(abstract).items()}


def _flatten_abstract(tree) -> dict:
  """Like `flatten_params`, without converting leaves (arrays or ShapeDtypeStructs)."""
  import flax.linen as nn
  import jax
  return {"/".join(_key_str(k) for k in path): x
          for path, x in jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]}


def abstract_params(config: DRTConfig, sharding=None) -> dict:
  """Nested dict of `jax.ShapeDtypeStruct` of the params of `DRT(config)` (config.param_dtype)."""
  import jax
  flat = {k: jax.ShapeDtypeStruct(s, np.dtype(d), sharding=sharding)
          for k, (s, d) in _expected_shapes(config).items()}
  return unflatten_params(flat)


def check_params(params, config: DRTConfig, where: str = "params") -> None:
  """Raises ExportError naming the first path whose presence or shape differs from what
  `DRT(config).init` creates (dtypes may differ: exports may store bfloat16)."""
  _check_flat(_flatten_abstract(params), config, where)


def _check_flat(flat: Mapping[str, Any], config: DRTConfig, where: str) -> None:
  want = _expected_shapes(config)
  missing = sorted(set(want) - set(flat))
  extra = sorted(set(flat) - set(want))
  hint = (f"model_kind={config.model_kind!r}, d_model={config.d_model}, "
          f"vocab_size={config.vocab_size}")
  if missing:
    raise ExportError(f"{where}: parameter {missing[0]!r} of the config's model ({hint}) is "
                      f"missing ({len(missing)} missing in all)")
  if extra:
    raise ExportError(f"{where}: parameter {extra[0]!r} is not in the config's model ({hint}; "
                      f"{len(extra)} unexpected in all)")
  for k in sorted(want):
    shape = tuple(np.shape(flat[k]))
    if shape != want[k][0]:
      raise ExportError(f"{where}: parameter {k!r} has shape {list(shape)}, the config's model "
                        f"({hint}) has {list(want[k][0])}")


# -- atomic directory writes -------------------------------------------------------------------

def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


_MODEL_DIR_FILES = {CONFIG_FILE, PARAMS_FILE, TOKENIZER_FILE, "params.npz"}


def _replaceable(path: str) -> bool:
  """True for an empty dir or a model dir: only export files (or an old params.npz model),
  with a config.json that has a "model" section. A train.py run dir is never replaceable."""
  names = set(os.listdir(path))
  if not names:
    return True
  if not names <= _MODEL_DIR_FILES or CONFIG_FILE not in names:
    return False
  try:
    with open(os.path.join(path, CONFIG_FILE)) as f:
      return "model" in json.load(f)
  except (OSError, ValueError, TypeError):
    return False


def _read_tokenizer(path) -> bytes:
  """The tokenizer model's bytes from a local path or, through etils.epath (the train extra),
  a cloud one (gs://...)."""
  path = os.fspath(path)
  if "://" in path:
    try:
      from etils import epath  # noqa: PLC0415 - only for cloud paths; the core needs no etils
    except ImportError as e:
      raise ExportError(f"tokenizer={path!r}: cloud paths need etils[epath] "
                        "(pip install 'gca_jax[train]')") from e
    p = epath.Path(path)
    if not p.is_file():
      raise ExportError(f"tokenizer={path!r}: no such file")
    return p.read_bytes()
  if not os.path.isfile(path):
    raise ExportError(f"tokenizer={path!r}: no such file (cwd {os.getcwd()})")
  with open(path, "rb") as f:
    return f.read()


def _atomic_dir(out_dir: str, write) -> None:
  """Runs `write(tmp_dir)` in a fresh temp dir beside `out_dir`, fsyncs it, then renames it to
  `out_dir`. An existing `out_dir` is replaced only after the new one is complete: it is moved
  into `.<name>.old-*` (where a crash between the two renames would leave it), the new one
  renamed in, the old one deleted. A failed write removes its temp dir and leaves `out_dir`."""
  out_dir = os.path.abspath(out_dir.rstrip("/") or "/")
  parent, name = os.path.dirname(out_dir), os.path.basename(out_dir)
  if os.path.exists(out_dir):
    if not os.path.isdir(out_dir):
      raise ExportError(f"out_dir {out_dir!r} exists and is not a directory")
    if not _replaceable(out_dir):
      raise ExportError(f"out_dir {out_dir!r} exists and is not a model directory (files "
                        f"other than {sorted(_MODEL_DIR_FILES)}, or no {CONFIG_FILE} with a "
                        "'model' section); refusing to replace it")
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
  try:
    write(tmp)
    for f in os.listdir(tmp):
      with open(os.path.join(tmp, f), "rb") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o755)
    _fsync_dir(tmp)
    if os.path.exists(out_dir):
      old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
      os.rename(out_dir, os.path.join(old, name))
      os.rename(tmp, out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, out_dir)
    _fsync_dir(parent)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


# -- checksums ---------------------------------------------------------------------------------

def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def file_checksums(model_dir: str) -> dict[str, dict]:
  """{name: {"sha256": hex, "bytes": n}} of the files of `model_dir` other than config.json."""
  return {name: {"sha256": _sha256(os.path.join(model_dir, name)),
                 "bytes": os.path.getsize(os.path.join(model_dir, name))}
          for name in sorted(os.listdir(model_dir))
          if name != CONFIG_FILE and os.path.isfile(os.path.join(model_dir, name))}


def verify_files(model_dir: str, info: dict) -> None:
  """Checks the files named in `info["files"]` (config.json) against their size and sha256;
  ExportError naming the first file that is missing or differs. No "files": one warning."""
  files = info.get(FILES_KEY)
  cfg = os.path.join(model_dir, CONFIG_FILE)
  if files is None:
    warnings.warn(f"{cfg} has no '{FILES_KEY}' checksums (written by an older gca_jax): its "
                  f"files are not verified; add them with python -m gca_jax.export.checksums "
                  f"{model_dir}", stacklevel=3)
    return
  if not isinstance(files, dict):
    raise ExportError(f"{cfg}: '{FILES_KEY}' must map file names to {{sha256, bytes}}")
  for name, want in files.items():
    path = os.path.join(model_dir, name)
    if not isinstance(want, dict) or not isinstance(want.get("sha256"), str):
      raise ExportError(f"{cfg}: '{FILES_KEY}' entry {name!r} has no sha256")
    if not os.path.isfile(path):
      raise ExportError(f"{path}: missing (listed in {CONFIG_FILE})")
    size = os.path.getsize(path)
    if "bytes" in want and size != want["bytes"]:
      raise ExportError(f"{path}: {size} bytes, {CONFIG_FILE} records {want['bytes']} (the "
                        "file is truncated or was replaced)")
    got = _sha256(path)
    if got != want["sha256"]:
      raise ExportError(f"{path}: sha256 {got[:16]}... differs from {want['sha256'][:16]}... "
                        f"recorded in {CONFIG_FILE} (the file is damaged or was replaced)")


# -- save / load -------------------------------------------------------------------------------

def _cast(x: np.ndarray, dtype) -> np.ndarray:
  """x cast to `dtype` if both are floating point (integer leaves are kept)."""
  is_float = np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16"
  if dtype is None or not is_float or x.dtype == dtype:
    return x
  return x.astype(dtype)


def _np_dtype(dtype, name: str = "dtype"):
  if dtype is None:
    return None
  import ml_dtypes
  table = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
  if isinstance(dtype, str):
    if dtype not in table:
      raise ExportError(f"{name}={dtype!r}: must be one of {sorted(table)}")
    return np.dtype(table[dtype])
  return np.dtype(dtype)


def save_model(out_dir: str, params, config: DRTConfig, *, tokenizer: str | None = None,
               meta: dict | None = None, dtype=None) -> str:
  """Writes an export of `params` (a `DRT(config)` parameter tree) to `out_dir` atomically.

  tokenizer: path of a SentencePiece model file, copied in as `tokenizer.model`.
  dtype: None keeps every leaf's dtype; "bfloat16" / "float32" / "float16" casts float leaves.
  Returns the absolute path of `out_dir`.
  """
  if isinstance(config, Mapping):
    config = DRTConfig.from_dict(config)
  if not isinstance(config, DRTConfig):
    raise ExportError(f"config: expected a DRTConfig, got {type(config).__name__}")
  dt = _np_dtype(dtype)
  if isinstance(params, Mapping) and set(params) == {"params"}:
    params = params["params"]
  flat = {k: _cast(v, dt) for k, v in flatten_params(params).items()}
  _check_flat(flat, config, "params")
  tok_bytes = _read_tokenizer(tokenizer) if tokenizer else None
  info = {"format": FORMAT, "version": VERSION, "model": config.to_dict(),
          "tokenizer": TOKENIZER_FILE if tokenizer else None, "meta": dict(meta or {})}
  try:
    json.dumps(info)
  except TypeError as e:
    raise ExportError(f"meta: not JSON-serialisable ({e})") from e

  def write(tmp: str):
    safetensors_io.save_file(os.path.join(tmp, PARAMS_FILE), flat,
                             {"format": FORMAT, "version": str(VERSION)})
    if tok_bytes is not None:
      with open(os.path.join(tmp, TOKENIZER_FILE), "wb") as f:
        f.write(tok_bytes)
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      f.write(json.dumps({**info, FILES_KEY: file_checksums(tmp)}, indent=1) + "\n")

  _atomic_dir(out_dir, write)
  return os.path.abspath(out_dir)


def read_config(model_dir: str) -> dict:
  """The validated `config.json` dict of an export directory."""
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isdir(model_dir):
    raise ExportError(f"model_dir {model_dir!r}: no such directory (cwd {os.getcwd()})")
  if not os.path.isfile(path):
    raise ExportError(f"model_dir {model_dir!r}: no {CONFIG_FILE} (not a gca_jax export)")
  try:
    with open(path) as f:
      info = json.load(f)
  except ValueError as e:
    raise ExportError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(info, dict) or info.get("format") != FORMAT:
    old = os.path.isfile(os.path.join(model_dir, "params.npz"))
    raise ExportError(f"{path}: format {info.get('format') if isinstance(info, dict) else None!r}"
                      f", expected {FORMAT!r}" + (
                          " (an old params.npz model: convert it with "
                          "scripts/convert_checkpoints.py)" if old else ""))
  if info.get("version") != VERSION:
    raise ExportError(f"{path}: version {info.get('version')!r} is not supported (this "
                      f"gca_jax reads version {VERSION})")
  if not isinstance(info.get("model"), dict):
    raise ExportError(f"{path}: no 'model' section")
  return info


def load_model(model_dir: str, dtype=None, *, check: bool = True,
               verify: bool = True) -> LoadedModel:
  """Loads an export directory written by `save_model` / `export_run`.

  dtype: None casts float leaves to the config's `param_dtype` (what the model was trained
  with; bfloat16 -> float32 is exact); "bfloat16" / "float32" / "float16" casts to that;
  "stored" keeps the stored dtypes. check: verify names and shapes against the config's model.
  verify: check every file against the sha256 and size recorded in config.json (`verify_files`).
  """
  import jax
  info = read_config(model_dir)
  st = os.path.join(model_dir, PARAMS_FILE)
  if not os.path.isfile(st):
    raise ExportError(f"model_dir {model_dir!r}: no {PARAMS_FILE}")
  if verify:
    verify_files(model_dir, info)
  try:
    config = DRTConfig.from_dict(info["model"])
  except (ValueError, TypeError) as e:
    raise ExportError(f"{os.path.join(model_dir, CONFIG_FILE)}: model: {e}") from e
  try:
    flat, _ = safetensors_io.load_file(st)
  except SafetensorsError as e:
    raise ExportError(str(e)) from e
  if check:
    _check_flat(flat, config, st)
  dt = None if dtype == "stored" else _np_dtype(config.param_dtype if dtype is None else dtype)
  params = unflatten_params({k: jax.numpy.asarray(_cast(v, dt)) for k, v in flat.items()})
  tok = info.get("tokenizer")
  tok_path = None
  if tok:
    tok_path = os.path.abspath(os.path.join(model_dir, tok))
    if not os.path.isfile(tok_path):
      raise ExportError(f"{os.path.join(model_dir, CONFIG_FILE)} names tokenizer {tok!r}, "
                        "which is not in the directory")
  return LoadedModel(params=params, config=config, tokenizer=tok_path,
                     meta=dict(info.get("meta") or {}))


# -- train.py runs -----------------------------------------------------------------------------

def load_run(run_dir: str, step: int | None = None) -> LoadedModel:
  """Params of the newest intact (or `step`) Orbax checkpoint of a train.py run dir, read without
  the optimizer state and verified against the step's fingerprints, with the run's model config
  and tokenizer (data.tokenizer)."""
  import jax

  from gca_jax.train import run_config as rc
  from gca_jax.train.checkpoint import Checkpointer, CheckpointError

  if not os.path.isdir(run_dir):
    raise ExportError(f"run_dir {run_dir!r}: no such directory (cwd {os.getcwd()})")
  try:
    ckpt = Checkpointer(run_dir, read_only=True)
  except CheckpointError as e:
    raise ExportError(f"run_dir {run_dir!r}: {e}") from e
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise ExportError(f"run_dir {run_dir!r}: no complete checkpoint in {ckpt.directory!r}")
    if step is not None and step not in steps:
      raise ExportError(f"run_dir {run_dir!r}: no checkpoint for step {step}; available: "
                        f"{steps}")
    cfg_step = steps[-1] if step is None else step   # one run: one model config in every step
    if os.path.isdir(os.path.join(ckpt.directory, str(cfg_step), "config")):
      _, saved = ckpt.restore_config(cfg_step)
    else:
      saved = _run_config_json(run_dir)
    if "model" not in saved:
      raise ExportError(f"run_dir {run_dir!r}: the saved run config of step {cfg_step} has no "
                        "'model' section")
    try:
      config = rc.model_config(rc.from_dict(saved))
    except ValueError as e:
      raise ExportError(f"run_dir {run_dir!r}, step {cfg_step}: {e}") from e
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:   # step None: the newest intact step (a damaged newer one is named by one warning)
      step, params = ckpt.restore_params(step, abstract_params(config, sharding))
    except CheckpointError as e:
      raise ExportError(f"run_dir {run_dir!r}: {e}") from e
    except (ValueError, KeyError) as e:
      raise ExportError(f"run_dir {run_dir!r}, step {cfg_step if step is None else step}: the "
                        f"checkpoint's params do not fit the saved model config "
                        f"({type(e).__name__}: {e})") from e
    try:
      ck_meta = ckpt.restore_meta(step)
    except Exception:  # noqa: BLE001 - meta is informational
      ck_meta = {}
  finally:
    ckpt.close()
  check_params(params, config, where=f"{run_dir} step {step}")
  data = saved.get("data", {}) or {}
  tok = data.get("tokenizer") or None
  if tok and os.path.isfile(tok):
    tok = os.path.abspath(tok)
  meta = {"source": "train.py run", "run_dir": os.path.abspath(run_dir), "step": int(step),
          "train_seq_len": data.get("seq_len"), "eval_path": data.get("eval_path"),
          "tokens_seen": ck_meta.get("tokens_seen"), "run_config": saved}
  return LoadedModel(params=params, config=config, tokenizer=tok, meta=meta)


def _run_config_json(run_dir: str) -> dict:
  path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(path):
    raise ExportError(f"run_dir {run_dir!r}: the checkpoint has no saved config and there is "
                      f"no {path}")
  with open(path) as f:
    return json.load(f)


def export_run(run_dir: str, out_dir: str, step: int | None = None, *, dtype=None,
               tokenizer: str | None = None) -> str:
  """Writes the export of checkpoint `step` (default latest) of a train.py run to `out_dir`.

  tokenizer: overrides the run's data.tokenizer (which must exist unless overridden).
  Returns the absolute path of `out_dir`.
  """
  m = load_run(run_dir, step)
  tok = tokenizer or m.tokenizer
  if tok is not None and not os.path.isfile(tok):
    raise ExportError(f"tokenizer {tok!r} (the run's data.tokenizer) does not exist (cwd "
                      f"{os.getcwd()}); pass tokenizer= / --tokenizer")
  return save_model(out_dir, m.params, m.config, tokenizer=tok, meta=m.meta, dtype=dtype)
