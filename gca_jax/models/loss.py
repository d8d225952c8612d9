"""Language-model loss over text tokens (docs/method.md §2.6)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gca_jax.ops.lm_loss import LMLossBlocks, lm_head_loss

# Block sizes of the fused loss (loss_impl="fused"): tokens per block (x V float32 logits each).
FUSED_BLOCKS = LMLossBlocks(block_tokens=8192, block_vocab=None)


def cross_entropy_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                       weights_BxT: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """Weighted mean next-token cross-entropy, computed in float32.

  `logits_BxTxV` are the text-token logits returned by `DRT` (landmarks already removed);
  `weights_BxT` is 0 where a target must not be scored (padding, text after a passkey answer).
  Returns `(loss, {"loss", "nll_sum", "num_tokens", "accuracy"})`.
  """
  logits = logits_BxTxV.astype(jnp.float32)
  if weights_BxT is None:
    weights_BxT = jnp.ones(targets_BxT.shape, jnp.float32)
  w = weights_BxT.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
  nll = logz - tgt
  n = jnp.sum(w)
  nll_sum = jnp.sum(nll * w)
  loss = nll_sum / jnp.maximum(n, 1.0)
  correct = (jnp.argmax(logits, axis=-1) == targets_BxT).astype(jnp.float32)
  acc = jnp.sum(correct * w) / jnp.maximum(n, 1.0)
  return loss, {"loss": loss, "nll_sum": nll_sum, "num_tokens": n, "accuracy": acc}


def _impl(model: nn.Module) -> str:
  """config.loss_impl of a DRT-like model ("logits" for a model without one)."""
  return getattr(getattr(model, "config", None), "loss_impl", "logits")


def _fused(model: nn.Module, params, batch, w_BxT, rngs, train: bool):
  """(nll_sum, hit_BxT, nll_BxT) from the hidden states and `lm_head_loss`."""
  h = model.apply({"params": params}, batch["inputs"], train=train, rngs=rngs, return_hidden=True)
  blk = FUSED_BLOCKS
  out = lm_head_loss(h, nn.meta.unbox(params["embedding"]), batch["targets"], w_BxT,
                     block_tokens=blk.block_tokens, block_vocab=blk.block_vocab)
  return out.nll_sum, (out.argmax == batch["targets"]).astype(jnp.float32), out.nll


# The sample kinds of `gca_jax.data.recall` (KIND_SINGLE .. KIND_2HOP) by name.
ANSWER_KINDS = (("single", 1), ("named", 2), ("multikey", 3), ("2hop", 4))


def answer_sum_keys(batch) -> tuple[str, ...]:
  """The answer sums `loss_sums` returns for `batch` (beside num_tokens / num_correct)."""
  if "answer_mask" not in batch:
    return ()
  keys = ("answer_count", "answer_correct", "answer_nll")
  if "answer_kind" in batch:
    keys += tuple(f"answer_{w}_{n}" for n, _ in ANSWER_KINDS for w in ("count", "correct"))
  return keys


def loss_sums(model: nn.Module, params, batch, key, train: bool = True, score=None):
  """(nll_sum, sums) of one (micro)batch: the weighted NLL sum (the loss numerator) and a dict
  of sums {"num_tokens" (weight sum), "num_correct"} plus, when the batch has "answer_mask"
  (1 at the target of each answer's first token: recall / passkey samples),
  {"answer_count", "answer_correct" (argmax hits), "answer_nll"} over those targets, and with an
  "answer_kind" (int32 [B, T], the sample kind at each answer, `ANSWER_KINDS`) also
  "answer_count_<kind>" / "answer_correct_<kind>" per kind.

  `model.config.loss_impl` (docs/method.md §2.6): "fused" runs the model with
  `return_hidden=True` and the blockwise `gca_jax.ops.lm_head_loss` on its tied embedding
  (no [B,T,V] float32 logits); "logits" (and any `score`, which returns logits) the logits and
  `cross_entropy_loss`. Both give the same sums."""
  rngs = {"gumbel": key} if train else None
  if score is None and _impl(model) == "fused":
    w = batch["loss_weights"].astype(jnp.float32)
    nll_sum, hit, nll = _fused(model, params, batch, w, rngs, train)
    sums = {"num_tokens": jnp.sum(w), "num_correct": jnp.sum(hit * w)}
  else:
    if score is not None:
      logits = score(model, params, batch["inputs"])
    else:
      logits = model.apply({"params": params}, batch["inputs"], train=train, rngs=rngs)
    _, m = cross_entropy_loss(logits, batch["targets"], batch["loss_weights"])
    nll_sum, n = m["nll_sum"], m["num_tokens"]
    sums = {"num_tokens": n, "num_correct": m["accuracy"] * jnp.maximum(n, 1.0)}
    if "answer_mask" in batch:
      lg = jax.lax.stop_gradient(logits).astype(jnp.float32)
      tgt = batch["targets"][..., None].astype(jnp.int32)
      nll = jax.nn.logsumexp(lg, axis=-1) - jnp.take_along_axis(lg, tgt, axis=-1)[..., 0]
      hit = (jnp.argmax(lg, axis=-1) == batch["targets"]).astype(jnp.float32)
  if "answer_mask" in batch:
    mask = batch["answer_mask"].astype(jnp.float32)
    sums.update(answer_count=jnp.sum(mask), answer_correct=jnp.sum(hit * mask),
                answer_nll=jnp.sum(nll * mask))
    if "answer_kind" in batch:
      for name, k in ANSWER_KINDS:
        mk = mask * (batch["answer_kind"] == k).astype(jnp.float32)
        sums[f"answer_count_{name}"] = jnp.sum(mk)
        sums[f"answer_correct_{name}"] = jnp.sum(hit * mk)
  return nll_sum, sums
