"""Whole-sequence drivers over `Stream` (docs/method.md §8): NLL and log-probs at positions of a
token array, for every model_kind of `DRT`, without materialising [T, V]."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gca_jax.config import DRTConfig
from gca_jax.inference.engine import Stream, _check_memory, _check_segment


def num_segments(T: int, segment_len: int) -> int:
  """Segments of `segment_len` needed for the T-1 inputs of a [B, T] token array."""
  return -(-(T - 1) // segment_len)


def run_segments(stream, tokens_BxT, segment_len: int, positions=None):
  """Feeds tokens [:, :-1] (targets tokens [:, 1:]) to `stream` segment by segment, the last one
  right-padded, then closes it. Returns (nll [B, T-1], log-probs [B, Q, V] numpy at the text
  `positions` [Q], or None). Every `feed` gets a selection of the same size Q (rows outside the
  segment point at 0), so each stream compiles its step once."""
  tokens_BxT = np.asarray(tokens_BxT)
  B, T = tokens_BxT.shape
  Tin = T - 1
  nseg = num_segments(T, segment_len)
  pad = nseg * segment_len - Tin
  inp = np.pad(tokens_BxT[:, :-1], ((0, 0), (0, pad)))
  tgt = np.pad(tokens_BxT[:, 1:], ((0, 0), (0, pad)))
  nlls, picked = [], []
  try:
    for s in range(nseg):
      sl = slice(s * segment_len, (s + 1) * segment_len)
      if positions is None:
        nlls.append(stream.feed(inp[:, sl], tgt[:, sl]))
        continue
      local = positions - s * segment_len
      inside = (local >= 0) & (local < segment_len)
      nll, lp = stream.feed(inp[:, sl], tgt[:, sl],
                            select=np.where(inside, local, 0).astype(np.int32))
      nlls.append(nll)
      picked.append((inside, lp))
    nll = jnp.concatenate(nlls, axis=1)[:, :Tin].block_until_ready()
  finally:
    stream.close()
  if positions is None:
    return nll, None
  out = None
  for inside, lp in picked:
    if inside.any():
      lp = np.asarray(lp)
      out = np.zeros(lp.shape, np.float32) if out is None else out
      out[:, inside] = lp[:, inside]
  return nll, out


def check_token_ids(tokens, vocab_size: int, what: str = "tokens") -> np.ndarray:
  """`tokens` as an int numpy array, or ValueError naming the first bad id, where it is and the
  vocab size (non-integer dtype, id < 0 or id >= vocab_size)."""
  tokens = np.asarray(tokens)
  if tokens.dtype == bool or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"{what} must be integer token ids, got dtype {tokens.dtype} (float ids "
                     "would be truncated)")
  bad = (tokens < 0) | (tokens >= vocab_size)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{what}: token id {int(tokens[where])} at index {where} is outside the "
                     f"vocabulary [0, {vocab_size}) ({int(bad.sum())} bad ids in all)")
  return tokens


def _check_tokens(tokens, vocab_size: int | None = None) -> np.ndarray:
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[1] < 2:
    raise ValueError(f"tokens must be [B, T] with T >= 2, got {tokens.shape}")
  if vocab_size is not None:
    tokens = check_token_ids(tokens, vocab_size)
  return tokens


def _run(params, config: DRTConfig, tokens, segment_len, memory, spec_kw, positions=None):
  from gca_jax.models.drt import DRT  # noqa: PLC0415
  _check_memory(memory)
  segment_len = _check_segment(segment_len)
  tokens = _check_tokens(tokens, config.vocab_size)
  B, T = tokens.shape
  segment_len = min(segment_len, T - 1)  # a segment longer than the stream is never needed
  n = num_segments(T, segment_len) * segment_len
  stream = Stream(DRT(config), params, B, segment_len=segment_len, memory=memory,
                  expected_tokens=n, **spec_kw)
  return run_segments(stream, tokens, segment_len, positions)


def stream_nll(params, config: DRTConfig, tokens, *, segment_len: int, memory: str = "auto",
               **spec_kw):
  """Per-token NLL [B, T-1] float32 of token t+1 given tokens <= t, streamed segment by segment
  (one compiled step per stream), for every model_kind. Equals the full forward
  `DRT(config).apply({"params": params}, tokens[:, :-1])` NLL (drt, swa, full; landmark when
  top_k >= the number of blocks) for any `segment_len` >= 1. `memory` = "device" | "host" |
  "auto" places growable chunk memories (results identical). `spec_kw`: StreamSpec options
  (mem_block, swa_block, query_block, landmark_top_k / top_k, landmark_local_blocks /
  local_blocks)."""
  nll, _ = _run(params, config, tokens, segment_len, memory, spec_kw)
  return nll


def stream_logprobs_at(params, config: DRTConfig, tokens, positions, *, segment_len: int,
                       memory: str = "auto", **spec_kw):
  """Log-probabilities [B, Q, V] (f32 numpy) of the token following each text position in
  `positions` (int [Q], each < T-1), given tokens <= that position, and the NLL [B, T-1];
  one [B, segment_len, V] block on device at a time. Returns (logprobs, nll)."""
  positions = np.asarray(positions, np.int64)
  T = _check_tokens(tokens).shape[1]
  if positions.ndim != 1 or np.any(positions >= T - 1) or np.any(positions < 0):
    raise ValueError(f"positions must be 1-D text positions in [0, {T - 1}), got {positions}")
  nll, lp = _run(params, config, tokens, segment_len, memory, spec_kw, positions)
  return lp, nll
