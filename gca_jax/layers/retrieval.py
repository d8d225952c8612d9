"""Chunk retrieval (docs/method.md §2.3): landmark scores, strict causal mask, Gumbel top-k, fusion weights."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gca_jax.config import BlockConfig
from gca_jax.layers.common import RMSNorm


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
  """Causal shift (docs/method.md §2.3): the retrieval made at chunk c serves chunk c+1; chunk 0 gets none."""
  idx = jnp.concatenate([jnp.zeros_like(indices_BxCxK[:, :1]), indices_BxCxK[:, :-1]], axis=1)
  w = jnp.concatenate([jnp.zeros_like(weights_BxCxK[:, :1]), weights_BxCxK[:, :-1]], axis=1)
  return idx, w


def gumbel_noise(key, shape):
  u = jax.random.uniform(key, shape, jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
  return -jnp.log(-jnp.log(u))


class ChunkRetriever(nn.Module):
  """Per-group retrieval (docs/method.md §2.3), shared by all heads and layers of the group.

  config: BlockConfig (needs top_k = K; norm_eps, param_dtype of the query norm, computed in f32).
  query_BxCxd: hidden state at each chunk's landmark as it enters the group; landmarks_BxMxd:
  the encoder's landmark keys. score[c,j] = RMSNorm(q[c]) . lmk[j] / sqrt(d) (with
  `config.retrieval_proj`: RMSNorm(q[c]) @ Wq . lmk[j] / sqrt(d), Wq = I at init), allowed for j < c
  (strict; query chunk c is chunk c of the same sequence, offset by `query_offset` chunks when the
  memory holds earlier chunks). Training (`train=True`) adds Gumbel(0,1) noise from the "gumbel"
  rng stream to choose (or `noise_BxCxM`, given: the context-parallel body passes its slice
  of the one-device draw, `gumbel`); evaluation takes the plain top-k. Returns (indices [B,C,K] int32,
  weights [B,C,K] f32, scores [B,C,M] f32), unshifted.

  Streaming (`stream=StreamSpec`, mutable "cache"): query [B, C, d] at the landmarks of the C
  chunk slots a segment can complete, `chunk_ids` int32 [C] their global ids, `n_complete` how
  many of them completed; landmarks [B, M, d] the whole chunk memory. Scores use
  `blocked_topk_retrieval` (blocks of `spec.mem_block` chunks). Returns the SHIFTED retrieval
  (indices [B, C+1, K], weights [B, C+1, K], None): slot 0 is served by the retrieval carried
  from the previous segment (cache "idx"/"w" [B, K]), slot i by the i-th chunk of this call.
  """
  config: BlockConfig

  @property
  def top_k(self) -> int:
    return self.config.need("top_k", "ChunkRetriever")

  @nn.compact
  def __call__(self, query_BxCxd, landmarks_BxMxd, *, train: bool = False, query_offset: int = 0,
               stream=None, chunk_ids=None, n_complete=None, noise_BxCxM=None):
    d = query_BxCxd.shape[-1]
    c = self.config
    q = RMSNorm(c.norm_eps, jnp.float32, c.param_dtype, name="query_norm")(query_BxCxd)
    if c.retrieval_proj:
      w = self.param("query_proj", nn.with_logical_partitioning(
          lambda key, shape, dtype: jnp.eye(shape[0], dtype=dtype), ("embed", "norm")), (d, d),
                     c.param_dtype)
      q = jnp.einsum("bcd,de->bce", q, w.astype(jnp.float32))
    if stream is not None:
      return self._stream(q, landmarks_BxMxd, stream, chunk_ids, n_complete)
    scores = jnp.einsum("bcd,bmd->bcm", q, landmarks_BxMxd.astype(jnp.float32)) / jnp.sqrt(
        jnp.float32(d))
    C, M = scores.shape[1], scores.shape[2]
    valid = (jnp.arange(M)[None, :] < (jnp.arange(C)[:, None] + query_offset))[None]
    valid = jnp.broadcast_to(valid, scores.shape)
    noise = noise_BxCxM
    if noise is None and train:
      noise = self.gumbel(scores.shape)
    idx, w, _ = masked_topk_weights(scores, valid, self.top_k, noise)
    return idx, w, scores

  def gumbel(self, shape):
    """The Gumbel(0,1) noise [B, C, M] that `__call__(train=True)` adds for scores of `shape`
    (the same key: the first "gumbel" draw of this module)."""
    return gumbel_noise(self.make_rng("gumbel"), shape)

  def _stream(self, q_BxCxd, lmk_BxMxd, spec, chunk_ids_C, n_complete):
    from gca_jax.layers.stream import scan_block  # noqa: PLC0415
    B, K = q_BxCxd.shape[0], self.top_k
    ci = self.variable("cache", "idx", jnp.zeros, (B, K), jnp.int32)
    cw = self.variable("cache", "w", jnp.zeros, (B, K), jnp.float32)
    idx, w = blocked_topk_retrieval(q_BxCxd, lmk_BxMxd, chunk_ids_C, K,
                                    scan_block(lmk_BxMxd.shape[1], spec.mem_block))
    sidx = jnp.concatenate([ci.value[:, None], idx], axis=1)  # [B, C+1, K]
    sw = jnp.concatenate([cw.value[:, None], w], axis=1)
    if not self.is_initializing():
      ci.value = jax.lax.dynamic_index_in_dim(sidx, n_complete, axis=1, keepdims=False)
      cw.value = jax.lax.dynamic_index_in_dim(sw, n_complete, axis=1, keepdims=False)
    return sidx, sw, None


def blocked_topk_retrieval(q_Bxnxd, lmk_BxMxd, chunk_ids_n, top_k: int, block: int):
  """Deterministic retrieval (docs/method.md §2.3) for query chunks with global ids `chunk_ids_n` [n]
  against memory landmarks [B, M, d] (M a multiple of `block`): score = q . lmk[j] / sqrt(d),
  allowed for j < chunk id; top-k over M computed block by block with a running merge, visiting
  only blocks below max(chunk_ids) (a while_loop with a traced trip count). `q` must already be
  normed (float32). Returns (indices int32 [B,n,K], weights f32 [B,n,K]) as
  `masked_topk_weights` (unshifted)."""
  B, n, d = q_Bxnxd.shape
  M = lmk_BxMxd.shape[1]
  if M % block:
    raise ValueError(f"blocked_topk_retrieval: memory rows {M} not a multiple of block {block}")
  scale = jnp.sqrt(jnp.float32(d))
  q = q_Bxnxd.astype(jnp.float32)
  vals0 = jnp.full((B, n, top_k), -jnp.inf, jnp.float32)
  idx0 = jnp.full((B, n, top_k), M, jnp.int32)  # M = "no entry" (sorts after every real index)
  n_valid = jnp.max(chunk_ids_n)  # entries j < max id can be valid for some query
  n_blocks = jnp.minimum((n_valid + block - 1) // block, M // block)

  def body(carry):
    b, vals, idx = carry
    lb = jax.lax.dynamic_slice_in_dim(lmk_BxMxd, b * block, block, axis=1).astype(jnp.float32)
    s = jnp.einsum("bcd,bmd->bcm", q, lb) / scale
    j = b * block + jnp.arange(block, dtype=jnp.int32)
    ok = j[None, :] < chunk_ids_n[:, None]
    s = jnp.where(ok[None], s, -jnp.inf)
    allv = jnp.concatenate([vals, s], axis=-1)
    alli = jnp.concatenate([idx, jnp.broadcast_to(j, (B, n, block))], axis=-1)
    v, pos = jax.lax.top_k(allv, top_k)
    return b + 1, v, jnp.take_along_axis(alli, pos, axis=-1)

  _, vals, idx = jax.lax.while_loop(lambda c: c[0] < n_blocks, body,
                                    (jnp.zeros((), jnp.int32), vals0, idx0))
  sel_valid = vals > -jnp.inf
  sel = jnp.where(sel_valid, vals, 0.0)
  m = jnp.max(jnp.where(sel_valid, sel, -1e30), axis=-1, keepdims=True)
  m = jnp.where(jnp.any(sel_valid, -1, keepdims=True), m, 0.0)
  e = jnp.where(sel_valid, jnp.exp(sel - m), 0.0)
  den = jnp.sum(e, axis=-1, keepdims=True)
  w = e / jnp.where(den > 0, den, 1.0)
  return jnp.where(sel_valid, idx, 0).astype(jnp.int32), w
