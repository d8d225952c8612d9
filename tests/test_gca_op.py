"""GCA operator (docs/method.md §3): reference vs a plain loop, the SPEC backward formulas, dispatch."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import ops
from gca_jax.ops import gca as gca_mod


def _inputs(seed, B, C, S, H, D, M, G, K, dtype=np.float32, dup=True, zero_slots=True):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, C, S, H, D)).astype(dtype)
  k = rng.standard_normal((B, M, S, G, D)).astype(dtype)
  v = rng.standard_normal((B, M, S, G, D)).astype(dtype)
  idx = rng.integers(0, M, size=(B, C, K)).astype(np.int32)
  if dup and K > 1:
    idx[:, :, 1] = idx[:, :, 0]
  w = rng.random((B, C, K)).astype(np.float32)
  if zero_slots:
    w[:, 0, :] = 0.0
    w[:, :, -1] = 0.0
  return q, k, v, idx, w


def _loop_forward(q, k, v, idx, w):
  """Plain-python GCA: one softmax per (query row, head, slot)."""
  B, C, S, H, D = q.shape
  G = k.shape[3]
  R = H // G
  out = np.zeros((B, C, S, H, D), np.float64)
  for b, c, s, h in itertools.product(range(B), range(C), range(S), range(H)):
    for i in range(idx.shape[2]):
      j = idx[b, c, i]
      kk = k[b, j, :, h // R].astype(np.float64)
      vv = v[b, j, :, h // R].astype(np.float64)
      logits = kk @ q[b, c, s, h].astype(np.float64) / np.sqrt(D)
      p = np.exp(logits - logits.max())
      p /= p.sum()
      out[b, c, s, h] += w[b, c, i] * (p @ vv)
  return out


def _spec_backward(q, k, v, idx, w, do):
  """The backward written in docs/method.md §3, per slot, in float64 numpy."""
  q, k, v, do = (x.astype(np.float64) for x in (q, k, v, do))
  B, C, S, H, D = q.shape
  G = k.shape[3]
  R = H // G
  dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
  dw = np.zeros(w.shape, np.float64)
  for b, c, h in itertools.product(range(B), range(C), range(H)):
    for i in range(idx.shape[2]):
      j, g = idx[b, c, i], h // R
      K_, V_, Q = k[b, j, :, g], v[b, j, :, g], q[b, c, :, h]
      s = Q @ K_.T / np.sqrt(D)
      P = np.exp(s - s.max(-1, keepdims=True))
      P /= P.sum(-1, keepdims=True)
      O_i = P @ V_
      dO_i = w[b, c, i] * do[b, c, :, h]
      dv[b, j, :, g] += P.T @ dO_i
      dS = P * (dO_i @ V_.T - np.sum(dO_i * O_i, -1, keepdims=True))
      dq[b, c, :, h] += dS @ K_ / np.sqrt(D)
      dk[b, j, :, g] += dS.T @ Q / np.sqrt(D)
      dw[b, c, i] += np.sum(do[b, c, :, h] * O_i)
  return dq, dk, dv, dw


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("case", [
    dict(B=1, C=3, S=5, H=2, D=4, M=4, G=2, K=3),
    dict(B=2, C=2, S=4, H=4, D=8, M=3, G=1, K=5),   # GQA (MQA), K > M, K not a power of two
    dict(B=1, C=4, S=3, H=6, D=4, M=6, G=3, K=2),   # GQA groups of 2
])
def test_reference_matches_loop(case):
  q, k, v, idx, w = _inputs(sum(case.values()), **case)
  out = ops.grouped_cross_attention(q, k, v, idx, w, impl="xla")
  ref = _loop_forward(q, k, v, idx, w)
  assert out.shape == q.shape and out.dtype == jnp.float32
  assert _rel(out, ref) < 1e-5
  assert np.all(np.asarray(out)[:, 0] == 0.0)  # chunk with all weights 0 gives exactly 0


@pytest.mark.parametrize("case", [
    dict(B=1, C=3, S=5, H=2, D=4, M=4, G=2, K=3),
    dict(B=2, C=2, S=4, H=4, D=8, M=3, G=2, K=4),
])
def test_reference_gradients_match_spec_backward(case):
  q, k, v, idx, w = _inputs(7 + case["K"], **case)
  do = np.random.default_rng(1).standard_normal(q.shape).astype(np.float32)
  out, vjp = jax.vjp(lambda q, k, v, w: gca_mod.gca_reference(q, k, v, idx, w), q, k, v, w)
  dq, dk, dv, dw = vjp(jnp.asarray(do))
  rq, rk, rv, rw = _spec_backward(q, k, v, idx, w, do)
  for got, want in ((dq, rq), (dk, rk), (dv, rv), (dw, rw)):
    assert np.all(np.isfinite(got))
    assert _rel(got, want) < 1e-5


def test_bf16_within_tolerance():
  case = dict(B=1, C=3, S=8, H=2, D=16, M=4, G=2, K=3)
  q, k, v, idx, w = _inputs(3, **case)
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)
  out = ops.grouped_cross_attention(bf(q), bf(k), bf(v), idx, w)
  assert out.dtype == jnp.bfloat16
  assert _rel(out, _loop_forward(q, k, v, idx, w)) < 2e-2


def test_dispatch_errors_and_registration():
  q, k, v, idx, w = _inputs(0, B=1, C=2, S=4, H=2, D=4, M=2, G=2, K=2)
  with pytest.raises(ValueError, match="unknown impl 'nope'"):
    ops.grouped_cross_attention(q, k, v, idx, w, impl="nope")
  with pytest.raises(ValueError, match="not divisible"):
    ops.grouped_cross_attention(q, k[:, :, :, :1].repeat(3, 3)[:, :, :, :3], v[:, :, :, :1].repeat(3, 3),
                                idx, w)
  with pytest.raises(ValueError, match="weights"):
    ops.grouped_cross_attention(q, k, v, idx, w[:, :, :1])
  assert ops.resolve_gca_impl("auto", q, k, v, idx, w) == "xla"  # CPU, no kernel for cpu
  calls = []

  def fake(q, k, v, i, w):
    calls.append(1)
    return gca_mod.gca_reference(q, k, v, i, w) * 2

  ops.register_gca_impl("test_fake", fake, platforms=("cpu",),
                        supports=lambda q, *a: None if q.shape[-1] == 4 else "head dim must be 4")
  try:
    assert ops.resolve_gca_impl("auto", q, k, v, idx, w) == "test_fake"
    out = ops.grouped_cross_attention(q, k, v, idx, w, impl="test_fake")
    assert calls and _rel(out, 2 * _loop_forward(q, k, v, idx, w)) < 1e-5
    q8, k8, v8, i8, w8 = _inputs(0, B=1, C=2, S=4, H=2, D=8, M=2, G=2, K=2)
    with pytest.raises(ops.UnsupportedGCAInput, match="head dim must be 4"):
      ops.grouped_cross_attention(q8, k8, v8, i8, w8, impl="test_fake")
    assert ops.resolve_gca_impl("auto", q8, k8, v8, i8, w8) == "xla"
  finally:
    gca_mod._IMPLS.pop("test_fake")
