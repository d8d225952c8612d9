"""Grouped Cross Attention layer (docs/method.md §2.4-2.5): pre-RMSNorm, q_proj, GCA operator, o_proj."""

from __future__ import annotations

import flax.linen as nn
from jax.ad_checkpoint import checkpoint_name

from gca_jax.config import BlockConfig
from gca_jax.layers.common import Dense, RMSNorm
from gca_jax.ops.gca import grouped_cross_attention


class GroupedCrossAttention(nn.Module):
  """x [B,C,S,d] attends to retrieved memory chunks; returns [B,C,S,d].

  config: BlockConfig (num_heads, head_dim, gca_impl, norm_eps, init_std, dtypes); use_norm:
  pre-RMSNorm of x (param "norm"). k_mem, v_mem: [B,M,S,Hkv,Dh] chunk memory (projected once,
  shared across layers); indices / weights: [B,C,K] the (already shifted) retrieval serving each
  query chunk. No positional encoding and no mask inside a chunk: one softmax per retrieved
  chunk, fused by `weights`.
  """
  config: BlockConfig
  use_norm: bool = True

  @nn.compact
  def __call__(self, x_BxCxSxd, k_mem, v_mem, indices_BxCxK, weights_BxCxK):
    B, C, S, d = x_BxCxSxd.shape
    c = self.config
    H, Dh = c.num_heads, c.head_dim
    kw = dict(std=c.init_std, dtype=c.dtype, param_dtype=c.param_dtype)
    h = RMSNorm(c.norm_eps, c.dtype, c.param_dtype, name="norm")(x_BxCxSxd) if self.use_norm \
        else x_BxCxSxd
    q = Dense(H * Dh, ("embed", "heads"), name="q_proj", **kw)(h)
    q = checkpoint_name(q.reshape(B, C, S, H, Dh), "gca_q")
    o = grouped_cross_attention(q, k_mem.astype(c.dtype), v_mem.astype(c.dtype), indices_BxCxK,
                                weights_BxCxK, impl=c.gca_impl)
    o = nn.with_logical_constraint(o.reshape(B, C, S, H * Dh), ("batch", None, None, "act_heads"))
    return Dense(d, ("heads", "embed"), name="o_proj", **kw)(o)
