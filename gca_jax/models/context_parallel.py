"""Context parallelism for training (docs/method.md §10): each sample's sequence split by whole
chunks over the "context" mesh axis.

`context_forward(model, x_BxTxd, train=...)` replaces the body of `DRT.__call__` when the mesh
has context > 1 (model_kind "drt" or "swa"; the tied head stays outside). It runs `ContextBody`
under one `jax.shard_map`, manual over every mesh axis: a device holds B/(data*fsdp) samples and
the T/ctx text tokens (C/ctx whole chunks) of shard `i` of each. Inside:

  SWA        RoPE at global positions; the previous shard's last W-1 K/V rows by ppermute as
             the prefix of `swa_with_prefix` (none on shard 0),
             `layers.attention.window_attention_context`.
  encoder    local (a chunk never spans shards), as are mem_k / mem_v.
  landmarks  all_gather over "context": [b, C, d] (1/S of the rows).
  memory     the K/V memory of all C chunks all_gathered once ([b, C, S, H, Dh]), shared by every
             group and upper layer; GCA indexes it with global chunk ids.
  retrieval  local query chunks (global ids i*C/ctx + c) against all landmarks, strict causal
             mask; Gumbel noise = this shard's slice of the one-device draw (drawn outside the
             shard_map for the global shape [B, C, C] with the retriever's own key).
  shift      the retrieval of a shard's last chunk serves the next shard's first chunk (ppermute).

Gradients are shard_map's transposes: all_gather -> psum_scatter, ppermute -> the reverse
ppermute, replicated parameters -> psum over the mesh; no custom rule.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gca_jax.config import DRTConfig
from gca_jax.layers.blocks import (ChunkEncoder, DecoderBlock, UpperBlock, insert_landmarks,
                                   remat_block, remove_landmarks)
from gca_jax.layers.common import Dense, RMSNorm, dtype_of, normal_init
from gca_jax.layers.retrieval import ChunkRetriever
from gca_jax.sharding import BATCH_AXES, CONTEXT_AXIS, context_shard, from_previous_shard

SUPPORTED_KINDS = ("drt", "swa")


def gather_chunks(x_BxcxF, axis: int = 1):
  """Inside the context body: the whole sequence's rows along `axis` (all_gather, shard order)."""
  return jax.lax.all_gather(x_BxcxF, CONTEXT_AXIS, axis=axis, tiled=True)


def shift_across_shards(indices_BxcxK, weights_BxcxK):
  """`shift_to_next_chunk` on a context shard: local chunk 0 gets the previous shard's last
  retrieval (nothing on shard 0)."""
  idx = jnp.concatenate([from_previous_shard(indices_BxcxK, 1), indices_BxcxK[:, :-1]], axis=1)
  w = jnp.concatenate([from_previous_shard(weights_BxcxK, 1), weights_BxcxK[:, :-1]], axis=1)
  return idx, w


class ContextBody(nn.Module):
  """One context shard of DRT.__call__ (model_kind "drt" / "swa"), the same parameter names.

  x [b, t, d] this shard's text embeddings (t = c * text_per_chunk); noises: per retrieval group
  the Gumbel noise [b, c, C] of this shard's query chunks, or () for the noise-free path.
  Returns the final-normed hidden states of the t text tokens [b, t, d]."""
  config: DRTConfig

  @nn.compact
  def __call__(self, x_bxtxd, noises=()):
    cfg = self.config
    dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    bc = cfg.block_config()
    kw = dict(dtype=dt, param_dtype=pdt)
    block = remat_block(DecoderBlock, cfg.remat)
    if cfg.model_kind == "swa":
      h = x_bxtxd
      for i in range(cfg.num_layers):
        h = block(bc, "window", name=f"layer_{i}")(h)
      return RMSNorm(cfg.norm_eps, name="final_norm", **kw)(h)

    index, _ = context_shard()
    S, L = cfg.chunk_size, cfg.text_per_chunk
    H, Dh, d = cfg.num_heads, cfg.head_dim, cfg.d_model
    landmark = self.param("landmark", normal_init(cfg.init_std, ("embed",)), (d,), pdt)
    h = insert_landmarks(x_bxtxd, landmark, L)
    b, n, _ = h.shape
    c = n // S
    for i in range(cfg.lower_layers):
      h = block(bc, "window", name=f"lower_{i}")(h)
    enc = ChunkEncoder(bc, num_layers=cfg.encoder_layers, name="encoder")(h.reshape(b, c, S, d))
    landmarks_bxCxd = gather_chunks(enc[:, :, S - 1])
    sink = (jnp.arange(S) < S - 1)[None, None, :, None, None]
    mem_kw = dict(std=cfg.init_std, **kw)
    k_mem = Dense(H * Dh, ("embed", "heads"), name="mem_k", **mem_kw)(enc).reshape(b, c, S, H, Dh)
    v_mem = Dense(H * Dh, ("embed", "heads"), name="mem_v", **mem_kw)(enc).reshape(b, c, S, H, Dh)
    k_mem = gather_chunks(jnp.where(sink, k_mem, 0).astype(dt))
    v_mem = gather_chunks(jnp.where(sink, v_mem, 0).astype(dt))

    upper = remat_block(UpperBlock, cfg.remat)
    layer = 0
    for g, n_layers in enumerate(cfg.upper_groups):
      query = h.reshape(b, c, S, d)[:, :, S - 1]
      idx, w, _ = ChunkRetriever(bc, name=f"retriever_{g}")(
          query, landmarks_bxCxd, query_offset=index * c,
          noise_BxCxM=noises[g] if noises else None)
      idx, w = shift_across_shards(idx, w)
      for _ in range(n_layers):
        h = upper(bc, name=f"upper_{layer}")(h, k_mem, v_mem, idx, w)
        layer += 1
    h = RMSNorm(cfg.norm_eps, name="final_norm", **kw)(h)
    return remove_landmarks(h, L, c * L)


