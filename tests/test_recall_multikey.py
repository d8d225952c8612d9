"""Multi-key and 2-hop samples of the recall training mix (gca_jax.data.recall, issue 15): the
same strings and layout as the eval builders (gca_jax.data.passkey), answers and weights, the
mix fractions, config validation and exact resume of the iterator with the new kinds."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from gca_jax.data import passkey as pk
from gca_jax.data import recall as R
from gca_jax.data.pipeline import Gate, RecallIterator, curriculum_stages, parse_stages
from gca_jax.data.tokenizer import Tokenizer
from gca_jax.train import run_config as rc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")
C = 63


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load(TOK)


@pytest.fixture(scope="module")
def ids(tok):
  return R.prompt_ids(tok)


@pytest.fixture(scope="module")
def filler():
  return R.TextFiller(np.arange(300, 3300, dtype=np.int32))


def test_piece_tokenizer_matches_the_tokenizer(tok, ids):
  for s in R.PIECE_STRINGS:
    assert ids.pieces.encode(s) == list(tok.encode(s))
  np.testing.assert_array_equal(ids.pieces.ordinary_ids, tok.ordinary_ids)
  with pytest.raises(KeyError, match="'hello' is not one of the prompt strings"):
    ids.pieces.encode("hello")


def test_multikey_train_sample_is_the_eval_sample(tok, ids, filler):
  """Same rng -> the training sample's tokens are exactly the eval builder's (real tokenizer)
  sample of length + 1 tokens: one definition of the format."""
  rng = np.random.default_rng(7)
  s = R.make_multikey_train_sample(rng, ids, filler, 1008, chunk_text=C, max_needles=16)
  rng = np.random.default_rng(7)
  cap = R.multikey_cap(ids, 1008, 16, chunk_text=C)
  n = int(rng.integers(1, cap + 1))
  e = pk.make_multikey_passkey_sample(filler.tokens, 1009, rng.uniform(size=n).tolist(), tok, rng,
                                      chunk_text=C)
  np.testing.assert_array_equal(s.tokens, e.tokens)
  assert len(s.tokens) == 1009 and cap == 16 and len(s.needle_starts) == n
  # answers: target index answer_index + j predicts key[j]; the key is the queried needle's value
  t = s.tokens[1:]
  np.testing.assert_array_equal(t[s.answer_targets[0]], s.keys[0])
  assert tuple(s.keys[0]) == e.values[e.query] == e.key
  assert s.answer_targets[0, 0] == e.answer_index
  # weights: 1 up to the last answer target, 0 after
  last = s.answer_targets[0, -1]
  assert s.weights[:last + 1].min() == 1.0 and s.weights[last + 1:].max(initial=0.0) == 0.0
  # the question asks for the queried needle's name, decoded in the eval strings
  q = tok.decode(s.tokens[s.question_starts[0]:e.answer_index + 1].tolist())
  assert q.startswith(pk.MULTIKEY_QUESTION_HEAD) and q.endswith(pk.MULTIKEY_QUESTION_TAIL)


def test_multikey_needle_counts(ids, filler):
  """n ~ U[1, cap]: at 1008 tokens up to 16 needles (4x top-k 4), most samples above 4."""
  ns = [len(R.make_multikey_train_sample(np.random.default_rng(i), ids, filler, 1008,
                                         chunk_text=C, max_needles=16).needle_starts)
        for i in range(200)]
  assert min(ns) >= 1 and max(ns) == 16
  assert 0.7 < np.mean(np.asarray(ns) > 4) < 0.85   # 12/16 = 0.75 expected
  assert R.multikey_cap(ids, 315, 16, chunk_text=C) == 4    # 5 chunks: 189 // (2 * 21)
  assert R.multikey_cap(ids, 504, 16, chunk_text=C) == 9


def test_2hop_train_sample(tok, ids, filler):
  rng = np.random.default_rng(3)
  s = R.make_2hop_train_sample(rng, ids, filler, 1008, chunk_text=C)
  rng = np.random.default_rng(3)
  e = pk.make_2hop_passkey_sample(filler.tokens, 1009, rng.uniform(size=2).tolist(), tok, rng,
                                  chunk_text=C)
  np.testing.assert_array_equal(s.tokens, e.tokens)
  assert s.answer_targets.shape == (1, 12)                  # Y "->" Z: 5 + 2 + 5
  np.testing.assert_array_equal(s.tokens[1:][s.answer_targets[0]], e.key)
  (x, y), (y2, z) = e.names, e.values
  assert y == y2 and tuple(e.key) == y + tuple(tok.encode(pk.HOP_ARROW)) + z


def test_make_batch_new_kinds(ids, filler):
  mix = R.MixSpec(p_single=0.2, p_named=0.2, p_multikey=0.3, p_2hop=0.2, answer_weight=3.0)
  kinds = []
  for step in range(6):
    b = R.make_batch(np.random.default_rng([1, step]), ids, filler, 50, 1008, mix, chunk_text=C)
    kinds += b["kind"].tolist()
    for r in range(50):
      if b["kind"][r] in (R.KIND_MULTIKEY, R.KIND_2HOP):
        (first,) = np.nonzero(b["answer_mask"][r])[0]
        k = 5 if b["kind"][r] == R.KIND_MULTIKEY else 12
        assert (b["loss_weights"][r, first:first + k] == 3.0).all()
        assert b["loss_weights"][r, first + k:].max(initial=0.0) == 0.0
  frac = np.bincount(kinds, minlength=5) / len(kinds)
  np.testing.assert_allclose(frac, [0.1, 0.2, 0.2, 0.3, 0.2], atol=0.06)
  with pytest.raises(ValueError, match="p_single \\+ p_named \\+ p_multikey \\+ p_2hop = 1.2"):
    R.MixSpec(p_single=0.5, p_named=0.2, p_multikey=0.5)
  with pytest.raises(ValueError, match="multikey_needles=0 must be >= 1"):
    R.MixSpec(p_multikey=0.5, p_single=0.0, multikey_needles=0)


def test_mix_without_new_kinds_draws_the_old_batches(ids, filler):
  """p_multikey = p_2hop = 0 leaves every rng draw as before (rows from the single / named /
  text branches only, the same tokens as a batch made row by row with the old rule)."""
  mix = R.MixSpec(p_single=0.4, p_named=0.5)
  b = R.make_batch(np.random.default_rng(9), ids, filler, 12, 504, mix, chunk_text=C)
  rng = np.random.default_rng(9)
  q = R.named_queries(ids, 504, mix, chunk_text=C)
  for r in range(12):
    u = rng.random()
    if u >= 0.9:
      np.testing.assert_array_equal(b["inputs"][r], filler.take(rng, 505)[:-1])
      continue
    rng.random()   # landmark-filler draw
    named = u >= 0.4
    s = R.make_recall_sample(rng, ids, filler, 504, chunk_text=C, n_queries=q if named else 1,
                             named=named)
    np.testing.assert_array_equal(b["inputs"][r], s.tokens[:-1])


def test_mix_spec_from_config():
  r = ml_collections.ConfigDict(dict(p_single=0.2, p_named=0.3, n_queries=4, key_len=5,
                                     answer_offset=4, answer_weight=1.0, p_landmark_filler=0.0))
  m = R.mix_spec(r)                    # a config saved before the new fields
  assert (m.p_multikey, m.p_2hop, m.multikey_needles) == (0.0, 0.0, 16)
  r.p_multikey, r.p_2hop, r.multikey_needles = 0.3, 0.1, 8
  m = R.mix_spec(r)
  assert (m.p_multikey, m.p_2hop, m.multikey_needles) == (0.3, 0.1, 8)


def _cfg():
  from gca_jax.configs import multikey_tiny
  c = multikey_tiny.get_config()
  c.data.num_workers = 0
  return c


def test_run_config_validates_the_new_fields():
  c = _cfg()
  rc.validate(c, num_devices=1, check_paths=False)
  assert rc.recall_enabled(c)
  c.data.recall.p_single = c.data.recall.p_named = 0.0
  c.data.recall.p_2hop = 0.0
  assert rc.recall_enabled(c)          # multi-key alone turns the mix on
  c = _cfg()
  c.data.recall.p_2hop = 0.4
  with pytest.raises(rc.RunConfigError, match=r"config.data.recall.p_2hop=0.4: p_single \(0.2\) "
                                              r"\+ p_named \(0.3\) \+ p_multikey \(0.3\)"):
    rc.validate(c, num_devices=1, check_paths=False)
  c = _cfg()
  c.data.recall.multikey_needles = 0
  with pytest.raises(rc.RunConfigError, match="config.data.recall.multikey_needles=0"):
    rc.validate(c, num_devices=1, check_paths=False)


def test_configs():
  from gca_jax.configs import multikey_tiny, multikey_tiny_landmark, multikey_tiny_swa
  from gca_jax.configs import twohop_tiny_x2
  a, x2 = multikey_tiny.get_config(), twohop_tiny_x2.get_config()
  assert a.model.upper_groups == (2,) and x2.model.upper_groups == (1, 1)
  assert a.run_dir == "runs/multikey_tiny" and x2.run_dir == "runs/multikey_tiny_x2"
  assert multikey_tiny_landmark.get_config().model.model_kind == "landmark"
  assert multikey_tiny_swa.get_config().model.model_kind == "swa"
  for c in (multikey_tiny_landmark.get_config(), multikey_tiny_swa.get_config(), x2):
    assert c.data.recall.to_dict() == a.data.recall.to_dict()
    assert c.data.curriculum.to_dict() == a.data.curriculum.to_dict()
    assert c.train.to_dict() == a.train.to_dict()


def test_iterator_resume_exact_with_new_kinds(ids, filler):
  mix = R.MixSpec(p_single=0.2, p_named=0.2, p_multikey=0.4, p_2hop=0.1)
  st = curriculum_stages(parse_stages("5:1,8:1"), chunk_text=C, tokens_per_step=4 * 504)
  gate = Gate(0.5, 2, 2)

  def make():
    return RecallIterator(filler.tokens, ids, mix, st, gate, chunk_text=C, seed=5, steps=30,
                          prefetch=0)
  a = make()
  accs = [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  got = []
  for i, acc in enumerate(accs):
    got.append(next(a))
    a.report(i + 1, acc)
    if i == 4:
      state = json.loads(json.dumps(a.get_state()))
  b = make()
  b.set_state(state)
  for i in range(5, len(accs)):
    nb = next(b)
    for k in ("inputs", "targets", "loss_weights", "answer_mask"):
      np.testing.assert_array_equal(nb[k], got[i][k])
    b.report(i + 1, accs[i])
  assert b.get_state() == a.get_state() and a.stage == 1   # the stage changed at the same step
  assert any(g["inputs"].shape[1] == 504 for g in got)


def test_drt_20m_text_config():
  """Item 3's config: >= 20M parameters, 4032-token samples, a bf16 export under 50 MB."""
  import flax
  import jax
  import jax.numpy as jnp

  from gca_jax import DRT
  from gca_jax.configs import drt_20m_text
  c = drt_20m_text.get_config()
  rc.validate(c, num_devices=1, check_paths=False)
  assert c.data.seq_len == 4032 and parse_stages(c.data.curriculum.stages)[-1] == (64, 1)
  m = rc.model_config(c)
  s = jax.eval_shape(lambda: DRT(m).init({"params": jax.random.key(0)},
                                         jnp.zeros((1, 64), jnp.int32)))
  n = sum(x.size for x in jax.tree.leaves(flax.core.meta.unbox(s["params"])))
  assert n == 22_227_840 and 2 * n < 50e6
