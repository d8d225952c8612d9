"""Train step and loop: grad accumulation, non-finite guard, exact resume, SIGTERM, NaN stop;
the recall recipe in the loop (curriculum state resumed exactly, answer accuracy logged)."""

import hashlib
import os
import signal

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from _train_helpers import (SMALL_MODEL, compile_cache, recall_run_config,  # noqa: F401
                            small_run_config)
from gca_jax import DRT, DRTConfig
from gca_jax.sharding import make_mesh
from gca_jax.train import (Checkpointer, NonFiniteLossError, TrainHooks, init_state,
                           make_optimizer, state_shardings, train, train_step_fn)
from gca_jax.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("compile_cache")
ONE = jax.devices()[:1]


def _train_cfg(**kw):
  d = dict(steps=10, lr=1e-3, lr_end_frac=0.0, warmup_frac=0.0, b1=0.9, b2=0.95, eps=1e-8,
           weight_decay=1e-3, weight_decay_mask="all", clip=1.0)
  d.update(kw)
  return ml_collections.ConfigDict(d)


def _setup(model_kw=None, **train_kw):
  cfg = DRTConfig(**{**SMALL_MODEL, **(model_kw or {})})
  model = DRT(cfg)
  tx, sched = make_optimizer(_train_cfg(**train_kw))
  mesh = make_mesh(devices=ONE)
  state = init_state(model, tx, mesh, seed=0)
  return cfg, model, tx, sched, mesh, state


def _batch(B=8, T=60, seed=0, vocab=4096, ragged=True):
  rng = np.random.default_rng(seed)
  toks = rng.integers(0, vocab, (B, T + 1)).astype(np.int32)
  w = np.ones((B, T), np.float32)
  if ragged:  # microbatches with different numbers of scored tokens
    w[0, 10:] = 0.0
    w[3, :] = 0.0
    w[5, 40:] = 0.0
  return {"inputs": jnp.asarray(toks[:, :-1]), "targets": jnp.asarray(toks[:, 1:]),
          "loss_weights": jnp.asarray(w)}


def test_grad_accumulation_equals_big_batch():
  """Accumulated gradient == big-batch gradient (compared through SGD(lr=1): p1 = p0 - g).

  Adam's first step maps g to ~sign(g), which amplifies float noise in tiny gradients, so the
  gradient itself is compared. top_k >= number of chunks: every past chunk is retrieved, so
  the Gumbel noise (which differs between accumulation settings) cannot change the selection.
  Ragged loss weights: microbatches score different numbers of tokens.
  """
  _, model, _, sched, mesh, state = _setup({"top_k": 8})
  sgd = optax.sgd(1.0)
  state = state.replace(opt_state=sgd.init(state.params))
  batch = _batch()
  p0 = jax.tree.map(np.asarray, state.params)
  s1, m1 = jax.jit(train_step_fn(model, sgd, sched, 1))(state, batch)
  g1 = jax.tree.map(lambda a, b: a - np.asarray(b), p0, s1.params)
  scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(g1))
  for accum in (4,):  # (accum=2 runs on a mesh in test_sharding.py and in the loop below)
    s2, m2 = jax.jit(train_step_fn(model, sgd, sched, accum))(state, batch)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)
    assert float(m1["num_tokens"]) == float(m2["num_tokens"]) == float(
        batch["loss_weights"].sum())
    g2 = jax.tree.map(lambda a, b: a - np.asarray(b), p0, s2.params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g2)):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale,
                                 err_msg=jax.tree_util.keystr(path))
  # and the loss is the token-weighted mean over the whole batch
  from gca_jax.models.loss import cross_entropy_loss
  logits = model.apply({"params": state.params}, batch["inputs"], train=True,
                       rngs={"gumbel": jax.random.key(0)})
  ref, _ = cross_entropy_loss(logits, batch["targets"], batch["loss_weights"])
  np.testing.assert_allclose(float(m1["loss"]), float(ref), rtol=1e-5)


def test_step_is_deterministic_and_nonfinite_leaves_state_untouched():
  _, model, tx, sched, mesh, state = _setup()
  step = jax.jit(train_step_fn(model, tx, sched, 1))
  batch = _batch(ragged=False)
  # the Gumbel key depends on (base rng, step) only: the same step twice gives the same update
  a, ma = step(state, batch)
  b, _ = step(state, batch)
  assert bool(ma["finite"]) and int(a.step) == 1
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  # a poisoned batch: flagged, and the state comes back untouched (step not incremented)
  bad = dict(batch, loss_weights=batch["loss_weights"].at[1, 3].set(jnp.nan))
  before = jax.tree.map(np.asarray, state)
  new, m = step(state, bad)
  assert not bool(m["finite"])
  assert int(new.step) == 0
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(new)):
    np.testing.assert_array_equal(x, np.asarray(y))


def _digest(batch) -> str:
  h = hashlib.sha256()
  for k in sorted(batch):
    h.update(np.ascontiguousarray(batch[k]).tobytes())
  return h.hexdigest()


