"""Streaming mode of Landmark Attention (docs/method.md §6): the per-layer cache and the window layout.

`landmark_cached_attention` is called by `SelfAttention(mode="landmark")` in stream mode with
the PRE-RoPE projections of the A window rows of one call. Window row i is augmented stream
position pos0 + i, pos0 = S * (n_text // L) + n_text % L (L = S - 1 text tokens per block, S =
`block_size`); it is a landmark iff (n_text % L + i) % S == S - 1; the first `segment.n_valid`
rows are valid, the rest scratch (written, never read by a valid query, overwritten next call).

Cache variables (collection "cache", zero-initialised, M blocks of capacity):
  "lmk"    [B, H, M, D]    each block's landmark key, scanned for the top-k (always on device);
  "k", "v" [B, H, M*S, D]  keys rotated by their in-block offset / values of every past position
                           (spec.memory == "device"), or
  "host_key" int32 []      (spec.memory == "host") the id of a `gca_jax.ops.host_store.HostStore`
                           holding them: per head h a buffer "<module path>/kv_h<h>" of rows
                           [2, D] (k, v) per position; the step writes its window rows there and
                           gathers the S rows of each query's own + selected blocks (one ordered
                           callback per head and query block). Bit-identical to "device".
M = ceil(capacity_tokens / L) + ceil(A / L) + 1 (room for every write of a call whose stream
holds <= capacity_tokens), rounded up to min(spec.mem_block, M's next power of two), the scan
block; an engine grows the cache by zero-padding the block axis (axis 2).
The math (retrieval, grouped softmax, bounded RoPE phases): `gca_jax.ops.landmark`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.layers.common import rope_tables
from gca_jax.ops.landmark import (landmark_cache_write, landmark_grouped_attend,
                                  landmark_lmk_refresh, landmark_retrieval_attention,
                                  landmark_select, rope_rotate, scan_block_size)


def landmark_cache_blocks(capacity_tokens: int, window_rows: int, block_size: int,
                          mem_block: int) -> int:
  """Block capacity M of the cache for `capacity_tokens` text tokens and A = `window_rows`."""
  L = block_size - 1
  need = -(-capacity_tokens // L) + -(-window_rows // L) + 1
  blk = max(1, min(mem_block, 1 << max(0, math.ceil(math.log2(need)))))
  return -(-need // blk) * blk


def _check_int(name: str, val, lo: int) -> int:
  if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
    raise ValueError(f"landmark streaming: {name}={val!r} must be an int >= {lo}")
  return int(val)


def landmark_cached_attention(module, q_BxAxHxD, k_BxAxHxD, v_BxAxHxD, *, segment,
                              block_size: int, spec, top_k: int, rope_theta: float | None = None):
  """Landmark attention of one call's A window rows over the stream so far -> [B, A, H, D].

  module: the calling Linen module (cache variables are created through it; its `rope_theta`
  is used unless `rope_theta` is given). q/k/v: PRE-RoPE projections [B, A, H, D]. segment:
  `gca_jax.layers.stream.Segment` (n_text before this call). spec: `StreamSpec` (capacity_tokens,
  mem_block, query_block, landmark_local_blocks, memory). top_k: blocks
  retrieved per query (besides the own block and the `landmark_local_blocks` forced ones).
  With top_k >= the number of earlier blocks the result equals the training form.
  """
  S = _check_int("block_size", block_size, 2)
  top_k = _check_int("top_k", top_k, 1)
  local = _check_int("StreamSpec.landmark_local_blocks", spec.landmark_local_blocks, 0)
  if q_BxAxHxD.ndim != 4 or k_BxAxHxD.shape != q_BxAxHxD.shape or (
      v_BxAxHxD.shape != q_BxAxHxD.shape):
    raise ValueError(f"landmark streaming: q{q_BxAxHxD.shape}, k{k_BxAxHxD.shape}, "
                     f"v{v_BxAxHxD.shape} must all be [B, A, H, D]")
  B, A, H, Dh = q_BxAxHxD.shape
  L = S - 1
  theta = module.rope_theta if rope_theta is None else rope_theta
  dt = k_BxAxHxD.dtype

  host = spec.memory == "host"
  M0 = landmark_cache_blocks(spec.capacity_tokens, A, S, spec.mem_block)
  lmk_var = module.variable("cache", "lmk", jnp.zeros, (B, H, M0, Dh), dt)
  if host:
    key_var = module.variable("cache", "host_key", jnp.zeros, (), jnp.int32)
  else:
    k_var = module.variable("cache", "k", jnp.zeros, (B, H, M0 * S, Dh), dt)
    v_var = module.variable("cache", "v", jnp.zeros, (B, H, M0 * S, Dh), v_BxAxHxD.dtype)
  M = lmk_var.value.shape[2]  # an existing (possibly grown) cache sets the capacity
  block = scan_block_size(M, spec.mem_block)
  init = module.is_initializing()  # init only creates the (zero) cache, as the other layers

  Kt = top_k + local
  cos_t, sin_t = rope_tables(np.arange((Kt + 2) * S), Dh, theta)  # static, float64-built

  n_text = jnp.asarray(segment.n_text, jnp.int32)
  r = n_text % L
  c0 = n_text // L
  pos0 = c0 * S + r
  q_win = r + jnp.arange(A, dtype=jnp.int32)  # in-stream offset from block c0's start
  o_win = q_win % S
  c_win = c0 + q_win // S

  q = q_BxAxHxD.transpose(0, 2, 1, 3)
  k = k_BxAxHxD.transpose(0, 2, 1, 3)
  v = v_BxAxHxD.transpose(0, 2, 1, 3)
  k = rope_rotate(k, o_win[None, None, :], cos_t, sin_t)  # cached rotated by in-block offset
  sel_kw = dict(block_size=S, top_k=top_k, local_blocks=local, scan_block=block, cos_t=cos_t,
                sin_t=sin_t)
  if host:
    from gca_jax.ops import host_store as store  # noqa: PLC0415
    name = "/".join(str(p) for p in module.scope.path) or "landmark"
    names = [f"{name}/kv_h{h}" for h in range(H)]  # per head: rows = positions, [2, Dh] each
    kv = jnp.stack([k.astype(dt), v.astype(dt)], axis=3)  # [B, H, A, 2, Dh]
    if not init:
      for h in range(H):
        store.host_write(key_var.value, names[h], pos0, kv[:, h], M * S)
    lmk_all = landmark_lmk_refresh(lmk_var.value, k.astype(dt), pos0, block_size=S)

    def attend(xs):
      qx, cx, ox = xs
      blocks, dists, ok = landmark_select(qx, cx, lmk_all, ox, **sel_kw)
      nq, nk = blocks.shape[2], blocks.shape[3]
      pos = jnp.clip(blocks, 0, M - 1)[..., None] * S + jnp.arange(S, dtype=jnp.int32)
      pos = pos.reshape(B, H, nq * nk * S)
      if init:
        g = jnp.zeros((B, H, nq * nk * S, 2, Dh), dt)
      else:
        g = jnp.stack([store.host_gather(key_var.value, names[h], pos[:, h], (2, Dh), dt, M * S)
                       for h in range(H)], axis=1)
      g = g.reshape(B, H, nq, nk, S, 2, Dh)
      return landmark_grouped_attend(qx, ox, g[..., 0, :], g[..., 1, :], dists, ok,
                                     cos_t=cos_t, sin_t=sin_t)
  else:
    k_all, v_all, lmk_all = landmark_cache_write(k_var.value, v_var.value, lmk_var.value, k, v,
                                                 pos0, block_size=S)
    if not init:
      k_var.value, v_var.value = k_all, v_all

    def attend(xs):
      qx, cx, ox = xs
      return landmark_retrieval_attention(qx, cx, ox, k_all, v_all, lmk_all, **sel_kw)
  if not init:
    lmk_var.value = lmk_all

  # query blocks of `query_block` rows (padding rows repeat block c0 offset 0; discarded)
  qb = max(1, min(spec.query_block, A))
  nb = -(-A // qb)
  padq = nb * qb - A
  c_pad = jnp.concatenate([c_win, jnp.full((padq,), c0, jnp.int32)]).reshape(nb, qb)
  o_pad = jnp.concatenate([o_win, jnp.zeros((padq,), jnp.int32)]).reshape(nb, qb)
  qp = jnp.pad(q, ((0, 0), (0, 0), (0, padq), (0, 0))).reshape(B, H, nb, qb, Dh)

  o = jax.lax.map(attend, (qp.transpose(2, 0, 1, 3, 4), c_pad, o_pad))  # [nb, B, H, qb, Dh]
  o = o.transpose(1, 0, 3, 2, 4).reshape(B, nb * qb, H, Dh)[:, :A]
  return o.astype(q_BxAxHxD.dtype)


__all__ = ["landmark_cache_blocks", "landmark_cached_attention"]