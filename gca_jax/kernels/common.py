"""Helpers shared by the GCA Pallas kernels: input checks, index clipping, the inverted index.

The inverted index (who reads memory chunk j?) is built with plain XLA ops outside the kernels,
from `indices [B,C,K]` and `weights [B,C,K]`:

* a *reader* of memory chunk j in batch row b is a slot (c, i) with indices[b,c,i] == j, flattened
  to the entry number e = c*K + i;
* readers whose weight is exactly 0 contribute exactly 0 to dK/dV (dV += w·Pᵀ dO, dK += dSᵀQ with
  dS ∝ w), so they are left out of the reader lists (they still get their dw, computed per query
  chunk, see the kernels);
* `inverted_index` (GPU/Triton): a stable sort of the keys `j` (or `M` for a weight-0 reader)
  gives `order [B, C*K]` (entries sorted by memory chunk, ties in (c, i) order) and CSR offsets
  `offsets [B, M+1]`: the readers of (b, j) are order[b, offsets[b,j] : offsets[b,j+1]];
* `reader_schedule` (TPU): the same sorted list with one extra "sentinel" entry per memory chunk in
  front of its readers, so that a sequential grid over the list visits every memory chunk (a
  chunk nobody reads gets zero gradients), with per-entry flags (first of a chunk / real reader /
  last of a chunk) and block-index hints.

Everything is integer work (sort, scatter-add, cumsum), hence deterministic.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

INT32_MAX = 2**31 - 1


def is_pow2(n: int) -> bool:
  return n > 0 and (n & (n - 1)) == 0


def next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def common_reason(q, k, v, indices, weights, *, dtypes) -> str | None:
  """Checks shared by all kernels; returns a reason string or None (shapes already validated)."""
  if q.ndim != 5 or k.ndim != 5 or v.ndim != 5 or indices.ndim != 3:
    return "expects q [B,C,S,H,D], k/v [B,M,S,Hkv,D], indices/weights [B,C,K]"
  if not (q.dtype == k.dtype == v.dtype):
    return f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
  if jnp.dtype(q.dtype) not in tuple(jnp.dtype(d) for d in dtypes):
    names = ", ".join(str(jnp.dtype(d)) for d in dtypes)
    return f"dtype {q.dtype} not supported (supported: {names})"
  if not jnp.issubdtype(weights.dtype, jnp.floating):
    return f"weights must be floating point, got {weights.dtype}"
  if indices.shape[-1] < 1 or k.shape[1] < 1 or q.shape[1] < 1:
    return "empty K, M or C"
  for name, x in (("q", q), ("k", k), ("v", v)):
    if math.prod(x.shape) > INT32_MAX:
      return f"{name} has {math.prod(x.shape)} elements; the kernels use int32 offsets (< 2**31)"
  return None


def clip_indices(indices, M: int):
  """Same convention as `gca_reference`: out-of-range indices are clipped into [0, M)."""
  return jnp.clip(indices.astype(jnp.int32), 0, M - 1)


def _sort_packed(key, n_keys: int):
  """Stable argsort of int32 `key [B, N]` (values in [0, n_keys)) along axis 1: (order, sorted
  key). Key and position are packed into one int32 (key*N + e) where that fits, so XLA sorts one
  operand instead of a (key, iota) pair (the inverted index went 0.21 -> 0.04 ms on an H200,
  docs/benchmarks.md §3); otherwise argsort."""
  B, N = key.shape
  if n_keys * N > INT32_MAX:
    order = jnp.argsort(key, axis=1, stable=True).astype(jnp.int32)
    return order, jnp.take_along_axis(key, order, axis=1)
  packed = jnp.sort(key * N + jnp.arange(N, dtype=jnp.int32)[None, :], axis=1)
  return packed % N, packed // N


def inverted_index(indices, weights, M: int):
  """CSR inverted index of (already clipped) `indices [B,C,K]`, weight-0 readers dropped.

  Returns (order int32 [B, C*K], offsets int32 [B, M+1]): the non-zero-weight readers of memory
  chunk j in row b are the entries e = c*K + i listed in order[b, offsets[b,j]:offsets[b,j+1]],
  in increasing e (stable sort), so accumulation order is fixed: deterministic. Offsets are the
  exclusive prefix sums of the per-chunk reader counts (an integer scatter-add).
  """
  B, C, K = indices.shape
  key = jnp.where(weights != 0, indices, M).reshape(B, C * K).astype(jnp.int32)
  order, _ = _sort_packed(key, M + 1)
  rows = jnp.broadcast_to(jnp.arange(B, dtype=jnp.int32)[:, None], key.shape)
  counts = jnp.zeros((B, M + 1), jnp.int32).at[rows, key].add(1)
  offsets = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), jnp.cumsum(counts[:, :M], axis=1)],
                            axis=1)
  return order, offsets


def longest_first(offsets, n_readers: int):
  """All (b, j) memory chunks by descending reader count (ties by b, then j): int32 [B*M] of
  flat ids b*M + j. `n_readers` (static): an upper bound of any count (C*K).

  The program -> memory-chunk map of the GPU dK/dV kernel (programs launch in this order, the kv
  heads of one chunk next to each other): the chunks with the most readers start first over the
  whole batch (longest-processing-time-first), so few long programs are left for the tail.
  """
  counts = (offsets[:, 1:] - offsets[:, :-1]).reshape(1, -1)
  return _sort_packed(n_readers - counts, n_readers + 1)[0][0]


def reader_schedule(indices, weights, M: int):
  """Sequential reader list for the TPU dK/dV kernel (grid axis over N = C*K + M entries).

  Entries are sorted by memory chunk; each chunk j first has a sentinel entry (zeroes the dK/dV
  accumulators), then its non-zero-weight readers in (c, i) order; weight-0 readers are moved to
  the end, re-labelled with chunk M-1 (the last chunk's output block stays resident, nothing is
  computed). Returns a dict of int32 [B, N] arrays:
    j:     memory chunk (block index of k/v/dk/dv)
    c, i:  query chunk and slot of a reader; for other entries a neighbouring reader's (c, i), so
           the pipeline does not fetch a new q/dO/lse block for them
    flags: bit 0 = first entry of chunk j (sentinel), bit 1 = real reader, bit 2 = last entry of
           chunk j (write dK/dV out)
  """
  B, C, K = indices.shape
  N = C * K + M
  real_key = jnp.where(weights != 0, 2 * indices + 1, 2 * M).reshape(B, C * K).astype(jnp.int32)
  sent_key = jnp.broadcast_to(2 * jnp.arange(M, dtype=jnp.int32), (B, M))
  key = jnp.concatenate([real_key, sent_key], axis=1)                      # [B, N]
  ent = jnp.concatenate([jnp.broadcast_to(jnp.arange(C * K, dtype=jnp.int32), (B, C * K)),
                         jnp.full((B, M), -1, jnp.int32)], axis=1)
  order, key = _sort_packed(key, 2 * M + 1)
  ent = jnp.take_along_axis(ent, order, axis=1)
  keyed = key < 2 * M
  j = jnp.where(keyed, key // 2, M - 1)
  is_sent = keyed & (key % 2 == 0)
  is_real = keyed & (key % 2 == 1)
  nxt_keyed = jnp.concatenate([keyed[:, 1:], jnp.zeros((B, 1), bool)], axis=1)
  nxt_j = jnp.concatenate([j[:, 1:], jnp.full((B, 1), -1, jnp.int32)], axis=1)
  is_last = keyed & (~nxt_keyed | (nxt_j != j))
  # (c, i) hints for non-reader entries: the next reader if any, else the previous reader, else 0.
  pos = jnp.arange(N, dtype=jnp.int32)
  prev_real = jax.lax.cummax(jnp.where(is_real, pos, -1), axis=1)
  next_real = jax.lax.cummin(jnp.where(is_real, pos, N), axis=1, reverse=True)
  src = jnp.where(is_real, pos, jnp.where(next_real < N, next_real, prev_real))
  src_ent = jnp.where(src >= 0, jnp.take_along_axis(ent, jnp.clip(src, 0, N - 1), axis=1), 0)
  src_ent = jnp.maximum(src_ent, 0)
  flags = (is_sent.astype(jnp.int32) | (is_real.astype(jnp.int32) << 1)
           | (is_last.astype(jnp.int32) << 2))
  return dict(j=j.astype(jnp.int32), c=(src_ent // K).astype(jnp.int32),
              i=(src_ent % K).astype(jnp.int32), flags=flags)


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def operator_bytes(B, C, M, S, H, Hkv, D, K, itemsize, *, backward: bool):
  """Bytes the GCA operator must move through HBM (the floor), two ways.

  unique: every array read or written once.
    forward:  read q, k, v (itemsize each), indices + weights (4 B); write o (itemsize) and the
              saved per-slot log-sum-exp [B,C,K,H,S] f32.
    backward: read q, k, v, dO, lse, indices, weights; write dq, dk, dv, dw.
  gathered: as `unique`, but K/V are counted once per (query chunk, slot) that reads them in the
    forward / dQ pass and q/dO once per reader in the dK/dV pass: the traffic of a kernel without
    any cache reuse across query chunks (what the gather-based reference moves, without its copy).
  """
  q = B * C * S * H * D * itemsize
  kv1 = B * M * S * Hkv * D * itemsize          # k (or v)
  kv_g = B * C * K * S * Hkv * D * itemsize     # k (or v) gathered per slot
  q_g = B * C * K * S * H * D * itemsize        # q (or dO) re-read per reader
  lse = B * C * K * H * S * 4
  iw = 2 * B * C * K * 4
  fwd_u = q + 2 * kv1 + iw + q + lse
  fwd_g = q + 2 * kv_g + iw + q + lse
  if not backward:
    return dict(unique=fwd_u, gathered=fwd_g)
  bwd_u = (2 * q + 2 * kv1 + lse + iw) + (q + 2 * kv1 + B * C * K * 4)
  # dQ/dw pass: q, dO, gathered k, v, lse; dK/dV pass: k, v once, q, dO, lse per reader.
  bwd_g = (2 * q + 2 * kv_g + lse + iw) + (2 * kv1 + 2 * q_g + lse) + (q + 2 * kv1 + B * C * K * 4)
  return dict(unique=fwd_u + bwd_u, gathered=fwd_g + bwd_g)


def operator_flops(B, C, S, T, H, D, K, *, backward: bool):
  """Matmul FLOPs: forward 2 (QKᵀ, PV); backward recomputes QKᵀ twice + dOVᵀ twice + dQ, dK, dV."""
  per = 2 * B * C * K * H * S * T * D
  return per * (2 + (7 if backward else 0))


def lse_custom_vjp(fwd, bwd):
  """The custom_vjp shared by both kernels: `fwd(q,k,v,idx,w,cfg) -> (o, lse)` saves only the
  per-slot log-sum-exp (o and lse carry the checkpoint names "gca_o", "gca_lse");
  `bwd(q,k,v,idx,w,lse,do,cfg) -> (dq,dk,dv,dw)`. `cfg` is a hashable tuple of (name, value)
  pairs (non-differentiable); indices get no cotangent."""
  @functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
  def gca(q, k, v, idx, w, cfg):
    return fwd(q, k, v, idx, w, dict(cfg))[0]

  def gca_fwd(q, k, v, idx, w, cfg):
    o, lse = fwd(q, k, v, idx, w, dict(cfg))
    # named for remat policies (the model's remat="block" saves them: no kernel recompute)
    o, lse = checkpoint_name(o, "gca_o"), checkpoint_name(lse, "gca_lse")
    return o, (q, k, v, idx, w, lse)

  def gca_bwd(cfg, res, do):
    q, k, v, idx, w, lse = res
    dq, dk, dv, dw = bwd(q, k, v, idx, w, lse, do.astype(q.dtype), dict(cfg))
    return dq, dk, dv, None, dw

  gca.defvjp(gca_fwd, gca_bwd)
  return gca
