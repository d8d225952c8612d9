"""Shared helpers for the training-system tests: a very small run config on the shipped corpus."""

from __future__ import annotations

import os

import jax
import pytest

from gca_jax.train.run_config import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_VALID = os.path.join(ROOT, "data", "corpus", "valid")
TOKENIZER = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")

# A DRT small enough to compile in seconds: chunks of 15 text tokens + landmark.
SMALL_MODEL = dict(vocab_size=4096, d_model=32, num_heads=2, mlp_dim=64, lower_layers=1,
                   upper_groups=(1,), encoder_layers=1, window=16, chunk_size=16, top_k=2,
                   dtype="float32", param_dtype="float32")


def small_run_config(run_dir: str, cache_dir: str, **overrides):
  """Run config: small DRT, seq_len 60 (4 chunks), batch 4, held-out corpus as train+eval."""
  c = base_config()
  for k, v in SMALL_MODEL.items():
    c.model[k] = v
  c.data.train_path = CORPUS_VALID
  c.data.eval_path = CORPUS_VALID
  c.data.tokenizer = TOKENIZER
  c.data.seq_len = 60
  c.data.cache_dir = cache_dir
  c.data.eval_windows = 4
  c.train.steps = 4
  c.train.global_batch_size = 4
  c.train.log_every = 1
  c.train.eval_every = -1
  c.train.eval_batch_size = 4
  c.train.warmup_frac = 0.25
  c.train.progress_bar = False
  c.mesh.fsdp = 1
  c.checkpoint.every = 2
  c.checkpoint.keep = 5
  c.checkpoint.async_save = True
  c.run_dir = run_dir
  for k, v in overrides.items():
    *secs, field = k.split(".")
    node = c
    for sec in secs:
      node = node[sec]
    node[field] = v
  return c


# The recall recipe at the small model's scale: chunks of 15 text tokens, stages of 5 and 8
# chunks (75 and 120 tokens), ~480 tokens per step (batches 6 and 4).
RECALL = {"data.seq_len": 120, "data.recall.p_single": 0.4, "data.recall.p_named": 0.5,
          "data.recall.eval_samples": 0, "data.curriculum.stages": "5:1,8:1",
          "data.curriculum.tokens_per_step": 480, "data.curriculum.window": 2,
          "data.curriculum.min_steps": 2, "data.curriculum.gate_accuracy": 0.0}


def recall_run_config(run_dir: str, cache_dir: str, **overrides):
  """small_run_config with the recall mix + a two-stage curriculum (RECALL; `overrides` win)."""
  return small_run_config(run_dir, cache_dir, **{**RECALL, **overrides})


def cli_overrides(run_dir: str, cache_dir: str, **extra) -> list[str]:
  """The same small config as --config.x=y flags over configs/tiny.py (`extra` wins)."""
  vals = {f"model.{k}": (",".join(map(str, v)) if isinstance(v, tuple) else v)
          for k, v in SMALL_MODEL.items()}
  vals.update({"data.train_path": CORPUS_VALID, "data.eval_path": CORPUS_VALID,
               "data.tokenizer": TOKENIZER, "data.seq_len": 60, "data.cache_dir": cache_dir,
               "data.eval_windows": 4, "train.global_batch_size": 4, "train.eval_batch_size": 4,
               "train.log_every": 1, "mesh.fsdp": 1, "checkpoint.every": 2, "run_dir": run_dir})
  vals.update(extra)
  return [f"--config.{k}={v}" for k, v in vals.items()]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """JAX's persistent compilation cache in a per-session temp dir, for this module only.

  The trainer builds fresh jitted closures for every run, so identical programs (e.g. the
  straight and the resumed run of the resume test) would otherwise be compiled again; on 2 CPU
  cores compilation dominates these tests. The cache is keyed by the program, so results are
  unchanged. The jax-internal reset is needed because jax decides once per process whether the
  cache is on; without it (other jax versions) the tests still pass, only slower.
  """
  path = str(tmp_path_factory.getbasetemp() / "jax_compile_cache")
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  _reset_cache()
  yield path
  for n, v in old.items():
    jax.config.update(n, v)
  _reset_cache()


def _reset_cache():
  try:
    from jax._src import compilation_cache
    compilation_cache.reset_cache()
  except Exception:  # pragma: no cover - private API moved: run without the cache
    pass
