"""Self-attention layers: sliding-window (docs/method.md §2.1), full causal, in-chunk bidirectional, and
Landmark Attention's grouped softmax (docs/method.md §6), each with a streaming mode (`stream=`)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.config import BlockConfig
from gca_jax.layers.common import Dense, apply_rope, rope_tables
from gca_jax.layers.stream import Segment, StreamSpec
from gca_jax.ops import landmark as landmark_ops
from gca_jax.ops import swa as swa_ops
from gca_jax.sharding import context_shard, from_previous_shard

_NEG = -1e30


class SelfAttention(nn.Module):
  """Multi-head self-attention with RoPE: q/k/v/o projections (no bias) around an attention op.

  x [B,T,d] -> [B,T,d]; heads, RoPE, init, dtypes from `config` (BlockConfig). `mode`: "window"
  (causal, the last `config.window` positions, kernel `config.swa_impl`), "causal" (full causal),
  "bidirectional" (no mask; used inside a chunk), "landmark" (Landmark Attention grouped softmax,
  `gca_jax.ops.landmark`, docs/method.md §6: blocks of `config.chunk_size` positions, text tokens
  + 1 landmark; the input must already hold the landmarks; plain jnp, swa_impl unused).
  `positions`: RoPE positions (length T); default 0..T-1.

  Streaming (`stream=StreamSpec`, apply with mutable=["cache"]): x holds the T rows of this call
  that follow the rows of earlier calls; the first `segment.n_valid` are real (default: all).
    window:   cache "k"/"v" [B, W-1, H, Dh] PRE-RoPE rows of the last W-1 positions, "n" their
              valid count; RoPE with positions relative to the cache start (float64 tables).
    causal:   cache "k" (rotated by absolute position) / "v" [B, R, H, Dh] of every position,
              R >= spec.capacity_tokens, "n" the count; exact phases by angle addition of two
              static float64 tables.
    landmark: `gca_jax.layers.landmark_cache.landmark_cached_attention` (its own cache); top-k
              StreamSpec.landmark_top_k, else `config.top_k`.
  """
  config: BlockConfig
  mode: str = "window"

  def _kw(self):
    c = self.config
    return dict(std=c.init_std, dtype=c.dtype, param_dtype=c.param_dtype)

  @nn.compact
  def __call__(self, x_BxTxd, positions=None, *, stream: StreamSpec | None = None,
               segment: Segment | None = None):
    *lead, T, d = x_BxTxd.shape
    c = self.config
    H, Dh = c.num_heads, c.head_dim
    hd = H * Dh
    kw = self._kw()
    split = lambda y: y.reshape(*lead, T, H, Dh)
    q = split(Dense(hd, ("embed", "heads"), name="q_proj", **kw)(x_BxTxd))
    k = split(Dense(hd, ("embed", "heads"), name="k_proj", **kw)(x_BxTxd))
    v = split(Dense(hd, ("embed", "heads"), name="v_proj", **kw)(x_BxTxd))
    if stream is not None:
      if positions is not None:
        raise ValueError("SelfAttention(stream=...): `positions` must be None (the cache keeps "
                         "the positions)")
      o = self._stream(q, k, v, stream, segment)
      return Dense(d, ("heads", "embed"), name="o_proj", **kw)(o.reshape(*lead, T, hd))
    shard = context_shard() if self.mode == "window" and positions is None else None
    if shard is not None:
      o = window_attention_context(q, k, v, c.need("window", "SelfAttention(mode='window')"),
                                   c.rope_theta, *shard)
    else:
      o = self._attend(q, k, v, positions)
    axes = ("batch",) + (None,) * (len(lead) - 1) + ("act_length", "act_heads")
    o = nn.with_logical_constraint(o.reshape(*lead, T, hd), axes)
    return Dense(d, ("heads", "embed"), name="o_proj", **kw)(o)

  def _attend(self, q, k, v, positions):
    *lead, T, H, Dh = q.shape
    c = self.config
    cos, sin = rope_tables(np.arange(T) if positions is None else positions, Dh, c.rope_theta)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    flat = lambda y: y.reshape(-1, T, H, Dh)
    if self.mode == "window":
      W = c.need("window", "SelfAttention(mode='window')")
      o = swa_ops.sliding_window_attention(q, k, v, W, impl=c.swa_impl)
    elif self.mode == "causal":
      o = swa_ops.causal_attention(q, k, v, impl=c.swa_impl)
    elif self.mode == "landmark":
      S = c.need("chunk_size", "SelfAttention(mode='landmark') (the block size)")
      o = landmark_ops.landmark_attention(flat(q), flat(k), flat(v), S).reshape(q.shape)
    elif self.mode == "bidirectional":
      o = swa_ops.chunk_attention(flat(q), flat(k), flat(v), impl=c.swa_impl).reshape(q.shape)
    else:
      raise ValueError(f"SelfAttention: unknown mode {self.mode!r}")
    return o

  def _stream(self, q, k, v, spec: StreamSpec, segment: Segment | None):
    if q.ndim != 4:
      raise ValueError(f"SelfAttention(stream=...): x must be [B, T, d], got q{q.shape}")
    T = q.shape[1]
    n_valid = jnp.asarray(T, jnp.int32) if segment is None else segment.n_valid
    c = self.config
    if self.mode == "window":
      c.need("window", "SelfAttention(mode='window')")
      return self._window_cached(q, k, v, n_valid, spec.swa_block)
    if self.mode == "causal":
      return self._causal_cached(q, k, v, n_valid, spec)
    if self.mode == "landmark":
      S = c.need("chunk_size", "SelfAttention(mode='landmark', stream=...) (the block size)")
      if segment is None:
        raise ValueError("SelfAttention(mode='landmark', stream=...) needs `segment`")
      from gca_jax.layers.landmark_cache import landmark_cached_attention  # noqa: PLC0415
      top_k = spec.landmark_top_k if spec.landmark_top_k is not None else c.top_k
      if top_k is None:
        raise ValueError("SelfAttention(mode='landmark', stream=...): no top_k (set "
                         "BlockConfig.top_k or StreamSpec.landmark_top_k)")
      return landmark_cached_attention(self, q, k, v, segment=segment, block_size=S,
                                       spec=spec, top_k=top_k, rope_theta=c.rope_theta)
    raise ValueError(f"SelfAttention: mode {self.mode!r} has no streaming form")

  def _window_cached(self, q, k, v, n_valid, qblock: int):
    """Sliding-window attention of T new rows over [cache (W-1 rows, "n" valid), new rows].

    Rows past `n_valid` are right padding: never a key of a real query (causality), not cached.
    Queries/keys rotate with positions relative to the cache start (static float64 tables);
    the attention is `ops.swa.swa_with_prefix` (impl `config.swa_impl`)."""
    B, P, H, Dh = q.shape
    W = self.config.window
    Wc = W - 1
    kc = self.variable("cache", "k", jnp.zeros, (B, Wc, H, Dh), self.config.dtype)
    vc = self.variable("cache", "v", jnp.zeros, (B, Wc, H, Dh), self.config.dtype)
    nc = self.variable("cache", "n", jnp.zeros, (), jnp.int32)
    cache_n = nc.value
    k_all = jnp.concatenate([kc.value.astype(k.dtype), k], axis=1)
    v_all = jnp.concatenate([vc.value.astype(v.dtype), v], axis=1)
    N = Wc + P
    cos, sin = rope_tables(np.arange(N), Dh, self.config.rope_theta)  # static -> float64 host tables
    qr = apply_rope(q, cos[Wc:], sin[Wc:])
    kr = apply_rope(k_all, cos, sin)
    o = swa_ops.swa_with_prefix(qr, kr, v_all, Wc - cache_n, W, qblock=qblock,
                                impl=self.config.swa_impl)
    if not self.is_initializing():
      kc.value = jax.lax.dynamic_slice_in_dim(k_all, n_valid, Wc, axis=1).astype(kc.value.dtype)
      vc.value = jax.lax.dynamic_slice_in_dim(v_all, n_valid, Wc, axis=1).astype(vc.value.dtype)
      nc.value = jnp.minimum(cache_n + n_valid, Wc)
    return o

  def _causal_cached(self, q, k, v, n_valid, spec: StreamSpec):
    """Full causal attention of T new rows over every cached row (`_causal_blocked`). Keys are
    cached rotated by their absolute position; phases by angle addition (`rope_at`), exact at
    any position."""
    B, P, H, Dh = q.shape
    R = -(-max(spec.capacity_tokens, P) // 64) * 64
    kc = self.variable("cache", "k", jnp.zeros, (B, R, H, Dh), self.config.dtype)
    vc = self.variable("cache", "v", jnp.zeros, (B, R, H, Dh), self.config.dtype)
    nc = self.variable("cache", "n", jnp.zeros, (), jnp.int32)
    n = nc.value
    R = kc.value.shape[1]
    pos = n + jnp.arange(P, dtype=jnp.int32)
    cos, sin = rope_at(pos, Dh, self.config.rope_theta, R)
    qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k_all = jax.lax.dynamic_update_slice_in_dim(kc.value, kr.astype(kc.value.dtype), n, axis=1)
    v_all = jax.lax.dynamic_update_slice_in_dim(vc.value, v.astype(vc.value.dtype), n, axis=1)
    o = _causal_blocked(qr, k_all, v_all, pos, n + P)
    if not self.is_initializing():
      kc.value, vc.value, nc.value = k_all, v_all, n + n_valid
    return o


def window_attention_context(q_BxnxHxD, k_BxnxHxD, v_BxnxHxD, window: int, theta: float,
                             index, size: int):
  """SWA of one context shard's n rows (docs/method.md §2.1, §10), pre-RoPE q/k/v [B, n, H, D]:
  RoPE at the global positions index*n + (0..n-1) (`rope_at`), the previous shard's last W-1
  key/value rows as the prefix (ppermute; none on shard 0), `ops.swa.swa_with_prefix_xla`."""
  B, n, H, D = q_BxnxHxD.shape
  Wc = window - 1
  if n < Wc:
    raise ValueError(f"context parallelism: {n} rows per context shard < window - 1 = {Wc}; "
                     f"the halo must come from one shard (use fewer shards or longer samples)")
  pos = index * n + jnp.arange(n, dtype=jnp.int32)
  cos, sin = rope_at(pos, D, theta, n * size)
  q, k = apply_rope(q_BxnxHxD, cos, sin), apply_rope(k_BxnxHxD, cos, sin)
  k_all = jnp.concatenate([from_previous_shard(k, Wc), k], axis=1)
  v_all = jnp.concatenate([from_previous_shard(v_BxnxHxD, Wc), v_BxnxHxD], axis=1)
  n_empty = jnp.where(index == 0, Wc, 0).astype(jnp.int32)
  return swa_ops.swa_with_prefix_xla(q, k_all, v_all, n_empty, window, qblock=window)


def _causal_blocked(q_BxPxHxD, k_BxRxHxD, v_BxRxHxD, pos_P, n_keys, key_block: int = 1024):
  """Causal attention of P queries at positions `pos_P` over cached keys [B, R, H, D] (rows
  0..n_keys-1 filled): online softmax over key blocks, a while_loop visiting only the blocks
  below n_keys (work O(P * n_keys), not O(P * R))."""
  B, P, H, D = q_BxPxHxD.shape
  R = k_BxRxHxD.shape[1]
  kb = math.gcd(R, key_block)
  scale = 1.0 / math.sqrt(D)
  n_blocks = jnp.minimum((n_keys + kb - 1) // kb, R // kb)

  def body(carry):
    b, m, l, acc = carry
    kblk = jax.lax.dynamic_slice_in_dim(k_BxRxHxD, b * kb, kb, axis=1).astype(q_BxPxHxD.dtype)
    vblk = jax.lax.dynamic_slice_in_dim(v_BxRxHxD, b * kb, kb, axis=1).astype(q_BxPxHxD.dtype)
    s = jnp.einsum("bqhd,bkhd->bhqk", q_BxPxHxD, kblk, preferred_element_type=jnp.float32)
    j = b * kb + jnp.arange(kb, dtype=jnp.int32)
    s = jnp.where((j[None, :] <= pos_P[:, None])[None, None], s * scale, _NEG)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    p = jnp.exp(s - m_new[..., None])
    corr = jnp.exp(m - m_new)
    acc = acc * corr[..., None] + jnp.einsum("bhqk,bkhd->bhqd", p.astype(vblk.dtype), vblk,
                                             preferred_element_type=jnp.float32)
    return b + 1, m_new, l * corr + jnp.sum(p, axis=-1), acc

  init = (jnp.zeros((), jnp.int32), jnp.full((B, H, P), _NEG, jnp.float32),
          jnp.zeros((B, H, P), jnp.float32), jnp.zeros((B, H, P, D), jnp.float32))
  _, _, l, acc = jax.lax.while_loop(lambda c: c[0] < n_blocks, body, init)
  return (acc / l[..., None]).transpose(0, 2, 1, 3).astype(q_BxPxHxD.dtype)


def rope_at(pos_T, head_dim: int, theta: float, max_pos: int):
  """cos, sin [T, head_dim/2] f32 of traced integer positions `pos_T` in [0, max_pos), exact to
  float32 rounding at any position: angle addition pos = hi*b + lo of two static float64 tables
  (hi, lo), never float32 trig of a large angle (docs/method.md §7)."""
  b = 1 << max(0, math.ceil(math.log2(max(1.0, math.sqrt(max_pos)))))
  n_hi = -(-max_pos // b) + 1
  ch, sh = rope_tables(np.arange(n_hi) * b, head_dim, theta)
  cl, sl = rope_tables(np.arange(b), head_dim, theta)
  hi, lo = pos_T // b, pos_T % b
  c1, s1 = jnp.take(ch, hi, axis=0), jnp.take(sh, hi, axis=0)
  c2, s2 = jnp.take(cl, lo, axis=0), jnp.take(sl, lo, axis=0)
  return c1 * c2 - s1 * s2, s1 * c2 + c1 * s2


class SlidingWindowAttention(SelfAttention):
  """Causal sliding-window self-attention with RoPE (docs/method.md §2.1), `SelfAttention` with
  mode "window": `SlidingWindowAttention(BlockConfig(num_heads=2, head_dim=16, window=9))`.
  x [B,T,d] -> [B,T,d]."""
  mode: str = "window"