def check_context_input(cfg: DRTConfig, mesh, B: int, T: int) -> int:
  """Raises ValueError unless [B, T] text tokens split over `mesh` for context parallelism;
  returns the context degree."""
  ctx = int(mesh.shape[CONTEXT_AXIS])
  if cfg.model_kind not in SUPPORTED_KINDS:
    raise ValueError(f"context parallelism (mesh context={ctx}) supports model_kind "
                     f"{SUPPORTED_KINDS}, not model_kind={cfg.model_kind!r}")
  if mesh.shape.get("tensor", 1) != 1:
    raise ValueError(f"context parallelism (mesh context={ctx}) needs mesh tensor=1, got "
                     f"tensor={mesh.shape['tensor']}")
  unit = cfg.text_per_chunk * ctx if cfg.model_kind == "drt" else ctx
  if T % unit:
    what = (f"whole chunks per shard: a multiple of text_per_chunk * context = "
            f"{cfg.text_per_chunk} * {ctx} = {unit}" if cfg.model_kind == "drt"
            else f"a multiple of context = {ctx}")
    raise ValueError(f"context parallelism: T={T} text tokens must split into {what}")
  rows = T // ctx + (T // ctx // cfg.text_per_chunk if cfg.model_kind == "drt" else 0)
  if rows < cfg.window - 1:
    raise ValueError(f"context parallelism: {rows} rows per context shard (T={T}, context={ctx}) "
                     f"< window - 1 = {cfg.window - 1}")
  nb = 1
  for a in BATCH_AXES:
    nb *= int(mesh.shape.get(a, 1))
  if B % nb:
    raise ValueError(f"context parallelism: batch {B} not divisible by mesh data*fsdp = {nb}")
  return ctx


def context_forward(model: nn.Module, x_BxTxd, *, train: bool = False):
  """DRT.__call__'s body on a mesh with context > 1 (module docstring). x [B, T, d] the text
  embeddings -> final-normed hidden states [B, T, d] (sharded over batch and context), for the
  model's tied head. `train=True` draws the retrievers' Gumbel noise as the one-device run."""
  cfg = model.config
  mesh = jax.sharding.get_abstract_mesh()
  B, T, _ = x_BxTxd.shape
  check_context_input(cfg, mesh, B, T)
  rows = P(BATCH_AXES, CONTEXT_AXIS, None)
  noises = ()
  if train and cfg.model_kind == "drt":
    C = T // cfg.text_per_chunk
    bc = cfg.block_config()
    noises = tuple(
        jax.lax.with_sharding_constraint(
            ChunkRetriever(bc, name=f"retriever_{g}").gumbel((B, C, C)), rows)
        for g in range(len(cfg.upper_groups)))
  params = model.variables["params"]
  pspec = jax.tree.map(lambda _: P(), params)

  def body(p, x, nz):
    with nn.logical_axis_rules(()):
      return ContextBody(cfg).apply({"params": p}, x, nz)

  # check_vma=False as in `sharding.per_device_call`: cuDNN / Pallas kernels run inside the body
  return jax.shard_map(body, mesh=mesh, in_specs=(pspec, rows, (rows,) * len(noises)),
                       out_specs=rows, check_vma=False)(params, x_BxTxd, noises)
