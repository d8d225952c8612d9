"""Grouped Cross Attention operator (docs/method.md §3): XLA reference and the `impl` dispatch.

  o[b,c,s,h] = sum_i w[b,c,i] * softmax_t(q[b,c,s,h] . k[b,j,t,h'] / sqrt(D)) v[b,j,t,h']
  with j = indices[b,c,i] and h' = h // (H / Hkv).

Kernels register themselves with `register_gca_impl(name, fn, platforms)`; `impl="auto"` picks
the first registered kernel for the backend that accepts the inputs, else the XLA reference.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from gca_jax.ops.errors import UnsupportedGCAInput
from gca_jax.sharding import per_device_call

__all__ = ["UnsupportedGCAInput", "available_gca_impls", "gca_reference",
           "grouped_cross_attention", "register_gca_impl", "registered_gca_impls",
           "resolve_gca_impl"]


def _check_shapes(q, k, v, indices, weights) -> tuple[int, int]:
  if q.ndim != 5 or k.ndim != 5 or v.ndim != 5:
    raise ValueError(f"grouped_cross_attention: q, k, v must be rank 5 [B,C,S,H,D] / "
                     f"[B,M,S,Hkv,D]; got q{q.shape} k{k.shape} v{v.shape}")
  B, C, S, H, D = q.shape
  if k.shape != v.shape:
    raise ValueError(f"grouped_cross_attention: k{k.shape} and v{v.shape} differ")
  Bk, M, Sk, Hkv, Dk = k.shape
  if Bk != B or Dk != D:
    raise ValueError(f"grouped_cross_attention: k{k.shape} does not match q{q.shape} in batch "
                     "or head dim")
  if H % Hkv:
    raise ValueError(f"grouped_cross_attention: num query heads {H} not divisible by kv heads "
                     f"{Hkv}")
  if indices.ndim != 3 or indices.shape[:2] != (B, C):
    raise ValueError(f"grouped_cross_attention: indices{indices.shape} must be [B={B}, C={C}, K]")
  if weights.shape != indices.shape:
    raise ValueError(f"grouped_cross_attention: weights{weights.shape} must equal "
                     f"indices{indices.shape}")
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f"grouped_cross_attention: indices must be integer, got {indices.dtype}")
  return H // Hkv, Sk


def gca_reference(q_BxCxSxHxD, k_BxMxTxGxD, v_BxMxTxGxD, idx_BxCxK, w_BxCxK):
  """Plain-jnp GCA: gathers the `[B,C,K,T,Hkv,D]` copy, one softmax per slot.

  Accumulates (scores, softmax, sums) in the promoted input dtype, at least float32: bf16/f16/f32
  inputs accumulate in f32, float64 inputs (jax_enable_x64) in f64. Out-of-range indices are
  clipped into [0, M). Output dtype = q's dtype.
  """
  B, C, S, H, D = q_BxCxSxHxD.shape
  M, T, G = k_BxMxTxGxD.shape[1], k_BxMxTxGxD.shape[2], k_BxMxTxGxD.shape[3]
  R = H // G
  acc = jnp.promote_types(jnp.result_type(q_BxCxSxHxD, k_BxMxTxGxD, v_BxMxTxGxD, w_BxCxK),
                          jnp.float32)
  idx = jnp.clip(idx_BxCxK.astype(jnp.int32), 0, M - 1)
  gather = jax.vmap(lambda mem, ix: jnp.take(mem, ix, axis=0))  # over batch
  k_BxCxKxTxGxD = gather(k_BxMxTxGxD, idx)
  v_BxCxKxTxGxD = gather(v_BxMxTxGxD, idx)
  q = q_BxCxSxHxD.reshape(B, C, S, G, R, D)
  s = jnp.einsum("bcsgrd,bcktgd->bcksgrt", q, k_BxCxKxTxGxD,
                 preferred_element_type=acc) / jnp.sqrt(jnp.asarray(D, acc))
  p = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bcksgrt,bcktgd->bcksgrd", p.astype(v_BxMxTxGxD.dtype), v_BxCxKxTxGxD,
                 preferred_element_type=acc)
  o = jnp.einsum("bcksgrd,bck->bcsgrd", o, w_BxCxK.astype(acc))
  return o.reshape(B, C, S, H, D).astype(q_BxCxSxHxD.dtype)


@dataclasses.dataclass(frozen=True)
class _Impl:
  fn: Callable
  platforms: tuple[str, ...]
  supports: Callable[..., str | None]  # returns None if supported, else the reason


_IMPLS: dict[str, _Impl] = {}


def register_gca_impl(name: str, fn: Callable, platforms: tuple[str, ...],
                      supports: Callable[..., str | None] = lambda *a: None) -> None:
  """Registers a kernel `fn(q, k, v, indices, weights) -> o` under `name` for the backends in
  `platforms` ("gpu", "tpu", ...); `supports(q, k, v, indices, weights)` returns None or the reason
  it cannot run them. Registering a name again replaces it."""
  if name in ("auto", "xla"):
    raise ValueError(f"register_gca_impl: name {name!r} is reserved")
  _IMPLS[name] = _Impl(fn, tuple(platforms), supports)


def registered_gca_impls() -> tuple[str, ...]:
  """Names of the registered kernels, in registration order ("auto" tries them in this order)."""
  return tuple(_IMPLS)


def available_gca_impls() -> tuple[str, ...]:
  """Every valid `impl=`: "auto", "xla" and the registered kernels (`import gca_jax` registers
  "pallas_triton" and "pallas_tpu" from `gca_jax.kernels`)."""
  return ("auto", "xla") + tuple(_IMPLS)


def resolve_gca_impl(impl: str, q, k, v, indices, weights) -> str:
  """Maps `impl` to a concrete implementation name, or raises a clear error."""
  if impl == "xla":
    return impl
  backend = jax.default_backend()
  if impl == "auto":
    for name, entry in _IMPLS.items():
      if backend in entry.platforms and entry.supports(q, k, v, indices, weights) is None:
        return name
    return "xla"
  if impl not in _IMPLS:
    raise ValueError(f"grouped_cross_attention: unknown impl {impl!r}; available: "
                     f"{available_gca_impls()}")
  entry = _IMPLS[impl]
  reason = entry.supports(q, k, v, indices, weights)
  if reason is not None:
    raise UnsupportedGCAInput(f"grouped_cross_attention impl {impl!r}: {reason}")
  return impl


def grouped_cross_attention(q, k, v, indices, weights, *, impl: str = "auto"):
  """GCA (docs/method.md §3). q [B,C,S,H,D], k/v [B,M,S,Hkv,D], indices int [B,C,K], weights [B,C,K].

  Returns [B,C,S,H,D] in q's dtype. Differentiable in q, k, v and weights.
  impl: "auto" (kernel on GPU/TPU when registered and applicable, else "xla"), "xla", or a
  registered kernel name.
  """
  _check_shapes(q, k, v, indices, weights)
  name = resolve_gca_impl(impl, q, k, v, indices, weights)
  if name == "xla":
    return gca_reference(q, k, v, indices, weights)
  chunked = ("batch", None, None, "heads", None)
  slots = ("batch", None, None)
  return per_device_call(_IMPLS[name].fn, (q, k, v, indices, weights),
                         (chunked, chunked, chunked, slots, slots), chunked)
