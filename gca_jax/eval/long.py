"""Long-context evaluation on the streaming engine: perplexity vs length, passkey grids, and the
memory check run before either.

    ppl_vs_length(params, config, tokens_1d, lengths, *, windows, segment_len, ...)
    ppl_by_position(params, config, tokens_1d, *, length, unit, ...)   (one stream, NLL by position)
    passkey_grid(params, config, tokenizer, filler_tokens, *, lengths, depths, trials, kinds,
                 formats, seed, segment_len, ...)
    check_fit(config, batch, length, *, segment_len, memory) / estimate_memory(...)

Scoring goes only through `gca_jax.inference.stream_nll` / `stream_logprobs_at`, which stream
every `config.model_kind` (drt, swa, full, landmark) through the model's own modules.
Passkey samples and scoring (docs/method.md §4): `gca_jax.eval.passkey` (one builder, one scorer).

Memory check (`check_fit`), run for every length BEFORE anything is scored: an estimate of what
one call needs (`estimate_memory`: the stream caches, `_cache_bytes`, plus one segment's
activations and log-probs) against what is available (`available_memory`: the device's
`memory_stats()` where it exists, else the host's MemAvailable from /proc/meminfo). A length that
does not fit is a `LengthFitError` naming the length, the bytes needed and available, and what to
change (fewer sequences per call, memory="host", a shorter length).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.config import DRTConfig
from gca_jax.eval import passkey as pk

_FIT_FRACTION = 0.9  # use at most this share of the available memory
_AUTO_FRACTION = 0.5  # memory="auto": chunk memory on the device up to this share of free bytes


class LengthFitError(ValueError):
  """A length cannot be evaluated with the memory available (raised before running)."""


def _stream():
  """(stream_nll, stream_logprobs_at) of `gca_jax.inference` (looked up per call)."""
  from gca_jax import inference
  return inference.stream_nll, inference.stream_logprobs_at


def default_segment(config: DRTConfig) -> int:
  """Default segment length: 16 chunks of text."""
  return 16 * config.text_per_chunk


# ----------------------------------------------------------------------------- memory estimate


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**26 else f"{n / 2**20:.1f} MiB"


def _meminfo_available() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def available_memory() -> dict:
  """{"device": bytes or None, "host": bytes or None, "device_name": str}.

  device: `bytes_limit - bytes_in_use` of `jax.devices()[0].memory_stats()` where the backend
  reports it (GPU/TPU); None on CPU, where arrays live in host memory. host: MemAvailable."""
  from gca_jax.inference import device_free_bytes  # noqa: PLC0415

  dev = jax.devices()[0]
  return {"device": device_free_bytes(dev), "host": _meminfo_available(),
          "device_name": f"{dev.platform}:{dev.id}"}


_EXACT_TOKENS = 1 << 26  # cache shapes are derived exactly up to this many text tokens


def _cache_bytes(config: DRTConfig, batch: int, length: int, segment_len: int,
                 memory: str) -> dict:
  """{"device": bytes, "host": bytes} of the stream caches for `batch` streams of `length` text
  tokens (`memory` auto|device|host places the host-placeable buffers), from the engine's own
  cache shapes (`gca_jax.inference.cache_bytes`). Beyond `_EXACT_TOKENS` (int32 shapes) the
  bytes are extrapolated linearly from two exact sizes (the caches grow linearly in length).
  "auto" puts the growable buffers on the host when the device part exceeds half the free
  device memory (`resolve_memory`'s rule).
  """
  from gca_jax.inference import cache_bytes  # noqa: PLC0415

  def at(mem: str) -> dict:
    n = int(length) + int(segment_len)
    kw = dict(segment_len=int(segment_len), memory=mem)
    if n <= _EXACT_TOKENS:
      return cache_bytes(config, int(batch), n, **kw)
    lo, hi = _EXACT_TOKENS // 2, _EXACT_TOKENS
    a, b = cache_bytes(config, int(batch), lo, **kw), cache_bytes(config, int(batch), hi, **kw)
    return {k: int(a[k] + (b[k] - a[k]) * (n - lo) // (hi - lo)) for k in a}

  if memory == "auto":
    dev = at("device")
    free = available_memory()["device"]
    if free is None or dev["device"] <= _AUTO_FRACTION * free:
      return dev
    return at("host")
  return at(memory)


def estimate_memory(config: DRTConfig, batch: int, length: int, *, segment_len: int | None = None,
                    memory: str = "auto") -> dict:
  """Bytes one streaming call of `batch` sequences of `length` tokens needs.

  Returns {"device", "host", "parts": {name: bytes}}: the stream caches (`_cache_bytes`), one
  segment's activations (~24 d_model-wide f32 rows per window row plus attention score blocks;
  full attention: the scores of the segment against every cached position), its [P, V] logits x3
  (logits, log-softmax, gather), and the token arrays on the host (16 bytes per token).
  """
  if memory not in ("auto", "device", "host"):
    raise ValueError(f"memory={memory!r}: expected 'auto', 'device' or 'host'")
  cfg = config
  B, T = int(batch), int(length)
  P = int(segment_len or default_segment(cfg))
  d, H, W, V = cfg.d_model, cfg.num_heads, cfg.window, cfg.vocab_size
  f32 = 4
  cache = _cache_bytes(cfg, B, T, P, memory)
  rows = P + -(-P // cfg.text_per_chunk)
  parts = {"stream_caches": cache["device"],
           "segment_activations": B * rows * (d * 24 + H * (max(256, W) + W) * 2) * f32,
           "segment_logits": B * P * V * f32 * 3}
  if cfg.model_kind == "full":
    parts["attention_scores"] = B * H * rows * (T + rows) * f32 * 2
  host = {"tokens_on_host": B * T * 16}
  if cache["host"]:
    host["stream_caches_on_host"] = cache["host"]
  return {"device": int(sum(parts.values())), "host": int(sum(host.values())),
          "parts": parts | host}


def check_fit(config: DRTConfig, batch: int, length: int, *, segment_len: int | None = None,
              memory: str = "auto", what: str = "evaluation", available: dict | None = None
              ) -> dict:
  """Raises LengthFitError when `estimate_memory` exceeds 90% of `available_memory()`.

  On CPU (no device stats) device and host needs are added and compared with MemAvailable.
  Returns the estimate (with "available") when it fits or nothing is known."""
  est = estimate_memory(config, batch, length, segment_len=segment_len, memory=memory)
  av = available or available_memory()
  est["available"] = av
  checks = []
  if av.get("device") is not None:
    checks.append(("device memory of " + av.get("device_name", "the device"), est["device"],
                   av["device"]))
    if av.get("host") is not None and est["host"]:
      checks.append(("host memory (MemAvailable)", est["host"], av["host"]))
  elif av.get("host") is not None:
    checks.append(("host memory (MemAvailable; arrays of the CPU backend live there)",
                   est["device"] + est["host"], av["host"]))
  for where, need, have in checks:
    if need > _FIT_FRACTION * have:
      big = sorted(est["parts"].items(), key=lambda kv: -kv[1])[:3]
      detail = ", ".join(f"{k} {_gib(v)}" for k, v in big if v)
      hints = []
      if batch > 1:
        hints.append(f"fewer sequences per call (batch_size {batch} -> "
                     f"{max(1, int(batch * _FIT_FRACTION * have // max(need, 1)))})")
      if (memory != "host" and config.model_kind == "drt" and av.get("device") is not None):
        hints.append('memory="host" (chunk memory in host RAM)')  # on CPU: the same pool
      hints.append("a shorter length")
      raise LengthFitError(
          f"{what}: length {length} does not fit: the stream needs about {_gib(need)} of "
          f"{where} for {batch} sequence(s) ({detail}), {_gib(have)} available; use "
          + ", or ".join(hints))
  return est


# ----------------------------------------------------------------------------- perplexity


def _bucket_edges(length: int, unit: int) -> list[int]:
  edges = [0]
  e = unit
  while e < length:
    edges.append(e)
    e *= 2
  return edges + [length]


def _progress(total: int, desc: str, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, disable=not enabled,
              file=sys.stderr, dynamic_ncols=True, leave=True)


def plan_ppl_vs_length(config: DRTConfig, tokens_1d, lengths: Sequence[int], *, windows: int,
                       segment_len: int | None = None, batch_size: int = 1,
                       memory: str = "auto") -> dict[int, int]:
  """Checks of `ppl_vs_length` (run before anything is scored): {length: windows}; a ValueError
  names a length the stream is too short for, a LengthFitError one that does not fit."""
  n_tok = int(np.asarray(tokens_1d).size)
  lengths = list(dict.fromkeys(int(x) for x in lengths))
  if not lengths:
    raise ValueError("ppl_vs_length: no lengths given")
  if windows < 1 or batch_size < 1:
    raise ValueError(f"ppl_vs_length: windows={windows} and batch_size={batch_size} must be >= 1")
  seg = int(segment_len or default_segment(config))
  plan = {}
  for L in lengths:
    if L < 1:
      raise ValueError(f"ppl_vs_length: length {L} must be positive")
    n = min(windows, (n_tok - 1) // L)
    if n < 1:
      raise ValueError(f"ppl_vs_length: length {L} needs {L + 1} held-out tokens for one window, "
                       f"the stream has {n_tok}")
    plan[L] = n
  for L, n in plan.items():
    check_fit(config, min(batch_size, n), L, segment_len=seg, memory=memory,
              what="ppl_vs_length")
  return plan


def ppl_vs_length(params, config: DRTConfig, tokens_1d, lengths: Sequence[int], *,
                  windows: int = 4, segment_len: int | None = None, batch_size: int = 1,
                  memory: str = "auto", stream_kw: dict | None = None, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> dict:
  """Held-out perplexity at each evaluation length (e.g. 1x .. 64x the training length).

  For length L: the first min(`windows`, (N-1)//L) non-overlapping windows of L+1 tokens of the
  stream (window i = tokens[i*L : i*L+L+1], as `make_eval_windows`), every target scored with
  its full left context inside the window by `gca_jax.inference.stream_nll` (`stream_kw` passed
  on), `batch_size` windows per call. Returns {str(L): {"loss", "ppl", "tokens", "windows",
  "seconds", "by_position": {"a-b": mean NLL of targets whose position lies in [a, b)}}}, buckets
  doubling from one chunk of text. Every length is checked (stream long enough, memory fits)
  before anything runs.
  """
  stream_nll, _ = _stream()
  toks = np.asarray(tokens_1d, np.int32).reshape(-1)
  seg = int(segment_len or default_segment(config))
  plan = plan_ppl_vs_length(config, toks, lengths, windows=windows, segment_len=seg,
                            batch_size=batch_size, memory=memory)
  out = {}
  bar = _progress(sum(n * L for L, n in plan.items()), "ppl_vs_length", progress)
  try:
    for L, n in plan.items():
      t0 = time.time()
      edges = _bucket_edges(L, config.text_per_chunk)
      sums = np.zeros(len(edges) - 1)
      total = 0.0
      for i in range(0, n, batch_size):
        rows = np.arange(i, min(i + batch_size, n))
        w = np.stack([toks[r * L:r * L + L + 1] for r in rows])
        nll = np.asarray(stream_nll(params, config, w, segment_len=seg, memory=memory,
                                    **(stream_kw or {})), np.float64)
        total += nll.sum()
        cs = np.concatenate([[0.0], np.cumsum(nll.sum(0))])
        sums += cs[edges[1:]] - cs[edges[:-1]]
        bar.update(len(rows) * L)
      loss = total / (n * L)
      counts = np.diff(edges) * n
      out[str(L)] = {
          "loss": float(loss), "ppl": float(math.exp(min(loss, 700.0))), "tokens": int(n * L),
          "windows": int(n), "seconds": round(time.time() - t0, 3),
          "by_position": {f"{a}-{b}": float(s / c)
                          for a, b, s, c in zip(edges[:-1], edges[1:], sums, counts)}}
      bar.set_postfix(length=L, ppl=f"{out[str(L)]['ppl']:.2f}")
      if log:
        log(f"ppl @ {L}: loss {loss:.4f} ppl {out[str(L)]['ppl']:.2f} ({n} windows)")
  finally:
    bar.close()
  return out


def position_edges(length: int, unit: int, factor: int = 4) -> list[int]:
  """Bucket edges [0, unit, factor*unit, factor^2*unit, ..., length] (the last bucket is cut at
  `length`; a geometric edge >= length is dropped)."""
  if unit < 1 or factor < 2 or length < 1:
    raise ValueError(f"position buckets: unit={unit} >= 1, factor={factor} >= 2 and "
                     f"length={length} >= 1 needed")
  edges, e = [0], unit
  while e < length:
    edges.append(e)
    e *= factor
  return edges + [length]


def ppl_by_position(params, config: DRTConfig, tokens_1d, *, length: int, unit: int,
                    factor: int = 4, segment_len: int | None = None, memory: str = "auto",
                    stream_kw: dict | None = None, progress: bool = True,
                    log: Callable[[str], None] | None = None) -> dict:
  """NLL by position on ONE stream: the first `length` + 1 tokens of `tokens_1d` streamed once
  through `gca_jax.inference.stream_nll` (every target with its whole left context), targets
  grouped by position into [0, unit), [unit, 4 unit), [4 unit, 16 unit), ... (`position_edges`).
  Returns {"length", "unit", "factor", "segment_len", "seconds", "buckets": [{"start", "end",
  "tokens", "nll", "ppl", "rel_to_first" (nll / nll of bucket 0 - 1)}]}; the same `tokens_1d`
  and `length` give every model the same targets."""
  stream_nll, _ = _stream()
  toks = np.asarray(tokens_1d, np.int32).reshape(-1)
  if length < 1 or toks.size < length + 1:
    raise ValueError(f"ppl_by_position: length {length} needs {length + 1} held-out tokens, the "
                     f"stream has {toks.size}")
  seg = int(segment_len or default_segment(config))
  edges = position_edges(length, unit, factor)
  check_fit(config, 1, length, segment_len=seg, memory=memory, what="ppl_by_position")
  t0 = time.time()
  bar = _progress(length, "ppl_by_position", progress)
  try:
    nll = np.asarray(stream_nll(params, config, toks[None, :length + 1], segment_len=seg,
                                memory=memory, **(stream_kw or {})), np.float64)[0]
    bar.update(length)
  finally:
    bar.close()
  buckets = []
  for a, b in zip(edges[:-1], edges[1:]):
    m = float(nll[a:b].mean())
    buckets.append({"start": int(a), "end": int(b), "tokens": int(b - a), "nll": m,
                    "ppl": float(math.exp(min(m, 700.0)))})
  for bk in buckets:
    bk["rel_to_first"] = bk["nll"] / buckets[0]["nll"] - 1.0
  out = {"length": int(length), "unit": int(unit), "factor": int(factor), "segment_len": seg,
         "loss": float(nll.mean()), "seconds": round(time.time() - t0, 3), "buckets": buckets}
  if log:
    log("ppl_by_position: " + ", ".join(f"[{b['start']},{b['end']}) {b['nll']:.4f}"
                                          for b in buckets))
  return out


# ----------------------------------------------------------------------------- passkey grid


def plan_passkey_grid(config: DRTConfig, tokenizer, filler_tokens, *, lengths: Sequence[int],
                      depths: Sequence[float], trials: int, kinds: Sequence[str] = pk.KINDS,
                      formats: Sequence[str] = pk.FORMATS, segment_len: int | None = None,
                      memory: str = "auto", batch_size: int = 4, num_keys: int = 4,
                      key_len: int = 5, answer_offset: int = 4) -> None:
  """Checks of `passkey_grid` (run before anything is scored): the arguments, every kind and
  format at the shortest length (a ValueError naming the cell), and every length's memory
  (LengthFitError)."""
  kinds, formats, lengths, depths = pk.check_grid_args(
      lengths=lengths, depths=depths, trials=trials, kinds=kinds, formats=formats,
      batch_size=batch_size, num_keys=num_keys)
  seg = int(segment_len or default_segment(config))
  per_len = len(kinds) * len(formats) * len(depths) * trials
  for L in lengths:
    check_fit(config, min(batch_size, per_len), L, segment_len=seg, memory=memory,
              what="passkey_grid")
  pk.check_samples(tokenizer, np.asarray(filler_tokens, np.int32).reshape(-1),
                   chunk_text=config.text_per_chunk, kinds=kinds, formats=formats,
                   lengths=lengths, depths=depths, num_keys=num_keys, key_len=key_len,
                   answer_offset=answer_offset)


def passkey_grid(params, config: DRTConfig, tokenizer, filler_tokens, *,
                 lengths: Sequence[int], depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                 trials: int = 10, kinds: Sequence[str] = pk.KINDS,
                 formats: Sequence[str] = pk.FORMATS, seed: int = 0,
                 segment_len: int | None = None, memory: str = "auto", batch_size: int = 4,
                 num_keys: int = 4, key_len: int = 5, answer_offset: int = 4,
                 stream_kw: dict | None = None, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> dict:
  """Passkey accuracy for every (kind, format, length, depth) cell, `trials` samples each,
  scored on log-probs from `gca_jax.inference.stream_logprobs_at` (`stream_kw` passed on).

  Samples, scoring, batching and the result: `gca_jax.eval.passkey.run_grid` (+ "segment_len",
  "engine": "stream"). Each length's memory is checked first.
  """
  _, stream_logprobs_at = _stream()
  seg = int(segment_len or default_segment(config))
  grid_kw = dict(lengths=lengths, depths=depths, trials=trials, kinds=kinds, formats=formats,
                 batch_size=batch_size, num_keys=num_keys, key_len=key_len,
                 answer_offset=answer_offset)
  plan_passkey_grid(config, tokenizer, filler_tokens, segment_len=seg, memory=memory, **grid_kw)

  def logprobs_at(tokens_BxT, positions_Q):
    lp, _ = stream_logprobs_at(params, config, tokens_BxT, positions_Q, segment_len=seg,
                               memory=memory, **(stream_kw or {}))
    return lp

  n_cells = (len(set(kinds)) * len(set(formats)) * len(set(float(d) for d in depths)))
  bar = _progress(sum(dict.fromkeys(int(x) for x in lengths)) * n_cells * trials,
                  "passkey_grid", progress)
  try:
    out = pk.run_grid(logprobs_at, tokenizer, filler_tokens, chunk_text=config.text_per_chunk,
                      seed=seed, on_batch=lambda L, n: bar.update(L * n), log=log, **grid_kw)
  finally:
    bar.close()
  out.update(segment_len=seg, engine="stream")
  return out


__all__ = ["LengthFitError", "available_memory", "check_fit", "default_segment",
           "estimate_memory", "passkey_grid", "plan_passkey_grid", "plan_ppl_vs_length",
           "position_edges", "ppl_by_position", "ppl_vs_length"]
