"""Landmark Attention baseline (docs/method.md §6): grouped-softmax op vs a loop reference, model causality."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig, cross_entropy_loss
from gca_jax.ops.landmark import (landmark_attention, landmark_attention_loop, landmark_weights,
                                  landmark_weights_loop)

unbox = flax.core.meta.unbox


def _qkv(B, T, H, D, seed=0, scale=1.0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return tuple(scale * jax.random.normal(k, (B, T, H, D), jnp.float32) for k in ks)


@pytest.mark.parametrize("T,S", [(12, 4), (10, 4), (15, 5), (7, 2)])
def test_weights_sum_to_one_and_match_loop(T, S):
  q, k, _ = _qkv(2, T, 2, 8, seed=T, scale=1.5)
  w = np.asarray(landmark_weights(q, k, S))
  ref = landmark_weights_loop(q, k, S)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-7)
  # Structure: causal, landmark keys never read, own landmark excluded.
  i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
  assert np.all(w[..., j > i] == 0)
  assert np.all(w[..., np.arange(T) % S == S - 1] == 0)
  # Previous blocks are reached (gated) by queries of later blocks.
  assert np.all(w[..., S:, 0] > 0)


def test_output_matches_loop():
  q, k, v = _qkv(2, 13, 3, 8, seed=3)
  o = np.asarray(landmark_attention(q, k, v, 4))
  ref = landmark_attention_loop(q, k, v, 4)
  np.testing.assert_allclose(o, ref, rtol=1e-5, atol=1e-6)
  rel = np.linalg.norm(o - ref) / np.linalg.norm(ref)
  assert rel < 1e-5


def test_single_block_is_causal_softmax_without_landmark():
  q, k, v = _qkv(1, 6, 2, 8, seed=4)
  S = 8  # one partial block, no landmark: plain causal attention
  o = np.asarray(landmark_attention(q, k, v, S))
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
  s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(o, np.einsum("bhqk,bkhd->bqhd", p, v), rtol=1e-5, atol=1e-6)


def small_cfg(**kw):
  base = dict(vocab_size=97, d_model=32, num_heads=4, mlp_dim=64, lower_layers=1,
              upper_groups=(1,), encoder_layers=1, chunk_size=8, model_kind="landmark",
              dtype="float32")
  base.update(kw)
  return DRTConfig(**base)


def _init(cfg, T, B=1, seed=0):
  toks = jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size)
  params = unbox(DRT(cfg).init(jax.random.key(1), toks)["params"])
  return params, toks


def test_model_params_and_shapes():
  cfg = small_cfg()
  params, toks = _init(cfg, T=30, B=2)
  assert "landmark" in params and "encoder" not in params
  assert sorted(k for k in params if k.startswith("layer_")) == ["layer_0", "layer_1"]
  out = DRT(cfg).apply({"params": params}, toks)
  assert out.shape == (2, 30, 97) and np.all(np.isfinite(np.asarray(out)))


def test_causality_gradient_exactly_zero():
  cfg = small_cfg()
  L = cfg.text_per_chunk
  T = L * 5 + 3
  params, toks = _init(cfg, T=T)
  emb = jnp.take(params["embedding"], toks, axis=0)
  model = DRT(cfg)

  def loss_at(e, t):
    logits = model.apply({"params": params}, toks, embeddings_BxTxd=e)
    return jax.nn.log_softmax(logits[0, t])[toks[0, t + 1]]

  grad = jax.jit(jax.grad(loss_at))  # t traced: one compilation
  for t in (0, L - 1, L, 2 * L + 3, T - 2):
    g = np.asarray(grad(emb, jnp.int32(t)))[0]
    assert np.all(g[t + 1:] == 0.0), f"future leak at t={t}"
    assert np.abs(g[t]).sum() > 0
    if t >= L:
      assert np.abs(g[:L]).sum() > 0  # earlier blocks reach t through their landmark gates


def test_train_step_finite():
  cfg = small_cfg()
  params, toks = _init(cfg, T=41, B=2)

  def loss(p):
    return cross_entropy_loss(DRT(cfg).apply({"params": p}, toks[:, :-1], train=True),
                              toks[:, 1:])[0]

  val, grads = jax.value_and_grad(loss)(params)
  assert np.isfinite(float(val))
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  assert np.abs(np.asarray(grads["landmark"])).sum() > 0
  new = jax.tree_util.tree_map(lambda p, g: p - 1e-2 * g, params, grads)
  assert float(loss(new)) < float(val)


def test_config_accepts_landmark():
  cfg = small_cfg()
  assert cfg.model_kind == "landmark" and cfg.text_per_chunk == 7
  assert DRTConfig.from_dict(cfg.to_dict()) == cfg
  assert DRTConfig(model_kind="landmark").text_per_chunk == 63
  assert small_cfg(baseline_extra_layers=1).num_layers == 3