def _params_np(run_dir, step, config):
  from gca_jax.train.run_config import model_config
  from gca_jax.train.state import abstract_params
  model = DRT(model_config(config))
  abstract, _ = abstract_params(model, make_mesh(devices=ONE))
  ck = Checkpointer(run_dir, read_only=True)
  _, params = ck.restore_params(step, abstract)
  ck.close()
  return jax.tree.map(np.asarray, params)


def test_resume_is_exact(tmp_path):
  """N steps, SIGTERM, resume N more == 2N straight: params bitwise, same batches."""
  cache = str(tmp_path / "cache")
  straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
  cfg_a = small_run_config(straight_dir, cache, **{"train.steps": 6, "checkpoint.every": 3})
  seen_a = {}
  res_a = train(cfg_a, devices=ONE, message=lambda s: None,
                hooks=TrainHooks(on_batch=lambda s, b: seen_a.__setitem__(s, _digest(b))))
  assert res_a.status == "completed" and res_a.step == 6

  cfg_b = small_run_config(resumed_dir, cache, **{"train.steps": 6, "checkpoint.every": 100})
  seen_b = {}

  def preempt_at_3(step, metrics):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer: finish, save, stop

  res_b1 = train(cfg_b, devices=ONE, message=lambda s: None,
                 hooks=TrainHooks(on_batch=lambda s, b: seen_b.__setitem__(s, _digest(b)),
                                  on_step=preempt_at_3))
  assert res_b1.status == "preempted" and res_b1.step == 3
  ck = Checkpointer(resumed_dir, read_only=True)
  assert ck.all_steps() == [3]
  ck.close()
  # batch 4 was fetched ahead of time by the preempted run; the resumed run must see it again
  seen_b = {k: v for k, v in seen_b.items() if k <= 3}
  res_b2 = train(cfg_b, devices=ONE, message=lambda s: None,
                 hooks=TrainHooks(on_batch=lambda s, b: seen_b.__setitem__(s, _digest(b))))
  assert res_b2.status == "completed" and res_b2.start_step == 3 and res_b2.step == 6
  assert seen_a == seen_b and sorted(seen_a) == [1, 2, 3, 4, 5, 6]

  pa = _params_np(straight_dir, 6, cfg_a)
  pb = _params_np(resumed_dir, 6, cfg_b)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  assert res_a.last_metrics["loss"] == res_b2.last_metrics["loss"]

  # metrics.jsonl: one record per step, the resume noted, no duplicates
  recs = [r for r in read_metrics(resumed_dir) if "loss" in r]
  assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
  events = [r["event"] for r in read_metrics(resumed_dir) if "event" in r]
  assert "preempted" in events and "resume" in events and events[-1] == "completed"
  assert os.path.isdir(os.path.join(resumed_dir, "tensorboard"))


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory):
  """A run whose batch 3 is poisoned (NaN loss weight): it must stop at step 3."""
  tmp = tmp_path_factory.mktemp("nan")
  cache, run_dir = str(tmp / "cache"), str(tmp / "run")
  cfg = small_run_config(run_dir, cache, **{"train.steps": 8, "checkpoint.every": 1,
                                            "checkpoint.async_save": False})

  def poison(step, batch):
    if step == 3:
      batch = dict(batch)
      w = np.array(batch["loss_weights"])
      w[0, 0] = np.nan
      batch["loss_weights"] = w
    return batch

  with pytest.raises(NonFiniteLossError) as err:
    train(cfg, devices=ONE, message=lambda s: None, hooks=TrainHooks(transform_batch=poison))
  return cfg, run_dir, cache, str(err.value)


def test_nan_loss_stops_without_saving(nan_run):
  cfg, run_dir, _, message = nan_run
  assert "non-finite loss/gradient at step 3 " in message and "last checkpoint: 2" in message
  ck = Checkpointer(run_dir, read_only=True)
  assert ck.all_steps() == [1, 2]
  ck.close()
  params = _params_np(run_dir, 2, cfg)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
  assert any(r.get("event") == "non_finite" and r["step"] == 3 for r in read_metrics(run_dir))


def test_resume_with_different_model_is_refused(nan_run):
  from gca_jax.train import CheckpointError
  _, run_dir, cache, _ = nan_run
  cfg2 = small_run_config(run_dir, cache, **{"train.steps": 4, "model.mlp_dim": 32})
  with pytest.raises(CheckpointError, match=r"model\.mlp_dim: 64 != 32"):
    train(cfg2, devices=ONE, message=lambda s: None)


def test_eval_and_grad_accum_in_loop(tmp_path):
  cfg = small_run_config(str(tmp_path / "run"), str(tmp_path / "cache"),
                         **{"train.steps": 2, "train.grad_accum": 2, "train.eval_every": 1})
  res = train(cfg, devices=ONE, message=lambda s: None)
  assert res.status == "completed"
  assert res.last_eval is not None and np.isfinite(res.last_eval["eval_loss"])
  evals = [r for r in read_metrics(str(tmp_path / "run")) if "eval_loss" in r]
  assert [r["step"] for r in evals] == [1, 2]
  train_recs = [r for r in read_metrics(str(tmp_path / "run")) if "loss" in r]
  assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(train_recs[-1])


