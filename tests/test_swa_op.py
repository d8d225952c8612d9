"""Sliding-window / causal attention ops: blockwise XLA and splash (interpret) vs a dense reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import ops
from gca_jax.ops import swa


def _rand(seed, B, T, H, G, D):
  r = np.random.default_rng(seed)
  return (r.standard_normal((B, T, H, D)).astype(np.float32),
          r.standard_normal((B, T, G, D)).astype(np.float32),
          r.standard_normal((B, T, G, D)).astype(np.float32))


def _loop_swa(q, k, v, W):
  B, T, H, D = q.shape
  R = H // k.shape[2]
  out = np.zeros(q.shape, np.float64)
  for b in range(B):
    for t in range(T):
      lo = max(0, t - W + 1)
      for h in range(H):
        s = k[b, lo:t + 1, h // R] @ q[b, t, h] / np.sqrt(D)
        p = np.exp(s - s.max())
        out[b, t, h] = (p / p.sum()) @ v[b, lo:t + 1, h // R]
  return out


def _rel(a, b):
  return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


@pytest.mark.parametrize("T,W,H,G", [(37, 8, 2, 2), (64, 64, 4, 2), (20, 50, 2, 1), (33, 1, 2, 2),
                                     (70, 16, 3, 3)])
def test_blockwise_xla_matches_loop(T, W, H, G):
  q, k, v = _rand(T + W, 2, T, H, G, 8)
  out = ops.sliding_window_attention(q, k, v, W, impl="xla")
  assert _rel(out, _loop_swa(q, k, v, W)) < 1e-5


def test_blockwise_gradients_match_dense():
  q, k, v = _rand(0, 1, 45, 2, 2, 8)
  f = lambda fn: jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v))), argnums=(0, 1, 2))(q, k, v)
  got = f(lambda q, k, v: swa.swa_xla(q, k, v, 10))
  want = f(lambda q, k, v: swa.attention_reference(q, k, v, window=10))
  for g, w in zip(got, want):
    assert _rel(g, np.asarray(w, np.float64)) < 1e-5


def test_causal_is_window_of_full_length():
  q, k, v = _rand(1, 1, 30, 2, 2, 8)
  full = ops.causal_attention(q, k, v, impl="xla")
  assert _rel(full, _loop_swa(q, k, v, 30)) < 1e-5


def test_splash_interpret_matches_reference_with_grads():
  q, k, v = _rand(2, 1, 200, 2, 1, 64)
  out = ops.sliding_window_attention(q, k, v, 48, impl="splash")
  assert _rel(out, _loop_swa(q, k, v, 48)) < 1e-5
  f = lambda fn: jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2))(q, k, v)
  got = f(lambda q, k, v: ops.sliding_window_attention(q, k, v, 48, impl="splash"))
  want = f(lambda q, k, v: swa.attention_reference(q, k, v, window=48))
  for g, w in zip(got, want):
    assert _rel(g, np.asarray(w, np.float64)) < 1e-5


def test_chunk_attention_is_unmasked_per_sequence():
  """ops.chunk_attention (the chunk encoder's): each of N sequences attends all its S positions
  (GQA); "splash" takes the XLA path; gradients match the dense reference."""
  q, k, v = _rand(5, 6, 16, 4, 2, 8)
  s = np.einsum("nqgrd,nkgd->ngrqk", q.reshape(6, 16, 2, 2, 8), k) / np.sqrt(8)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want = np.einsum("ngrqk,nkgd->nqgrd", p, v).reshape(q.shape)
  for impl in ("auto", "xla", "splash"):
    assert _rel(ops.chunk_attention(q, k, v, impl=impl), want) < 1e-5
  f = lambda fn: jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2))(q, k, v)
  got = f(lambda q, k, v: ops.chunk_attention(q, k, v))
  ref = f(lambda q, k, v: swa.attention_reference(q, k, v, causal=False))
  for g, w in zip(got, ref):
    assert _rel(g, np.asarray(w, np.float64)) < 1e-5
  with pytest.raises(ValueError, match="unknown impl"):
    ops.chunk_attention(q, k, v, impl="flash")


def test_auto_on_cpu_is_xla_and_errors():
  q, k, v = _rand(3, 1, 8, 2, 2, 8)
  assert ops.resolve_attention_impl("auto", jnp.asarray(q, jnp.bfloat16)) == "xla"
  with pytest.raises(ValueError, match="unknown impl 'flash'"):
    ops.sliding_window_attention(q, k, v, 4, impl="flash")
  with pytest.raises(ValueError, match="window must be >= 1"):
    ops.sliding_window_attention(q, k, v, 0)
  with pytest.raises(ValueError, match="not divisible"):
    ops.sliding_window_attention(q, k[:, :, :1].repeat(3, 2), v[:, :, :1].repeat(3, 2), 4)


def test_per_device_kernel_under_mesh_uses_shard_map():
  """Library kernels run per device (shard_map over batch x heads) under a mesh; same numbers."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from gca_jax.sharding import make_mesh
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  q, k, v = _rand(4, 4, 128, 4, 4, 64)
  want = _loop_swa(q, k, v, 40)
  spec = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  with jax.set_mesh(mesh):
    args = [jax.device_put(x, spec) for x in (q, k, v)]
    fn = jax.jit(lambda q, k, v: ops.sliding_window_attention(q, k, v, 40, impl="splash"))
    text = fn.lower(*args).as_text()
    out = fn(*args)
  assert "shard_map" in text or "manual" in text.lower()
  assert out.sharding.spec[0] == ("data", "fsdp")
  assert _rel(out, want) < 1e-5


def _prefix_ref(q, k, v, n_empty, W):
  """Rows of q follow W-1 prefix rows; the first n_empty rows are no keys: SWA over rows n_empty.."""
  Wc = W - 1
  q_all = np.concatenate([np.zeros((q.shape[0], Wc) + q.shape[2:], q.dtype), q], axis=1)
  return _loop_swa(q_all[:, n_empty:], k[:, n_empty:], v[:, n_empty:], W)[:, Wc - n_empty:]


@pytest.mark.parametrize("P,W,qblock", [(40, 9, 8), (40, 9, 1024), (5, 9, 4), (64, 17, 16),
                                        (33, 1, 8)])
def test_swa_with_prefix_matches_loop(P, W, qblock):
  """The streaming window-cache attention: every prefix fill (empty, partial, full)."""
  Wc = W - 1
  r = np.random.default_rng(P * W)
  q = r.standard_normal((2, P, 3, 8)).astype(np.float32)
  k, v = (r.standard_normal((2, P + Wc, 3, 8)).astype(np.float32) for _ in range(2))
  fn = jax.jit(lambda q, k, v, n: swa.swa_with_prefix(q, k, v, n, W, qblock=qblock, impl="xla"))
  for n_empty in sorted({0, Wc // 2, Wc}):
    out = np.asarray(fn(q, k, v, jnp.int32(n_empty)))
    assert np.isfinite(out).all()
    assert _rel(out, _prefix_ref(q, k, v, n_empty, W)) < 1e-5, n_empty
  with pytest.raises(ValueError, match=r"k/v must be \[B, P \+ W - 1, H, D\]"):
    swa.swa_with_prefix(q, k[:, 1:], v[:, 1:], 0, W)
