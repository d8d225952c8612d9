"""Shared by the streaming tests: random params of a small model and its full-forward reference."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from gca_jax import DRT

_CACHE: dict = {}


def full_forward_setup(cfg, T, B=2, seed=0, params_fn=None):
  """(params, tokens [B, T], reference NLL [B, T-1], log-probs [B, T-1, V]) of `DRT(cfg)` on
  random tokens (cached per arguments). `params_fn` rewrites the initial params first."""
  key = (cfg, T, B, seed, params_fn)
  if key not in _CACHE:
    toks = jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size)
    params = flax.core.meta.unbox(DRT(cfg).init({"params": jax.random.key(1)}, toks)["params"])
    if params_fn is not None:
      params = params_fn(params)
    logits = DRT(cfg).apply({"params": params}, toks[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    ref = -jnp.take_along_axis(logp, toks[:, 1:, None], axis=-1)[..., 0]
    _CACHE[key] = params, toks, np.asarray(ref), np.asarray(logp)
  return _CACHE[key]
