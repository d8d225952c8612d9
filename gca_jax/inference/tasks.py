"""Long-context evaluation tasks on the streaming engine: perplexity vs length, passkey grids.

    ppl_vs_length(params, config, tokens_1d, lengths, *, windows, segment_len, ...)
    passkey_grid(params, config, tokenizer, filler_tokens, *, lengths, depths, trials, kinds,
                 formats, seed, segment_len, ...)

Scoring engine, by `config.model_kind` (`score_nll`, `score_logprobs_at`):
  "drt"                -> `gca_jax.inference.stream` (`stream_nll`, `stream_logprobs_at`);
  "swa" / "landmark"   -> `gca_jax.inference.baseline_stream` (same two functions), imported
                          lazily;
  anything else, or where the baseline module is absent (ImportError) or raises
  NotImplementedError -> the full forward pass `DRT(config).apply` (as `gca_jax.evaluation`
  does), if the length fits in memory, else a `LengthFitError`.

Memory check (`check_fit`), run for every length BEFORE anything is scored: an estimate of what
one call needs (see `estimate_memory`) against what is available (`available_memory`: the
device's `memory_stats()` where it exists, else the host's MemAvailable from /proc/meminfo).
A length that does not fit is a `LengthFitError` naming the length, the bytes needed and
available, and what to change (fewer sequences per call, memory="host", a shorter length).

Passkey scoring (SPEC §4): each sample is scored teacher-forced in one pass, the answer being
part of the input. first-token accuracy: argmax of the log-probs at `answer_index` equals
key[0] (the official metric). whole-key accuracy: the argmax at answer_index + j equals key[j]
for every j (so whole <= first, sample by sample). Kinds: "single" (the official passkey, or the
Landmark-format pass key N in format "landmark"), "multikey" (`num_keys` needles, the asked one
at the cell's depth, the others at uniform random depths), "2hop" (`|DEF X->Y|` at the cell's
depth, `|DEF Y->Z|` at a uniform random depth; the answer is `Y->Z`, see
`gca_jax.data.passkey`). Formats: "official" = real text from `filler_tokens` around the
needles; "landmark" = Landmark Attention's task line and repeated filler sentences (for
"single" exactly Landmark's sample; for "multikey"/"2hop" their needles in that haystack).
Each cell's samples come from `np.random.default_rng([seed, kind id, format id, length,
round(depth * 1e6)])`, so a cell does not depend on which other cells are evaluated.
Samples of one length are batched (`batch_size` rows per engine call, across cells; the last
batch is padded by repeating a row), and the positions asked of the engine are the union of the
rows' answer positions, padded to a power of two (few distinct compiled shapes).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.config import DRTConfig
from gca_jax.inference.stream import memory_bytes, resolve_memory

KINDS = ("single", "multikey", "2hop")
FORMATS = ("official", "landmark")
_KIND_ID = {"single": 0, "multikey": 1, "2hop": 2}
_FORMAT_ID = {"official": 0, "landmark": 1}
_FIT_FRACTION = 0.9  # use at most this share of the available memory


class LengthFitError(ValueError):
  """A length cannot be evaluated with the memory available (raised before running)."""


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
  dev = jax.devices()[0]
  free = None
  try:
    st = dev.memory_stats()
  except Exception:  # noqa: BLE001  (backends without memory stats)
    st = None
  if st and "bytes_limit" in st:
    free = int(st["bytes_limit"]) - int(st.get("bytes_in_use", 0))
  return {"device": free, "host": _meminfo_available(), "device_name": f"{dev.platform}:{dev.id}"}


def _dtype_bytes(config: DRTConfig) -> int:
  return jnp.dtype(config.dtype).itemsize


def _default_segment(config: DRTConfig) -> int:
  return 16 * config.text_per_chunk


def engine_name(config: DRTConfig) -> str:
  """"stream" (DRT engine), "baseline_stream" or "full" (full forward pass)."""
  if config.model_kind == "drt":
    return "stream"
  if config.model_kind in ("swa", "landmark") and _baseline_module() is not None:
    return "baseline_stream"
  return "full"


def estimate_memory(config: DRTConfig, batch: int, length: int, *, segment_len: int | None = None,
                    memory: str = "auto", engine: str | None = None) -> dict:
  """Rough bytes one scoring call of `batch` sequences of `length` tokens needs.

  Returns {"device": bytes, "host": bytes, "parts": {name: bytes}}. Streaming ("stream",
  "baseline_stream"): the chunk memory ceil(T/63) (+ one segment) chunks x 64 rows x d_model x
  dtype bytes per sequence (the DRT engine keeps encoder outputs; memory="auto" counts it where
  the engine would put it), the landmark keys (chunks x d_model), the sliding-window caches,
  and one segment's activations and [segment, V] log-probs. With memory="host" the chunk memory
  is counted on the host, as are the token arrays (16 bytes per token: int32 ids and index
  temporaries). For the Landmark baseline the K/V of every position of every layer
  are counted (it retrieves blocks of raw tokens). Full forward ("full"): activations of the
  whole sequence (~24 d_model-wide float32 rows per position, logits x3 (logits, log-softmax,
  gather)) plus the attention scores: [H, T, T] for full attention / Landmark, [H, T, 2W]
  blockwise for sliding windows.
  """
  cfg = config
  engine = engine or engine_name(cfg)
  B, T = int(batch), int(length)
  tpc, S, d, H, Dh, V = (cfg.text_per_chunk, cfg.chunk_size, cfg.d_model, cfg.num_heads,
                         cfg.head_dim, cfg.vocab_size)
  b = _dtype_bytes(cfg)
  f32 = 4
  W = cfg.window
  n_layers = cfg.num_layers
  parts: dict[str, int] = {}
  host = 0
  if engine == "full":
    pos = T + T // tpc if cfg.model_kind in ("drt", "landmark") else T
    parts["activations"] = B * pos * d * f32 * 24
    parts["logits"] = B * T * V * f32 * 3
    if cfg.model_kind in ("full", "landmark"):
      parts["attention_scores"] = B * H * pos * pos * f32 * 2
    else:
      parts["attention_scores"] = B * H * pos * 2 * W * f32 * 2
    parts["chunk_memory"] = B * (pos // S + 1) * S * 2 * H * Dh * b if cfg.model_kind == "drt" \
        else 0
  else:
    P = int(segment_len or _default_segment(cfg))
    seg_chunks = -(-P // tpc)
    chunks = -(-T // tpc) + seg_chunks
    mem = memory_bytes(cfg, B, T, extra_chunks=seg_chunks)
    if engine == "stream":
      kv = mem["enc"]  # the engine stores encoder outputs (Kmem/Vmem projected per use)
      if memory == "auto":
        memory = resolve_memory("auto", cfg, B, chunks * tpc)
    elif cfg.model_kind == "landmark":
      kv = B * (chunks * S) * 2 * H * Dh * b * n_layers
    else:
      kv = 0
    if memory == "host":
      host += kv  # reported as "host", not in the device parts
    else:
      parts["chunk_memory"] = kv
    parts["landmark_keys"] = mem["lmk"] if engine == "stream" else 0
    parts["window_caches"] = n_layers * B * max(W - 1, 0) * 2 * H * Dh * b
    rows = P + -(-P // tpc)
    parts["segment_activations"] = B * rows * (d * 24 + H * (max(256, W) + W) * 2) * f32
    parts["segment_logits"] = B * P * V * f32 * 3
  # the token arrays (and index temporaries while building samples) on the host
  parts_host = {"tokens_on_host": B * T * 16}
  if host:
    parts_host["chunk_memory_on_host"] = int(host)
  return {"device": int(sum(parts.values())), "host": int(sum(parts_host.values())),
          "parts": parts | parts_host, "engine": engine}


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
      if (est["engine"] != "full" and memory != "host" and est["parts"].get("chunk_memory")
          and av.get("device") is not None):  # on CPU, host memory is the same pool
        hints.append('memory="host" (chunk memory in host RAM)')
      if est["engine"] == "full":
        hints.append("a streaming engine for this model kind (the full forward pass is used)")
      hints.append("a shorter length")
      raise LengthFitError(
          f"{what}: length {length} does not fit: the {est['engine']} engine needs about "
          f"{_gib(need)} of {where} for {batch} sequence(s) ({detail}), {_gib(have)} "
          f"available; use " + ", or ".join(hints))
  return est


# ----------------------------------------------------------------------------- scoring engines


def _baseline_module():
  try:
    from gca_jax.inference import baseline_stream  # noqa: PLC0415  (lazy: optional module)
  except ImportError:
    return None
  if not all(hasattr(baseline_stream, f) for f in ("stream_nll", "stream_logprobs_at")):
    return None
  return baseline_stream


@functools.lru_cache(maxsize=8)
def _full_fn(config: DRTConfig):
  from gca_jax.models.drt import DRT
  model = DRT(config)

  @jax.jit
  def f(params, tokens, positions):
    logits = model.apply({"params": params}, tokens[:, :-1], train=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.take(logp, positions, axis=1), nll
  return f


def _full_forward(params, config, tokens, positions, memory):
  check_fit(config, tokens.shape[0], tokens.shape[1], memory=memory,
            what=f"full forward pass (model_kind={config.model_kind!r})")
  pos = np.zeros((0,), np.int32) if positions is None else np.asarray(positions, np.int32)
  lp, nll = _full_fn(config)(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(pos))
  return np.asarray(lp), nll


def _dispatch(params, config, tokens, positions, segment_len, memory):
  kind = config.model_kind
  mod = None
  if kind == "drt":
    from gca_jax.inference import stream as mod  # noqa: PLC0415
  elif kind in ("swa", "landmark"):
    mod = _baseline_module()
  if mod is not None:
    try:
      if positions is None:
        return None, mod.stream_nll(params, config, tokens, segment_len=segment_len,
                                    memory=memory)
      return mod.stream_logprobs_at(params, config, tokens, positions,
                                    segment_len=segment_len, memory=memory)
    except NotImplementedError:
      if kind == "drt":
        raise
  return _full_forward(params, config, tokens, positions, memory)


def score_nll(params, config: DRTConfig, tokens, *, segment_len: int, memory: str = "auto"):
  """NLL [B, T-1] (float32) of `tokens` [B, T] by the engine of `config.model_kind` (module
  docstring): the streaming engine, or the full forward pass where no engine exists."""
  return _dispatch(params, config, np.asarray(tokens, np.int32), None, segment_len, memory)[1]


def score_logprobs_at(params, config: DRTConfig, tokens, positions, *, segment_len: int,
                      memory: str = "auto"):
  """(log-probs [B, Q, V] numpy, nll [B, T-1]) at text `positions` [Q], as `stream_logprobs_at`."""
  return _dispatch(params, config, np.asarray(tokens, np.int32), np.asarray(positions),
                   segment_len, memory)


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
  seg = int(segment_len or _default_segment(config))
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
                  memory: str = "auto", progress: bool = True,
                  log: Callable[[str], None] | None = None) -> dict:
  """Held-out perplexity at each evaluation length (e.g. 1x .. 64x the training length).

  For length L: the first min(`windows`, (N-1)//L) non-overlapping windows of L+1 tokens of the
  stream (window i = tokens[i*L : i*L+L+1], as `make_eval_windows`), every target scored with
  its full left context inside the window, by the streaming engine (`score_nll`), `batch_size`
  windows per call. Returns {str(L): {"loss", "ppl", "tokens", "windows", "seconds",
  "by_position": {"a-b": mean NLL of targets whose position lies in [a, b)}}}, buckets doubling
  from one chunk (63 tokens). Every length is checked (stream long enough, memory fits) before
  anything runs.
  """
  toks = np.asarray(tokens_1d, np.int32).reshape(-1)
  seg = int(segment_len or _default_segment(config))
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
        nll = np.asarray(score_nll(params, config, w, segment_len=seg, memory=memory),
                         np.float64)
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


# ----------------------------------------------------------------------------- passkey grid


def _cell_rng(seed: int, kind: str, fmt: str, length: int, depth: float):
  return np.random.default_rng([int(seed), _KIND_ID[kind], _FORMAT_ID[fmt], int(length),
                                int(round(depth * 1e6))])


def make_grid_sample(kind: str, fmt: str, length: int, depth: float, tokenizer, filler_tokens,
                     rng: np.random.Generator, *, chunk_text: int, num_keys: int = 4,
                     key_len: int = 5, answer_offset: int = 4):
  """One sample of a grid cell (module docstring): an object with tokens, answer_index, key."""
  from gca_jax.data.passkey import (landmark_haystack, make_2hop_passkey_sample,
                                    make_landmark_passkey_sample, make_multikey_passkey_sample,
                                    make_passkey_sample)
  kw = dict(chunk_text=chunk_text, answer_offset=answer_offset)
  if fmt == "landmark":
    prefix, unit = landmark_haystack(tokenizer)
    hay = dict(filler_tokens=unit, prefix_tokens=prefix, filler_start=0)
  else:
    hay = dict(filler_tokens=filler_tokens)
  if kind == "single":
    if fmt == "landmark":
      return make_landmark_passkey_sample(length, depth, tokenizer, rng, **kw)
    return make_passkey_sample(filler_tokens, length, depth, tokenizer, rng, key_len=key_len, **kw)
  if kind == "multikey":
    depths = [depth] + [float(x) for x in rng.uniform(size=num_keys - 1)]
    return make_multikey_passkey_sample(length=length, depths=depths, tokenizer=tokenizer,
                                        rng=rng, query=0, key_len=key_len, **hay, **kw)
  if kind == "2hop":
    depths = [depth, float(rng.uniform())]
    return make_2hop_passkey_sample(length=length, depths=depths, tokenizer=tokenizer, rng=rng,
                                    key_len=key_len, **hay, **kw)
  raise ValueError(f"unknown passkey kind {kind!r}; expected one of {KINDS}")


def plan_passkey_grid(config: DRTConfig, tokenizer, filler_tokens, *, lengths: Sequence[int],
                      depths: Sequence[float], trials: int, kinds: Sequence[str] = KINDS,
                      formats: Sequence[str] = FORMATS, segment_len: int | None = None,
                      memory: str = "auto", batch_size: int = 4, num_keys: int = 4,
                      key_len: int = 5, answer_offset: int = 4) -> None:
  """Checks of `passkey_grid` (run before anything is scored): the arguments, every kind and
  format at the shortest length (a ValueError naming the cell), and every length's memory
  (LengthFitError)."""
  kinds, formats = list(kinds), list(formats)
  for k in kinds:
    if k not in KINDS:
      raise ValueError(f"unknown passkey kind {k!r}; expected some of {KINDS}")
  for f in formats:
    if f not in FORMATS:
      raise ValueError(f"unknown passkey format {f!r}; expected some of {FORMATS}")
  lengths = list(dict.fromkeys(int(x) for x in lengths))
  depths = list(dict.fromkeys(float(x) for x in depths))
  if not (kinds and formats and lengths and depths):
    raise ValueError("passkey_grid: kinds, formats, lengths and depths must be non-empty")
  if any(not 0.0 <= x <= 1.0 for x in depths):
    raise ValueError(f"passkey_grid: depths {depths} must lie in [0, 1]")
  if trials < 1 or batch_size < 1:
    raise ValueError(f"passkey_grid: trials={trials} and batch_size={batch_size} must be >= 1")
  if kinds.count("multikey") and num_keys < 1:
    raise ValueError(f"passkey_grid: num_keys={num_keys} must be >= 1")
  seg = int(segment_len or _default_segment(config))
  ct = config.text_per_chunk
  filler = np.asarray(filler_tokens, np.int32).reshape(-1)
  gen = functools.partial(make_grid_sample, tokenizer=tokenizer, filler_tokens=filler,
                          chunk_text=ct, num_keys=num_keys, key_len=key_len,
                          answer_offset=answer_offset)
  n_cells_per_len = len(kinds) * len(formats) * len(depths)
  for L in lengths:
    check_fit(config, min(batch_size, n_cells_per_len * trials), L, segment_len=seg,
              memory=memory, what="passkey_grid")
  # each kind/format at the shortest length (longer ones only add filler)
  for k in kinds:
    for f in formats:
      L = min(lengths)
      try:
        gen(k, f, L, depths[0], rng=np.random.default_rng(0))
      except ValueError as e:
        raise ValueError(f"passkey_grid: {k}/{f} at length {L}: {e}") from e


def passkey_grid(params, config: DRTConfig, tokenizer, filler_tokens, *,
                 lengths: Sequence[int], depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                 trials: int = 10, kinds: Sequence[str] = KINDS,
                 formats: Sequence[str] = FORMATS, seed: int = 0,
                 segment_len: int | None = None, memory: str = "auto", batch_size: int = 4,
                 num_keys: int = 4, key_len: int = 5, answer_offset: int = 4,
                 progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
  """Passkey accuracy for every (kind, format, length, depth) cell, `trials` samples each.

  Returns {"cells": [{"kind", "format", "length", "depth", "trials", "first_token_accuracy",
  "whole_key_accuracy", "first_token_hits", "whole_key_hits", "key_len"}...] in the order
  kinds x formats x lengths x depths, "seconds": {str(length): s}, and the settings}.
  Scoring, sampling and batching: the module docstring. Each length's memory is checked first.
  """
  kinds, formats = list(kinds), list(formats)
  lengths = list(dict.fromkeys(int(x) for x in lengths))
  depths = list(dict.fromkeys(float(x) for x in depths))
  seg = int(segment_len or _default_segment(config))
  filler = np.asarray(filler_tokens, np.int32).reshape(-1)
  gen = functools.partial(make_grid_sample, tokenizer=tokenizer, filler_tokens=filler,
                          chunk_text=config.text_per_chunk, num_keys=num_keys, key_len=key_len,
                          answer_offset=answer_offset)
  plan_passkey_grid(config, tokenizer, filler, lengths=lengths, depths=depths, trials=trials,
                    kinds=kinds, formats=formats, segment_len=seg, memory=memory,
                    batch_size=batch_size, num_keys=num_keys, key_len=key_len,
                    answer_offset=answer_offset)

  cells = []
  for k in kinds:
    for f in formats:
      for L in lengths:
        for d in depths:
          cells.append({"kind": k, "format": f, "length": L, "depth": d, "trials": trials,
                        "first_token_hits": 0, "whole_key_hits": 0, "key_len": []})
  by_len: dict[int, list[int]] = {}
  for ci, c in enumerate(cells):
    by_len.setdefault(c["length"], []).append(ci)
  seconds = {}
  total_tokens = sum(c["length"] for c in cells) * trials
  bar = _progress(total_tokens, "passkey_grid", progress)
  done_cells = 0
  try:
    for L, cis in by_len.items():
      t0 = time.time()
      rngs = {ci: _cell_rng(seed, cells[ci]["kind"], cells[ci]["format"], L, cells[ci]["depth"])
              for ci in cis}
      tasks = [(ci, t) for ci in cis for t in range(trials)]
      left = {ci: trials for ci in cis}
      for i in range(0, len(tasks), batch_size):
        batch = tasks[i:i + batch_size]
        samples = []
        for ci, _ in batch:
          c = cells[ci]
          samples.append(gen(c["kind"], c["format"], L, c["depth"], rng=rngs[ci]))
        pos = sorted({s.answer_index + j for s in samples for j in range(len(s.key))})
        q = 1 << max(0, math.ceil(math.log2(len(pos))))
        pos_arr = np.asarray(pos + [pos[0]] * (q - len(pos)), np.int64)
        where = {p: j for j, p in enumerate(pos)}
        rows = [s.tokens for s in samples]
        if len(tasks) > batch_size:  # same batch shape for every call of this length
          rows += [rows[0]] * (batch_size - len(rows))
        lp, _ = score_logprobs_at(params, config, np.stack(rows), pos_arr, segment_len=seg,
                                  memory=memory)
        pred = np.argmax(np.asarray(lp), axis=-1)
        for r, ((ci, _), s) in enumerate(zip(batch, samples)):
          guess = np.asarray([pred[r, where[s.answer_index + j]] for j in range(len(s.key))])
          ok = guess == np.asarray(s.key)
          cells[ci]["first_token_hits"] += int(ok[0])
          cells[ci]["whole_key_hits"] += int(ok.all())
          cells[ci]["key_len"].append(len(s.key))
          left[ci] -= 1
          done_cells += left[ci] == 0
        bar.update(L * len(batch))
        bar.set_postfix(cells=f"{done_cells}/{len(cells)}", length=L)
      seconds[str(L)] = round(time.time() - t0, 3)
      if log:
        for ci in cis:
          c = cells[ci]
          log(f"passkey {c['kind']}/{c['format']} length {L} depth {c['depth']:g}: "
              f"first {c['first_token_hits']}/{trials} whole {c['whole_key_hits']}/{trials}")
  finally:
    bar.close()
  for c in cells:
    c["first_token_accuracy"] = c["first_token_hits"] / trials
    c["whole_key_accuracy"] = c["whole_key_hits"] / trials
    kl = c.pop("key_len")
    c["key_len"] = {"min": min(kl), "max": max(kl)}
  return {"cells": cells, "seconds": seconds, "kinds": kinds, "formats": formats,
          "lengths": lengths, "depths": depths, "trials": trials, "seed": seed,
          "segment_len": seg, "num_keys": num_keys, "key_len": key_len,
          "answer_offset": answer_offset, "engine": engine_name(config)}


def grid_table(result: dict, kind: str, fmt: str, metric: str = "first_token_accuracy"
               ) -> tuple[list[float], list[int], np.ndarray]:
  """(depths, lengths, acc [len(depths), len(lengths)]) of one kind/format of a grid result."""
  depths, lengths = list(result["depths"]), list(result["lengths"])
  acc = np.full((len(depths), len(lengths)), np.nan)
  for c in result["cells"]:
    if c["kind"] == kind and c["format"] == fmt:
      acc[depths.index(c["depth"]), lengths.index(c["length"])] = c[metric]
  return depths, lengths, acc


def summary(result: dict, metric: str = "first_token_accuracy") -> dict:
  """{kind: {format: {str(length): mean accuracy over depths}}} of a grid result."""
  out: dict = {}
  for k in result["kinds"]:
    for f in result["formats"]:
      depths, lengths, acc = grid_table(result, k, f, metric)
      out.setdefault(k, {})[f] = {str(L): float(np.nanmean(acc[:, j]))
                                  for j, L in enumerate(lengths)}
  return out


__all__ = ["FORMATS", "KINDS", "LengthFitError", "available_memory", "check_fit",
           "engine_name", "estimate_memory", "grid_table", "make_grid_sample", "passkey_grid",
           "ppl_vs_length", "score_logprobs_at", "score_nll", "summary"]
