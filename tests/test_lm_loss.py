"""The fused LM head + cross-entropy (gca_jax/ops/lm_loss.py) against its materialised reference,
its memory (no [N, V] float32 array), and loss_sums with config.model.loss_impl "fused" vs
"logits" on tiny DRT / SWA / landmark models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, ConfigError, DRTConfig
from gca_jax.models.drt import tied_head
from gca_jax.models.loss import loss_sums
from gca_jax.ops import LMLossBlocks, lm_head_loss, lm_head_loss_reference


def _inputs(shape, D, V, dtype, seed=0, zero_frac=0.3):
  k = jax.random.split(jax.random.key(seed), 4)
  h = jax.random.normal(k[0], shape + (D,), jnp.float32).astype(dtype)
  emb = jax.random.normal(k[1], (V, D), jnp.float32) * 0.7
  t = jax.random.randint(k[2], shape, 0, V)
  w = jnp.where(jax.random.uniform(k[3], shape) < zero_frac, 0.0,
                1.0 + jax.random.uniform(k[3], shape))
  return h, emb, t, w


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _grads(fn, h, emb, t, w):
  return jax.grad(lambda h, e, w: fn(h, e, t, w).nll_sum, (0, 1, 2))(h, emb, w)


CASES = [  # (token shape, D, V, block_tokens, block_vocab)
    ((3, 37), 16, 101, 20, None),     # T=37 in blocks of 6-7 rows x 3: padded last block
    ((3, 37), 16, 101, 20, 17),       # V=101 in 6 vocab blocks of 17: padded last one
    ((2, 50), 8, 64, 1000, None),     # one block
    ((2, 50), 8, 64, 2, 64),          # one row per block (block_tokens < leading size)
    ((45,), 12, 33, 8, 10),           # [N, D] input
]


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)],
                         ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}_V{c[2]}_bt{c[3]}_bv{c[4]}")
def test_forward_and_gradients_match_reference(case, dtype, tol):
  shape, D, V, bt, bv = case
  h, emb, t, w = _inputs(shape, D, V, dtype)
  fused = lambda h, e, t, w: lm_head_loss(h, e, t, w, block_tokens=bt, block_vocab=bv)
  a, r = fused(h, emb, t, w), lm_head_loss_reference(h, emb, t, w)
  assert a.nll.shape == a.argmax.shape == shape and a.argmax.dtype == jnp.int32
  assert _rel(a.nll_sum, r.nll_sum) <= tol
  assert _rel(a.nll, r.nll) <= tol
  agree = float(jnp.mean((a.argmax == r.argmax).astype(jnp.float32)))
  assert agree == 1.0 if dtype == jnp.float32 else agree >= 0.97
  ga, gr = _grads(fused, h, emb, t, w), _grads(lm_head_loss_reference, h, emb, t, w)
  for name, x, y in zip(("dh", "demb", "dweights"), ga, gr):
    assert x.dtype == y.dtype and x.shape == y.shape, name
    assert bool(jnp.all(jnp.isfinite(x))), name
    assert _rel(x, y) <= tol, (name, _rel(x, y))
  # the gradient scales with the cotangent (the backward is not a constant)
  g3 = jax.grad(lambda h: 3.0 * fused(h, emb, t, w).nll_sum)(h)
  assert _rel(g3, 3.0 * ga[0].astype(jnp.float32)) <= tol


def test_unit_weights_default_and_accuracy_input():
  h, emb, t, _ = _inputs((2, 9), 8, 20, jnp.float32)
  a = lm_head_loss(h, emb, t, block_tokens=4)
  r = lm_head_loss_reference(h, emb, t, jnp.ones(t.shape))
  assert _rel(a.nll_sum, r.nll_sum) <= 1e-6
  logits = jnp.einsum("btd,vd->btv", h, emb)
  np.testing.assert_array_equal(a.argmax, jnp.argmax(logits, -1))
  # targets = the argmax: nll is the smallest possible (every hit), nll_sum = Σ nll
  b = lm_head_loss(h, emb, a.argmax, block_tokens=4)
  assert bool(jnp.all(b.nll <= a.nll + 1e-6)) and _rel(b.nll_sum, jnp.sum(b.nll)) <= 1e-6


@pytest.mark.parametrize("bv", [None, 7])
def test_zero_weight_tokens_never_poison(bv):
  """Rows of weight 0 whose hidden state is NaN / inf: the loss and every gradient are those of
  the finite rows alone, and their dh rows are exactly 0 (the reference would give NaN)."""
  h, emb, t, w = _inputs((2, 13), 8, 30, jnp.float32)
  bad = jnp.zeros(t.shape, bool).at[0, 3].set(True).at[1, 12].set(True).at[1, 0].set(True)
  w = jnp.where(bad, 0.0, jnp.maximum(w, 0.5))
  poisoned = jnp.where(bad[..., None], jnp.array([jnp.nan, jnp.inf] * 4), h)
  fused = lambda h, e, t, w: lm_head_loss(h, e, t, w, block_tokens=10, block_vocab=bv)
  a = fused(poisoned, emb, t, w)
  r = lm_head_loss_reference(h, emb, t, w)
  assert np.isfinite(float(a.nll_sum)) and _rel(a.nll_sum, r.nll_sum) <= 1e-5
  dh, demb, _ = _grads(fused, poisoned, emb, t, w)
  rh, remb, _ = _grads(lm_head_loss_reference, h, emb, t, w)
  assert bool(jnp.all(dh[bad] == 0)) and bool(jnp.all(jnp.isfinite(dh)))
  assert _rel(dh, rh) <= 1e-5 and _rel(demb, remb) <= 1e-5
  rp = _grads(lm_head_loss_reference, poisoned, emb, t, w)[1]
  assert not bool(jnp.all(jnp.isfinite(rp)))  # the property is not free


def _avals(jaxpr):
  """Every variable aval of a closed jaxpr, sub-jaxprs (scan / custom_vjp bodies) included."""
  out = []

  def walk(j):
    for v in list(j.invars) + list(j.constvars):
      out.append(v.aval)
    for eqn in j.eqns:
      out.extend(v.aval for v in eqn.outvars)
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (tuple, list)) else (p,)):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub)
  walk(jaxpr.jaxpr)
  return out


def _largest_f32(fn, *args):
  """Elements of the largest float32 array in the jaxpr of value_and_grad(fn)."""
  jp = jax.make_jaxpr(jax.value_and_grad(fn, (0, 1)))(*args)
  return max(int(np.prod(a.shape)) for a in _avals(jp)
             if hasattr(a, "shape") and a.dtype == jnp.float32)


def test_no_materialised_logits_in_forward_and_backward():
  """value_and_grad of the fused loss holds no float32 array of N*V elements (the largest is
  one [block, V] block), the reference does; XLA's compiled temp memory agrees."""
  B, T, D, V, bt = 2, 64, 16, 512, 32
  h, emb, t, w = _inputs((B, T), D, V, jnp.bfloat16)
  fused = lambda h, e: lm_head_loss(h, e, t, w, block_tokens=bt).nll_sum
  ref = lambda h, e: lm_head_loss_reference(h, e, t, w).nll_sum
  NV = B * T * V
  assert _largest_f32(ref, h, emb) >= NV
  assert _largest_f32(fused, h, emb) == bt * V  # [2, 16, 512]: one block of logits
  vb = lambda h, e: lm_head_loss(h, e, t, w, block_tokens=bt, block_vocab=128).nll_sum
  assert _largest_f32(vb, h, emb) == max(bt * 128, V * D)  # a vocab block, or demb [V, D]

  def temp(fn):
    c = jax.jit(jax.value_and_grad(fn, (0, 1))).lower(h, emb).compile()
    return c.memory_analysis().temp_size_in_bytes
  assert temp(ref) >= 4 * NV
  assert temp(fused) < 4 * NV / 2


