"""Chunk retrieval (SPEC §2.3): landmark scores, strict causal mask, Gumbel top-k, fusion weights."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gca_jax.layers.common import Dtype, RMSNorm


def masked_topk_weights(scores_BxCxM, valid_BxCxM, top_k: int, noise_BxCxM=None):
  """Top-k selection and softmax weights over the selected valid entries.

  Selection uses `scores + noise` (noise only chooses); weights are softmax of the *raw* scores of
  the selected entries. Slots that select an invalid entry (fewer than k valid) get weight 0 and
  index 0; a row with no valid entry has all weights 0. Never NaN, gradients included.
  Returns (indices int32 [B,C,K], weights f32 [B,C,K], valid bool [B,C,K]).
  """
  B, C, M = scores_BxCxM.shape
  scores = scores_BxCxM.astype(jnp.float32)
  pick = jnp.where(valid_BxCxM, scores if noise_BxCxM is None else scores + noise_BxCxM, -jnp.inf)
  if M < top_k:
    pick = jnp.pad(pick, ((0, 0), (0, 0), (0, top_k - M)), constant_values=-jnp.inf)
  _, idx = jax.lax.top_k(jax.lax.stop_gradient(pick), top_k)
  in_range = idx < M
  idx = jnp.where(in_range, idx, 0).astype(jnp.int32)
  sel_valid = jnp.take_along_axis(valid_BxCxM, idx, axis=-1) & in_range
  sel = jnp.take_along_axis(scores, idx, axis=-1)
  sel = jnp.where(sel_valid, sel, 0.0)
  m = jnp.max(jnp.where(sel_valid, sel, -1e30), axis=-1, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.any(sel_valid, -1, keepdims=True), m, 0.0))
  e = jnp.where(sel_valid, jnp.exp(sel - m), 0.0)
  den = jnp.sum(e, axis=-1, keepdims=True)
  w = e / jnp.where(den > 0, den, 1.0)
  return jnp.where(sel_valid, idx, 0), w, sel_valid


def shift_to_next_chunk(indices_BxCxK, weights_BxCxK):
  """Causal shift (SPEC §2.3): the retrieval made at chunk c serves chunk c+1; chunk 0 gets none."""
  idx = jnp.concatenate([jnp.zeros_like(indices_BxCxK[:, :1]), indices_BxCxK[:, :-1]], axis=1)
  w = jnp.concatenate([jnp.zeros_like(weights_BxCxK[:, :1]), weights_BxCxK[:, :-1]], axis=1)
  return idx, w


def gumbel_noise(key, shape):
  u = jax.random.uniform(key, shape, jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
  return -jnp.log(-jnp.log(u))


class ChunkRetriever(nn.Module):
  """Per-group retrieval (SPEC §2.3), shared by all heads and layers of the group.

  query_BxCxd: hidden state at each chunk's landmark as it enters the group; landmarks_BxMxd:
  the encoder's landmark keys. score[c,j] = RMSNorm(q[c]) . lmk[j] / sqrt(d), allowed for j < c
  (strict; query chunk c is chunk c of the same sequence, offset by `query_offset` chunks when the
  memory holds earlier chunks). Training (`train=True`) adds Gumbel(0,1) noise from the "gumbel"
  rng stream to choose; evaluation takes the plain top-k. Returns (indices [B,C,K] int32,
  weights [B,C,K] f32, scores [B,C,M] f32), unshifted.
  """
  top_k: int
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query_BxCxd, landmarks_BxMxd, *, train: bool = False, query_offset: int = 0):
    d = query_BxCxd.shape[-1]
    q = RMSNorm(self.eps, jnp.float32, self.param_dtype, name="query_norm")(query_BxCxd)
    scores = jnp.einsum("bcd,bmd->bcm", q, landmarks_BxMxd.astype(jnp.float32)) / jnp.sqrt(
        jnp.float32(d))
    C, M = scores.shape[1], scores.shape[2]
    valid = (jnp.arange(M)[None, :] < (jnp.arange(C)[:, None] + query_offset))[None]
    valid = jnp.broadcast_to(valid, scores.shape)
    noise = gumbel_noise(self.make_rng("gumbel"), scores.shape) if train else None
    idx, w, _ = masked_topk_weights(scores, valid, self.top_k, noise)
    return idx, w, scores
