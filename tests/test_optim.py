"""Optimizer: schedule shape, AdamW + clipping against a NumPy reference, decay masks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gca_jax.train.optim import make_optimizer, make_schedule, warmup_steps


def _cfg(**kw):
  d = dict(steps=100, lr=2e-3, lr_end_frac=0.0, warmup_frac=0.02, b1=0.9, b2=0.95, eps=1e-8,
           weight_decay=1e-3, weight_decay_mask="all", clip=1.0)
  d.update(kw)
  return ml_collections.ConfigDict(d)


def test_schedule_warmup_then_cosine():
  s = make_schedule(_cfg(steps=1000, warmup_frac=0.02))
  assert warmup_steps(1000, 0.02) == 20
  np.testing.assert_allclose(float(s(0)), 0.0)
  np.testing.assert_allclose(float(s(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(s(20)), 2e-3, rtol=1e-6)
  mid = 20 + (1000 - 20) / 2
  np.testing.assert_allclose(float(s(mid)), 1e-3, rtol=1e-4)  # cosine half-way
  np.testing.assert_allclose(float(s(1000)), 0.0, atol=1e-9)
  lrs = np.asarray([float(s(i)) for i in range(20, 1001, 7)])
  assert np.all(np.diff(lrs) <= 1e-12)  # monotone decay after warmup


def test_schedule_end_fraction_and_edge_cases():
  s = make_schedule(_cfg(steps=100, lr_end_frac=0.1, warmup_frac=0.0))
  np.testing.assert_allclose(float(s(0)), 2e-3, rtol=1e-6)  # no warmup: peak at once
  np.testing.assert_allclose(float(s(100)), 2e-4, rtol=1e-5)
  s = make_schedule(_cfg(steps=10, warmup_frac=1.0))  # all warmup
  np.testing.assert_allclose(float(s(5)), 1e-3, rtol=1e-6)


def _reference_adamw(params, grads_seq, lr_fn, b1, b2, eps, wd, clip):
  """PyTorch-style AdamW with global-norm clipping, in float64 NumPy."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, g in enumerate(grads_seq, start=1):
    g = {k: x.astype(np.float64) for k, x in g.items()}
    norm = np.sqrt(sum(np.sum(x * x) for x in g.values()))
    if clip > 0 and norm > clip:
      g = {k: x * clip / norm for k, x in g.items()}
    lr = lr_fn(t - 1)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      mhat = m[k] / (1 - b1 ** t)
      vhat = v[k] / (1 - b2 ** t)
      p[k] = p[k] - lr * (mhat / (np.sqrt(vhat) + eps) + wd * p[k])
  return p


def test_adamw_with_clipping_matches_reference():
  cfg = _cfg(steps=8, warmup_frac=0.25, weight_decay=0.1, clip=1.0)
  tx, sched = make_optimizer(cfg)
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(4, 3)).astype(np.float32),
            "scale": np.ones(3, np.float32)}
  # gradient norms far above and below the clip threshold, so clipping matters across steps
  grads_seq = [{k: (rng.normal(size=x.shape) * s).astype(np.float32) for k, x in params.items()}
               for s in (10.0, 0.1, 5.0, 0.01, 3.0, 0.5)]
  p = jax.tree.map(jnp.asarray, params)
  st = tx.init(p)
  for g in grads_seq:
    u, st = tx.update(jax.tree.map(jnp.asarray, g), st, p)
    p = optax.apply_updates(p, u)
  ref = _reference_adamw(params, grads_seq, lambda i: float(sched(i)), 0.9, 0.95, 1e-8, 0.1, 1.0)
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-5, atol=1e-6)


def test_weight_decay_masks():
  params = {"embedding": jnp.ones((5, 4)), "layer": {"kernel": jnp.ones((4, 4)),
                                                     "norm": {"scale": jnp.ones(4)}}}
  zeros = jax.tree.map(jnp.zeros_like, params)

  def step(mask):
    tx, _ = make_optimizer(_cfg(weight_decay=0.5, warmup_frac=0.0, weight_decay_mask=mask))
    u, _ = tx.update(zeros, tx.init(params), params)
    return jax.tree.map(lambda x: float(x.reshape(-1)[0]), u)

  all_ = step("all")  # SPEC: the official code decays every parameter
  assert all(v < 0 for v in jax.tree.leaves(all_))
  mat = step("matrices")
  assert mat["layer"]["kernel"] < 0
  assert mat["embedding"] == 0.0 and mat["layer"]["norm"]["scale"] == 0.0
  with pytest.raises(ValueError, match="weight_decay_mask"):
    make_optimizer(_cfg(weight_decay_mask="bogus"))


def test_clip_disabled():
  tx, _ = make_optimizer(_cfg(clip=0.0))
  assert len(tx.init({"w": jnp.ones(2)})) == 1  # adamw only, no clipping stage