def test_argument_errors_name_the_field():
  h, emb, t, w = _inputs((2, 5), 8, 20, jnp.float32)
  with pytest.raises(ValueError, match="block_tokens=0"):
    lm_head_loss(h, emb, t, w, block_tokens=0)
  with pytest.raises(ValueError, match="block_vocab=-1"):
    LMLossBlocks(8, -1)
  with pytest.raises(ValueError, match="impl='pallas'"):
    lm_head_loss(h, emb, t, w, impl="pallas")
  with pytest.raises(ValueError, match="targets"):
    lm_head_loss(h, emb, t[:, :4], w)
  with pytest.raises(ValueError, match="emb"):
    lm_head_loss(h, emb[:, :4], t, w)
  r = lm_head_loss(h, emb, t, w, impl="reference")
  assert _rel(r.nll_sum, lm_head_loss_reference(h, emb, t, w).nll_sum) == 0.0


def test_config_loss_impl_validated():
  assert DRTConfig().loss_impl == "fused"
  with pytest.raises(ConfigError, match=r"loss_impl='chunked'.*\('logits', 'fused'\)"):
    DRTConfig(loss_impl="chunked")
  from gca_jax.train.run_config import RunConfigError, base_config, model_config
  c = base_config()
  c.model.loss_impl = "nope"
  with pytest.raises(RunConfigError, match="config.model.loss_impl='nope'"):
    model_config(c)


