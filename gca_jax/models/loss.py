"""Language-model loss over text tokens (SPEC §2.6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
