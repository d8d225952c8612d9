"""Context parallelism (docs/method.md §10) on 8 fake CPU devices (tests/conftest.py sets
XLA_FLAGS before jax is imported): loss and every parameter gradient equal one device, for
context 2 / 4 / 8 alone and with data / fsdp, the SWA-only model, one trainer step through
config.mesh.context, and the config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _train_helpers import compile_cache, small_run_config  # noqa: F401
from gca_jax import DRT, DRTConfig
from gca_jax.sharding import make_mesh, mesh_context
from gca_jax.train import TrainHooks, train
from gca_jax.train import run_config as rc
from gca_jax.train.state import abstract_params

pytestmark = pytest.mark.usefixtures("compile_cache")
MODEL = dict(vocab_size=256, d_model=64, num_heads=2, mlp_dim=128, window=32, chunk_size=16,
             lower_layers=1, upper_groups=(1, 1), encoder_layers=1, top_k=2, dtype="float32",
             param_dtype="float32", remat="none")
B, T = 4, 360   # 24 chunks of 15 text tokens: 3 .. 12 chunks per shard for context 8 .. 2
TOL = 1e-5


def _loss(model, params, toks, train):
  lg = model.apply({"params": params}, toks, train=train, rngs={"gumbel": jax.random.key(5)})
  tgt = jnp.roll(toks, -1, axis=1)
  return jnp.mean(jax.nn.logsumexp(lg, -1) - jnp.take_along_axis(lg, tgt[..., None], -1)[..., 0])


def _setup(**kw):
  model = DRT(DRTConfig(**{**MODEL, **kw}))
  toks = jax.random.randint(jax.random.key(1), (B, T), 0, MODEL["vocab_size"])
  params = model.init(jax.random.key(0), toks[:, :8])["params"]
  return model, jax.tree.map(np.asarray, params), toks


def _value_and_grad(model, params, toks, train, mesh=None):
  vg = jax.jit(jax.value_and_grad(lambda p, t: _loss(model, p, t, train)))
  if mesh is None:
    return jax.device_get(vg(params, toks))
  _, shardings = abstract_params(model, mesh)
  with mesh_context(mesh):
    p = jax.device_put(params, shardings)   # fsdp-sharded parameters where fsdp > 1
    jaxpr = str(jax.make_jaxpr(vg)(p, toks))
    assert "ppermute" in jaxpr and "shard_map" in jaxpr   # the context path ran
    return jax.device_get(vg(p, toks))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _max_errs(got, ref):
  (l1, g1), (l0, g0) = got, ref
  errs = jax.tree.map(_rel, g1, g0)
  return _rel(l1, l0), max(jax.tree.leaves(errs)), errs


@pytest.fixture(scope="module")
def drt():
  model, params, toks = _setup()
  ref = {tr: _value_and_grad(model, params, toks, tr) for tr in (True, False)}
  return model, params, toks, ref


@pytest.mark.parametrize("data,fsdp,context,train", [
    (1, 1, 2, True), (1, 1, 4, False), (1, 1, 8, True), (2, 1, 4, True), (2, 2, 2, True)])
def test_drt_loss_and_grads_match_one_device(drt, data, fsdp, context, train):
  """train=True: Gumbel top-k with the noise slices; train=False: the noise-free path."""
  model, params, toks, ref = drt
  n = data * fsdp * context
  mesh = make_mesh(data, fsdp, 1, devices=jax.devices()[:n], context=context)
  got = _value_and_grad(model, params, toks, train, mesh)
  loss_err, grad_err, errs = _max_errs(got, ref[train])
  print(f"data={data} fsdp={fsdp} context={context} train={train}: loss rel {loss_err:.2e}, "
        f"max grad rel {grad_err:.2e}")
  assert loss_err <= TOL and grad_err <= TOL, errs


def test_gumbel_noise_changes_the_one_device_loss(drt):
  """The train=True comparisons check the noise slices: the noise changes the selection."""
  ref = drt[3]
  assert _rel(ref[True][0], ref[False][0]) > 1e-5


def test_swa_model_matches_one_device():
  model, params, toks = _setup(model_kind="swa", upper_groups=(1,))
  ref = _value_and_grad(model, params, toks, False)
  mesh = make_mesh(2, 1, 1, devices=jax.devices()[:8], context=4)
  loss_err, grad_err, errs = _max_errs(_value_and_grad(model, params, toks, False, mesh), ref)
  print(f"swa data=2 context=4: loss rel {loss_err:.2e}, max grad rel {grad_err:.2e}")
  assert loss_err <= TOL and grad_err <= TOL, errs


def test_bad_inputs_raise_naming_the_numbers():
  model, params, toks = _setup()
  mesh = make_mesh(1, 1, 1, devices=jax.devices()[:4], context=4)
  with mesh_context(mesh), pytest.raises(ValueError, match=r"T=345 .* 15 \* 4 = 60"):
    jax.eval_shape(lambda p: model.apply({"params": p}, toks[:, :345]), params)
  full = DRT(DRTConfig(**{**MODEL, "model_kind": "full"}))
  fp = full.init(jax.random.key(0), toks[:, :8])["params"]
  with mesh_context(mesh), pytest.raises(ValueError, match="model_kind='full'"):
    jax.eval_shape(lambda p: full.apply({"params": p}, toks), fp)


def test_trainer_step_context_2_equals_context_1(tmp_path):
  losses = {}
  for ctx in (1, 2):
    cfg = small_run_config(str(tmp_path / f"run{ctx}"), str(tmp_path / "cache"),
                           **{"train.steps": 1, "mesh.context": ctx, "checkpoint.every": 0})
    seen = []
    train(cfg, devices=jax.devices()[:ctx], message=lambda s: None,
          hooks=TrainHooks(on_step=lambda s, m: seen.append(float(m["loss"]))))
    losses[ctx] = seen
  print("trainer losses", losses)
  assert len(losses[1]) == 1
  np.testing.assert_allclose(losses[2], losses[1], rtol=1e-5)


def _cfg(**kw):
  return small_run_config("/tmp/unused", "", **kw)


@pytest.mark.parametrize("kw,n_dev,pattern", [
    ({"mesh.context": 2, "model.model_kind": "full"}, 2,
     r"config\.mesh\.context=2: .*model_kind='full'"),
    ({"mesh.context": 2, "model.model_kind": "landmark"}, 2,
     r"config\.mesh\.context=2: .*'landmark'"),
    ({"mesh.context": 4, "data.seq_len": 90}, 4,
     r"config\.data\.seq_len=90: .*text_per_chunk \(15\) \* mesh\.context \(4\) = 60"),
    ({"mesh.context": 4, "data.seq_len": 60, "model.window": 64}, 4,
     r"config\.data\.seq_len=60: gives 16 rows per context shard .*window - 1 = 63"),
    ({"mesh.context": 2, "mesh.tensor": 2, "mesh.fsdp": 1}, 4,
     r"config\.mesh\.context=2: .*tensor=1"),
    ({"mesh.context": 3}, 8, r"config\.mesh: .*context=3.*needs 3 devices, 8"),
    ({"mesh.context": 0}, 8, r"config\.mesh\.context=0: must be >= 1"),
    ({"mesh.context": 2, "model.model_kind": "swa", "data.seq_len": 61}, 2,
     r"config\.data\.seq_len=61: .*multiple of mesh\.context = 2"),
])
def test_config_errors(kw, n_dev, pattern):
  with pytest.raises(rc.RunConfigError, match=pattern):
    rc.validate(_cfg(**kw), num_devices=n_dev, check_paths=False)


def test_config_context_ok_and_default():
  assert rc.base_config().mesh.context == 1
  rc.validate(_cfg(**{"mesh.context": 2, "mesh.data": 2}), num_devices=4, check_paths=False)
  old = _cfg()
  del old.mesh["context"]   # configs written before the field existed
  rc.validate(old, num_devices=1, check_paths=False)


def test_batch_sharding_and_mesh_shape_with_context():
  from jax.sharding import PartitionSpec as P
  from gca_jax.sharding import MeshError, batch_sharding, mesh_shape
  mesh = make_mesh(2, 1, 1, devices=jax.devices()[:8], context=4)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "context": 4, "tensor": 1}
  assert batch_sharding(mesh, 2).spec == P(("data", "fsdp"), "context")
  assert batch_sharding(mesh, 1).spec == P(("data", "fsdp"))
  one = make_mesh(2, 4, 1, devices=jax.devices()[:8])
  assert batch_sharding(one, 2).spec == P(("data", "fsdp"), None)
  assert mesh_shape(1, -1, 1, 8, context=2) == (1, 4, 1)
  with pytest.raises(MeshError, match="context=-1"):
    mesh_shape(1, 1, 1, 8, context=-1)


def test_per_device_call_inside_the_context_body_calls_the_kernel_directly():
  """Inside the body every axis is manual: a kernel sees this shard's rows, no nested
  shard_map."""
  from jax.sharding import PartitionSpec as P
  from gca_jax.sharding import per_device_call
  mesh = make_mesh(1, 1, 1, devices=jax.devices()[:2], context=2)
  seen = []

  def kernel(x):
    seen.append(x.shape)
    return x * 2

  body = lambda x: per_device_call(kernel, (x,), (("batch", None),), ("batch", None))
  with mesh_context(mesh):
    f = jax.shard_map(body, mesh=mesh, in_specs=P(None, "context"), out_specs=P(None, "context"))
    y = jax.jit(f)(jnp.arange(16.0).reshape(2, 8))
  assert seen == [(2, 4)]
  np.testing.assert_array_equal(np.asarray(y), 2 * np.arange(16.0).reshape(2, 8))
