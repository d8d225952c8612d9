"""Evaluation by full forward passes on a mesh: held-out perplexity, and the passkey cross-check.

Every number here comes from one function, `score_fn(model, params, tokens_BxT) -> logits`:
a plain `model.apply(..., train=False)` over the whole sequence (any callable of that signature
can replace it, `Evaluator(score=...)`).

Perplexity (docs/method.md §4): the held-out stream is cut into non-overlapping windows of `seq_len + 1`
tokens (`gca_jax.data.make_eval_windows`); every target of every window is scored;
loss = total NLL / total targets, ppl = exp(loss). Windows are independent (no carried context),
so the first tokens of each window are scored with little context, as in the official eval.

Passkey (`Evaluator.passkey`): the same samples, batching and scorer as the streaming grid
(`gca_jax.eval.passkey.run_grid`), with the log-probs at the answer positions taken from a full
forward pass instead of the stream: a cross-check of the streaming result at lengths that fit.
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

from gca_jax.eval import passkey as pk
from gca_jax.sharding import BATCH_AXES, batch_size_divisor
from gca_jax.models.loss import loss_sums
from gca_jax.sharding import mesh_context, place_batch

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
  """Jitted perplexity and passkey scoring of one model on one mesh by full forward passes."""

  def __init__(self, model: nn.Module, mesh: Mesh, param_shardings, *,
               score: ScoreFn = score_fn):
    self.model, self.mesh, self.score = model, mesh, score
    self.param_shardings = param_shardings
    self._ppl_steps: dict = {}
    self._lp_step = None

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

  # -- log-probs at positions -----------------------------------------------------------------
  def _lp_fn(self):
    if self._lp_step is None:
      def f(params, tokens_BxT, positions_Q):
        logits = self.score(self.model, params, tokens_BxT[:, :-1])
        at = jnp.take(logits, positions_Q, axis=1).astype(jnp.float32)
        return jax.nn.log_softmax(at, axis=-1)
      shard = NamedSharding(self.mesh, P(BATCH_AXES, None))
      jitted = jax.jit(f, in_shardings=(self.param_shardings, shard,
                                        NamedSharding(self.mesh, P())))

      def run(params, tokens, positions):
        with mesh_context(self.mesh):
          return jitted(params, tokens, positions)
      self._lp_step = run
    return self._lp_step

  def logprobs_at(self, params, tokens_NxT: np.ndarray, positions_Q: np.ndarray,
                  batch_size: int) -> np.ndarray:
    """Log-probs [N, Q, V] (f32 numpy) of the token after each text position in `positions_Q`
    given the tokens up to it (inputs tokens[:, :-1], as `gca_jax.inference.stream_logprobs_at`),
    by full forward passes of `batch_size` rows (rounded up to the mesh)."""
    tokens_NxT = np.asarray(tokens_NxT, np.int32)
    pos = np.asarray(positions_Q, np.int32)
    T = tokens_NxT.shape[1]
    if pos.ndim != 1 or np.any(pos < 0) or np.any(pos >= T - 1):
      raise ValueError(f"positions must be 1-D text positions in [0, {T - 1}), got {pos}")
    bs = self._batch_multiple(batch_size)
    fn = self._lp_fn()
    tok_sh = NamedSharding(self.mesh, P(BATCH_AXES, None))
    pos_g = jax.device_put(pos, NamedSharding(self.mesh, P()))
    out = []
    n = tokens_NxT.shape[0]
    for i in range(0, n, bs):
      t = _pad_rows(tokens_NxT[i:i + bs], bs)
      tg = jax.make_array_from_process_local_data(tok_sh, _local_rows(t))
      lp = fn(params, tg, pos_g)
      lp = np.asarray(multihost_utils.process_allgather(lp, tiled=True)
                      if jax.process_count() > 1 else jax.device_get(lp))
      out.append(lp[:min(bs, n - i)])
    return np.concatenate(out)

  # -- passkey (cross-check of the streaming grid) --------------------------------------------
  def passkey(self, params, tokenizer, filler_tokens: np.ndarray, lengths: Sequence[int], *,
              trials: int, depths: Sequence[float], batch_size: int, seed: int = 0,
              kinds: Sequence[str] = ("single",), formats: Sequence[str] = ("official",),
              chunk_text: int | None = None, num_keys: int = 4, key_len: int = 5,
              answer_offset: int = 4, log: Callable[[str], None] | None = None) -> dict:
    """`gca_jax.eval.passkey.run_grid` with full-forward log-probs (same samples for the same
    seed as `gca_jax.eval.long.passkey_grid`, same scorer, same result layout, "engine":
    "full_forward"). `chunk_text` defaults to the model's `config.text_per_chunk`."""
    ct = int(chunk_text if chunk_text is not None else self.model.config.text_per_chunk)

    def logprobs_at(tokens_BxT, positions_Q):
      return self.logprobs_at(params, tokens_BxT, positions_Q, batch_size)

    out = pk.run_grid(logprobs_at, tokenizer, filler_tokens, chunk_text=ct, lengths=lengths,
                      depths=depths, trials=trials, kinds=kinds, formats=formats, seed=seed,
                      batch_size=batch_size, num_keys=num_keys, key_len=key_len,
                      answer_offset=answer_offset, log=log)
    out["engine"] = "full_forward"
    return out


__all__ = ["Evaluator", "ScoreFn", "score_fn"]


def make_eval_step(model: nn.Module, mesh: Mesh, param_shardings,
                   batch_shardings: dict, score: Callable | None = None) -> Callable:
  """Jitted `(params, batch) -> {"nll_sum", "num_tokens", "num_correct"}` (train=False), plus
  {"answer_count", "answer_correct", "answer_nll"} sums when the batch has "answer_mask".

  `score(model, params, tokens) -> logits` replaces the plain eval-mode forward if given
  (see `score_fn`).
  """
  def step(params, batch):
    nll, sums = loss_sums(model, params, batch, None, train=False, score=score)
    return {"nll_sum": nll, **sums}

  jitted = jax.jit(step, in_shardings=(param_shardings, batch_shardings))

  def run(params, batch):
    with mesh_context(mesh):
      return jitted(params, batch)

  return run
