"""Fused tied LM head + cross-entropy (docs/method.md §2.6): the loss of `h · embᵀ` without the
[N, V] float32 logits.

`lm_head_loss(h, emb, targets, weights)` -> `LMLoss(nll_sum, nll, argmax)`:
  h [..., T, D] (e.g. [B, T, D] or [N, D]), emb [V, D], targets int / weights (None = 1) of h's
  token shape [..., T].
  nll_sum  float32 scalar, Σ weights · nll: the only differentiable output (w.r.t. h, emb, weights).
  nll      float32 [...], per-token logsumexp(logits) - logits[target] (no gradient).
  argmax   int32 [...], the first index of the largest logit (no gradient; accuracy = argmax == t).

impl "xla" (= "auto"): a `lax.scan` over blocks of `block_tokens` tokens (blocked along the last
token axis T, leading axes kept whole so a batch-sharded h stays sharded); each block's logits are
[block, V] float32 at most, or [block, block_vocab] with `block_vocab` (an online logsumexp over
vocab blocks, logits computed twice). The gradient is computed in the same pass as the loss: the
custom VJP's forward saves dh = Σ_v ((softmax - onehot) · w)·emb and demb = Σ_n (...)ᵀ·h and its
backward only scales them by the scalar cotangent, so no logit is recomputed. Matmul inputs are in
h's dtype with float32 accumulation (emb is cast to h's dtype, the logit gradient is rounded to it
before its two matmuls, as `gca_jax.models.drt.tied_head`). A token with weight 0 contributes
exactly 0 to nll_sum, dh and demb, even when its h row is not finite.
Under a mesh (`jax.set_mesh`) of data / fsdp axes only, the loss runs per device on its rows of
h (`shard_map`, emb whole on every device, `block_tokens` per device), so demb is summed across
devices once per step; other meshes (tensor > 1) leave the partitioning to XLA.
impl "reference": `lm_head_loss_reference`, materialised logits and plain autodiff.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gca_jax.sharding import BATCH_AXES

LM_LOSS_IMPLS = ("auto", "xla", "reference")


class LMLoss(NamedTuple):
  """nll_sum f32 scalar (differentiable), nll f32 [..., T], argmax int32 [..., T]."""
  nll_sum: jax.Array
  nll: jax.Array
  argmax: jax.Array


@dataclasses.dataclass(frozen=True)
class LMLossBlocks:
  """Block sizes of the blockwise loss. block_tokens: tokens per block (all leading axes times a
  slice of the last token axis; at least one slice of the leading axes); block_vocab: vocab
  columns per block (None = the whole vocab in one block). Blocks are balanced (sizes are
  ceil(n / ceil(n / max)))."""
  block_tokens: int = 8192
  block_vocab: int | None = None

  def __post_init__(self):
    for name in ("block_tokens", "block_vocab"):
      v = getattr(self, name)
      if v is None and name == "block_vocab":
        continue
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"LMLossBlocks.{name}={v!r}: must be a positive integer")


def _balanced(n: int, most: int) -> tuple[int, int]:
  """(number of blocks, block size) covering n with blocks of at most `most`."""
  nb = -(-n // max(1, min(most, n)))
  return nb, -(-n // nb)


def _check(h, emb, targets, weights):
  if h.ndim < 2 or emb.ndim != 2 or h.shape[-1] != emb.shape[1]:
    raise ValueError(f"lm_head_loss: h [..., T, D] and emb [V, D] expected; got h{h.shape} "
                     f"emb{emb.shape}")
  if targets.shape != h.shape[:-1]:
    raise ValueError(f"lm_head_loss: targets{targets.shape} must be h's token shape "
                     f"{h.shape[:-1]}")
  if weights is not None and weights.shape != h.shape[:-1]:
    raise ValueError(f"lm_head_loss: weights{weights.shape} must be h's token shape "
                     f"{h.shape[:-1]}")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"lm_head_loss: targets must be integers, got {targets.dtype}")


def lm_head_loss_reference(h, emb_VxD, targets, weights=None) -> LMLoss:
  """`LMLoss` from the materialised float32 logits [..., V] (plain jnp; autodiff backward)."""
  _check(h, emb_VxD, targets, weights)
  w = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
  logits = jnp.einsum("...d,vd->...v", h, emb_VxD.astype(h.dtype),
                      preferred_element_type=jnp.float32)
  t = targets.astype(jnp.int32)
  nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, t[..., None], -1)[..., 0]
  am = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return LMLoss(jnp.sum(nll * w), jax.lax.stop_gradient(nll), am)


# -- blockwise: per token block -----------------------------------------------------------------

def _logits(h_blk, emb_blk):
  return jnp.einsum("...d,vd->...v", h_blk, emb_blk, preferred_element_type=jnp.float32)


def _stats_full(h_blk, emb_c, t_blk):
  """(logits f32 [..., V], lse, target logit, argmax) of one token block, the whole vocab."""
  lg = _logits(h_blk, emb_c)
  m = jnp.max(lg, axis=-1)
  lse = m + jnp.log(jnp.sum(jnp.exp(lg - m[..., None]), axis=-1))
  tgt = jnp.take_along_axis(lg, t_blk[..., None], -1)[..., 0]
  return lg, lse, tgt, jnp.argmax(lg, axis=-1).astype(jnp.int32)


def _stats_vblocked(h_blk, emb_NVxBVxD, t_blk, V: int):
  """(lse, target logit, argmax) of one token block by an online logsumexp over vocab blocks."""
  nv, bv, _ = emb_NVxBVxD.shape
  shape = t_blk.shape
  neg = jnp.full(shape, -jnp.inf, jnp.float32)
  zero = jnp.zeros(shape, jnp.float32)

  def body(c, xs):
    m, s, tgt, best, arg = c
    j, e = xs
    col = j * bv + jnp.arange(bv)
    lg = jnp.where(col < V, _logits(h_blk, e), -jnp.inf)
    bm = jnp.max(lg, axis=-1)
    nm = jnp.maximum(m, bm)
    s = s * jnp.exp(m - nm) + jnp.sum(jnp.exp(lg - nm[..., None]), axis=-1)
    tgt = tgt + jnp.sum(jnp.where(col == t_blk[..., None], lg, 0.0), axis=-1)
    ba = j * bv + jnp.argmax(lg, axis=-1).astype(jnp.int32)
    better = bm > best
    return (nm, s, tgt, jnp.where(better, bm, best), jnp.where(better, ba, arg)), None

  init = (neg, zero, zero, neg, jnp.zeros(shape, jnp.int32))
  (m, s, tgt, _, arg), _ = jax.lax.scan(body, init, (jnp.arange(nv), emb_NVxBVxD))
  return m + jnp.log(s), tgt, arg


def _coef(lg, lse, t_blk, w_blk, col0: int | jax.Array = 0):
  """(softmax - onehot) · w, float32, 0 for tokens of weight 0."""
  col = col0 + jnp.arange(lg.shape[-1])
  g = jnp.exp(lg - lse[..., None]) - (col == t_blk[..., None]).astype(jnp.float32)
  return jnp.where((w_blk != 0)[..., None], g * w_blk[..., None], 0.0)


def _grads_vblocked(h_blk, hz_blk, emb_NVxBVxD, t_blk, w_blk, lse, V: int, dt):
  """(dh f32 [..., D], demb f32 [NV, BV, D]) of one token block, a second pass over vocab blocks."""
  nv, bv, _ = emb_NVxBVxD.shape

  def body(dh, xs):
    j, e = xs
    col = j * bv + jnp.arange(bv)
    lg = jnp.where(col < V, _logits(h_blk, e), -jnp.inf)
    g = _coef(lg, lse, t_blk, w_blk, j * bv).astype(dt)
    dh = dh + jnp.einsum("...v,vd->...d", g, e, preferred_element_type=jnp.float32)
    de = jnp.einsum("...v,...d->vd", g, hz_blk, preferred_element_type=jnp.float32)
    return dh, de

  dh0 = jnp.zeros(h_blk.shape, jnp.float32)
  return jax.lax.scan(body, dh0, (jnp.arange(nv), emb_NVxBVxD))


# -- blockwise: over token blocks ---------------------------------------------------------------

def _blockwise(h, emb, targets, weights, blocks: LMLossBlocks, with_grads: bool):
  """Shared forward; returns (nll_sum, nll, argmax, dh, demb) (dh, demb None without grads)."""
  dt = h.dtype
  tok_shape = h.shape[:-1]
  D, V = h.shape[-1], emb.shape[0]
  h3 = h.reshape((-1,) + h.shape[-2:])  # [L, T, D]: blocks along T, the leading axes kept whole
  L, T = h3.shape[:2]
  t2 = targets.astype(jnp.int32).reshape(L, T)
  w2 = weights.astype(jnp.float32).reshape(L, T)
  nb, tb = _balanced(T, max(1, blocks.block_tokens // L))
  pad = nb * tb - T
  if pad:
    h3 = jnp.pad(h3, ((0, 0), (0, pad), (0, 0)))
    t2, w2 = jnp.pad(t2, ((0, 0), (0, pad))), jnp.pad(w2, ((0, 0), (0, pad)))
  hb = h3.reshape(L, nb, tb, D).swapaxes(0, 1)
  tbk, wbk = t2.reshape(L, nb, tb).swapaxes(0, 1), w2.reshape(L, nb, tb).swapaxes(0, 1)
  emb_c = emb.astype(dt)
  if blocks.block_vocab is not None:
    nv, bv = _balanced(V, blocks.block_vocab)
    emb_v = jnp.pad(emb_c, ((0, nv * bv - V), (0, 0))).reshape(nv, bv, D)

  def body(demb, xs):
    h_blk, t_blk, w_blk = xs
    if blocks.block_vocab is None:
      lg, lse, tgt, am = _stats_full(h_blk, emb_c, t_blk)
    else:
      lse, tgt, am = _stats_vblocked(h_blk, emb_v, t_blk, V)
    nll = lse - tgt
    part = jnp.sum(jnp.where(w_blk != 0, nll * w_blk, 0.0))
    if not with_grads:
      return demb, (part, nll, am, None)
    hz = jnp.where((w_blk != 0)[..., None], h_blk, jnp.zeros((), dt))
    if blocks.block_vocab is None:
      g = _coef(lg, lse, t_blk, w_blk).astype(dt)
      dh = jnp.einsum("...v,vd->...d", g, emb_c, preferred_element_type=jnp.float32)
      demb = demb + jnp.einsum("...v,...d->vd", g, hz, preferred_element_type=jnp.float32)
    else:
      dh, de = _grads_vblocked(h_blk, hz, emb_v, t_blk, w_blk, lse, V, dt)
      demb = demb + de.reshape(-1, D)[:V]
    return demb, (part, nll, am, dh.astype(dt))

  demb0 = jnp.zeros((V, D), jnp.float32) if with_grads else None
  demb, (parts, nll, am, dh) = jax.lax.scan(body, demb0, (hb, tbk, wbk))

  def back(x):  # [nb, L, tb, ...] -> token shape
    x = x.swapaxes(0, 1).reshape((L, nb * tb) + x.shape[3:])[:, :T]
    return x.reshape(tok_shape + x.shape[2:])

  out = (jnp.sum(parts), back(nll), back(am))
  if not with_grads:
    return out + (None, None)
  return out + (back(dh), demb)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(h, emb, targets, weights, blocks: LMLossBlocks):
  return _blockwise(h, emb, targets, weights, blocks, with_grads=False)[:3]


def _fused_fwd(h, emb, targets, weights, blocks):
  nll_sum, nll, am, dh, demb = _blockwise(h, emb, targets, weights, blocks, with_grads=True)
  return (nll_sum, nll, am), (dh, demb.astype(emb.dtype), nll, weights)


def _fused_bwd(blocks, res, cts):
  dh, demb, nll, weights = res
  g = cts[0].astype(jnp.float32)
  dw = nll * g
  scale = lambda x: (x.astype(jnp.float32) * g).astype(x.dtype)
  return scale(dh), scale(demb), None, dw.astype(weights.dtype)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _batch_axes(h) -> tuple[str, ...] | None:
  """The mesh axes h's dim 0 is split over when the current mesh is pure data / fsdp parallel
  (every axis > 1 a batch axis, dim 0 divisible); else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or h.ndim < 3:
    return None
  big = [a for a, n in mesh.shape.items() if n > 1]
  axes = tuple(a for a in BATCH_AXES if a in big)
  n = 1
  for a in axes:
    n *= mesh.shape[a]
  return axes if axes and len(axes) == len(big) and h.shape[0] % n == 0 else None


