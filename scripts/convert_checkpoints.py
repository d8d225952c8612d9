"""Converts old `params.npz` model directories (bf16 stored as uint16 bits + config.json) into
the export format of `gca_jax.export` (model.safetensors + config.json + tokenizer.model).

  python scripts/convert_checkpoints.py [DIR ...]   (default: the shipped checkpoints/*)

Each directory is replaced atomically by its export. Before the replace the conversion is
verified: every parameter bit-identical (bfloat16), and DRT logits on a few tokens from the old
and the new load identical; afterwards the written directory is checked once more.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import ml_dtypes
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gca_jax.config import DRTConfig  # noqa: E402
from gca_jax.export import flatten_params, load_model, save_model, unflatten_params  # noqa: E402

SHIPPED = ("sotu_drt", "sotu_swa", "sotu_landmark", "recall_drt")


def read_npz_model(path: str) -> tuple[dict[str, np.ndarray], DRTConfig, dict]:
  """(flat {path: bfloat16 array}, DRTConfig, meta) of an old params.npz model directory."""
  with open(os.path.join(path, "config.json")) as f:
    info = json.load(f)
  flat = {}
  with np.load(os.path.join(path, "params.npz")) as z:
    for key in z.files:
      raw = z[key]
      if raw.dtype != np.uint16:
        raise ValueError(f"{path}/params.npz: {key!r} is {raw.dtype}, expected uint16 bf16 bits")
      flat[key] = raw.view(ml_dtypes.bfloat16)
  return flat, DRTConfig.from_dict(info["model"]), info.get("meta", {})


def _logits(params, config: DRTConfig, tokens) -> np.ndarray:
  import jax
  import jax.numpy as jnp

  from gca_jax.models.drt import DRT
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  return np.asarray(DRT(config).apply({"params": p}, jnp.asarray(tokens)))


def _same_bits(flat_old: dict, params_new) -> None:
  new = flatten_params(params_new)
  if sorted(new) != sorted(flat_old):
    raise AssertionError(f"keys differ: {sorted(set(new) ^ set(flat_old))[:5]}")
  for k, x in flat_old.items():
    y = new[k]
    if y.dtype != x.dtype or y.shape != x.shape or not np.array_equal(
        y.view(np.uint16), x.view(np.uint16)):
      raise AssertionError(f"{k}: {y.dtype}{y.shape} != {x.dtype}{x.shape} or bits differ")


def convert(path: str) -> None:
  flat, config, meta = read_npz_model(path)
  args = meta.get("args", {})
  tok = args.get("tokenizer")
  tok_path = os.path.join(ROOT, tok) if tok and not os.path.isabs(tok) else tok
  if tok and not os.path.isfile(tok_path):
    raise FileNotFoundError(f"{path}: tokenizer {tok!r} of its meta.args not found")
  meta = dict(meta, source="converted from params.npz (scripts/recipe/train_recall.py)",
              train_seq_len=int(meta.get("train_chunks", 16)) * config.text_per_chunk,
              eval_path=args.get("eval_text"))
  params_old = unflatten_params(flat)
  tokens = (np.arange(2 * 150).reshape(2, 150) * 37 + 5) % config.vocab_size
  ref = _logits(params_old, config, tokens)
  with tempfile.TemporaryDirectory() as tmp:
    probe = save_model(os.path.join(tmp, "m"), params_old, config, tokenizer=tok_path, meta=meta)
    _same_bits(flat, load_model(probe, dtype="stored").params)
    new = _logits(load_model(probe).params, config, tokens)
    if not np.array_equal(ref, new) or not np.isfinite(new).all():
      raise AssertionError(f"{path}: logits differ, max |d| {np.abs(ref - new).max()}")
  save_model(path, params_old, config, tokenizer=tok_path, meta=meta)
  m = load_model(path, dtype="stored")
  _same_bits(flat, m.params)
  if os.path.exists(os.path.join(path, "params.npz")):
    raise AssertionError(f"{path}: params.npz still there")
  print(f"{path}: {len(flat)} tensors, {config.model_kind}, step {meta.get('step')}: bits and "
        f"logits [2, 150, {config.vocab_size}] identical; tokenizer {m.tokenizer}")


def main(argv: list[str]) -> int:
  dirs = argv or [os.path.join(ROOT, "checkpoints", d) for d in SHIPPED]
  for d in dirs:
    if not os.path.isfile(os.path.join(d, "params.npz")):
      print(f"{d}: no params.npz (converted already?); skipped")
      continue
    convert(d)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
