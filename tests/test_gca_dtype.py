"""GCA XLA reference precision: float64 inputs accumulate in float64; f32/bf16 unchanged."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.ops import grouped_cross_attention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_X64 = r"""
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from gca_jax.ops import grouped_cross_attention
r = np.random.default_rng(0)
B, C, S, H, D, M, G, K = 1, 2, 4, 2, 8, 3, 1, 2
q = jnp.asarray(r.normal(size=(B, C, S, H, D)))
k = jnp.asarray(r.normal(size=(B, M, S, G, D)))
v = jnp.asarray(r.normal(size=(B, M, S, G, D)))
idx = jnp.asarray(r.integers(0, M, (B, C, K)), jnp.int32)
w = jnp.asarray(r.random((B, C, K)))
o = grouped_cross_attention(q, k, v, idx, w, impl="xla")
assert o.dtype == jnp.float64, o.dtype
qn, kn, vn, ix, wn = map(np.asarray, (q, k, v, idx, w))
ref = np.zeros((B, C, S, H, D))
for b in range(B):
  for c in range(C):
    for i in range(K):
      j = ix[b, c, i]
      for h in range(H):
        s = qn[b, c, :, h] @ kn[b, j, :, h * G // H].T / np.sqrt(D)
        p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
        ref[b, c, :, h] += wn[b, c, i] * (p @ vn[b, j, :, h * G // H])
err = float(np.abs(np.asarray(o) - ref).max())
print(err)
assert err < 1e-12, err
"""


def test_float64_inputs_accumulate_in_float64():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", _X64], capture_output=True, text=True, env=env,
                     cwd=ROOT, timeout=300)
  assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-3000:]


def _inputs(dtype):
  r = np.random.default_rng(1)
  q = jnp.asarray(r.normal(size=(2, 2, 4, 4, 8)), dtype)
  k = jnp.asarray(r.normal(size=(2, 3, 4, 2, 8)), dtype)
  v = jnp.asarray(r.normal(size=(2, 3, 4, 2, 8)), dtype)
  idx = jnp.asarray(r.integers(0, 3, (2, 2, 2)), jnp.int32)
  w = jnp.asarray(r.random((2, 2, 2)), dtype)
  return q, k, v, idx, w


def _f32_formula(q, k, v, idx, w):
  """The reference as it was (f32 accumulation), for bit-identity of f32 / bf16 inputs."""
  B, C, S, H, D = q.shape
  G = k.shape[3]
  ix = jnp.clip(idx, 0, k.shape[1] - 1)
  g = jax.vmap(lambda m, i: jnp.take(m, i, axis=0))
  kk, vv = g(k, ix), g(v, ix)
  qq = q.reshape(B, C, S, G, H // G, D)
  s = jnp.einsum("bcsgrd,bcktgd->bcksgrt", qq, kk,
                 preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(D))
  p = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bcksgrt,bcktgd->bcksgrd", p.astype(v.dtype), vv,
                 preferred_element_type=jnp.float32)
  o = jnp.einsum("bcksgrd,bck->bcsgrd", o, w.astype(jnp.float32))
  return o.reshape(B, C, S, H, D).astype(q.dtype)


def test_f32_and_bf16_bit_identical():
  for dtype in (jnp.float32, jnp.bfloat16):
    args = _inputs(dtype)
    o = grouped_cross_attention(*args, impl="xla")
    assert o.dtype == dtype
    np.testing.assert_array_equal(np.asarray(o, np.float32),
                                  np.asarray(_f32_formula(*args), np.float32))
