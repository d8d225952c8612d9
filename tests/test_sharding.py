"""Same code on 1 device and on 8 fake CPU devices: sharded forward and train step match."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from _train_helpers import SMALL_MODEL, compile_cache  # noqa: F401
from gca_jax import DRT, DRTConfig
from gca_jax.sharding import make_mesh
from gca_jax.train import (init_state, make_optimizer, make_train_step, mesh_context,
                           place_batch, state_shardings)
from gca_jax.train.run_config import base_config
from gca_jax.train.state import batch_shardings

pytestmark = pytest.mark.usefixtures("compile_cache")
MESHES = [(2, 4, 1), (1, 8, 1), (2, 2, 2)]
B, T = 8, 60


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  toks = rng.integers(0, 4096, (B, T + 1)).astype(np.int32)
  w = np.ones((B, T), np.float32)
  w[2, 30:] = 0
  return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "loss_weights": w}


def _run(mesh_shape, accum=1, steps=2, forward=True, **model_kw):
  """(logits, per-step metrics, params after `steps` updates) on the given mesh."""
  cfg = DRTConfig(**{**SMALL_MODEL, **model_kw})
  model = DRT(cfg)
  tcfg = base_config().train
  tcfg.steps, tcfg.warmup_frac = 10, 0.0
  tx, sched = make_optimizer(tcfg)
  devices = jax.devices()[:1] if mesh_shape is None else jax.devices()
  d, f, t = mesh_shape or (1, 1, 1)
  mesh = make_mesh(d, f, t, devices=devices)
  _, sh = state_shardings(model, tx, mesh, seed=0)
  state = init_state(model, tx, mesh, 0, sh)
  bsh = batch_shardings(mesh, _batch())
  batch = place_batch(_batch(), mesh, bsh)
  logits = None
  if forward:
    with mesh_context(mesh):
      logits = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False),
                       in_shardings=(sh.params, bsh["inputs"]))(state.params, batch["inputs"])
    logits = np.asarray(logits)
  step = make_train_step(model, tx, sched, mesh, sh, bsh, grad_accum=accum)
  metrics = []
  for i in range(steps):
    state, m = step(state, place_batch(_batch(i), mesh, bsh))
    metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
  return logits, metrics, state, sh


@pytest.fixture(scope="module")
def single():
  return _run(None)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "data%d_fsdp%d_tensor%d" % s)
def test_sharded_forward_and_step_match_single_device(single, shape):
  logits1, m1, s1, _ = single
  logits8, m8, s8, sh = _run(shape)
  np.testing.assert_allclose(logits8, logits1, rtol=1e-5, atol=1e-5)
  for a, b in zip(m8, m1):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s8.params),
                          jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  # the state really is distributed as the rule table says
  d, f, t = shape
  emb = s8.params["embedding"]
  assert emb.sharding.spec == P("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (4096 // t, 32 // f)
  mu = jax.tree.leaves(s8.opt_state)
  assert any(getattr(x, "sharding", None) is not None and x.sharding.spec == P("tensor", "fsdp")
             for x in mu)  # Adam moments sharded like their params


def test_grad_accum_on_mesh_matches_single_device():
  """Accumulation on a (2,2,2) mesh == one big batch on one device.

  Microbatch i = rows i::A stays spread over all batch shards. top_k=8 >= chunks: every past
  chunk is retrieved, so the (per-microbatch) Gumbel noise cannot change the selection.
  """
  _, m1, s1, _ = _run(None, accum=1, steps=1, forward=False, top_k=8)
  _, m2, s2, _ = _run((2, 2, 2), accum=2, steps=1, forward=False, top_k=8)
  np.testing.assert_allclose(m2[0]["loss"], m1[0]["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s2.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_batch_placement_is_sharded_over_data_and_fsdp():
  mesh = make_mesh(2, 4, 1)
  batch = place_batch(_batch(), mesh)
  x = batch["inputs"]
  assert x.shape == (B, T)
  assert x.sharding == NamedSharding(mesh, P(("data", "fsdp"), None))
  assert {s.data.shape for s in x.addressable_shards} == {(1, T)}
  np.testing.assert_array_equal(np.asarray(x), _batch()["inputs"])


def test_logical_constraints_active_under_mesh_context():
  """The model's activation constraints see the mesh (Flax reads jax.set_mesh)."""
  from flax.core import meta
  mesh = make_mesh(2, 4, 1)
  assert not meta.global_mesh_defined()
  with mesh_context(mesh):
    assert meta.global_mesh_defined()
    assert jax.sharding.get_abstract_mesh().shape == {"data": 2, "fsdp": 4, "context": 1,
                                                      "tensor": 1}
