"""Evaluation by full forward passes: held-out perplexity and single-needle passkey accuracy.

Every number here comes from one function, `score_fn(model, params, tokens_BxT) -> logits`:
a plain `model.apply(..., train=False)` over the whole sequence. The streaming inference engine
(a later issue) replaces it by passing its own `score=` callable of the same signature to
`Evaluator`; nothing else changes.

Perplexity (SPEC §4): the held-out stream is cut into non-overlapping windows of `seq_len + 1`
tokens (`gca_jax.data.make_eval_windows`); every target of every window is scored;
loss = total NLL / total targets, ppl = exp(loss). Windows are independent (no carried context),
so the first tokens of each window are scored with little context, as in the official eval.

Passkey (SPEC §4, official format): for each length and depth, samples from
`gca_jax.data.make_passkey_sample` (held-out text as filler, key of 5 random ordinary tokens);
a hit is `argmax(logits[answer_index]) == key[0]`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gca_jax.sharding import BATCH_AXES, batch_size_divisor
from gca_jax.train.state import mesh_context, place_batch
from gca_jax.train.step import make_eval_step

ScoreFn = Callable[[nn.Module, object, jax.Array], jax.Array]


def score_fn(model: nn.Module, params, tokens_BxT: jax.Array) -> jax.Array:
  """Logits [B, T, V] (float32) of a full, non-streaming forward pass in eval mode."""
  return model.apply({"params": params}, tokens_BxT, train=False)


def _local_rows(x: np.ndarray) -> np.ndarray:
  """This process's contiguous share of a global batch (identity on one host)."""
  pc, pi = jax.process_count(), jax.process_index()
  if pc == 1:
    return x
  b = x.shape[0] // pc
  return x[pi * b:(pi + 1) * b]


def _pad_rows(x: np.ndarray, rows: int, fill=0) -> np.ndarray:
  if x.shape[0] == rows:
    return x
  pad = np.full((rows - x.shape[0],) + x.shape[1:], fill, x.dtype)
  return np.concatenate([x, pad])


