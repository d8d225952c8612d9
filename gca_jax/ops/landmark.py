"""Landmark Attention (docs/method.md §6; Mohtashami & Jaggi, arXiv 2305.16300): the training-time grouped
softmax and the inference-time retrieval over a cache.

Dense O(T^2) plain-jnp implementation with float32 softmax statistics, following the official code
(`epfml/landmark-attention`, `landmark_grouped_softmax` and the mask construction in its LLaMA
model). Top-k block retrieval at inference over a cache of past keys: `landmark_cache_write`,
`landmark_select`, `landmark_grouped_attend` below (the array math of the streaming mode; the
cache variables and window layout live in `gca_jax.layers.landmark_cache`).

Layout. The sequence (landmarks already inserted) is cut into blocks of `S = block_size` positions:
position n belongs to block `b(n) = n // S`, and is the block's landmark iff `n % S == S - 1`
(S-1 = 63 text tokens + 1 landmark by default). A trailing partial block is allowed; it has no
landmark and is never a "previous" block of any query.

Weights. For query i with block c = b(i) and logits `s_ij = q_i . k_j / sqrt(D)` (float32):

  own(i)   = { j : b(j) = c, j <= i, j is not a landmark }     (own block, causal; the own block's
             landmark key is always excluded, even when i is that landmark: the official code masks
             it with `last_section_mask & is_mem`)
  mem(i)   = { j : j is the landmark of a block b < c }
  P_ij     = exp(s_ij) / sum_{m in own(i) U mem(i)} exp(s_im)       for j in own(i) U mem(i)
  G_ij     = exp(s_ij) / sum_{m : b(m) = b(j), m not a landmark} exp(s_im)
             (softmax over the S-1 regular tokens of j's block)      for regular j with b(j) < c
  w_ij     = P_ij                                    if j in own(i)
           = G_ij * P_{i, landmark of b(j)}          if j is a regular token of a block b(j) < c
           = 0                                       otherwise (future keys, every landmark key)
  out_i    = sum_j w_ij v_j

A landmark key only gates its block (its P is spent on the block's tokens; its own value is never
read, as in the official code where landmark probabilities are multiplied by
`last_section_mask = False`). `sum_j w_ij = sum_{own} P + sum_{mem} P * 1 = 1`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_NEG = -1e30


def _masks(N: int, S: int):
  """Boolean [N, N] masks (query, key): own-block keys, previous landmarks, previous regular
  keys."""
  n = np.arange(N)
  blk, is_lmk = n // S, (n % S) == S - 1
  qb, kb = blk[:, None], blk[None, :]
  own = (kb == qb) & (n[None, :] <= n[:, None]) & ~is_lmk[None, :]
  prev = kb < qb
  return own, prev & is_lmk[None, :], prev & ~is_lmk[None, :]


def landmark_weights(q_BxTxHxD, k_BxTxHxD, block_size: int):
  """The grouped-softmax weights w [B, H, T(query), T(key)] in float32 (formula: module
  docstring)."""
  B, T, H, D = q_BxTxHxD.shape
  S = block_size
  if S < 2:
    raise ValueError(f"landmark attention: block_size={S} must hold >= 1 token and the landmark")
  if k_BxTxHxD.shape != q_BxTxHxD.shape:
    raise ValueError(f"landmark attention: q{q_BxTxHxD.shape} and k{k_BxTxHxD.shape} must match")
  C = -(-T // S)
  N = C * S
  pad = ((0, 0), (0, N - T), (0, 0), (0, 0))
  q, k = jnp.pad(q_BxTxHxD, pad), jnp.pad(k_BxTxHxD, pad)
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(D)
  s = s.astype(jnp.float32)
  own, mem, prev_reg = (jnp.asarray(m) for m in _masks(N, S))
  # Top level: own-block keys compete with the landmarks of previous blocks.
  top = jax.nn.softmax(jnp.where(own | mem, s, _NEG), axis=-1)
  top = jnp.where(own | mem, top, 0.0)
  # Within block: softmax over each block's S-1 regular tokens, gated by that block's landmark P.
  is_reg = jnp.asarray(np.arange(S) < S - 1)
  s_blk = s.reshape(B, H, N, C, S)
  within = jax.nn.softmax(jnp.where(is_reg, s_blk, _NEG), axis=-1)
  gate = top.reshape(B, H, N, C, S)[..., S - 1:]  # P of each block's landmark key
  grouped = (within * gate).reshape(B, H, N, N)
  w = jnp.where(own, top, jnp.where(prev_reg, grouped, 0.0))
  return w[:, :, :T, :T]


def landmark_attention(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, block_size: int):
  """Landmark attention output [B, T, H, D] (dtype of q): `out_i = sum_j w_ij v_j`."""
  if v_BxTxHxD.shape != k_BxTxHxD.shape:
    raise ValueError(f"landmark attention: k{k_BxTxHxD.shape} and v{v_BxTxHxD.shape} must match")
  w = landmark_weights(q_BxTxHxD, k_BxTxHxD, block_size)
  o = jnp.einsum("bhqk,bkhd->bqhd", w, v_BxTxHxD.astype(jnp.float32),
                 preferred_element_type=jnp.float32)
  return o.astype(q_BxTxHxD.dtype)


def landmark_weights_loop(q_BxTxHxD, k_BxTxHxD, block_size: int) -> np.ndarray:
  """Plain-Python-loop reference of `landmark_weights` (float64 numpy), for tests. Small inputs."""
  q, k = np.asarray(q_BxTxHxD, np.float64), np.asarray(k_BxTxHxD, np.float64)
  B, T, H, D = q.shape
  S = block_size
  w = np.zeros((B, H, T, T))
  for b in range(B):
    for h in range(H):
      for i in range(T):
        c = i // S
        logit = lambda j: float(np.dot(q[b, i, h], k[b, j, h])) / math.sqrt(D)
        own = [j for j in range(c * S, i + 1) if j % S != S - 1]
        mem = [p * S + S - 1 for p in range(c)]
        z = sum(math.exp(logit(j)) for j in own + mem)
        for j in own:
          w[b, h, i, j] = math.exp(logit(j)) / z
        for p in range(c):
          gate = math.exp(logit(p * S + S - 1)) / z
          toks = list(range(p * S, p * S + S - 1))
          zb = sum(math.exp(logit(j)) for j in toks)
          for j in toks:
            w[b, h, i, j] = gate * math.exp(logit(j)) / zb
  return w


def landmark_attention_loop(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, block_size: int) -> np.ndarray:
  """Loop reference of `landmark_attention` (float64 numpy), [B, T, H, D]."""
  w = landmark_weights_loop(q_BxTxHxD, k_BxTxHxD, block_size)
  v = np.asarray(v_BxTxHxD, np.float64)
  B, T, H, D = v.shape
  o = np.zeros((B, T, H, D))
  for b in range(B):
    for h in range(H):
      for i in range(T):
        for j in range(T):
          o[b, i, h] += w[b, h, i, j] * v[b, j, h]
  return o


# ----------------------------------------------------------------------------- inference form
#
# Retrieval over a cache (docs/method.md §6; the official LLaMA inference, llama/llama_mem.py, `mem_freq`
# path, `cache_top_k`). Cache layout per layer (M = block capacity, a multiple of the scan block):
#   k, v  [B, H, M*S, D]  keys rotated by their offset inside their block (0..S-1) / values of
#                         every past position (landmarks included);
#   lmk   [B, H, M, D]    copy of each block's landmark key (row S-1), scanned for the top-k.
# For a query at offset o of block c (per batch row, head and query):
#   * local part: its own block, keys 0..o, the landmark key excluded (as the training form);
#     `local_blocks = n` additionally always attends the n most recent blocks c-n..c-1;
#   * retrieval: the `top_k` earlier blocks j < c (besides the forced ones) with the highest
#     q . lmk[j], found by a blocked scan (`scan_block` blocks a step, running top-k merge);
#   * weights: the training form's grouped softmax restricted to the selection (own-block keys and
#     the selected landmark keys share one softmax; a selected block's tokens get their softmax
#     within the block's S-1 tokens times the landmark's probability);
#   * RoPE: the m selected blocks sit, in their order, in the virtual block slots c-m..c-1 (the
#     official code leaves a one-block gap before the most recent top-k blocks; we do not); for the
#     top-k scores a landmark is at its true distance when its block is one of the
#     Kt = top_k + local_blocks most recent, else at distance Kt+1 blocks. A query is rotated by
#     o + dist*S, so no phase exceeds (Kt+2)*S positions (tables of that size, float64-built).
# With top_k >= c everything is retrieved at its true position: the result equals
# `landmark_attention` on the whole sequence.

_FORCE = 1e30  # selection score of forced (local) blocks


def scan_block_size(capacity_blocks: int, mem_block: int) -> int:
  """Scan block of the top-k over `capacity_blocks` landmark keys: `mem_block`, or the capacity
  rounded up to a power of two when that is smaller; a divisor of the capacity when it is not a
  multiple."""
  blk = max(1, min(mem_block, 1 << max(0, math.ceil(math.log2(max(capacity_blocks, 1))))))
  return blk if capacity_blocks % blk == 0 else math.gcd(capacity_blocks, blk)


def rope_rotate(x, pos, cos_t, sin_t):
  """RoPE of x [..., D] by integer positions `pos` (broadcastable to x[..., 0]) read from tables
  [N, D/2]; f32 math, x's dtype out (as `layers.common.apply_rope`)."""
  d2 = x.shape[-1] // 2
  c = jnp.take(cos_t, pos, axis=0)
  s = jnp.take(sin_t, pos, axis=0)
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., :d2], xf[..., d2:]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def landmark_lmk_refresh(lmk_BxHxMxD, knew_BxHxAxD, pos0, *, block_size: int):
  """Landmark keys of the blocks A window rows (keys rotated by in-block offset, from augmented
  position `pos0`) touch, taken from the window: block c0+u gets window row u*S + S-1 - pos0 % S.
  A block whose landmark row lies past the window is unfinished: its entry is scratch, refreshed
  when it completes. Returns lmk [B, H, M, D]."""
  S = block_size
  B, H, M, D = lmk_BxHxMxD.shape
  A = knew_BxHxAxD.shape[2]
  nt = min(M, (S - 2 + A) // S + 1)  # blocks A rows can touch from any in-block offset
  c0 = pos0 // S
  start = jnp.minimum(c0, M - nt)  # stays inside the buffer
  rows = S * (start - c0 + jnp.arange(nt, dtype=jnp.int32)) + S - 1 - pos0 % S
  inside = ((rows >= 0) & (rows < A))[None, None, :, None]
  new = jnp.take(knew_BxHxAxD, jnp.clip(rows, 0, A - 1), axis=2).astype(lmk_BxHxMxD.dtype)
  old = jax.lax.dynamic_slice(lmk_BxHxMxD, (0, 0, start, 0), (B, H, nt, D))
  return jax.lax.dynamic_update_slice(lmk_BxHxMxD, jnp.where(inside, new, old), (0, 0, start, 0))


def landmark_cache_write(k_BxHxNxD, v_BxHxNxD, lmk_BxHxMxD, knew_BxHxAxD, vnew_BxHxAxD, pos0,
                         *, block_size: int):
  """Writes A window rows (keys already rotated by their in-block offset) at cache row `pos0`
  (int32 [], augmented stream position) and refreshes the landmark keys of the blocks they
  touch. Returns (k, v, lmk). Rows past the valid prefix are scratch: overwritten by the next
  call, never read by a valid query (they are later in the own block or in a later block)."""
  S = block_size
  N, M = k_BxHxNxD.shape[2], lmk_BxHxMxD.shape[2]
  if N != M * S:
    raise ValueError(f"landmark cache: k rows {N} must be lmk blocks {M} x block_size {S}")
  k = jax.lax.dynamic_update_slice(k_BxHxNxD, knew_BxHxAxD.astype(k_BxHxNxD.dtype),
                                   (0, 0, pos0, 0))
  v = jax.lax.dynamic_update_slice(v_BxHxNxD, vnew_BxHxAxD.astype(v_BxHxNxD.dtype),
                                   (0, 0, pos0, 0))
  lmk = landmark_lmk_refresh(lmk_BxHxMxD, knew_BxHxAxD.astype(k_BxHxNxD.dtype), pos0,
                             block_size=S)
  return k, v, lmk


def landmark_select(q_BxHxQxD, c_Q, lmk_BxHxMxD, o_Q, *, block_size: int, top_k: int,
                    local_blocks: int, scan_block: int, cos_t, sin_t):
  """The blocks each query reads (rules in the comment above): returns (blocks int32, dists
  int32, ok bool), each [B, H, Q, Kt+1] (Kt = top_k + local_blocks): the selected blocks in
  order, then the own block (last slot); the virtual distance (blocks back) each is placed at;
  which slots hold a block (invalid slots point at block 0)."""
  B, H, Q, Dh = q_BxHxQxD.shape
  S = block_size
  M = lmk_BxHxMxD.shape[2]
  block = scan_block
  if M % block:
    raise ValueError(f"landmark retrieval: scan_block={block} must divide the capacity {M}")
  K1, local = top_k, local_blocks
  Kt = K1 + local
  scale = 1.0 / math.sqrt(Dh)
  q = q_BxHxQxD
  o4 = o_Q[None, None, :]

  # (1) older blocks j < c - Kt: blocked top-k scan, landmark at distance Kt+1 blocks
  q_old = rope_rotate(q, o4 + (Kt + 1) * S, cos_t, sin_t)
  hi = c_Q - Kt
  n_steps = jnp.clip((jnp.max(hi) + block - 1) // block, 0, M // block)

  def body(carry):
    b, vals, idx = carry
    lb = jax.lax.dynamic_slice(lmk_BxHxMxD, (0, 0, b * block, 0), (B, H, block, Dh))
    s = jnp.einsum("bhqd,bhmd->bhqm", q_old, lb, preferred_element_type=jnp.float32) * scale
    j = b * block + jnp.arange(block, dtype=jnp.int32)
    s = jnp.where((j[None, :] < hi[:, None])[None, None], s, -jnp.inf)
    allv = jnp.concatenate([vals, s], axis=-1)
    alli = jnp.concatenate([idx, jnp.broadcast_to(j, (B, H, Q, block))], axis=-1)
    v, p = jax.lax.top_k(allv, K1)
    return b + 1, v, jnp.take_along_axis(alli, p, axis=-1)

  vals0 = jnp.full((B, H, Q, K1), -jnp.inf, jnp.float32)
  idx0 = jnp.zeros((B, H, Q, K1), jnp.int32)
  _, vals, idx = jax.lax.while_loop(lambda cr: cr[0] < n_steps, body,
                                    (jnp.zeros((), jnp.int32), vals0, idx0))

  # (2) the Kt most recent blocks at their true distance; the `local` nearest are forced
  dist_r = Kt - np.arange(Kt)  # static: block c-Kt+u is Kt-u blocks back
  jr = c_Q[:, None] - Kt + jnp.arange(Kt, dtype=jnp.int32)[None, :]  # [Q, Kt]
  base = (jnp.arange(B, dtype=jnp.int32)[:, None] * H + jnp.arange(H, dtype=jnp.int32)) * M
  lr = jnp.take(lmk_BxHxMxD.reshape(-1, Dh),
                base[:, :, None, None] + jnp.clip(jr, 0, M - 1)[None, None], axis=0,
                mode="clip")  # [B, H, Q, Kt, Dh]
  qr = rope_rotate(q[:, :, :, None, :], o4[..., None] + jnp.asarray(dist_r * S, jnp.int32),
                   cos_t, sin_t)
  sr = jnp.einsum("bhqkd,bhqkd->bhqk", qr, lr, preferred_element_type=jnp.float32) * scale
  sr = jnp.where(jnp.asarray(dist_r <= local), _FORCE, sr)
  sr = jnp.where((jr >= 0)[None, None], sr, -jnp.inf)
  v, p = jax.lax.top_k(jnp.concatenate([vals, sr], -1), Kt)
  sel = jnp.take_along_axis(jnp.concatenate([idx, jnp.broadcast_to(jr, (B, H, Q, Kt))], -1), p, -1)
  sel = jnp.sort(jnp.where(v > -jnp.inf, sel, M + 1), axis=-1)  # original order, invalid last
  ok = sel <= M
  m = jnp.sum(ok, axis=-1, keepdims=True).astype(jnp.int32)
  dist = jnp.where(ok, m - jnp.arange(Kt, dtype=jnp.int32), 0)  # slots right before block c

  own_c = jnp.broadcast_to(c_Q[:, None], (B, H, Q, 1))
  blocks = jnp.concatenate([jnp.where(ok, sel, 0), own_c], -1)
  dists = jnp.concatenate([dist, jnp.zeros((B, H, Q, 1), jnp.int32)], -1)
  slot_ok = jnp.concatenate([ok, jnp.ones((B, H, Q, 1), bool)], -1)
  return blocks, dists, slot_ok


def landmark_grouped_attend(q_BxHxQxD, o_Q, kg_BxHxQxKxSxD, vg_BxHxQxKxSxD, dists, slot_ok, *,
                            cos_t, sin_t):
  """Grouped softmax of Q queries (PRE-RoPE, in-block offsets o_Q) over their gathered blocks
  (`landmark_select` order: selected blocks, then the own block; keys rotated by in-block
  offset) placed at virtual distances `dists`. Returns [B, H, Q, D] (q's dtype)."""
  q = q_BxHxQxD
  B, H, Q, Dh = q.shape
  K = kg_BxHxQxKxSxD.shape[3]
  S = kg_BxHxQxKxSxD.shape[4]
  scale = 1.0 / math.sqrt(Dh)
  o4 = o_Q[None, None, :]
  qs = rope_rotate(q[:, :, :, None, :], o4[..., None] + dists * S, cos_t, sin_t)
  s = jnp.einsum("bhqkd,bhqktd->bhqkt", qs, kg_BxHxQxKxSxD,
                 preferred_element_type=jnp.float32) * scale
  t = np.arange(S)
  is_own = jnp.asarray(np.arange(K) == K - 1)[:, None]  # [K, 1]
  own_m = ((t[None, :] <= o_Q[:, None]) & jnp.asarray(t != S - 1))[:, None, :]  # [Q, 1, S]
  lmk_t = jnp.asarray(t == S - 1)
  top_mask = jnp.where(is_own, own_m, slot_ok[..., None] & lmk_t)  # [B, H, Q, K, S]
  within_mask = ~is_own & slot_ok[..., None] & ~lmk_t
  top = jax.nn.softmax(jnp.where(top_mask, s, _NEG).reshape(B, H, Q, K * S), axis=-1)
  top = top.reshape(B, H, Q, K, S)
  within = jax.nn.softmax(jnp.where(within_mask, s, _NEG), axis=-1)
  w = (jnp.where(top_mask & is_own, top, 0.0)
       + jnp.where(within_mask, within * top[..., S - 1:], 0.0))
  vg = vg_BxHxQxKxSxD
  out = jnp.einsum("bhqkt,bhqktd->bhqd", w.astype(vg.dtype), vg,
                   preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def landmark_retrieval_attention(q_BxHxQxD, c_Q, o_Q, k_BxHxNxD, v_BxHxNxD, lmk_BxHxMxD, *,
                                 block_size: int, top_k: int, local_blocks: int, scan_block: int,
                                 cos_t, sin_t):
  """Retrieval + grouped-softmax attention of Q queries (PRE-RoPE, block ids c_Q, in-block offsets
  o_Q, int32 [Q]) over a device cache (already holding the queries' own keys); rules in the
  comment above. cos_t/sin_t: RoPE tables of at least (top_k + local_blocks + 2) * S positions.
  Returns [B, H, Q, D] (q's dtype)."""
  B, H, Q, Dh = q_BxHxQxD.shape
  S = block_size
  M = lmk_BxHxMxD.shape[2]
  blocks, dists, ok = landmark_select(q_BxHxQxD, c_Q, lmk_BxHxMxD, o_Q, block_size=S,
                                      top_k=top_k, local_blocks=local_blocks,
                                      scan_block=scan_block, cos_t=cos_t, sin_t=sin_t)
  base = (jnp.arange(B, dtype=jnp.int32)[:, None] * H + jnp.arange(H, dtype=jnp.int32)) * M
  flat = base[:, :, None, None] + jnp.clip(blocks, 0, M - 1)
  kg = jnp.take(k_BxHxNxD.reshape(-1, S, Dh), flat, axis=0, mode="clip")  # [B,H,Q,K,S,Dh]
  vg = jnp.take(v_BxHxNxD.reshape(-1, S, Dh), flat, axis=0, mode="clip")
  return landmark_grouped_attend(q_BxHxQxD, o_Q, kg, vg, dists, ok, cos_t=cos_t, sin_t=sin_t)