def _per_device(h, emb, targets, w, blocks: LMLossBlocks, axes: tuple[str, ...]):
  """`_fused` on each device's rows (shard_map over `axes`; emb whole on every device): each
  device accumulates its demb over all its token blocks, one cross-device sum (shard_map's
  transpose) instead of one per block."""
  def local(h, emb, t, w):
    s, nll, am = _fused(h, emb, t, w, blocks)
    return s[None], nll, am

  rows = P(axes)
  s, nll, am = jax.shard_map(local, in_specs=(rows, P(), rows, rows),
                             out_specs=(rows, rows, rows), check_vma=False)(h, emb, targets, w)
  return jnp.sum(s), nll, am


def lm_head_loss(h, emb_VxD, targets, weights=None, *, block_tokens: int = 8192,
                 block_vocab: int | None = None, impl: str = "auto") -> LMLoss:
  """`LMLoss(nll_sum = Σ w·nll, nll, argmax)` of the tied head `h · embᵀ`: h [..., T, D],
  emb [V, D], targets / weights [..., T] (module docstring); impl one of `LM_LOSS_IMPLS`."""
  if impl not in LM_LOSS_IMPLS:
    raise ValueError(f"lm_head_loss: impl={impl!r} must be one of {LM_LOSS_IMPLS}")
  _check(h, emb_VxD, targets, weights)
  if impl == "reference":
    return lm_head_loss_reference(h, emb_VxD, targets, weights)
  blocks = LMLossBlocks(block_tokens, block_vocab)
  w = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
  axes = _batch_axes(h)
  if axes:
    nll_sum, nll, am = _per_device(h, emb_VxD, targets, w, blocks, axes)
  else:
    nll_sum, nll, am = _fused(h, emb_VxD, targets, w, blocks)
  return LMLoss(nll_sum, jax.lax.stop_gradient(nll), am)
