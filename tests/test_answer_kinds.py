"""Per-kind answer accuracy (single, named, multi-key, 2-hop) in the recall mix: the batches'
"answer_kind", the per-kind sums of `loss_sums` (both loss paths), the train step's metrics and
the trainer's metrics.jsonl."""

from __future__ import annotations

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.data import recall as R
from gca_jax.data.pipeline import (RecallIterator, Gate, answer_kind, curriculum_stages,
                                   has_kind_metrics, parse_stages)
from gca_jax.data.tokenizer import Tokenizer
from gca_jax.models.loss import ANSWER_KINDS, answer_sum_keys, loss_sums

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")
C = 63


@pytest.fixture(scope="module")
def ids():
  return R.prompt_ids(Tokenizer.load(TOK))


def _batches(ids, mix, n=3):
  st = curriculum_stages(parse_stages("8:1"), chunk_text=C, tokens_per_step=8 * 504)
  it = RecallIterator(np.arange(300, 3300, dtype=np.int32), ids, mix, st, Gate(0.9, 1, 1),
                      chunk_text=C, seed=3, steps=10, prefetch=0)
  return [next(it) for _ in range(n)]


def test_kind_ids_agree_with_the_data_module():
  """models.loss cannot import the data package: its copy of the kind ids must match it."""
  assert dict(ANSWER_KINDS) == {"single": R.KIND_SINGLE, "named": R.KIND_NAMED,
                                "multikey": R.KIND_MULTIKEY, "2hop": R.KIND_2HOP}


def test_answer_kind_marks_every_answer_with_its_row_kind():
  mask = np.array([[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]], np.float32)
  got = answer_kind(mask, np.array([3, 4, 0]))
  np.testing.assert_array_equal(got, [[0, 3, 0, 3], [0, 0, 4, 0], [0, 0, 0, 0]])
  assert got.dtype == np.int32


def test_batches_carry_kinds_only_with_new_kinds(ids):
  old = R.MixSpec(p_single=0.5, p_named=0.4)
  assert not has_kind_metrics(old)
  assert all("answer_kind" not in b for b in _batches(ids, old, 1))
  new = R.MixSpec(p_single=0.25, p_named=0.25, p_multikey=0.25, p_2hop=0.25)
  bs = _batches(ids, new)
  seen = set()
  for b in bs:
    k, m = b["answer_kind"], b["answer_mask"]
    assert k.shape == m.shape and k.dtype == np.int32
    assert np.all((k > 0) == (m > 0))              # a kind exactly where an answer is scored
    for row in k:
      assert len(set(row[row > 0].tolist())) <= 1  # one kind per row
    seen |= set(k[k > 0].tolist())
  assert seen == {1, 2, 3, 4}


@pytest.mark.parametrize("loss_impl", ["fused", "logits"])
def test_loss_sums_per_kind(ids, loss_impl):
  cfg = DRTConfig(vocab_size=4096, d_model=32, num_heads=2, mlp_dim=64, lower_layers=1,
                  upper_groups=(1,), encoder_layers=1, window=16, top_k=2, dtype="float32",
                  loss_impl=loss_impl)
  b = _batches(ids, R.MixSpec(p_single=0.25, p_named=0.25, p_multikey=0.25, p_2hop=0.25), 1)[0]
  batch = {k: jnp.asarray(v) for k, v in b.items()}
  model = DRT(cfg)
  params = flax.core.meta.unbox(model.init({"params": jax.random.key(0)}, batch["inputs"][:1])[
      "params"])
  # A model that predicts the answers of multi-key rows right and nothing else: per-kind hits.
  logits = model.apply({"params": params}, batch["inputs"])
  want = batch["targets"]
  hit_rows = np.asarray(b["answer_kind"]).max(1) == 3
  boost = jax.nn.one_hot(want, logits.shape[-1]) * 100.0 * jnp.asarray(
      (b["answer_kind"] == 3), jnp.float32)[..., None]
  score = lambda m, p, x: logits + boost  # noqa: E731
  _, sums = loss_sums(model, params, batch, jax.random.key(1), train=False, score=score)
  assert set(answer_sum_keys(batch)) <= set(sums)
  total = sum(float(sums[f"answer_count_{n}"]) for n, _ in ANSWER_KINDS)
  assert total == float(sums["answer_count"]) > 0
  n_mk = float(sums["answer_count_multikey"])
  assert n_mk == float(np.sum(b["answer_kind"] == 3)) > 0 and hit_rows.any()
  assert float(sums["answer_correct_multikey"]) == n_mk
  # Without the score hook (the configured loss path) the per-kind sums add up the same way.
  _, s2 = loss_sums(model, params, batch, jax.random.key(1), train=False)
  assert sum(float(s2[f"answer_count_{n}"]) for n, _ in ANSWER_KINDS) == float(s2["answer_count"])
  assert sum(float(s2[f"answer_correct_{n}"]) for n, _ in ANSWER_KINDS) == pytest.approx(
      float(s2["answer_correct"]))