TINY = dict(vocab_size=300, d_model=32, num_heads=2, mlp_dim=64, lower_layers=1,
            upper_groups=(1,), encoder_layers=1, window=16, chunk_size=8, top_k=2,
            dtype="float32", param_dtype="float32")


def _batch(B=2, T=30, V=300, seed=0):
  rng = np.random.default_rng(seed)
  toks = rng.integers(0, V, (B, T + 1)).astype(np.int32)
  w = np.ones((B, T), np.float32)
  w[0, 20:] = 0.0
  w[1, 5] = 3.0
  ans = np.zeros((B, T), np.float32)
  ans[:, [3, 11, 25]] = 1.0
  return {"inputs": jnp.asarray(toks[:, :-1]), "targets": jnp.asarray(toks[:, 1:]),
          "loss_weights": jnp.asarray(w), "answer_mask": jnp.asarray(ans)}


@pytest.mark.parametrize("kind", ["drt", "swa", "landmark"])
def test_loss_sums_fused_equals_logits(kind, monkeypatch):
  """loss_sums with loss_impl "fused" vs "logits": the loss, every metric sum (answer metrics
  included) and every gradient leaf within 1e-5 (float32); the fused step holds no [B,T,V]
  float32 array, the logits step does."""
  from gca_jax.models import loss as loss_mod
  monkeypatch.setattr(loss_mod, "FUSED_BLOCKS", LMLossBlocks(block_tokens=16, block_vocab=None))
  cfg = DRTConfig(**TINY, model_kind=kind)
  batch = _batch()
  model = DRT(cfg)
  params = nn.meta.unbox(model.init(jax.random.key(1), batch["inputs"])["params"])
  key = jax.random.key(7)
  vg = lambda c: jax.value_and_grad(
      lambda p: loss_sums(DRT(c), p, batch, key), has_aux=True)(params)
  (n1, s1), g1 = vg(cfg.replace(loss_impl="logits"))
  (n2, s2), g2 = vg(cfg.replace(loss_impl="fused"))
  assert _rel(n2, n1) <= 1e-5
  assert set(s1) == set(s2) == {"num_tokens", "num_correct", "answer_count", "answer_correct",
                                "answer_nll"}
  for k in s1:
    assert abs(float(s2[k]) - float(s1[k])) <= 1e-5 * max(1.0, abs(float(s1[k]))), k
  assert float(s1["answer_count"]) == 6.0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g2), jax.tree.leaves(g1)):
    assert _rel(a, b) <= 1e-5, (jax.tree_util.keystr(path), _rel(a, b))
  BTV = 2 * 30 * 300

  def biggest(c):
    jp = jax.make_jaxpr(lambda p: jax.grad(
        lambda p: loss_sums(DRT(c), p, batch, key)[0])(p))(params)
    return max(int(np.prod(a.shape)) for a in _avals(jp) if a.dtype == jnp.float32
               and hasattr(a, "shape") and a.shape[-1:] == (300,))
  assert biggest(cfg.replace(loss_impl="logits")) >= BTV
  assert biggest(cfg.replace(loss_impl="fused")) == 2 * 8 * 300  # blocks of 2 x 8 tokens


