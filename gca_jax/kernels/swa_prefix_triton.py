"""Sliding-window attention over the streaming window cache, forward only, for GPU: Pallas on the
Triton backend (docs/method.md §2.1 and §8). Registered with `gca_jax.ops.swa` as the kernel of
`swa_with_prefix` on GPU.

Operator: q [B,P,H,D] are sequence rows W-1 .. N-1 of an N = P + W - 1 row sequence, k/v [B,N,H,D]
all N rows; rows < n_empty (an int32 scalar) are no keys. Row r attends keys
max(r - W + 1, n_empty) .. r.

One program per (query block i, head h, batch b): bq query rows, an online softmax (base 2, f32)
over the key blocks of bk rows that cover their window, [i*bq, i*bq + bq + W - 1), starting at
the first block holding a key >= n_empty. Every layer of a model calls the same kernel (same
shapes): it compiles once per stream, where a cuDNN call compiles per layer. On a CPU backend it
runs in Pallas interpret mode.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

LOG2E = math.log2(math.e)
_NEG = -1e30
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class SwaPrefixParams:
  """Launch parameters: query / key block rows (powers of two >= 16) and Triton's settings."""
  block_q: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2


def supports(q, k, v, window: int) -> str | None:
  """None if the kernel runs these inputs, else the reason."""
  if jax.default_backend() not in ("gpu", "cpu"):
    return f"swa_prefix_triton runs on a GPU (or interpreted on CPU), not {jax.default_backend()!r}"
  if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
    return f"dtypes {q.dtype}/{k.dtype}/{v.dtype}: one of float32, bfloat16, float16 expected"
  D = q.shape[-1]
  if D < 16 or D > 256 or D & (D - 1):
    return f"head dim {D} must be a power of two in [16, 256]"
  if k.shape[2] != q.shape[2]:
    return f"{q.shape[2]} query heads vs {k.shape[2]} kv heads: equal heads only"
  if window < 1:
    return f"window {window} < 1"
  return None


def _kernel(n_ref, q_ref, k_ref, v_ref, o_ref, *, W, bq, bk, nk, scale2, prec):
  i, h, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  n_empty = n_ref[0]
  q = q_ref[b, pl.ds(i * bq, bq), h, :]
  rows = (W - 1) + i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)   # sequence rows
  t0 = jnp.maximum(0, (n_empty - i * bq) // bk)  # first block with a key >= n_empty

  def body(t, carry):
    m, l, acc = carry
    k0 = i * bq + t * bk
    kk = k_ref[b, pl.ds(k0, bk), h, :]
    vv = v_ref[b, pl.ds(k0, bk), h, :]
    s2 = lax.dot_general(q, kk, (((1,), (1,)), ((), ())), precision=prec,
                         preferred_element_type=jnp.float32) * scale2            # [bq, bk]
    cols = k0 + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    mask = (cols <= rows) & (cols > rows - W) & (cols >= n_empty)
    s2 = jnp.where(mask, s2, _NEG)
    m_new = jnp.maximum(m, jnp.max(s2, axis=1))
    alpha = jnp.exp2(m - m_new)
    p = jnp.where(mask, jnp.exp2(s2 - m_new[:, None]), 0.0)
    l = l * alpha + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + lax.dot_general(
        p.astype(vv.dtype), vv, (((1,), (0,)), ((), ())), precision=prec,
        preferred_element_type=jnp.float32)
    return m_new, l, acc

  D = q.shape[-1]
  init = (jnp.full((bq,), _NEG, jnp.float32), jnp.zeros((bq,), jnp.float32),
          jnp.zeros((bq, D), jnp.float32))
  _, l, acc = lax.fori_loop(t0, nk, body, init)
  o_ref[b, pl.ds(i * bq, bq), h, :] = (acc / l[:, None]).astype(o_ref.dtype)


def swa_prefix_triton(q_BxPxHxD, k_BxNxHxD, v_BxNxHxD, n_empty, window: int, *,
                      params: SwaPrefixParams = SwaPrefixParams(), interpret: bool | None = None,
                      poison_outputs: bool = False):
  """-> o [B,P,H,D] (see the module docstring). interpret: None = iff the backend is CPU.
  poison_outputs: the output buffer starts as NaN (checks that every row is written)."""
  reason = supports(q_BxPxHxD, k_BxNxHxD, v_BxNxHxD, window)
  if reason is not None:
    raise ValueError(f"swa_prefix_triton: {reason}")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  B, P, H, D = q_BxPxHxD.shape
  Wc = window - 1
  if k_BxNxHxD.shape != (B, P + Wc, H, D) or v_BxNxHxD.shape != k_BxNxHxD.shape:
    raise ValueError(f"swa_prefix_triton: k/v must be {(B, P + Wc, H, D)}, "
                     f"got {k_BxNxHxD.shape} / {v_BxNxHxD.shape}")
  bq, bk = params.block_q, params.block_k
  nb = -(-P // bq)
  nk = -(-(bq + Wc) // bk)
  Np = (nb - 1) * bq + nk * bk     # every key block a program loads is in bounds
  q = jnp.pad(q_BxPxHxD, ((0, 0), (0, nb * bq - P), (0, 0), (0, 0)))
  pad_k = ((0, 0), (0, Np - (P + Wc)), (0, 0), (0, 0))
  k, v = jnp.pad(k_BxNxHxD, pad_k), jnp.pad(v_BxNxHxD, pad_k)
  n = jnp.reshape(jnp.asarray(n_empty, jnp.int32), (1,))
  prec = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
  kernel = lambda *refs: _kernel(*refs, W=window, bq=bq, bk=bk, nk=nk,
                                 scale2=LOG2E / math.sqrt(D), prec=prec)
  out_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
  args, aliases = (n, q, k, v), {}
  if poison_outputs:
    args, aliases = args + (jnp.full(q.shape, jnp.nan, q.dtype),), {4: 0}
    inner = kernel
    kernel = lambda n_r, q_r, k_r, v_r, _, o_r: inner(n_r, q_r, k_r, v_r, o_r)
  o = pl.pallas_call(
      kernel, grid=(nb, H, B), out_shape=out_shape, input_output_aliases=aliases,
      compiler_params=plgpu.CompilerParams(num_warps=params.num_warps,
                                           num_stages=params.num_stages),
      interpret=interpret, name="swa_prefix_fwd")(*args)
  return o[:, :P]