def test_train_step_reports_per_kind(ids):
  from gca_jax.train.step import train_step_fn
  from gca_jax.train.state import TrainState
  cfg = DRTConfig(vocab_size=4096, d_model=32, num_heads=2, mlp_dim=64, lower_layers=1,
                  upper_groups=(1,), encoder_layers=1, window=16, top_k=2, dtype="float32")
  b = _batches(ids, R.MixSpec(p_single=0.3, p_multikey=0.4, p_2hop=0.3), 1)[0]
  batch = {k: jnp.asarray(v) for k, v in b.items()}
  model = DRT(cfg)
  params = flax.core.meta.unbox(model.init({"params": jax.random.key(0)}, batch["inputs"][:1])[
      "params"])
  tx = optax.sgd(1e-3)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(2)))
  for accum in (1, 2):
    _, m = jax.jit(train_step_fn(model, tx, optax.constant_schedule(1e-3), accum))(state, batch)
    for name in ("single", "multikey", "2hop"):
      assert float(m[f"answer_count_{name}"]) == float(np.sum(b["answer_kind"] == dict(
          ANSWER_KINDS)[name]))
      assert 0.0 <= float(m[f"answer_accuracy_{name}"]) <= 1.0
    assert float(m["answer_count_named"]) == 0.0


def test_trainer_logs_per_kind_accuracy(tmp_path):
  from gca_jax.configs import multikey_tiny
  from gca_jax.train.trainer import train
  c = multikey_tiny.get_config()
  c.data.train_path = os.path.join(ROOT, "data", "corpus", "train")
  c.data.eval_path = os.path.join(ROOT, "data", "corpus", "valid")
  c.data.tokenizer = TOK
  c.data.num_workers = 0
  c.data.cache_dir = str(tmp_path / "cache")
  c.data.seq_len = 504
  c.data.eval_windows = 2
  c.data.curriculum.stages = "8:1"
  c.data.curriculum.tokens_per_step = 4 * 504
  c.data.recall.eval_samples = 0
  c.model.update(d_model=32, num_heads=2, mlp_dim=64, lower_layers=1, upper_groups=(1,),
                 encoder_layers=1, dtype="float32")
  c.train.update(steps=2, global_batch_size=4, log_every=1, eval_every=0)
  c.run_dir = str(tmp_path / "run")
  train(c, devices=jax.devices()[:1])
  rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
  tr = [r for r in rows if "answer_accuracy" in r]
  assert len(tr) == 2
  kinds = {k for r in tr for k in r if k.startswith("answer_count_")}
  assert kinds == {f"answer_count_{n}" for n, _ in ANSWER_KINDS}
  for r in tr:
    assert sum(r[f"answer_count_{n}"] for n, _ in ANSWER_KINDS) == r["answer_count"]
