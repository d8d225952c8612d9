"""Recall samples and the training mix (gca_jax.data.recall), the accuracy-gated length
curriculum and its iterator state (gca_jax.data.pipeline.RecallIterator)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gca_jax.data import recall as R
from gca_jax.data.pipeline import (Gate, RecallIterator, Stage, curriculum_stages,
                                   parse_stages)
from gca_jax.data.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")
C = 63  # text tokens per chunk of the chunk_size-64 models


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load(TOK)


@pytest.fixture(scope="module")
def ids(tok):
  return R.prompt_ids(tok)


@pytest.fixture(scope="module")
def filler():
  return R.TextFiller(np.arange(2, 3000, dtype=np.int32))


def _find(seq, sub):
  seq, sub = list(seq), list(sub)
  return [i for i in range(len(seq) - len(sub) + 1) if seq[i:i + len(sub)] == sub]


@pytest.mark.parametrize("length", [315, 504, 1008, 4095])
def test_official_layout(ids, filler, length):
  rng = np.random.default_rng(length)
  for _ in range(20):
    s = R.make_recall_sample(rng, ids, filler, length, chunk_text=C, key_len=5,
                             answer_weight=3.0)
    t = s.tokens
    assert t.shape == (length + 1,) and s.weights.shape == (length,)
    key = s.keys[0]
    a = s.answer_targets[0, 0] + 1                     # window index of the first answer token
    # docs/method.md §7: answer a few tokens into its chunk, in the last chunk where the key fits
    assert a % 63 == 4
    assert (length + 1 - a - 5) < 63
    np.testing.assert_array_equal(t[a:a + 5], key)
    # the question ends right before the answer and starts in the previous chunk
    q = np.concatenate([ids.question_head, ids.question_tail])
    assert s.question_starts[0] == a - len(q)
    np.testing.assert_array_equal(t[a - len(q):a], q)
    assert (a - len(q)) // 63 == a // 63 - 1
    # the needle: head + key + tail, entirely in chunks before the question's chunk
    n0 = s.needle_starts[0]
    needle = np.concatenate([ids.needle_head, key, ids.needle_tail])
    np.testing.assert_array_equal(t[n0:n0 + len(needle)], needle)
    assert (n0 + len(needle) - 1) // 63 < (a - len(q)) // 63
    # weights: LM everywhere up to the last answer token, answer_weight on the key, 0 after
    at = s.answer_targets[0]
    np.testing.assert_array_equal(at, np.arange(a - 1, a + 4))
    assert np.all(s.weights[at] == 3.0)
    assert np.all(s.weights[:at[0]] == 1.0) and np.all(s.weights[at[-1] + 1:] == 0.0)
    # targets predicted at the answer positions are the key
    np.testing.assert_array_equal(t[1:][at], key)


def test_named_multi_query(ids, filler):
  rng = np.random.default_rng(1)
  for repeat in (1, 3):
    s = R.make_recall_sample(rng, ids, filler, 1008, chunk_text=C, key_len=5, n_queries=4,
                             named=True, repeat=repeat)
    t = s.tokens
    first = s.answer_targets[:, 0] + 1
    assert np.all(first % 63 == 4) and np.all(np.diff(first) == 63)
    for i in range(4):
      name_pos = s.question_starts[i] + len(ids.named_question_head)
      name = t[name_pos]
      # the name is read before the question's chunk ends (the retrieval for the answer chunk)
      assert name_pos // 63 == first[i] // 63 - 1
      needle = np.concatenate([ids.named_needle_head, [name], ids.named_needle_mid, s.keys[i],
                               ids.needle_tail])
      n0 = s.needle_starts[i]
      np.testing.assert_array_equal(t[n0:n0 + len(needle) * repeat], np.tile(needle, repeat))
      assert (n0 + len(needle) * repeat - 1) // 63 < s.question_starts[0] // 63
      np.testing.assert_array_equal(t[first[i]:first[i] + 5], s.keys[i])
    assert len(set(t[s.question_starts + len(ids.named_question_head)].tolist())) == 4


def test_dense_needle_and_filler_kinds(ids, filler):
  rng = np.random.default_rng(2)
  s = R.make_recall_sample(rng, ids, filler, 315, chunk_text=C, key_len=5, repeat=8)
  line = np.concatenate([ids.needle_head, s.keys[0], ids.needle_tail])
  assert len(_find(s.tokens, line)) == 8
  rf = R.RepeatFiller(ids.landmark_filler)
  s = R.make_recall_sample(rng, ids, rf, 1008, chunk_text=C, key_len=5)
  assert len(_find(s.tokens, ids.landmark_filler[:10])) >= 10


def test_errors(ids, filler):
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="too short"):         # no room for question + needle
    R.make_recall_sample(rng, ids, filler, 100, chunk_text=C)
  with pytest.raises(ValueError, match="named needles"):     # several unnamed queries
    R.make_recall_sample(rng, ids, filler, 1008, chunk_text=C, n_queries=2)
  with pytest.raises(ValueError, match="do not fit"):        # needle block does not fit
    R.make_recall_sample(rng, ids, filler, 315, chunk_text=C, repeat=40)
  with pytest.raises(ValueError, match="p_single \\+ p_named"):
    R.MixSpec(p_single=0.6, p_named=0.6)




# -- the training mix ---------------------------------------------------------------------------

def _rows_valid(ids, b, mix):
  """Every row of a make_batch batch is what its kind says (answers, names, weights)."""
  name_at = len(ids.named_question_head)
  for r in range(b["inputs"].shape[0]):
    mask, w, tgt = b["answer_mask"][r], b["loss_weights"][r], b["targets"][r]
    pos = np.flatnonzero(mask)
    np.testing.assert_array_equal(b["inputs"][r, 1:], tgt[:-1])
    if b["kind"][r] == R.KIND_TEXT:
      assert pos.size == 0 and np.all(w == 1.0)
      continue
    assert np.all(pos % C == mix.answer_offset - 1)        # answers start 4 tokens into a chunk
    assert np.all(w[pos] == mix.answer_weight) and w[-1] in (0.0, mix.answer_weight)
    window = np.concatenate([b["inputs"][r], tgt[-1:]])
    if b["kind"][r] == R.KIND_SINGLE:
      assert pos.size == 1
      needle = np.concatenate([ids.needle_head, tgt[pos[0]:pos[0] + mix.key_len],
                               ids.needle_tail])
      assert len(_find(window[:(pos[0] // C - 1) * C], needle)) == 1
    else:
      assert pos.size == R.named_queries(ids, len(tgt), mix, chunk_text=C)
      for p in pos:   # the name asked about has its own needle, with this key, earlier
        qs = p + 1 - (len(ids.named_question_head) + len(ids.named_question_mid)
                      + len(ids.named_question_tail) + len(ids.named_question_end) + 2)
        name = window[qs + name_at]
        needle = np.concatenate([ids.named_needle_head, [name], ids.named_needle_mid,
                                 tgt[p:p + mix.key_len], ids.needle_tail])
        assert len(_find(window[:qs], needle)) == mix.repeat


def test_mix_proportions_and_validity(ids, filler):
  mix = R.MixSpec(p_single=0.4, p_named=0.5, answer_weight=2.0)
  kinds = []
  for step in range(6):
    b = R.make_batch(np.random.default_rng([0, step]), ids, filler, 100, 504, mix, chunk_text=C)
    kinds.append(b["kind"])
    if step < 2:
      _rows_valid(ids, b, mix)
  frac = np.bincount(np.concatenate(kinds), minlength=3) / 600
  # 600 rows: binomial std <= 0.021, bounds at ~3.5 std
  assert abs(frac[R.KIND_SINGLE] - 0.4) < 0.07 and abs(frac[R.KIND_NAMED] - 0.5) < 0.07
  assert abs(frac[R.KIND_TEXT] - 0.1) < 0.05


def test_named_queries_follow_the_length(ids, filler):
  mix = R.MixSpec(p_single=0.0, p_named=1.0, repeat=1)
  got = {L: R.named_queries(ids, L, mix, chunk_text=C) for L in (315, 504, 1008)}
  assert got[1008] == 4 and 1 <= got[315] < 4 and got[315] <= got[504]
  dense = R.MixSpec(p_single=0.0, p_named=1.0, repeat=8)
  assert R.named_queries(ids, 315, dense, chunk_text=C) < got[315]
  b = R.make_batch(np.random.default_rng(3), ids, filler, 8, 315, dense, chunk_text=C)
  _rows_valid(ids, b, dense)


def test_reproducible_batches(ids, filler):
  mix = R.MixSpec(p_single=0.4, p_named=0.4, repeat=2)
  a = R.make_batch(np.random.default_rng([0, 7]), ids, filler, 6, 504, mix, chunk_text=C)
  b = R.make_batch(np.random.default_rng([0, 7]), ids, filler, 6, 504, mix, chunk_text=C)
  c = R.make_batch(np.random.default_rng([0, 8]), ids, filler, 6, 504, mix, chunk_text=C)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["inputs"], c["inputs"])


# -- the curriculum -----------------------------------------------------------------------------

def test_parse_and_size_stages():
  pairs = parse_stages("5:8,5:4,5:2,5:1,8:2,8:1,16:1")
  assert pairs == [(5, 8), (5, 4), (5, 2), (5, 1), (8, 2), (8, 1), (16, 1)]
  st = curriculum_stages(pairs, chunk_text=C, tokens_per_step=32768)
  assert [(s.length, s.batch) for s in st[3:5]] == [(315, 104), (504, 65)]
  assert st[-1] == Stage(1008, 1, 32)
  st8 = curriculum_stages(pairs, chunk_text=C, tokens_per_step=32768, batch_multiple=8)
  assert [s.batch for s in st8[3:]] == [104, 64, 64, 32]
  for bad in ("", "5", "5:x", "0:1", "5:8,,8:1"):
    with pytest.raises(ValueError):
      parse_stages(bad)


def _iterator(ids, filler, stages=((5, 2), (8, 1), (16, 1)), gate=Gate(0.8, 4, 2), **kw):
  st = curriculum_stages(stages, chunk_text=C, tokens_per_step=2016)
  mix = R.MixSpec(p_single=0.5, p_named=0.4)
  return RecallIterator(filler.tokens, ids, mix, st, gate, chunk_text=C, seed=5, steps=40, **kw)


def test_gate_advances_when_accuracy_passes_and_not_before(ids, filler):
  it = _iterator(ids, filler, prefetch=0)
  lengths = []
  accs = {1: 0.9, 2: 0.9,            # passes, but the stage is younger than min_steps=4
          3: 0.5, 4: 0.6,            # old enough, fails
          5: 0.9, 6: 0.75,           # mean 0.825 >= 0.8 at step 6: stage 1 from batch 7 on
          7: 1.0, 8: 1.0, 9: 1.0}    # stage 1 is 2 steps old at step 8: stays
  for step in range(1, 10):
    b = next(it)
    lengths.append(b["inputs"].shape[1])
    assert b["inputs"].shape[0] == it.current.batch
    changed = it.report(step, accs[step])
    assert changed == (step == 6)
  assert lengths == [315] * 6 + [504] * 3
  assert it.get_state() == {"step": 9, "stage": 1, "stage_start": 6, "window": [1.0],
                            "num_stages": 3}
  with pytest.raises(ValueError, match="report"):
    it.report(3, 1.0)


def test_iterator_state_resumes_exactly(ids, filler):
  """Batches and stage changes after set_state(get_state()) equal an uninterrupted run's; the
  state survives JSON (it is stored in the checkpoint as such)."""
  acc = lambda s: 0.9 if s % 3 else 0.7   # noqa: E731
  a = _iterator(ids, filler)
  full = []
  for s in range(1, 15):
    full.append(next(a))
    a.report(s, acc(s))
  assert a.stage == 2
  b = _iterator(ids, filler)
  for s in range(1, 8):
    next(b)
    b.report(s, acc(s))
  state = json.loads(json.dumps(b.get_state()))
  b.close()
  c = _iterator(ids, filler)
  c.set_state(json.dumps(state).encode())   # the bytes Grain's checkpoint handler passes
  for s in range(8, 15):
    got = next(c)
    for k in full[s - 1]:
      np.testing.assert_array_equal(got[k], full[s - 1][k])
    c.report(s, acc(s))
  assert c.get_state() == a.get_state()
  with pytest.raises(ValueError, match="does not fit"):
    c.set_state({**state, "num_stages": 2})


def test_iterator_rejects_stages_that_do_not_fit(ids, filler):
  with pytest.raises(ValueError, match=r"stage 0 \(126 tokens, needles x8\)"):
    _iterator(ids, filler, stages=((2, 8), (16, 1)))


def test_worker_processes_make_the_same_batches(ids, filler):
  """num_workers > 0 (the GPU setting: a process pool kept across stages) == the in-process
  Grain path, through a stage change."""
  out = {}
  for nw in (0, 1):
    it = _iterator(ids, filler, gate=Gate(0.5, 2, 2), num_workers=nw)
    out[nw] = []
    for s in range(1, 5):
      out[nw].append(next(it))
      it.report(s, 1.0)
    it.close()
  assert [b["inputs"].shape[1] for b in out[1]] == [315, 315, 504, 504]
  for a, b in zip(out[0], out[1]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