def test_unbox_contract():
  # params from DRT.init carry nn.Partitioned metadata that the state code relies on
  cfg = DRTConfig(**SMALL_MODEL)
  v = DRT(cfg).init({"params": jax.random.key(0), "gumbel": jax.random.key(1)},
                    jnp.zeros((1, 8), jnp.int32))
  boxed = jax.tree.leaves(v["params"], is_leaf=lambda x: isinstance(x, flax.linen.Partitioned))
  assert all(isinstance(x, flax.linen.Partitioned) for x in boxed)
  _, sh = state_shardings(DRT(cfg), make_optimizer(_train_cfg())[0], make_mesh(devices=ONE))
  assert jax.tree.structure(sh.params) == jax.tree.structure(flax.linen.unbox(v["params"]))


def _train_records(run_dir):
  return [r for r in read_metrics(run_dir) if "loss" in r]


def test_recall_curriculum_resume_is_exact(tmp_path):
  """Recall mix + curriculum (stage 0 -> 1 at step 2): 6 steps straight == 3, SIGTERM, resume 3:
  same batches, same stage per step, bitwise params; answer accuracy and stage logged."""
  cache = str(tmp_path / "cache")
  a_dir, b_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
  seen_a, seen_b = {}, {}
  cfg_a = recall_run_config(a_dir, cache, **{"train.steps": 6, "checkpoint.every": 100})
  res_a = train(cfg_a, devices=ONE, message=lambda s: None,
                hooks=TrainHooks(on_batch=lambda s, b: seen_a.__setitem__(s, _digest(b))))
  recs_a = _train_records(a_dir)
  assert [r["seq_len"] for r in recs_a] == [75, 75, 120, 120, 120, 120]
  assert [r["batch"] for r in recs_a] == [6, 6, 4, 4, 4, 4]
  assert [r["stage"] for r in recs_a] == [0, 0, 1, 1, 1, 1]
  assert all(0.0 <= r["answer_accuracy"] <= 1.0 and r["answer_count"] >= 1 for r in recs_a)
  stage_events = [r for r in read_metrics(a_dir) if r.get("event") == "curriculum_stage"]
  assert [(r["step"], r["stage"], r["seq_len"]) for r in stage_events] == [(2, 1, 120)]

  def preempt_at_3(step, metrics):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  cfg_b = recall_run_config(b_dir, cache, **{"train.steps": 6, "checkpoint.every": 100})
  res_b1 = train(cfg_b, devices=ONE, message=lambda s: None,
                 hooks=TrainHooks(on_batch=lambda s, b: seen_b.__setitem__(s, _digest(b)),
                                  on_step=preempt_at_3))
  assert res_b1.status == "preempted" and res_b1.step == 3
  seen_b = {k: v for k, v in seen_b.items() if k <= 3}
  res_b2 = train(cfg_b, devices=ONE, message=lambda s: None,
                 hooks=TrainHooks(on_batch=lambda s, b: seen_b.__setitem__(s, _digest(b))))
  assert res_b2.start_step == 3 and res_b2.step == 6
  assert seen_a == seen_b and sorted(seen_a) == [1, 2, 3, 4, 5, 6]
  recs_b = _train_records(b_dir)
  for key in ("loss", "answer_accuracy", "stage", "seq_len"):
    assert [r[key] for r in recs_a] == [r[key] for r in recs_b], key
  pa, pb = _params_np(a_dir, 6, cfg_a), _params_np(b_dir, 6, cfg_b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  assert res_a.last_metrics == {**res_b2.last_metrics, "tokens_per_s":
                                res_a.last_metrics["tokens_per_s"]}


def test_recall_training_loss_falls_and_eval_scores_answers(tmp_path):
  """A short CPU run of the recall mix at one length: the loss falls; the final eval scores the
  held-out official passkey samples (eval_answer_*)."""
  run_dir = str(tmp_path / "run")
  cfg = recall_run_config(run_dir, str(tmp_path / "cache"),
                          **{"train.steps": 6, "data.curriculum.stages": "",
                             "train.eval_every": 0, "data.recall.eval_samples": 6})
  res = train(cfg, devices=ONE, message=lambda s: None)
  recs = _train_records(run_dir)
  assert [r["seq_len"] for r in recs] == [120] * 6 and "answer_accuracy" in recs[0]
  assert recs[-1]["loss"] < recs[0]["loss"] - 0.05, [r["loss"] for r in recs]
  ev = res.last_eval
  assert ev["eval_answer_count"] == 6 and 0.0 <= ev["eval_answer_accuracy"] <= 1.0
  assert np.isfinite(ev["eval_answer_nll"]) and np.isfinite(ev["eval_loss"])
