"""Layers: retrieval (mask, empty slots, Gumbel only in training), GCA layer, RoPE precision."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import layers
from gca_jax.layers.retrieval import masked_topk_weights

unbox = flax.core.meta.unbox


def _retrieve(train, C=12, d=16, K=4, seed=0, gseed=1):
  r = np.random.default_rng(seed)
  q = jnp.asarray(r.standard_normal((2, C, d)), jnp.float32)
  lmk = jnp.asarray(r.standard_normal((2, C, d)), jnp.float32)
  mod = layers.ChunkRetriever(layers.BlockConfig(num_heads=1, head_dim=2, top_k=K))
  params = unbox(mod.init({"params": jax.random.key(0), "gumbel": jax.random.key(0)}, q, lmk))
  return mod.apply(params, q, lmk, train=train, rngs={"gumbel": jax.random.key(gseed)}), (q, lmk)


def test_retrieval_strict_causal_mask_and_empty_slots():
  (idx, w, scores), _ = _retrieve(train=False, C=12, K=4)
  idx, w = np.asarray(idx), np.asarray(w)
  C = idx.shape[1]
  for c in range(C):
    valid = w[:, c] > 0
    assert np.all(idx[:, c][valid] < c)  # strict j < c
    assert valid.sum(-1).tolist() == [min(c, 4)] * 2  # fewer than K past chunks -> weight-0 slots
    if c > 0:
      np.testing.assert_allclose(w[:, c].sum(-1), 1.0, rtol=1e-6)
  assert np.all(w[:, 0] == 0.0)  # chunk 0 has no past
  assert np.all(np.isfinite(w))


def test_eval_topk_is_plain_topk_and_weights_are_softmax_of_selected_scores():
  (idx, w, scores), _ = _retrieve(train=False, C=10, K=3)
  idx, w, s = map(np.asarray, (idx, w, scores))
  c = 9
  want = np.argsort(-s[0, c, :c])[:3]
  assert sorted(idx[0, c].tolist()) == sorted(want.tolist())
  sel = s[0, c, idx[0, c]]
  np.testing.assert_allclose(w[0, c], np.exp(sel - sel.max()) / np.exp(sel - sel.max()).sum(),
                             rtol=1e-5)


def test_gumbel_noise_only_in_training_and_only_chooses():
  (i1, w1, s1), _ = _retrieve(train=False, C=40, K=4, gseed=1)
  (i2, _, _), _ = _retrieve(train=False, C=40, K=4, gseed=2)
  np.testing.assert_array_equal(i1, i2)  # eval ignores the rng
  (t1, tw1, ts), _ = _retrieve(train=True, C=40, K=4, gseed=1)
  (t2, _, _), _ = _retrieve(train=True, C=40, K=4, gseed=2)
  assert np.any(np.asarray(t1) != np.asarray(t2))  # different noise, different choice
  assert np.any(np.asarray(t1) != np.asarray(i1))
  t1, tw1, ts = map(np.asarray, (t1, tw1, ts))
  c = 30
  sel = ts[0, c, t1[0, c]]  # weights use the raw scores of the chosen chunks, not the noise
  np.testing.assert_allclose(tw1[0, c], np.exp(sel - sel.max()) / np.exp(sel - sel.max()).sum(),
                             rtol=1e-5)
  with pytest.raises(Exception):
    q = jnp.zeros((1, 3, 16))
    mod = layers.ChunkRetriever(layers.BlockConfig(num_heads=1, head_dim=2, top_k=2))
    p = mod.init(jax.random.key(0), q, q)
    mod.apply(p, q, q, train=True)  # no "gumbel" rng


def test_masked_topk_gradients_finite_and_zero_for_masked():
  scores = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 4)), jnp.float32)
  valid = jnp.tril(jnp.ones((4, 4), bool), -1)[None]

  def f(s):
    _, w, _ = masked_topk_weights(s, valid, 3)
    return jnp.sum(w * jnp.arange(3.0))

  g = np.asarray(jax.grad(f)(scores))
  assert np.all(np.isfinite(g))
  assert np.all(g[~np.asarray(valid)] == 0.0)
  assert np.any(g != 0.0)


def test_gca_layer_zero_weights_give_zero_and_shapes():
  B, C, S, d, H = 1, 3, 8, 16, 4
  r = np.random.default_rng(0)
  x = jnp.asarray(r.standard_normal((B, C, S, d)), jnp.float32)
  km = jnp.asarray(r.standard_normal((B, C, S, H, d // H)), jnp.float32)
  vm = jnp.asarray(r.standard_normal((B, C, S, H, d // H)), jnp.float32)
  idx = jnp.asarray([[[0, 0], [0, 0], [1, 0]]], jnp.int32)
  w = jnp.asarray([[[0.0, 0.0], [1.0, 0.0], [0.5, 0.5]]], jnp.float32)
  mod = layers.GroupedCrossAttention(layers.BlockConfig(num_heads=H, head_dim=d // H))
  p = unbox(mod.init(jax.random.key(0), x, km, vm, idx, w))
  out = np.asarray(mod.apply(p, x, km, vm, idx, w))
  assert out.shape == (B, C, S, d)
  assert np.all(out[:, 0] == 0.0) and np.all(np.abs(out[:, 1:]).sum(-1) > 0)


def test_rope_float64_tables_keep_phase_at_16m_positions():
  """docs/method.md §7: SWA output at position 16M+ equals the same local text at position 0."""
  T, d = 48, 32
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, T, d)), jnp.float32)
  mod = layers.SlidingWindowAttention(layers.BlockConfig(num_heads=2, head_dim=16, window=16))
  p = unbox(mod.init(jax.random.key(0), x))
  base = np.asarray(mod.apply(p, x, np.arange(T)))
  far = np.asarray(mod.apply(p, x, np.arange(T) + 16_777_216 + 12345))
  assert np.linalg.norm(far - base) / np.linalg.norm(base) < 1e-5
  # float32 tables at that offset are visibly wrong: the test above can fail.
  bad = np.asarray(mod.apply(p, x, jnp.arange(T) + 16_777_216 + 12345))
  assert np.linalg.norm(bad - base) / np.linalg.norm(base) > 1e-3


@pytest.mark.parametrize("kw, field", [
    (dict(num_heads=0, head_dim=8), "num_heads"),
    (dict(num_heads=2, head_dim=7), "head_dim"),
    (dict(num_heads=2, head_dim=8, mlp_dim=0), "mlp_dim"),
    (dict(num_heads=2, head_dim=8, window=True), "window"),
    (dict(num_heads=2, head_dim=8, chunk_size=1), "chunk_size"),
    (dict(num_heads=2, head_dim=8, top_k=0), "top_k"),
    (dict(num_heads=2, head_dim=8, norm_eps=0.0), "norm_eps"),
    (dict(num_heads=2, head_dim=8, dtype="int32"), "dtype"),
    (dict(num_heads=2, head_dim=8, param_dtype="nope"), "param_dtype"),
    (dict(num_heads=2, head_dim=8, swa_impl="fast"), "swa_impl"),
    (dict(num_heads=2, head_dim=8, gca_impl="fast"), "gca_impl"),
    (dict(num_heads=2, head_dim=8, gca_residual="other"), "gca_residual"),
])
def test_block_config_validation_names_the_field(kw, field):
  with pytest.raises(ValueError, match=rf"BlockConfig\.{field}="):
    layers.BlockConfig(**kw)


def test_block_config_missing_field_is_named_and_config_is_hashable():
  bc = layers.BlockConfig(num_heads=2, head_dim=8)
  assert hash(bc) == hash(layers.BlockConfig(num_heads=2, head_dim=8, dtype=jnp.float32))
  x = jnp.zeros((1, 4, 16))
  with pytest.raises(ValueError, match=r"BlockConfig\.mlp_dim is None: DecoderBlock"):
    layers.DecoderBlock(bc, mode="causal").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"BlockConfig\.window is None"):
    layers.SelfAttention(bc, mode="window").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"BlockConfig\.top_k is None: ChunkRetriever"):
    layers.ChunkRetriever(bc).init(jax.random.key(0), x[:, :, :8], x[:, :, :8])


def test_blocks_from_block_config_match_the_drt_model_tree_and_output():
  """A DRT model's layers are the modules built from `DRTConfig.block_config()`: same param
  paths, shapes and dtypes as the model's subtrees, and the same output on the model's params."""
  from gca_jax import DRT, DRTConfig  # noqa: PLC0415
  cfg = DRTConfig(vocab_size=32, d_model=16, num_heads=2, mlp_dim=24, lower_layers=1,
                  upper_groups=(1,), encoder_layers=2, window=8, chunk_size=4, top_k=2,
                  dtype="float32")
  bc = cfg.block_config()
  assert bc == layers.BlockConfig(num_heads=2, head_dim=8, mlp_dim=24, window=8, chunk_size=4,
                                  top_k=2, dtype="float32")
  assert cfg.replace(model_kind="swa").block_config().top_k is None
  toks = jnp.asarray(np.random.default_rng(0).integers(0, 32, (1, 9)), jnp.int32)
  p = unbox(DRT(cfg).init(jax.random.key(0), toks))["params"]
  r = np.random.default_rng(1)
  x = jnp.asarray(r.standard_normal((1, 12, 16)), jnp.float32)
  xc = x.reshape(1, 3, 4, 16)
  km = jnp.asarray(r.standard_normal((1, 3, 4, 2, 8)), jnp.float32)
  idx = jnp.asarray([[[0, 0], [0, 0], [0, 1]]], jnp.int32)
  w = jnp.asarray([[[0.0, 0.0], [1.0, 0.0], [0.5, 0.5]]], jnp.float32)
  cases = [
      (layers.DecoderBlock(bc, mode="window"), "lower_0", (x,)),
      (layers.ChunkEncoder(bc, num_layers=cfg.encoder_layers), "encoder", (xc,)),
      (layers.UpperBlock(bc), "upper_0", (x, km, km, idx, w)),
      (layers.ChunkRetriever(bc), "retriever_0", (x[:, :3], x[:, 3:6])),
  ]
  shape = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t)
  for mod, name, args in cases:
    own = unbox(mod.init(jax.random.key(0), *args))["params"]
    assert shape(own) == shape(p[name]), name
    out = mod.apply({"params": p[name]}, *args)
    again = mod.apply({"params": jax.tree_util.tree_map(jnp.copy, p[name])}, *args)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out, again)
  attn = layers.SelfAttention(bc, mode="window")
  assert shape(unbox(attn.init(jax.random.key(0), x))["params"]) == shape(p["lower_0"]["attn"])
