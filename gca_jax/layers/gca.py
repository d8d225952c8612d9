"""Grouped Cross Attention layer (docs/method.md §2.4-2.5): pre-RMSNorm, q_proj, GCA operator, o_proj."""

from __future__ import annotations

import flax.linen as nn
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from gca_jax.layers.common import Dense, Dtype, RMSNorm
from gca_jax.ops.gca import grouped_cross_attention


class GroupedCrossAttention(nn.Module):
  """x [B,C,S,d] attends to retrieved memory chunks; returns [B,C,S,d].

  k_mem, v_mem: [B,M,S,Hkv,Dh] chunk memory (projected once, shared across layers); indices /
  weights: [B,C,K] the (already shifted) retrieval serving each query chunk. No positional
  encoding and no mask inside a chunk: one softmax per retrieved chunk, fused by `weights`.
  """
  num_heads: int
  head_dim: int
  impl: str = "auto"
  use_norm: bool = True
  eps: float = 1e-5
  std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxCxSxd, k_mem, v_mem, indices_BxCxK, weights_BxCxK):
    B, C, S, d = x_BxCxSxd.shape
    kw = dict(std=self.std, dtype=self.dtype, param_dtype=self.param_dtype)
    h = RMSNorm(self.eps, self.dtype, self.param_dtype, name="norm")(x_BxCxSxd) if self.use_norm \
        else x_BxCxSxd
    q = Dense(self.num_heads * self.head_dim, ("embed", "heads"), name="q_proj", **kw)(h)
    q = checkpoint_name(q.reshape(B, C, S, self.num_heads, self.head_dim), "gca_q")
    o = grouped_cross_attention(q, k_mem.astype(self.dtype), v_mem.astype(self.dtype), indices_BxCxK,
                                weights_BxCxK, impl=self.impl)
    o = nn.with_logical_constraint(o.reshape(B, C, S, self.num_heads * self.head_dim),
                                   ("batch", None, None, "act_heads"))
    return Dense(d, ("heads", "embed"), name="o_proj", **kw)(o)
