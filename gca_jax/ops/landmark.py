"""Landmark Attention (SPEC §6; Mohtashami & Jaggi, arXiv 2305.16300): training-time grouped softmax.

Dense O(T^2) plain-jnp implementation with float32 softmax statistics, following the official code
(`epfml/landmark-attention`, `landmark_grouped_softmax` and the mask construction in its LLaMA
model). Top-k block retrieval at inference: `gca_jax.inference.baseline_stream` (LandmarkStream).

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
  """Boolean [N, N] masks (query, key): own-block keys, previous landmarks, previous regular keys."""
  n = np.arange(N)
  blk, is_lmk = n // S, (n % S) == S - 1
  qb, kb = blk[:, None], blk[None, :]
  own = (kb == qb) & (n[None, :] <= n[:, None]) & ~is_lmk[None, :]
  prev = kb < qb
  return own, prev & is_lmk[None, :], prev & ~is_lmk[None, :]


def landmark_weights(q_BxTxHxD, k_BxTxHxD, block_size: int):
  """The grouped-softmax weights w [B, H, T(query), T(key)] in float32 (formula: module docstring)."""
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
