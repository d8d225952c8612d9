"""Shared building blocks: RMSNorm, projections with logical axes, SwiGLU MLP, RoPE (docs/method.md §1-2)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def dtype_of(name: str | Dtype) -> Dtype:
  return jnp.dtype(name) if isinstance(name, str) else name


def normal_init(std: float, names: Sequence[str | None]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), tuple(names))


class RMSNorm(nn.Module):
  """RMSNorm over the last axis, computed in float32; scale param is logical ("norm",)."""
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Dense(nn.Module):
  """y = x @ W (no bias), W initialised normal(0, std) with logical axis names `axes`."""
  features: int
  axes: tuple[str, str] = ("embed", "heads")
  std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", normal_init(self.std, self.axes), (x.shape[-1], self.features),
                   self.param_dtype)
    return jnp.einsum("...d,df->...f", x.astype(self.dtype), w.astype(self.dtype))


class MLP(nn.Module):
  """SwiGLU: (silu(x Wg) * (x Wu)) Wo."""
  mlp_dim: int
  std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(std=self.std, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = Dense(self.mlp_dim, ("embed", "mlp"), name="wi_gate", **kw)(x)
    up = Dense(self.mlp_dim, ("embed", "mlp"), name="wi_up", **kw)(x)
    h = nn.silu(gate) * up
    h = nn.with_logical_constraint(h, ("batch",) + (None,) * (h.ndim - 2) + ("act_mlp",))
    return Dense(x.shape[-1], ("mlp", "embed"), name="wo", **kw)(h)


def rope_tables(positions, head_dim: int, theta: float = 10000.0):
  """cos, sin tables [T, head_dim/2] (float32) for integer `positions` [T].

  Static positions (numpy / python ints) are computed in float64 on the host, so phases stay exact
  at millions of positions (docs/method.md §7); traced positions fall back to float32 and should be rebased
  by the caller to stay small.
  """
  half = head_dim // 2
  if isinstance(positions, (np.ndarray, range, list)):
    pos = np.asarray(positions, dtype=np.float64)
    inv = 1.0 / (theta ** (np.arange(half, dtype=np.float64) * 2.0 / head_dim))
    ang = pos[:, None] * inv[None, :]
    return jnp.asarray(np.cos(ang), jnp.float32), jnp.asarray(np.sin(ang), jnp.float32)
  pos = jnp.asarray(positions, jnp.float32)
  inv = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim))
  ang = pos[:, None] * inv[None, :]
  return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x_BxTxHxD, cos_TxK, sin_TxK):
  """Rotates pairs (x[..., :D/2], x[..., D/2:]) by the position angles; f32 math, x's dtype out."""
  d2 = x_BxTxHxD.shape[-1] // 2
  x = x_BxTxHxD.astype(jnp.float32)
  x1, x2 = x[..., :d2], x[..., d2:]
  c = cos_TxK[:, None, :]
  s = sin_TxK[:, None, :]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_BxTxHxD.dtype)
