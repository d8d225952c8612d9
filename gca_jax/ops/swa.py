"""Causal sliding-window attention (docs/method.md §2.1), full causal attention and in-chunk bidirectional
attention (the chunk encoder, docs/method.md §2.2), with an `impl` switch.

`sliding_window_attention(q, k, v, window)`: q [B,T,H,D], k/v [B,T,Hkv,D] -> [B,T,H,D]; query t
attends keys t-W+1 .. t (W positions, itself included). Implementations:
  "xla"    - blockwise jnp, O(T*W) memory: query block i (W rows) sees key blocks i-1 and i.
  "cudnn"  - `jax.nn.dot_product_attention(implementation="cudnn", is_causal=True,
             local_window_size=(W-1, 0))` (GPU, bf16/fp16). `is_causal=True` is required:
             without it cuDNN ignores the window.
  "splash" - Pallas TPU splash attention with a causal `LocalMask`.
  "auto"   - cudnn on GPU for half-precision inputs, splash on TPU, else xla.
`chunk_attention(q, k, v)`: q [N,S,H,D], k/v [N,S,Hkv,D], no mask (N independent short
sequences, e.g. the B*C chunks of the encoder): "cudnn" on GPU, else the dense XLA reference
(splash's 128-row blocks do not fit 64-row chunks; at S = 64 XLA's dense form is cheap on TPU).
Softmax statistics are float32 throughout. Under a mesh (`jax.set_mesh`), the library kernels
run per device through `shard_map` over the batch (data x fsdp) and heads (tensor) axes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.sharding import per_device_call

SWA_IMPLS = ("auto", "xla", "cudnn", "splash")
_NEG = -1e30


def _check(q, k, v):
  if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
    raise ValueError(f"attention: q [B,T,H,D], k/v [B,T,Hkv,D] expected; got q{q.shape} k{k.shape} v{v.shape}")
  if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
    raise ValueError(f"attention: q{q.shape} and k{k.shape} differ in batch, length or head dim")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"attention: {q.shape[2]} query heads not divisible by {k.shape[2]} kv heads")


def swa_xla(q_BxTxHxD, k_BxTxGxD, v_BxTxGxD, window: int):
  """Blockwise sliding-window attention in plain jnp; memory O(B*H*T*2*min(W,T))."""
  B, T, H, D = q_BxTxHxD.shape
  G = k_BxTxGxD.shape[2]
  R = H // G
  blk = max(1, min(window, T))
  nb = -(-T // blk)
  pad = nb * blk - T
  if pad:
    padw = ((0, 0), (0, pad), (0, 0), (0, 0))
    q_BxTxHxD, k_BxTxGxD, v_BxTxGxD = (jnp.pad(x, padw) for x in (q_BxTxHxD, k_BxTxGxD, v_BxTxGxD))
  q = q_BxTxHxD.reshape(B, nb, blk, G, R, D)
  k = k_BxTxGxD.reshape(B, nb, blk, G, D)
  v = v_BxTxGxD.reshape(B, nb, blk, G, D)
  zeros = jnp.zeros_like(k[:, :1])
  k2 = jnp.concatenate([jnp.concatenate([zeros, k[:, :-1]], 1), k], axis=2)  # [B,nb,2blk,G,D]
  v2 = jnp.concatenate([jnp.concatenate([zeros, v[:, :-1]], 1), v], axis=2)
  qpos = jnp.arange(blk)[:, None] + blk
  kpos = jnp.arange(2 * blk)[None, :]
  rel = qpos - kpos
  mask = (rel >= 0) & (rel < window)  # [blk, 2blk]
  first = jnp.arange(nb)[:, None, None] > 0
  mask = mask[None] & (first | (kpos >= blk)[None])  # block 0 has no previous block
  s = jnp.einsum("bnqgrd,bnkgd->bngrqk", q, k2, preferred_element_type=jnp.float32)
  s = s / jnp.sqrt(jnp.float32(D))
  s = jnp.where(mask[None, :, None, None], s, _NEG)
  p = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bngrqk,bnkgd->bnqgrd", p.astype(v2.dtype), v2, preferred_element_type=jnp.float32)
  o = o.reshape(B, nb * blk, H, D)[:, :T]
  return o.astype(q_BxTxHxD.dtype)


def attention_reference(q_BxTxHxD, k_BxTxGxD, v_BxTxGxD, window: int | None = None,
                        causal: bool = True):
  """Dense O(T^2) attention (window=None: full causal, or bidirectional if causal=False)."""
  B, T, H, D = q_BxTxHxD.shape
  G = k_BxTxGxD.shape[2]
  q = q_BxTxHxD.reshape(B, T, G, H // G, D)
  s = jnp.einsum("bqgrd,bkgd->bgrqk", q, k_BxTxGxD, preferred_element_type=jnp.float32)
  s = s / jnp.sqrt(jnp.float32(D))
  if causal:
    rel = jnp.arange(T)[:, None] - jnp.arange(T)[None, :]
    mask = rel >= 0
    if window is not None:
      mask &= rel < window
    s = jnp.where(mask, s, _NEG)
  p = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bgrqk,bkgd->bqgrd", p.astype(v_BxTxGxD.dtype), v_BxTxGxD,
                 preferred_element_type=jnp.float32)
  return o.reshape(B, T, H, D).astype(q_BxTxHxD.dtype)


def _pad_even(fn):
  """cuDNN rejects odd sequence lengths in training with a mask; causal right padding is inert."""
  def wrapped(q, k, v):
    T = q.shape[1]
    if T % 2 == 0:
      return fn(q, k, v)
    padw = ((0, 0), (0, 1), (0, 0), (0, 0))
    return fn(*(jnp.pad(x, padw) for x in (q, k, v)))[:, :T]
  return wrapped


@_pad_even
def _full_cudnn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def _bidir_cudnn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=False, implementation="cudnn")


def _swa_cudnn(q, k, v, window: int):
  return _pad_even(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, local_window_size=(window - 1, 0), implementation="cudnn"))(q, k, v)


def _splash(q_BxTxHxD, k_BxTxGxD, v_BxTxGxD, window: int | None):
  """Pallas TPU splash attention with a causal local mask (window=None: plain causal).

  Off TPU it runs in Pallas interpret mode (slow; for tests on CPU).
  """
  interpret = jax.default_backend() != "tpu"
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  B, T, H, D = q_BxTxHxD.shape
  G = k_BxTxGxD.shape[2]
  if G != H:
    k_BxTxGxD = jnp.repeat(k_BxTxGxD, H // G, axis=2)
    v_BxTxGxD = jnp.repeat(v_BxTxGxD, H // G, axis=2)
  Tp = -(-T // 128) * 128
  if Tp != T:
    padw = ((0, 0), (0, Tp - T), (0, 0), (0, 0))
    q_BxTxHxD, k_BxTxGxD, v_BxTxGxD = (jnp.pad(x, padw) for x in (q_BxTxHxD, k_BxTxGxD, v_BxTxGxD))
  if window is None:
    one = sm.CausalMask((Tp, Tp))
  else:
    one = sm.LocalMask((Tp, Tp), window_size=(window - 1, 0), offset=0)
  mask = sm.MultiHeadMask([one] * H)
  blk = min(512, Tp)
  bs = sk.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=min(blk, 128),
                     block_q_dkv=blk, block_kv_dkv=blk, block_kv_dkv_compute=min(blk, 128),
                     block_q_dq=blk, block_kv_dq=blk)
  kernel = sk.make_splash_mha(mask, block_sizes=bs, head_shards=1, q_seq_shards=1, interpret=interpret)
  scale = 1.0 / math.sqrt(D)
  to_h = lambda x: jnp.swapaxes(x, 1, 2)  # [B,H,T,D]
  o = jax.vmap(kernel)(to_h(q_BxTxHxD * jnp.asarray(scale, q_BxTxHxD.dtype)), to_h(k_BxTxGxD),
                       to_h(v_BxTxGxD))
  return jnp.swapaxes(o, 1, 2)[:, :T]


def _per_device(fn, *args):
  dims = ("batch", None, "heads", None)
  return per_device_call(fn, args, (dims,) * len(args), dims)


def resolve_attention_impl(impl: str, q) -> str:
  if impl not in SWA_IMPLS:
    raise ValueError(f"sliding-window attention: unknown impl {impl!r}; choose from {SWA_IMPLS}")
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  if backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] % 8 == 0 \
      and q.shape[-1] <= 128:
    return "cudnn"
  if backend == "tpu":
    return "splash"
  return "xla"


def sliding_window_attention(q, k, v, window: int, *, impl: str = "auto"):
  """Causal attention over the last `window` positions. q [B,T,H,D], k/v [B,T,Hkv,D]."""
  _check(q, k, v)
  if window < 1:
    raise ValueError(f"sliding_window_attention: window must be >= 1, got {window}")
  name = resolve_attention_impl(impl, q)
  if name == "xla":
    return swa_xla(q, k, v, window)
  if name == "cudnn":
    return _per_device(functools.partial(_swa_cudnn, window=window), q, k, v)
  return _per_device(functools.partial(_splash, window=window), q, k, v)


def causal_attention(q, k, v, *, impl: str = "auto"):
  """Full causal attention (the full-attention baseline). q [B,T,H,D], k/v [B,T,Hkv,D]."""
  _check(q, k, v)
  name = resolve_attention_impl(impl, q)
  if name == "xla":
    return attention_reference(q, k, v, window=None, causal=True)
  if name == "cudnn":
    return _per_device(_full_cudnn, q, k, v)
  return _per_device(functools.partial(_splash, window=None), q, k, v)


def chunk_attention(q, k, v, *, impl: str = "auto"):
  """Unmasked (bidirectional) attention in each of N short sequences. q [N,S,H,D], k/v
  [N,S,Hkv,D] -> [N,S,H,D]. impl "splash" (TPU) runs the XLA reference (see the module doc)."""
  _check(q, k, v)
  name = resolve_attention_impl(impl, q)
  if name == "cudnn":
    return _per_device(_bidir_cudnn, q, k, v)
  return attention_reference(q, k, v, window=None, causal=False)


def swa_with_prefix_xla(q_BxPxHxD, k_BxNxHxD, v_BxNxHxD, n_empty, window: int, qblock: int = 1024):
  """`swa_with_prefix` in blocks of jnp: query block i (bq = max(qblock, W) rows) sees its own
  bq + W - 1 key rows; scores [B, nb, H, bq, bq + W - 1] in float32."""
  B, P, H, D = q_BxPxHxD.shape
  N = k_BxNxHxD.shape[1]
  Wc = N - P
  bq = min(P, max(qblock, Wc + 1))
  nb = -(-P // bq)
  padq = nb * bq - P
  pad = lambda x: jnp.pad(x, ((0, 0), (0, padq), (0, 0), (0, 0))) if padq else x
  q, k, v = pad(q_BxPxHxD), pad(k_BxNxHxD), pad(v_BxNxHxD)
  kidx = np.arange(nb)[:, None] * bq + np.arange(bq + Wc)[None, :]  # [nb, bq+Wc] key rows
  qpos = Wc + np.arange(nb)[:, None] * bq + np.arange(bq)[None, :]  # [nb, bq] query rows
  rel = qpos[:, :, None] - kidx[:, None, :]
  band = jnp.asarray((rel >= 0) & (rel < window) & (qpos[:, :, None] < N))
  mask = band & (jnp.asarray(kidx) >= n_empty)[:, None, :]  # [nb, bq, bq+Wc]
  qb = q.reshape(B, nb, bq, H, D)
  kb = jnp.take(k, jnp.asarray(kidx), axis=1)  # [B, nb, bq+Wc, H, D]
  vb = jnp.take(v, jnp.asarray(kidx), axis=1)
  s = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, kb, preferred_element_type=jnp.float32)
  s = jnp.where(mask[None, :, None], s / jnp.sqrt(jnp.float32(D)), _NEG)
  pr = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bnhqk,bnkhd->bnqhd", pr.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
  return o.reshape(B, nb * bq, H, D)[:, :P].astype(q_BxPxHxD.dtype)


# The GPU kernel of `swa_with_prefix` (registered by `gca_jax.kernels`; ops never imports it):
# (fn(q, k, v, n_empty, window) -> o, supports(q, k, v, window) -> None | reason).
_PREFIX_KERNEL: dict = {}


def register_swa_prefix_kernel(fn, supports) -> None:
  """Registers the GPU kernel of `swa_with_prefix` (replaces a previous one)."""
  _PREFIX_KERNEL["gpu"] = (fn, supports)


def swa_with_prefix(q_BxPxHxD, k_BxNxHxD, v_BxNxHxD, n_empty, window: int, *, qblock: int = 1024,
                    impl: str = "auto"):
  """Sliding-window attention of P new rows that follow N - P = W - 1 prefix rows (the streaming
  window cache, docs/method.md §2.1, §8). q [B,P,H,D] are sequence rows N-P .. N-1, k/v [B,N,H,D]
  all N rows (RoPE applied by the caller); `n_empty` (traced int32) = prefix rows before the
  stream start, never keys. -> [B,P,H,D]. On GPU, where `impl` resolves to "cudnn", the
  registered Pallas kernel (`gca_jax.kernels.swa_prefix_triton`: one compile for all layers)
  when it supports the inputs; otherwise the blocked jnp path `swa_with_prefix_xla`."""
  B, P, H, D = q_BxPxHxD.shape
  if k_BxNxHxD.shape != (B, P + window - 1, H, D) or v_BxNxHxD.shape != k_BxNxHxD.shape:
    raise ValueError(f"swa_with_prefix: k/v must be [B, P + W - 1, H, D] = "
                     f"{(B, P + window - 1, H, D)}, got {k_BxNxHxD.shape} / {v_BxNxHxD.shape}")
  if resolve_attention_impl(impl, q_BxPxHxD) == "cudnn" and "gpu" in _PREFIX_KERNEL:
    fn, supports = _PREFIX_KERNEL["gpu"]
    if supports(q_BxPxHxD, k_BxNxHxD, v_BxNxHxD, window) is None:
      n = jnp.asarray(n_empty, jnp.int32)
      return _per_device(lambda q, k, v: fn(q, k, v, n, window), q_BxPxHxD, k_BxNxHxD, v_BxNxHxD)
  return swa_with_prefix_xla(q_BxPxHxD, k_BxNxHxD, v_BxNxHxD, n_empty, window, qblock=qblock)
