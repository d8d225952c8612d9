"""Transformer blocks (docs/method.md §2): plain pre-norm block, the chunk encoder, and the DRT upper block.

Each takes a `BlockConfig` (gca_jax.config; `DRTConfig.block_config()`) as its first argument;
only what differs per instance (the attention `mode`, the encoder's `num_layers`) is its own."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gca_jax.config import BlockConfig
from gca_jax.layers.attention import SelfAttention
from gca_jax.layers.common import MLP, RMSNorm
from gca_jax.layers.gca import GroupedCrossAttention

_ACT = ("batch", "act_length", "act_embed")
GCA_SAVED = ("gca_q", "gca_o", "gca_lse")


def insert_landmarks(x_BxTxd, landmark_d, text_per_chunk: int):
  """Pads T on the right to C*L (L = text_per_chunk) and appends the landmark after each chunk.

  Returns [B, C*(L+1), d]. The inverse is `remove_landmarks`.
  """
  B, T, d = x_BxTxd.shape
  C = -(-T // text_per_chunk)
  x = jnp.pad(x_BxTxd, ((0, 0), (0, C * text_per_chunk - T), (0, 0)))
  x = x.reshape(B, C, text_per_chunk, d)
  lmk = jnp.broadcast_to(landmark_d.astype(x.dtype), (B, C, 1, d))
  return jnp.concatenate([x, lmk], axis=2).reshape(B, C * (text_per_chunk + 1), d)


def remove_landmarks(y_BxNxF, text_per_chunk: int, T: int):
  """[B, C*(L+1), F] -> the T text positions [B, T, F] (drops landmarks and right padding)."""
  B, N, F = y_BxNxF.shape
  S = text_per_chunk + 1
  return y_BxNxF.reshape(B, N // S, S, F)[:, :, :text_per_chunk].reshape(B, -1, F)[:, :T]


def remat_block(cls, remat: str):
  """The block class under `DRTConfig.remat` ("none" | "block" | "full", see `DRT._block_cls`)."""
  if remat == "full":
    return nn.remat(cls)
  if remat != "block":
    return cls
  return nn.remat(cls, policy=jax.checkpoint_policies.save_only_these_names(*GCA_SAVED))


def _kw(c: BlockConfig) -> dict:
  return dict(dtype=c.dtype, param_dtype=c.param_dtype)


def _attention_residual(block: nn.Module, h, mode: str, positions=None, stream=None,
                        segment=None):
  """h + Attn(norm1(h)): the pre-norm self-attention sublayer shared by DecoderBlock and
  UpperBlock. Called inside `block`'s compact __call__, so its params are block/norm1 and
  block/attn (and its stream cache block/attn/...)."""
  c = block.config
  a = SelfAttention(c, mode, name="attn")(RMSNorm(c.norm_eps, name="norm1", **_kw(c))(h),
                                          positions, stream=stream, segment=segment)
  return h + a


def _mlp(c: BlockConfig, who: str) -> MLP:
  return MLP(c.need("mlp_dim", who), c.init_std, name="mlp", **_kw(c))


class DecoderBlock(nn.Module):
  """h = h + Attn(norm1(h)); h = h + MLP(norm2(h)). x [B,T,d] -> [B,T,d].

  config: BlockConfig (needs mlp_dim; window for mode "window", chunk_size for "landmark").
  mode: the `SelfAttention` mode: "window" (SWA, docs/method.md §2.1), "causal" (full-attention
  baseline), "landmark" (docs/method.md §6) or "bidirectional" (in-chunk, the encoder's).
  `stream` / `segment`: the streaming mode of `SelfAttention` (forwarded).
  """
  config: BlockConfig
  mode: str = "window"

  @nn.compact
  def __call__(self, h, positions=None, *, stream=None, segment=None):
    c = self.config
    h = _attention_residual(self, h, self.mode, positions, stream, segment)
    h = h + _mlp(c, "DecoderBlock")(RMSNorm(c.norm_eps, name="norm2", **_kw(c))(h))
    if h.ndim == 3:
      h = nn.with_logical_constraint(h, _ACT)
    return h


class ChunkEncoder(nn.Module):
  """Bidirectional encoder applied to each chunk independently (docs/method.md §2.2).

  x [B,C,S,d] (the lower layers' output) -> E [B,C,S,d] = FinalNorm(Layers(Norm(x))): `num_layers`
  DecoderBlocks of mode "bidirectional" (full attention inside the chunk, RoPE over positions
  0..S-1; kernel `config.swa_impl`, `ops.chunk_attention`: "auto" = cuDNN on GPU, else XLA).
  E[:, :, S-1] are the landmark keys.
  """
  config: BlockConfig
  num_layers: int = 1

  @nn.compact
  def __call__(self, x_BxCxSxd):
    c = self.config
    e = RMSNorm(c.norm_eps, name="input_norm", **_kw(c))(x_BxCxSxd)
    for i in range(self.num_layers):
      e = DecoderBlock(c, "bidirectional", name=f"layer_{i}")(e)
    return RMSNorm(c.norm_eps, name="final_norm", **_kw(c))(e)


class UpperBlock(nn.Module):
  """DRT upper layer (docs/method.md §2.4). x [B,T,d] with T = C*S; retrieval already shifted.

    h1 = h + SWA(norm1(h)); g = GCA(h1)
    official: out = h1 + MLP(norm2(h1 + g))       standard: h2 = h1 + g; out = h2 + MLP(norm2(h2))

  config: BlockConfig (needs mlp_dim, window, chunk_size = S; the form is config.gca_residual,
  the kernels config.swa_impl / config.gca_impl). k_mem, v_mem [B,M,S,H,Dh], indices / weights
  [B,C,K]: as `GroupedCrossAttention`.

  Streaming (`stream=`): h [B, A, d] holds the rows of one segment window (the first
  `segment.n_valid` real); GCA runs on chunk slots: `slots` = (slot_rows int32 [(C+1)*S], the
  window row of each slot row; window_rows int32 [A], the slot row of each window row), and
  indices/weights [B, C+1, K] serve the C+1 slots.
  """
  config: BlockConfig

  @nn.compact
  def __call__(self, h, k_mem, v_mem, indices, weights, *, stream=None, segment=None,
               slots=None):
    c = self.config
    B, T, d = h.shape
    S = c.need("chunk_size", "UpperBlock")
    c.need("window", "UpperBlock")
    h1 = _attention_residual(self, h, "window", None, stream, segment)
    gca = GroupedCrossAttention(c, True, name="gca")
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
    norm2 = RMSNorm(c.norm_eps, name="norm2", **_kw(c))
    mlp = _mlp(c, "UpperBlock")
    if c.gca_residual == "official":
      out = h1 + mlp(norm2(h1 + g))
    elif c.gca_residual == "standard":
      h2 = h1 + g
      out = h2 + mlp(norm2(h2))
    else:
      raise ValueError(f"UpperBlock: unknown residual form {c.gca_residual!r}")
    return nn.with_logical_constraint(out, _ACT)
