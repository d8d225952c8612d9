"""The DRT model (docs/method.md §1-2) and its two baselines, as one Linen module."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gca_jax.config import DRTConfig
from gca_jax.layers.blocks import (GCA_SAVED, ChunkEncoder, DecoderBlock, UpperBlock,  # noqa: F401
                                   insert_landmarks, remat_block, remove_landmarks)
from gca_jax.layers.common import Dense, RMSNorm, dtype_of, normal_init
from gca_jax.layers.retrieval import ChunkRetriever, shift_to_next_chunk
from gca_jax.layers.stream import StreamSpec
from gca_jax.models import context_parallel, drt_stream
from gca_jax.sharding import context_degree

_ACT = ("batch", "act_length", "act_embed")


@jax.custom_vjp
def tied_head(h_BxTxd, emb_Vxd):
  """Logits float32 [B,T,V] = h · embᵀ, inputs in h's dtype with float32 accumulation.

  The backward rounds the logit gradient to h's dtype before its two matmuls (dh = g·emb,
  demb = gᵀ·h), as the forward rounds its inputs; plain autodiff would run them on the float32
  gradient (TF32 GEMMs on GPU, 2.4x the time of the bf16 ones: 22 of a 209 ms drt_128m step,
  docs/benchmarks.md §4). With float32 compute both are plain float32."""
  return _head_fwd(h_BxTxd, emb_Vxd)[0]


def _head_fwd(h, emb):
  logits = jnp.einsum("btd,vd->btv", h, emb.astype(h.dtype), preferred_element_type=jnp.float32)
  return logits, (h, emb)


def _head_bwd(res, g_BxTxV):
  h, emb = res
  g = g_BxTxV.astype(h.dtype)
  dh = jnp.einsum("btv,vd->btd", g, emb.astype(h.dtype), preferred_element_type=jnp.float32)
  demb = jnp.einsum("btv,btd->vd", g, h, preferred_element_type=jnp.float32)
  return dh.astype(h.dtype), demb.astype(emb.dtype)


tied_head.defvjp(_head_fwd, _head_bwd)


class DRT(nn.Module):
  """DRT language model; `config.model_kind` also selects the SWA-only / full-attention / Landmark
  Attention baselines ("landmark": landmarks inserted as below, `num_layers` plain blocks with the
  grouped-softmax attention over blocks of `chunk_size` positions, docs/method.md §6).

  __call__(tokens int32 [B,T], *, train=False) -> logits float32 [B,T,vocab] for the T text
  tokens (`embeddings_BxTxd`, if given, replaces the token-embedding lookup; the tied head still
  uses the embedding table). Landmarks are inserted (one per 63 text tokens, T padded to a multiple of 63) and
  removed inside. `train=True` draws Gumbel noise for retrieval from the "gumbel" rng stream.
  Sown intermediates (mutable "intermediates"): per group `retrieval_g{g}` = (indices, weights)
  after the c -> c+1 shift, and each upper block's `gca_out`.

  Streaming (`stream=StreamSpec(...)`, every model_kind): `apply({"params": p, "cache": c},
  tokens [B, P], stream=spec, mutable=["cache"])` -> (logits f32 [B, P, V], {"cache": c2}) for
  the next P text tokens of the stream held in `c` (any P >= 1; an empty cache from
  `init(..., stream=spec)`, zeros). Same parameters as the full forward; see
  `gca_jax.models.drt_stream` and `gca_jax.inference`.

  Context parallelism: traced under a mesh whose "context" axis is > 1 (model_kind "drt" or
  "swa"), the body runs per sequence shard, `gca_jax.models.context_parallel` (docs/method.md §10).
  """
  config: DRTConfig

  def _block_cls(self, cls):
    """remat="block": each block is recomputed in the backward pass, except the GCA kernel's
    query, output and log-sum-exp ("gca_q", "gca_o", "gca_lse"), which are saved (3 [B,T,d]-sized
    arrays per upper layer) so the GCA forward kernel runs once per step, not twice.
    remat="full": every block is recomputed whole (nothing saved; the least memory)."""
    return remat_block(cls, self.config.remat)

  @nn.compact
  def __call__(self, tokens_BxT, *, train: bool = False, embeddings_BxTxd=None,
               stream: StreamSpec | None = None, return_hidden: bool = False):
    cfg = self.config
    dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    if tokens_BxT.ndim != 2:
      raise ValueError(f"DRT expects tokens [B, T], got shape {tokens_BxT.shape}")
    if train and cfg.model_kind == "drt" and not self.has_rng("gumbel"):
      raise ValueError("DRT(train=True) needs an rng stream named 'gumbel' "
                       "(apply(..., rngs={'gumbel': key}))")
    B, T = tokens_BxT.shape
    kw = dict(dtype=dt, param_dtype=pdt)
    H, Dh = cfg.num_heads, cfg.head_dim
    emb = self.param("embedding", normal_init(cfg.init_std, ("vocab", "embed")),
                     (cfg.vocab_size, cfg.d_model), pdt)
    if embeddings_BxTxd is None:
      x = jnp.take(emb, tokens_BxT, axis=0).astype(dt)
    else:
      if embeddings_BxTxd.shape != (B, T, cfg.d_model):
        raise ValueError(f"DRT: embeddings_BxTxd{embeddings_BxTxd.shape} must be {(B, T, cfg.d_model)}")
      x = embeddings_BxTxd.astype(dt)
    bc = cfg.block_config()
    block = self._block_cls(DecoderBlock)
    if stream is not None:
      if train:
        raise ValueError("DRT(stream=...) is inference only; train must be False")
      if return_hidden:
        raise ValueError("DRT(stream=...) returns logits; return_hidden must be False")
      return self._stream(x, emb, bc, stream)
    if context_degree() > 1 and not self.is_initializing():
      return self._head(context_parallel.context_forward(self, x, train=train), emb, return_hidden)

    if cfg.model_kind == "landmark":
      S, L = cfg.chunk_size, cfg.text_per_chunk
      landmark = self.param("landmark", normal_init(cfg.init_std, ("embed",)), (cfg.d_model,), pdt)
      h = nn.with_logical_constraint(insert_landmarks(x, landmark, L), _ACT)
      for i in range(cfg.num_layers):
        h = block(bc, "landmark", name=f"layer_{i}")(h)
      h = RMSNorm(cfg.norm_eps, name="final_norm", **kw)(h)
      return self._head(remove_landmarks(h, L, T), emb, return_hidden)

    if cfg.model_kind != "drt":
      mode = "window" if cfg.model_kind == "swa" else "causal"
      h = nn.with_logical_constraint(x, _ACT)
      for i in range(cfg.num_layers):
        h = block(bc, mode, name=f"layer_{i}")(h)
      h = RMSNorm(cfg.norm_eps, name="final_norm", **kw)(h)
      return self._head(h, emb, return_hidden)

    S, L = cfg.chunk_size, cfg.text_per_chunk
    landmark = self.param("landmark", normal_init(cfg.init_std, ("embed",)), (cfg.d_model,), pdt)
    h = nn.with_logical_constraint(insert_landmarks(x, landmark, L), _ACT)
    N = h.shape[1]
    C = N // S
    for i in range(cfg.lower_layers):
      h = block(bc, "window", name=f"lower_{i}")(h)

    enc = ChunkEncoder(bc, num_layers=cfg.encoder_layers, name="encoder")(
        h.reshape(B, C, S, cfg.d_model))
    landmarks_BxCxd = enc[:, :, S - 1]
    sink = (jnp.arange(S) < S - 1)[None, None, :, None, None]
    mem_kw = dict(std=cfg.init_std, **kw)
    k_mem = Dense(H * Dh, ("embed", "heads"), name="mem_k", **mem_kw)(enc).reshape(B, C, S, H, Dh)
    v_mem = Dense(H * Dh, ("embed", "heads"), name="mem_v", **mem_kw)(enc).reshape(B, C, S, H, Dh)
    k_mem = jnp.where(sink, k_mem, 0).astype(dt)
    v_mem = jnp.where(sink, v_mem, 0).astype(dt)

    upper = self._block_cls(UpperBlock)
    layer = 0
    for g, n in enumerate(cfg.upper_groups):
      query = h.reshape(B, C, S, cfg.d_model)[:, :, S - 1]
      idx, w, _ = ChunkRetriever(bc, name=f"retriever_{g}")(query, landmarks_BxCxd, train=train)
      idx, w = shift_to_next_chunk(idx, w)
      self.sow("intermediates", f"retrieval_g{g}", (idx, w))
      for _ in range(n):
        h = upper(bc, name=f"upper_{layer}")(h, k_mem, v_mem, idx, w)
        layer += 1
    h = RMSNorm(cfg.norm_eps, name="final_norm", **kw)(h)
    return self._head(remove_landmarks(h, L, T), emb, return_hidden)

  def _stream(self, x_BxPxd, emb, bc, spec: StreamSpec):
    cfg = self.config
    if cfg.model_kind in ("swa", "full"):
      mode = "window" if cfg.model_kind == "swa" else "causal"
      h = drt_stream.plain_stream(self, x_BxPxd, bc, mode, spec)
      h = RMSNorm(cfg.norm_eps, name="final_norm", dtype=bc.dtype, param_dtype=bc.param_dtype)(h)
      return self._head(h, emb)
    landmark = self.param("landmark", normal_init(cfg.init_std, ("embed",)), (cfg.d_model,),
                          bc.param_dtype)
    fwd = drt_stream.landmark_stream if cfg.model_kind == "landmark" else drt_stream.drt_stream
    return self._head(fwd(self, x_BxPxd, landmark, bc, spec), emb)

  def _head(self, h_BxTxd, emb_Vxd, hidden: bool = False):
    """Tied LM head, float32 logits (`tied_head`). `__call__(..., return_hidden=True)` (not with
    `stream`) passes hidden=True: the final-normed text hidden states h_BxTxd (compute dtype)
    are returned instead, the input of the fused loss `gca_jax.ops.lm_head_loss`."""
    if hidden:
      return nn.with_logical_constraint(h_BxTxd, _ACT)
    logits = tied_head(h_BxTxd, emb_Vxd)
    return nn.with_logical_constraint(logits, ("batch", "act_length", "act_vocab"))


def resolved_impls(cfg: DRTConfig, batch: int = 1, seq_len: int | None = None) -> dict[str, str]:
  """The attention / GCA implementations `impl="auto"` resolves to on this backend, for logs."""
  from gca_jax.ops import resolve_attention_impl, resolve_gca_impl
  dt = dtype_of(cfg.dtype)
  T = seq_len or cfg.window
  sds = jax.ShapeDtypeStruct
  q = sds((batch, T, cfg.num_heads, cfg.head_dim), dt)
  out = {"swa": resolve_attention_impl(cfg.swa_impl, q)}
  if cfg.model_kind == "drt":
    C = max(1, -(-T // cfg.text_per_chunk))
    qc = sds((batch, C, cfg.chunk_size, cfg.num_heads, cfg.head_dim), dt)
    slots = sds((batch, C, cfg.top_k), jnp.int32)
    out["gca"] = resolve_gca_impl(cfg.gca_impl, qc, qc, qc, slots,
                                  sds((batch, C, cfg.top_k), jnp.float32))
    out["encoder"] = resolve_attention_impl(
        cfg.swa_impl, sds((batch * C, cfg.chunk_size, cfg.num_heads, cfg.head_dim), dt))
  return out
