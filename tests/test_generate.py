"""Generation on the stream state (gca_jax.inference.generate)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.inference import generate
from _stream_helpers import full_forward_setup


def small_cfg(kind, **kw):
  base = dict(vocab_size=97, d_model=32, num_heads=4, mlp_dim=64, lower_layers=1,
              upper_groups=(1,), encoder_layers=1, window=8, chunk_size=8, top_k=2,
              model_kind=kind, dtype="float32")
  base.update(kw)
  return DRTConfig(**base)


def _sharpen(params):
  """Sharper logits (random init is near-uniform): greedy choices are far from ties."""
  return jax.tree.map(lambda x: x * 4.0, params)


def naive_greedy(params, cfg, prompt, n):
  seq = jnp.asarray(prompt, jnp.int32)
  for _ in range(n):
    logits = DRT(cfg).apply({"params": params}, seq)[:, -1]
    seq = jnp.concatenate([seq, jnp.argmax(logits, -1)[:, None].astype(jnp.int32)], 1)
  return np.asarray(seq)


@pytest.mark.parametrize("kind,segment_len", [("drt", 9), ("swa", None), ("full", 5),
                                              ("landmark", 6)])
def test_greedy_equals_naive_full_forward_loop(kind, segment_len):
  """Prompt of 23 tokens (in segments, not chunk-aligned), then 10 tokens one per step: across
  several landmarks/chunks; tokens equal the naive greedy loop's exactly."""
  cfg = small_cfg(kind)
  params, toks, _, _ = full_forward_setup(cfg, 24, B=2, params_fn=_sharpen)
  prompt = np.asarray(toks[:, :23])
  kw = {"landmark_top_k": 8} if kind == "landmark" else {}
  out = generate(params, cfg, prompt, 10, segment_len=segment_len, **kw)
  assert out.shape == (2, 33) and out.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(out)[:, :23], prompt)
  np.testing.assert_array_equal(np.asarray(out), naive_greedy(params, cfg, prompt, 10))


def test_sampling_seeded_top_k():
  """Sampling: same seed -> same tokens, other seed -> others; top_k=1 is greedy; tokens drawn
  with top_k=3 are among the 3 most likely of the first step."""
  cfg = small_cfg("swa")
  params, toks, _, _ = full_forward_setup(cfg, 24, B=2)
  prompt = np.asarray(toks[:, :12])
  a = np.asarray(generate(params, cfg, prompt, 12, temperature=1.0, seed=1))
  b = np.asarray(generate(params, cfg, prompt, 12, temperature=1.0, seed=1))
  c = np.asarray(generate(params, cfg, prompt, 12, temperature=1.0, seed=2))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  g = np.asarray(generate(params, cfg, prompt, 4))
  np.testing.assert_array_equal(np.asarray(generate(params, cfg, prompt, 4, temperature=2.0,
                                                    top_k=1, seed=5)), g)
  first = DRT(cfg).apply({"params": params}, prompt)[:, -1]
  top3 = np.asarray(jax.lax.top_k(first, 3)[1])
  for seed in range(4):
    t = np.asarray(generate(params, cfg, prompt, 1, temperature=5.0, top_k=3, seed=seed))[:, -1]
    assert all(t[i] in top3[i] for i in range(2))
  np.testing.assert_array_equal(np.asarray(generate(params, cfg, prompt, 0)), prompt)
  for bad, name in ((dict(max_new_tokens=-1), "max_new_tokens"),
                    (dict(max_new_tokens=2, temperature=-1.0), "temperature"),
                    (dict(max_new_tokens=2, top_k=0), "top_k")):
    with pytest.raises(ValueError, match=name):
      generate(params, cfg, prompt, **bad)
