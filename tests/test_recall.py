"""Recall / passkey data generator (gca_jax.data.recall), the recipe trainer's exact resume, and
the shipped recipe checkpoint finding passkeys far beyond its training length (CPU)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from gca_jax.data import recall as R
from gca_jax.data.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")
CKPT = os.path.join(ROOT, "checkpoints", "recall_drt")


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
    s = R.make_recall_sample(rng, ids, filler, length, key_len=5, answer_weight=3.0)
    t = s.tokens
    assert t.shape == (length + 1,) and s.weights.shape == (length,)
    key = s.keys[0]
    a = s.answer_targets[0, 0] + 1                     # window index of the first answer token
    # SPEC §7: answer a few tokens into its chunk, in the last chunk where the key fits
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
    s = R.make_recall_sample(rng, ids, filler, 1008, key_len=5, n_queries=4, named=True,
                             repeat=repeat)
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
  s = R.make_recall_sample(rng, ids, filler, 315, key_len=5, repeat=8)
  line = np.concatenate([ids.needle_head, s.keys[0], ids.needle_tail])
  assert len(_find(s.tokens, line)) == 8
  rf = R.RepeatFiller(ids.landmark_filler)
  s = R.make_recall_sample(rng, ids, rf, 1008, key_len=5)
  assert len(_find(s.tokens, ids.landmark_filler[:10])) >= 10


def test_errors(ids, filler):
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError):
    R.make_recall_sample(rng, ids, filler, 100)                 # too short for question + needle
  with pytest.raises(ValueError):
    R.make_recall_sample(rng, ids, filler, 1008, n_queries=2)   # several unnamed queries
  with pytest.raises(ValueError):
    R.make_recall_sample(rng, ids, filler, 315, repeat=40)      # needle block does not fit


def test_reproducible_batches(ids, filler):
  mix = R.MixSpec(p_single=0.4, p_named=0.4, repeat=2)
  a = R.make_batch(np.random.default_rng([0, 7]), ids, filler, 6, 504, mix)
  b = R.make_batch(np.random.default_rng([0, 7]), ids, filler, 6, 504, mix)
  c = R.make_batch(np.random.default_rng([0, 8]), ids, filler, 6, 504, mix)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["inputs"], c["inputs"])
  np.testing.assert_array_equal(a["inputs"][:, 1:], a["targets"][:, :-1])
  # every first-answer mark is also an answer mark with positive weight
  assert np.all(a["answer_all"][a["answer_mask"] > 0] == 1)
  assert np.all(a["loss_weights"][a["answer_all"] > 0] > 0)


def test_trainer_resumes_exactly(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "scripts", "recipe"))
  import train_recall as T
  common = ["--d_model", "32", "--num_heads", "2", "--mlp_dim", "64", "--lower_layers", "1",
            "--upper_layers", "1", "--encoder_layers", "1", "--tokens_per_step", "630",
            "--stages", "5:2,8:1", "--advance_acc", "0", "--advance_min_steps", "2",
            "--p_single", "0.5", "--p_named", "0.4", "--steps", "4", "--log_every", "1",
            "--eval_every", "100", "--eval_samples", "2", "--dtype", "float32",
            "--swa_impl", "xla", "--gca_impl", "xla"]
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  T.main(["--out_dir", a] + common)
  T.main(["--out_dir", b, "--stop_after", "2"] + common)
  assert json.load(open(os.path.join(b, "ckpt.json")))["step"] == 2
  T.main(["--out_dir", b] + common)
  ca, cb = json.load(open(os.path.join(a, "curve.json"))), json.load(open(os.path.join(b, "curve.json")))
  assert [r["step"] for r in cb] == [1, 2, 3, 4]
  assert [r["seq_len"] for r in ca] == [315, 315, 504, 504]
  for ra, rb in zip(ca, cb):
    assert ra["loss"] == rb["loss"] and ra["seq_len"] == rb["seq_len"]
  pa, _, _ = R.load_model(os.path.join(a, "final"))
  pb, cfg, _ = R.load_model(os.path.join(b, "final"))
  import jax
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(x, y)
  assert cfg.d_model == 32


@pytest.mark.skipif(not os.path.isdir(CKPT), reason="no recipe checkpoint in checkpoints/")
@pytest.mark.parametrize("ckpt", ["recall_drt", "sotu_drt"])
def test_checkpoint_finds_passkeys_far_beyond_training_length(ckpt):
  """The shipped recipe DRTs (trained at 1008 tokens on Moby Dick / on SOTU) find passkeys at
  64x their training length through the streaming engine, on CPU in float32 (filler: the
  shipped held-out Moby Dick text, for the SOTU model a text it never saw)."""
  sys.path.insert(0, os.path.join(ROOT, "scripts", "recipe"))
  import eval_long
  CKPT = os.path.join(ROOT, "checkpoints", ckpt)
  info = json.load(open(os.path.join(CKPT, "config.json")))
  train_len = 63 * info["meta"]["train_chunks"]
  length = 64 * train_len
  res = eval_long.main(["--model", CKPT, "--lengths", str(length), "--samples", "4",
                        "--batch", "4", "--segment_len", "4032", "--dtype", "float32",
                        "--impl", "xla", "--tokenizer", TOK,
                        "--filler", os.path.join(ROOT, "data", "corpus", "valid")])
  assert res["lengths"][str(length)]["acc"] >= 0.9, res["lengths"]
