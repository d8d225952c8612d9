"""Text generation on the stream state (docs/method.md §8): the prompt in segments, then one token a
step; greedy decoding equals the naive full-forward greedy loop."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.config import DRTConfig
from gca_jax.inference.engine import Stream


@functools.partial(jax.jit, static_argnames=("greedy", "top_k"))
def _sample(logp_BxV, key, temperature, *, greedy: bool, top_k: int | None):
  """Next tokens int32 [B]: argmax (greedy), else a draw from softmax(logp / temperature)
  restricted to the top_k most likely tokens (all if None)."""
  if greedy:
    return jnp.argmax(logp_BxV, axis=-1).astype(jnp.int32)
  z = logp_BxV / temperature
  if top_k is not None:
    kth = jax.lax.top_k(z, top_k)[0][:, -1:]
    z = jnp.where(z >= kth, z, -jnp.inf)
  return jax.random.categorical(key, z, axis=-1).astype(jnp.int32)


def generate_with(model: nn.Module, params, prompt_tokens_BxP, max_new_tokens: int,
                  temperature: float = 0.0, top_k: int | None = None, seed: int = 0, *,
                  segment_len: int | None = None, **stream_kw):
  """`generate` for any streaming Linen module `model` (see `Stream`)."""
  prompt = np.asarray(prompt_tokens_BxP)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt_tokens must be [B, P] with P >= 1, got {prompt.shape}")
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
      or max_new_tokens < 0:
    raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
  if not temperature >= 0:
    raise ValueError(f"temperature={temperature!r} must be >= 0")
  if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                            or top_k < 1):
    raise ValueError(f"top_k={top_k!r} must be None or an int >= 1")
  B, P0 = prompt.shape
  if max_new_tokens == 0:
    return jnp.asarray(prompt, jnp.int32)
  seg = int(segment_len or P0)
  stream = Stream(model, params, B, segment_len=seg, memory=stream_kw.pop("memory", "device"),
                  capacity_tokens=P0 + max_new_tokens, **stream_kw)
  try:
    pos, lp = 0, None
    while pos < P0:
      n = min(seg, P0 - pos)
      _, lp = stream.feed(prompt[:, pos:pos + n], select=np.asarray([n - 1], np.int32))
      pos += n
    key = jax.random.key(seed)
    greedy = temperature == 0
    out = [jnp.asarray(prompt, jnp.int32)]
    for i in range(max_new_tokens):
      tok = _sample(lp[:, 0], jax.random.fold_in(key, i), jnp.float32(temperature or 1.0),
                    greedy=greedy, top_k=None if top_k is None else int(top_k))
      out.append(tok[:, None])
      if i + 1 < max_new_tokens:
        _, lp = stream.feed(tok[:, None], select=np.zeros((1,), np.int32))
  finally:
    stream.close()
  return jnp.concatenate(out, axis=1)


def generate(params, config: DRTConfig, prompt_tokens_BxP, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, seed: int = 0, *,
             segment_len: int | None = None, **stream_kw):
  """Continues `prompt_tokens` int [B, P] by `max_new_tokens` tokens of `DRT(config)`; returns
  int32 [B, P + max_new_tokens]. The prompt runs in segments of `segment_len` (default: one
  segment), then one token per step on the stream state. temperature 0: greedy (equals the
  naive full-forward greedy loop); else sampling from softmax(logits / temperature), restricted
  to the `top_k` most likely tokens when given, with jax.random keys from `seed`.
  `stream_kw`: `Stream` options (memory, mem_block, swa_block, landmark_top_k, ...)."""
  from gca_jax.inference.runner import check_token_ids  # noqa: PLC0415
  from gca_jax.models.drt import DRT  # noqa: PLC0415
  prompt = np.asarray(prompt_tokens_BxP)
  if prompt.ndim == 2 and prompt.shape[1] >= 1:
    check_token_ids(prompt, config.vocab_size, "prompt_tokens")
    if segment_len is not None and not isinstance(segment_len, bool) \
        and isinstance(segment_len, (int, np.integer)) and segment_len > prompt.shape[1]:
      segment_len = int(prompt.shape[1])
  return generate_with(DRT(config), params, prompt_tokens_BxP, max_new_tokens, temperature,
                       top_k, seed, segment_len=segment_len, **stream_kw)
