"""Transformer blocks (docs/method.md §2): plain pre-norm block, the chunk encoder, and the DRT upper block."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from gca_jax.layers.attention import SelfAttention
from gca_jax.layers.common import MLP, Dtype, RMSNorm
from gca_jax.layers.gca import GroupedCrossAttention

_ACT = ("batch", "act_length", "act_embed")


def _attention_residual(block: nn.Module, h, mode: str, window, impl: str, positions=None,
                        stream=None, segment=None, landmark_top_k=None):
  """h + Attn(norm1(h)): the pre-norm self-attention sublayer shared by DecoderBlock and
  UpperBlock. Called inside `block`'s compact __call__, so its params are block/norm1 and
  block/attn (and its stream cache block/attn/...)."""
  kw = dict(dtype=block.dtype, param_dtype=block.param_dtype)
  a = SelfAttention(block.num_heads, block.head_dim, mode, window, impl, block.rope_theta,
                    block.std, name="attn", landmark_top_k=landmark_top_k, **kw)(
                        RMSNorm(block.eps, name="norm1", **kw)(h), positions, stream=stream,
                        segment=segment)
  return h + a


class DecoderBlock(nn.Module):
  """h = h + Attn(norm(h)); h = h + MLP(norm(h)). x [B,T,d] -> [B,T,d].

  attn_mode: "window" (SWA, docs/method.md §2.1), "causal" (full-attention baseline), "landmark" or
  "bidirectional". `stream` / `segment`: the streaming mode of `SelfAttention` (forwarded).
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  attn_mode: str = "window"
  window: int | None = None
  impl: str = "auto"
  rope_theta: float = 10000.0
  eps: float = 1e-5
  std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  landmark_top_k: int | None = None

  @nn.compact
  def __call__(self, h, positions=None, *, stream=None, segment=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _attention_residual(self, h, self.attn_mode, self.window, self.impl, positions, stream,
                            segment, self.landmark_top_k)
    h = h + MLP(self.mlp_dim, self.std, name="mlp", **kw)(RMSNorm(self.eps, name="norm2", **kw)(h))
    if h.ndim == 3:
      h = nn.with_logical_constraint(h, _ACT)
    return h


class ChunkEncoder(nn.Module):
  """Bidirectional encoder applied to each chunk independently (docs/method.md §2.2).

  x [B,C,S,d] (the lower layers' output) -> E [B,C,S,d] = FinalNorm(Layers(Norm(x))), with full
  attention inside the chunk and RoPE over positions 0..S-1. E[:, :, S-1] are the landmark keys.
  impl: the in-chunk attention's (`ops.chunk_attention`: "auto" = cuDNN on GPU, else XLA).
  """
  num_layers: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  eps: float = 1e-5
  std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x_BxCxSxd):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    e = RMSNorm(self.eps, name="input_norm", **kw)(x_BxCxSxd)
    for i in range(self.num_layers):
      e = DecoderBlock(self.num_heads, self.head_dim, self.mlp_dim, "bidirectional", None,
                       self.impl, self.rope_theta, self.eps, self.std, name=f"layer_{i}", **kw)(e)
    return RMSNorm(self.eps, name="final_norm", **kw)(e)


class UpperBlock(nn.Module):
  """DRT upper layer (docs/method.md §2.4). x [B,T,d] with T = C*S; retrieval already shifted.

    h1 = h + SWA(norm1(h)); g = GCA(h1)
    official: out = h1 + MLP(norm2(h1 + g))       standard: h2 = h1 + g; out = h2 + MLP(norm2(h2))

  Streaming (`stream=`): h [B, A, d] holds the rows of one segment window (the first
  `segment.n_valid` real); GCA runs on chunk slots: `slots` = (slot_rows int32 [(C+1)*S], the
  window row of each slot row; window_rows int32 [A], the slot row of each window row), and
  indices/weights [B, C+1, K] serve the C+1 slots.
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  window: int
  chunk_size: int
  residual: str = "official"
  swa_impl: str = "auto"
  gca_impl: str = "auto"
  rope_theta: float = 10000.0
  eps: float = 1e-5
  std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, k_mem, v_mem, indices, weights, *, stream=None, segment=None,
               slots=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    B, T, d = h.shape
    S = self.chunk_size
    h1 = _attention_residual(self, h, "window", self.window, self.swa_impl, None, stream, segment)
    gca = GroupedCrossAttention(self.num_heads, self.head_dim, self.gca_impl, True, self.eps,
                                self.std, name="gca", **kw)
    if stream is None:
      C = T // S
      g = gca(h1.reshape(B, C, S, d), k_mem, v_mem, indices, weights).reshape(B, T, d)
    else:
      slot_rows, window_rows = slots
      NS = slot_rows.shape[0]
      gs = gca(jnp.take(h1, slot_rows, axis=1).reshape(B, NS // S, S, d), k_mem, v_mem, indices,
               weights).reshape(B, NS, d)
      g = jnp.take(gs, window_rows, axis=1)
    self.sow("intermediates", "gca_out", g)
    norm2 = RMSNorm(self.eps, name="norm2", **kw)
    mlp = MLP(self.mlp_dim, self.std, name="mlp", **kw)
    if self.residual == "official":
      out = h1 + mlp(norm2(h1 + g))
    elif self.residual == "standard":
      h2 = h1 + g
      out = h2 + mlp(norm2(h2))
    else:
      raise ValueError(f"UpperBlock: unknown residual form {self.residual!r}")
    return nn.with_logical_constraint(out, _ACT)
