"""The Pallas Triton kernel of the streaming window-cache attention (kernels/swa_prefix_triton.py)
in interpret mode vs the jnp path `ops.swa.swa_with_prefix_xla` (docs/method.md §2.1, §8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax.kernels.swa_prefix_triton import SwaPrefixParams, supports, swa_prefix_triton
from gca_jax.ops import swa


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _inputs(seed, B, P, H, D, W, dtype=jnp.float32):
  r = np.random.default_rng(seed)
  q = jnp.asarray(r.standard_normal((B, P, H, D)), dtype)
  k, v = (jnp.asarray(r.standard_normal((B, P + W - 1, H, D)), dtype) for _ in range(2))
  return q, k, v


CASES = [(1, 40, 2, 16, 9, 16, 16), (2, 100, 3, 32, 33, 16, 32), (1, 64, 2, 16, 64, 32, 16),
         (1, 17, 1, 16, 1, 16, 16), (2, 50, 2, 64, 20, 32, 32)]   # B, P, H, D, W, bq, bk


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}_P{}_H{}_D{}_W{}_bq{}_bk{}".format(*c))
def test_kernel_matches_xla_every_prefix_fill(case):
  B, P, H, D, W, bq, bk = case
  q, k, v = _inputs(sum(case), B, P, H, D, W)
  for n_empty in sorted({0, (W - 1) // 3, W - 1}):
    o = swa_prefix_triton(q, k, v, jnp.int32(n_empty), W, params=SwaPrefixParams(bq, bk),
                          interpret=True, poison_outputs=True)
    assert o.shape == q.shape and bool(jnp.isfinite(o).all())
    assert _rel(o, swa.swa_with_prefix_xla(q, k, v, n_empty, W)) < 1e-5, n_empty


def test_kernel_bf16():
  q, k, v = _inputs(3, 1, 96, 2, 32, 40, jnp.bfloat16)
  f32 = lambda x: x.astype(jnp.float32)
  o = swa_prefix_triton(q, k, v, 13, 40, params=SwaPrefixParams(32, 32), interpret=True)
  assert o.dtype == jnp.bfloat16 and bool(jnp.isfinite(f32(o)).all())
  assert _rel(f32(o), swa.swa_with_prefix_xla(f32(q), f32(k), f32(v), 13, 40)) < 2e-2


def test_supports_and_errors():
  q, k, v = _inputs(0, 1, 8, 2, 16, 4)
  assert supports(q, k, v, 4) is None
  assert "power of two" in supports(q[..., :12], k[..., :12], v[..., :12], 4)
  assert "equal heads" in supports(q, k[:, :, :1], v[:, :, :1], 4)
  assert "float32, bfloat16, float16" in supports(q.astype(jnp.int32), k, v, 4)
  with pytest.raises(ValueError, match="k/v must be"):
    swa_prefix_triton(q, k[:, 1:], v[:, 1:], 0, 4, interpret=True)


def test_dispatch_uses_the_registered_kernel_where_cudnn_resolves(monkeypatch):
  """swa_with_prefix routes to the registered kernel exactly where impl resolves to "cudnn"."""
  import gca_jax.kernels  # noqa: F401  (registers the kernel)
  calls = []
  fn, sup = swa._PREFIX_KERNEL["gpu"]
  monkeypatch.setitem(swa._PREFIX_KERNEL, "gpu", (
      lambda *a: calls.append(1) or swa_prefix_triton(*a, interpret=True), sup))
  q, k, v = _inputs(1, 1, 30, 2, 16, 8)
  want = swa.swa_with_prefix_xla(q, k, v, 3, 8)
  assert _rel(swa.swa_with_prefix(q, k, v, jnp.int32(3), 8, impl="xla"), want) < 1e-6
  assert not calls
  monkeypatch.setattr(swa, "resolve_attention_impl", lambda impl, q: "cudnn")
  out = jax.jit(lambda q, k, v, n: swa.swa_with_prefix(q, k, v, n, 8))(q, k, v, jnp.int32(3))
  assert calls and _rel(out, want) < 1e-5
