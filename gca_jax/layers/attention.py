"""Self-attention layers: sliding-window (SPEC §2.1), full causal, in-chunk bidirectional, and
Landmark Attention's grouped softmax (SPEC §6)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from gca_jax.layers.common import Dense, Dtype, apply_rope, rope_tables
from gca_jax.ops import landmark as landmark_ops
from gca_jax.ops import swa as swa_ops


class SelfAttention(nn.Module):
  """Multi-head self-attention with RoPE: q/k/v/o projections (no bias) around an attention op.

  x [B,T,d] -> [B,T,d]. `mode`: "window" (causal, last `window` positions, impl switch),
  "causal" (full causal), "bidirectional" (no mask; used inside a chunk), "landmark" (Landmark
  Attention grouped softmax, `gca_jax.ops.landmark`; here `window` is the block size in positions,
  text tokens + 1 landmark, and the input must already hold the landmarks; plain jnp, `impl` unused).
  `positions`: RoPE positions (length T); default 0..T-1.
  """
  num_heads: int
  head_dim: int
  mode: str = "window"
  window: int | None = None
  impl: str = "auto"
  rope_theta: float = 10000.0
  std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxd, positions=None):
    *lead, T, d = x_BxTxd.shape
    hd = self.num_heads * self.head_dim
    kw = dict(std=self.std, dtype=self.dtype, param_dtype=self.param_dtype)
    split = lambda y: y.reshape(*lead, T, self.num_heads, self.head_dim)
    q = split(Dense(hd, ("embed", "heads"), name="q_proj", **kw)(x_BxTxd))
    k = split(Dense(hd, ("embed", "heads"), name="k_proj", **kw)(x_BxTxd))
    v = split(Dense(hd, ("embed", "heads"), name="v_proj", **kw)(x_BxTxd))
    cos, sin = rope_tables(np.arange(T) if positions is None else positions, self.head_dim,
                           self.rope_theta)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if self.mode == "window":
      if self.window is None:
        raise ValueError("SelfAttention(mode='window') needs a window size")
      o = swa_ops.sliding_window_attention(q, k, v, self.window, impl=self.impl)
    elif self.mode == "causal":
      o = swa_ops.causal_attention(q, k, v, impl=self.impl)
    elif self.mode == "landmark":
      if self.window is None:
        raise ValueError("SelfAttention(mode='landmark') needs the block size in `window`")
      flat = lambda y: y.reshape(-1, T, self.num_heads, self.head_dim)
      o = landmark_ops.landmark_attention(flat(q), flat(k), flat(v), self.window).reshape(q.shape)
    elif self.mode == "bidirectional":
      flat = lambda y: y.reshape(-1, T, self.num_heads, self.head_dim)
      o = swa_ops.chunk_attention(flat(q), flat(k), flat(v), impl=self.impl).reshape(q.shape)
    else:
      raise ValueError(f"SelfAttention: unknown mode {self.mode!r}")
    o = nn.with_logical_constraint(o.reshape(*lead, T, hd),
                                   ("batch",) + (None,) * (len(lead) - 1) + ("act_length", "act_heads"))
    return Dense(d, ("heads", "embed"), name="o_proj", **kw)(o)


class SlidingWindowAttention(SelfAttention):
  """Causal sliding-window self-attention with RoPE (SPEC §2.1). x [B,T,d] -> [B,T,d]."""
  mode: str = "window"