def test_return_hidden_gives_the_head_input():
  cfg = DRTConfig(**TINY)
  batch = _batch()
  model = DRT(cfg)
  params = nn.meta.unbox(model.init(jax.random.key(1), batch["inputs"])["params"])
  h = model.apply({"params": params}, batch["inputs"], return_hidden=True)
  assert h.shape == (2, 30, 32)
  logits = model.apply({"params": params}, batch["inputs"])
  np.testing.assert_allclose(tied_head(h, params["embedding"]), logits, rtol=1e-6, atol=1e-6)
  from gca_jax.layers.stream import StreamSpec
  with pytest.raises(ValueError, match="return_hidden must be False"):
    model.apply({"params": params}, batch["inputs"], stream=StreamSpec(64), return_hidden=True)


def test_bench_summary_compares_the_same_loss_impl():
  import os
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "bench"))
  from train_step import summarize
  res = {"drt@logits": {"step_ms_median": 180.0, "mfu": 0.3, "peak_GiB": 40.0},
         "drt@fused": {"step_ms_median": 150.0, "mfu": 0.36, "peak_GiB": 20.0},
         "swa@logits": {"step_ms_median": 120.0}, "swa@fused": {"step_ms_median": 100.0},
         "swa_p2@fused": {"step_ms_median": 125.0}, "drt": {"error": "x"}}
  s = summarize(res)
  assert s["drt@logits"]["ratio_vs_swa_same_depth"] == 1.5
  assert s["drt@fused"]["ratio_vs_swa_same_depth"] == 1.5
  assert s["drt@fused"]["ratio_vs_swa_p2"] == 1.2 and s["drt@logits"]["ratio_vs_swa_p2"] is None
  assert s["drt@fused"]["peak_GiB"] == 20.0 and s["drt"]["step_ms"] is None


@pytest.mark.parametrize("shape", [(2, 4, 1), (2, 2, 2)], ids=["per_device", "spmd"])
def test_on_a_mesh_matches_one_device(shape):
  """On a data x fsdp mesh the loss runs per device (shard_map: demb summed across devices once,
  in the transpose); with tensor > 1 by XLA's partitioner. Both equal the one-device result."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from gca_jax.ops.lm_loss import _batch_axes
  from gca_jax.sharding import make_mesh, mesh_context
  h, emb, t, w = _inputs((8, 37), 16, 102, jnp.float32)
  f = lambda h, e, w: lm_head_loss(h, e, t, w, block_tokens=8).nll_sum
  v0, g0 = jax.value_and_grad(f, (0, 1, 2))(h, emb, w)
  mesh = make_mesh(*shape)
  with mesh_context(mesh):
    hs = jax.device_put(h, NamedSharding(mesh, P(("data", "fsdp"))))
    es = jax.device_put(emb, NamedSharding(mesh, P("tensor", "fsdp")))
    assert _batch_axes(hs) == (("data", "fsdp") if shape[2] == 1 else None)
    v, g = jax.jit(jax.value_and_grad(f, (0, 1, 2)))(hs, es, w)
  assert _rel(v, v0) <= 1e-6
  for a, b in zip(g, g0):
    assert _rel(a, b) <= 1e-6
