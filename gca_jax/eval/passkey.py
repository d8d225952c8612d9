"""Passkey evaluation: ONE sample builder, ONE scorer, one driver for every log-prob source.

    make_grid_sample(kind, fmt, length, depth, tokenizer, filler_tokens, rng, *, chunk_text)
    score_key(logprobs_KxV, key) -> KeyScore(first, whole, nll)
    run_grid(logprobs_at, tokenizer, filler_tokens, *, chunk_text, lengths, depths, trials, ...)

Samples (docs/method.md §4; builders in `gca_jax.data.passkey`). Kinds: "single" (the official passkey, or
the Landmark-format pass key N in format "landmark"), "multikey" (`num_keys` needles, the asked
one at the cell's depth, the others at uniform random depths), "2hop" (`|DEF X->Y|` at the
cell's depth, `|DEF Y->Z|` at a uniform random depth; the answer is `Y->Z`). Formats:
"official" = real text from `filler_tokens` around the needles; "landmark" = Landmark
Attention's task line and repeated filler sentences. `chunk_text` is the model's
`DRTConfig.text_per_chunk`. Each cell's samples come from `np.random.default_rng([seed, kind id,
format id, length, round(depth * 1e6)])`, so a cell does not depend on which other cells run.

Scoring (docs/method.md §4): a sample is scored teacher-forced in one pass, the answer being part of the
input; key[j] is predicted at position answer_index + j. `score_key` takes the log-probs at those
positions (from any source: the streaming engine, a full forward pass) and the key:
first-token hit = argmax at answer_index equals key[0] (the official metric); whole-key hit =
the argmax equals key[j] for every j (so whole <= first, sample by sample); nll = mean -log p of
the key tokens.

`run_grid` batches the samples of one length (`batch_size` rows per call across cells; the last
batch is padded by repeating a row when there is more than one batch, so every call of a length
has one shape), asks `logprobs_at(tokens_BxT, positions_Q) -> [B, Q, V]` for the union of the
rows' answer positions (padded to a power of two: few compiled shapes) and scores every row with
`score_key`. The streaming grid (`gca_jax.eval.long.passkey_grid`) and the full-forward
cross-check (`gca_jax.eval.perplexity.Evaluator.passkey`) differ only in `logprobs_at`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import numpy as np

KINDS = ("single", "multikey", "2hop")
FORMATS = ("official", "landmark")
_KIND_ID = {"single": 0, "multikey": 1, "2hop": 2}
_FORMAT_ID = {"official": 0, "landmark": 1}

LogprobsAt = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------- samples


def cell_rng(seed: int, kind: str, fmt: str, length: int, depth: float) -> np.random.Generator:
  """The sample rng of one grid cell (module docstring)."""
  return np.random.default_rng([int(seed), _KIND_ID[kind], _FORMAT_ID[fmt], int(length),
                                int(round(depth * 1e6))])


def make_grid_sample(kind: str, fmt: str, length: int, depth: float, tokenizer, filler_tokens,
                     rng: np.random.Generator, *, chunk_text: int, num_keys: int = 4,
                     key_len: int = 5, answer_offset: int = 4):
  """One sample of a grid cell: an object with tokens int32[length], answer_index, key."""
  from gca_jax.data.passkey import (landmark_haystack, make_2hop_passkey_sample,
                                    make_landmark_passkey_sample, make_multikey_passkey_sample,
                                    make_passkey_sample)
  if kind not in KINDS:
    raise ValueError(f"unknown passkey kind {kind!r}; expected one of {KINDS}")
  if fmt not in FORMATS:
    raise ValueError(f"unknown passkey format {fmt!r}; expected one of {FORMATS}")
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
  depths = [depth, float(rng.uniform())]
  return make_2hop_passkey_sample(length=length, depths=depths, tokenizer=tokenizer, rng=rng,
                                  key_len=key_len, **hay, **kw)


def answer_positions(sample) -> np.ndarray:
  """Text positions whose next-token log-probs score `sample`: answer_index + j, j < len(key)."""
  return sample.answer_index + np.arange(len(sample.key))


# ----------------------------------------------------------------------------- the scorer


@dataclasses.dataclass(frozen=True)
class KeyScore:
  """first: argmax at the first answer position == key[0]; whole: every key token is the
  argmax at its position; nll: mean -log p(key[j]) over the key."""

  first: bool
  whole: bool
  nll: float


def score_key(logprobs_KxV, key: Sequence[int]) -> KeyScore:
  """Scores one sample from the log-probs [K, V] at its K = len(key) answer positions
  (`answer_positions`), whatever computed them (docs/method.md §4)."""
  lp = np.asarray(logprobs_KxV, np.float32)
  key = np.asarray(key, np.int64)
  if lp.ndim != 2 or lp.shape[0] != key.size or key.size == 0:
    raise ValueError(f"score_key: log-probs {lp.shape} must be [len(key)={key.size}, V]")
  ok = np.argmax(lp, axis=-1) == key
  nll = -float(np.mean(lp[np.arange(key.size), key]))
  return KeyScore(first=bool(ok[0]), whole=bool(ok.all()), nll=nll)


# ----------------------------------------------------------------------------- the driver


def check_grid_args(*, lengths, depths, trials: int, kinds, formats, batch_size: int,
                    num_keys: int) -> tuple[list, list, list, list]:
  """Validated (kinds, formats, lengths, depths) lists (duplicates dropped); ValueError naming
  the argument otherwise."""
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
    raise ValueError("passkey: kinds, formats, lengths and depths must be non-empty")
  if any(not 0.0 <= x <= 1.0 for x in depths):
    raise ValueError(f"passkey: depths {depths} must lie in [0, 1]")
  if trials < 1 or batch_size < 1:
    raise ValueError(f"passkey: trials={trials} and batch_size={batch_size} must be >= 1")
  if "multikey" in kinds and num_keys < 1:
    raise ValueError(f"passkey: num_keys={num_keys} must be >= 1")
  return kinds, formats, lengths, depths


def check_samples(tokenizer, filler_tokens, *, chunk_text: int, kinds, formats, lengths, depths,
                  **sample_kw) -> None:
  """Builds each kind/format once at the shortest length (longer ones only add filler); a
  ValueError names the cell that cannot be built."""
  L = min(lengths)
  for k in kinds:
    for f in formats:
      try:
        make_grid_sample(k, f, L, depths[0], tokenizer, filler_tokens, np.random.default_rng(0),
                         chunk_text=chunk_text, **sample_kw)
      except ValueError as e:
        raise ValueError(f"passkey: {k}/{f} at length {L}: {e}") from e


def run_grid(logprobs_at: LogprobsAt, tokenizer, filler_tokens, *, chunk_text: int,
             lengths: Sequence[int], depths: Sequence[float], trials: int,
             kinds: Sequence[str] = KINDS, formats: Sequence[str] = FORMATS, seed: int = 0,
             batch_size: int = 4, num_keys: int = 4, key_len: int = 5, answer_offset: int = 4,
             on_batch: Callable[[int, int], None] | None = None,
             log: Callable[[str], None] | None = None) -> dict:
  """Passkey accuracy for every (kind, format, length, depth) cell, `trials` samples each, with
  log-probs from `logprobs_at` (module docstring).

  Returns {"cells": [{"kind", "format", "length", "depth", "trials", "first_token_hits",
  "whole_key_hits", "first_token_accuracy", "whole_key_accuracy", "key_nll", "key_len":
  {"min", "max"}}...] in the order kinds x formats x lengths x depths, "seconds":
  {str(length): s}, and the settings}. `on_batch(length, rows)` is called after each call.
  """
  sample_kw = dict(num_keys=num_keys, key_len=key_len, answer_offset=answer_offset)
  kinds, formats, lengths, depths = check_grid_args(
      lengths=lengths, depths=depths, trials=trials, kinds=kinds, formats=formats,
      batch_size=batch_size, num_keys=num_keys)
  filler = np.asarray(filler_tokens, np.int32).reshape(-1)
  check_samples(tokenizer, filler, chunk_text=chunk_text, kinds=kinds, formats=formats,
                lengths=lengths, depths=depths, **sample_kw)
  cells = [{"kind": k, "format": f, "length": L, "depth": d, "trials": trials,
            "first_token_hits": 0, "whole_key_hits": 0, "key_nll": 0.0, "key_len": []}
           for k in kinds for f in formats for L in lengths for d in depths]
  by_len: dict[int, list[int]] = {}
  for ci, c in enumerate(cells):
    by_len.setdefault(c["length"], []).append(ci)
  seconds = {}
  for L, cis in by_len.items():
    t0 = time.time()
    rngs = {ci: cell_rng(seed, cells[ci]["kind"], cells[ci]["format"], L, cells[ci]["depth"])
            for ci in cis}
    tasks = [ci for ci in cis for _ in range(trials)]
    for i in range(0, len(tasks), batch_size):
      batch = tasks[i:i + batch_size]
      samples = [make_grid_sample(cells[ci]["kind"], cells[ci]["format"], L, cells[ci]["depth"],
                                  tokenizer, filler, rngs[ci], chunk_text=chunk_text,
                                  **sample_kw) for ci in batch]
      pos = sorted({int(p) for s in samples for p in answer_positions(s)})
      q = 1 << max(0, math.ceil(math.log2(len(pos))))
      pos_arr = np.asarray(pos + [pos[0]] * (q - len(pos)), np.int64)
      where = {p: j for j, p in enumerate(pos)}
      rows = [s.tokens for s in samples]
      if len(tasks) > batch_size:  # one batch shape for every call of this length
        rows += [rows[0]] * (batch_size - len(rows))
      lp = np.asarray(logprobs_at(np.stack(rows).astype(np.int32), pos_arr))
      for r, (ci, s) in enumerate(zip(batch, samples)):
        sc = score_key(lp[r, [where[int(p)] for p in answer_positions(s)]], s.key)
        c = cells[ci]
        c["first_token_hits"] += int(sc.first)
        c["whole_key_hits"] += int(sc.whole)
        c["key_nll"] += sc.nll / trials
        c["key_len"].append(len(s.key))
      if on_batch:
        on_batch(L, len(batch))
    seconds[str(L)] = round(time.time() - t0, 3)
    if log:
      for ci in cis:
        c = cells[ci]
        log(f"passkey {c['kind']}/{c['format']} length {L} depth {c['depth']:g}: "
            f"first {c['first_token_hits']}/{trials} whole {c['whole_key_hits']}/{trials}")
  for c in cells:
    c["first_token_accuracy"] = c["first_token_hits"] / trials
    c["whole_key_accuracy"] = c["whole_key_hits"] / trials
    kl = c.pop("key_len")
    c["key_len"] = {"min": min(kl), "max": max(kl)}
  return {"cells": cells, "seconds": seconds, "kinds": kinds, "formats": formats,
          "lengths": lengths, "depths": depths, "trials": trials, "seed": seed,
          "num_keys": num_keys, "key_len": key_len, "answer_offset": answer_offset}


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
      _, lengths, acc = grid_table(result, k, f, metric)
      out.setdefault(k, {})[f] = {str(L): float(np.nanmean(acc[:, j]))
                                  for j, L in enumerate(lengths)}
  return out


__all__ = ["FORMATS", "KINDS", "KeyScore", "answer_positions", "cell_rng", "check_grid_args",
           "check_samples", "grid_table", "make_grid_sample", "run_grid", "score_key", "summary"]