class Evaluator:
  """Jitted perplexity and passkey scoring of one model on one mesh.

  `score` defaults to `score_fn`; any callable `(model, params, tokens_BxT) -> logits_BxTxV`
  can replace it (e.g. a streaming engine).
  """

  def __init__(self, model: nn.Module, mesh: Mesh, param_shardings, *,
               score: ScoreFn = score_fn):
    self.model, self.mesh, self.score = model, mesh, score
    self.param_shardings = param_shardings
    self._ppl_steps: dict = {}
    self._pk_step = None

  def _batch_multiple(self, batch_size: int) -> int:
    d = batch_size_divisor(self.mesh) * jax.process_count() // math.gcd(
        batch_size_divisor(self.mesh), jax.process_count())
    return -(-batch_size // d) * d

  # -- perplexity -----------------------------------------------------------------------------
  def perplexity(self, params, windows: dict, batch_size: int) -> dict:
    """{"loss", "ppl", "accuracy", "tokens", "windows"} over all rows of `windows`."""
    bs = self._batch_multiple(batch_size)
    n = windows["inputs"].shape[0]
    shard = {k: NamedSharding(self.mesh, P(BATCH_AXES, None)) for k in windows}
    key = (bs, windows["inputs"].shape[1])
    if key not in self._ppl_steps:
      self._ppl_steps[key] = make_eval_step(self.model, self.mesh, self.param_shardings, shard,
                                            score=self.score)
    step = self._ppl_steps[key]
    nll = tok = correct = 0.0
    for i in range(0, n, bs):
      batch = {"inputs": _pad_rows(windows["inputs"][i:i + bs], bs),
               "targets": _pad_rows(windows["targets"][i:i + bs], bs),
               "loss_weights": _pad_rows(windows["loss_weights"][i:i + bs], bs, 0.0)}
      out = jax.device_get(step(params, place_batch(
          {k: _local_rows(v) for k, v in batch.items()}, self.mesh, shard)))
      nll += float(out["nll_sum"])
      tok += float(out["num_tokens"])
      correct += float(out["num_correct"])
    loss = nll / max(tok, 1.0)
    return {"loss": loss, "ppl": float(math.exp(min(loss, 700.0))),
            "accuracy": correct / max(tok, 1.0), "tokens": int(tok), "windows": int(n)}

  # -- passkey --------------------------------------------------------------------------------
  def _argmax_at(self):
    if self._pk_step is None:
      def f(params, tokens, index):
        logits = self.score(self.model, params, tokens)
        at = jnp.take_along_axis(logits, index[:, None, None], axis=1)[:, 0]
        return jnp.argmax(at, axis=-1).astype(jnp.int32)
      shard = NamedSharding(self.mesh, P(BATCH_AXES, None))
      jitted = jax.jit(f, in_shardings=(self.param_shardings, shard,
                                        NamedSharding(self.mesh, P(BATCH_AXES))))

      def run(params, tokens, index):
        with mesh_context(self.mesh):
          return jitted(params, tokens, index)
      self._pk_step = run
    return self._pk_step

  def predict_at(self, params, tokens: np.ndarray, index: np.ndarray, batch_size: int
                 ) -> np.ndarray:
    """argmax token at position index[b] of each row of `tokens` [N, T] (all the same T)."""
    bs = self._batch_multiple(batch_size)
    fn = self._argmax_at()
    tok_sh = NamedSharding(self.mesh, P(BATCH_AXES, None))
    idx_sh = NamedSharding(self.mesh, P(BATCH_AXES))
    out = []
    n = tokens.shape[0]
    for i in range(0, n, bs):
      t = _pad_rows(tokens[i:i + bs], bs)
      j = _pad_rows(index[i:i + bs], bs)
      tg = jax.make_array_from_process_local_data(tok_sh, _local_rows(t))
      jg = jax.make_array_from_process_local_data(idx_sh, _local_rows(j))
      pred = fn(params, tg, jg)
      pred = np.asarray(multihost_utils.process_allgather(pred, tiled=True)
                        if jax.process_count() > 1 else jax.device_get(pred))
      out.append(pred[:min(bs, n - i)])
    return np.concatenate(out)

  def passkey(self, params, tokenizer, filler_tokens: np.ndarray, lengths: Sequence[int], *,
              num_samples: int, depths: Sequence[float], batch_size: int, seed: int = 0,
              chunk_text: int = 63, key_len: int = 5, answer_offset: int = 4,
              log: Callable[[str], None] | None = None) -> dict:
    """Single-needle accuracy per length (and per depth): hit = argmax at answer == key[0].

    `num_samples` samples per (length, depth); the rng is seeded by (seed, length, depth index),
    so a given length's samples do not depend on which other lengths are evaluated.
    """
    from gca_jax.data import make_passkey_sample
    results = {}
    for length in lengths:
      toks, idx, first, dep = [], [], [], []
      for di, depth in enumerate(depths):
        rng = np.random.default_rng([seed, int(length), di])
        for _ in range(num_samples):
          s = make_passkey_sample(filler_tokens, int(length), float(depth), tokenizer, rng,
                                  key_len=key_len, chunk_text=chunk_text,
                                  answer_offset=answer_offset)
          toks.append(s.tokens)
          idx.append(s.answer_index)
          first.append(s.key[0])
          dep.append(float(depth))
      pred = self.predict_at(params, np.stack(toks).astype(np.int32),
                             np.asarray(idx, np.int32), batch_size)
      hit = pred == np.asarray(first)
      dep = np.asarray(dep)
      by_depth = {f"{d:g}": float(hit[dep == d].mean()) for d in depths}
      results[str(int(length))] = {"accuracy": float(hit.mean()), "hits": int(hit.sum()),
                                   "samples": int(hit.size), "by_depth": by_depth}
      if log:
        log(f"passkey length {length}: accuracy {hit.mean():.3f} ({hit.sum()}/{hit.size})")
    return results
