"""Passkey samples: official and Landmark formats, chunk layout of the answer (docs/method.md §4, §7)."""

import os

import numpy as np
import pytest

from gca_jax.data import (PasskeyConfig, Tokenizer, answer_start, insert_passkey,
                          make_landmark_passkey_sample, make_passkey_sample, tokenize_corpus)
from gca_jax.data.passkey import (LANDMARK_FILLER, LANDMARK_NEEDLE, LANDMARK_TASK, NEEDLE_HEAD,
                                  QUESTION_HEAD, QUESTION_TAIL)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")
VALID = os.path.join(ROOT, "data", "corpus", "valid")
CT = 63




def _reach(before, question_start, needle_tokens, ct=CT):
  """Independent restatement of the depth rule: needles end before the question's chunk."""
  limit = (question_start // ct) * ct - needle_tokens
  return before if limit < 0 else min(before, limit)

@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load(SHIPPED)


@pytest.fixture(scope="module")
def book(tok):
  return np.asarray(tokenize_corpus(VALID, tok).tokens)


def test_config_validation():
  assert PasskeyConfig(0.25, chunk_text=CT).key_len_train == 10
  with pytest.raises(ValueError, match=r"fraction=1.5: must lie in \[0, 1\]"):
    PasskeyConfig(1.5, chunk_text=CT)
  with pytest.raises(ValueError, match="answer_offset=0: must be a positive integer"):
    PasskeyConfig(0.1, answer_offset=0, chunk_text=CT)
  with pytest.raises(ValueError, match="answer_offset=60 \\+ key_len_train=10 must fit"):
    PasskeyConfig(0.1, answer_offset=60, chunk_text=CT)


def test_answer_start_arithmetic():
  # training window, seq_len = 4 chunks
  assert answer_start(CT * 4 + 1, 10, chunk_text=CT) == CT * 3 + 4
  assert answer_start(CT * 4, 5, chunk_text=CT) == CT * 3 + 4  # eval sample of 4 chunks
  # partial last chunk too small: chunk 3
  assert answer_start(CT * 4 + 6, 10, chunk_text=CT) == CT * 3 + 4
  # partial last chunk holds the answer
  assert answer_start(CT * 4 + 61, 10, chunk_text=CT) == CT * 4 + 4
  assert answer_start(CT * 4 + 1, 10, answer_offset=1, chunk_text=CT) == CT * 3 + 1
  with pytest.raises(ValueError, match="needs at least 77"):
    answer_start(70, 10, chunk_text=CT)


def test_official_question_tokens(tok):
  assert len(tok.encode(QUESTION_TAIL)) == 4
  assert len(tok.encode(QUESTION_HEAD)) == 7


def test_insert_passkey_layout(tok, book):
  seq_len = CT * 8
  window = book[1000:1000 + seq_len + 1]
  out, weights, info = insert_passkey(window, tok, np.random.default_rng(0), key_len=10,
                                      chunk_text=CT)
  key = np.asarray(info.key)
  assert out.shape == (seq_len + 1,) and out.dtype == np.int32
  assert weights.shape == (seq_len,) and weights.dtype == np.float32
  inputs, targets = out[:-1], out[1:]
  # answer: P[0] is input 7*63+4 = 445, predicted by the logits at 444, in the last chunk (7)
  assert info.answer_start == 445 and info.answer_target_index == 444
  assert 444 // CT == 7 and seq_len // CT - 1 == 7
  np.testing.assert_array_equal(inputs[445:455], key)
  assert targets[444] == key[0] and targets[453] == key[9]
  # question: 11 tokens at [434, 445); "|What is the passkey?" fills the end of chunk 6
  question = tok.encode(QUESTION_HEAD) + tok.encode(QUESTION_TAIL)
  assert info.question_start == 434 and 434 // CT == 6
  np.testing.assert_array_equal(out[434:445], question)
  assert tok.decode(out[434:441]) == QUESTION_HEAD and 440 == 7 * CT - 1
  assert tok.decode(out[441:445]) == QUESTION_TAIL and 441 == 7 * CT
  # needle: "|The passkey is:" P "|" ends before chunk 6 (two chunks before the last)
  head = tok.encode(NEEDLE_HEAD)
  s = info.needle_start
  np.testing.assert_array_equal(out[s:s + len(head)], head)
  assert info.key_start == s + len(head)
  np.testing.assert_array_equal(out[info.key_start:info.key_start + 10], key)
  assert tok.decode(out[info.key_start + 10:info.key_start + 11]) == "|"
  assert info.key_start + 11 <= 6 * CT
  # loss: 1 up to the target of P's last token (index 453), 0 after
  assert weights[:454].min() == 1.0 and weights[454:].max() == 0.0
  assert weights.sum() == 454.0
  # the rest is the window's own text, in order
  needle_len = len(head) + 11
  kept = np.concatenate([out[:s], out[s + needle_len:434], out[455:]])
  np.testing.assert_array_equal(kept, window[:len(kept)])
  assert len(kept) == seq_len + 1 - needle_len - 11 - 10
  # key ids are ordinary pieces
  assert np.isin(key, tok.ordinary_ids).all() and key.min() >= 258


def test_insert_passkey_positions_and_seeds(tok, book):
  window = book[:CT * 8 + 1]
  starts = []
  for seed in range(200):
    _, _, info = insert_passkey(window, tok, np.random.default_rng(seed), key_len=10, chunk_text=CT)
    starts.append(info.needle_start)
    assert info.key_start + 11 <= 6 * CT
  needle_len = len(tok.encode(NEEDLE_HEAD)) + 11
  assert min(starts) >= 0 and max(starts) <= 6 * CT - needle_len
  assert len(set(starts)) > 100
  a = insert_passkey(window, tok, np.random.default_rng(7), key_len=10, chunk_text=CT)
  b = insert_passkey(window, tok, np.random.default_rng(7), key_len=10, chunk_text=CT)
  c = insert_passkey(window, tok, np.random.default_rng(8), key_len=10, chunk_text=CT)
  np.testing.assert_array_equal(a[0], b[0])
  assert a[2] == b[2] and a[2].key != c[2].key


def test_insert_passkey_partial_last_chunk(tok, book):
  seq_len = CT * 8 + 5  # last chunk (8) has 5 positions: the answer goes in chunk 7
  out, weights, info = insert_passkey(book[:seq_len + 1], tok, np.random.default_rng(1), 10,
                                      chunk_text=CT)
  assert info.answer_start == 7 * CT + 4 and info.answer_target_index // CT == 7
  assert weights.sum() == 7 * CT + 4 + 10 - 1


def test_insert_passkey_too_short(tok, book):
  with pytest.raises(ValueError, match="too short for a passkey sample"):
    insert_passkey(book[:CT * 2 + 1], tok, np.random.default_rng(0), key_len=10, chunk_text=CT)


@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_official_eval_sample(tok, depth):
  filler = np.arange(5000, 8000, dtype=np.int32)  # distinct ids: the filler's order is visible
  length = CT * 16
  sample = make_passkey_sample(filler, length, depth, tok, np.random.default_rng(3), chunk_text=CT)
  t, key = sample.tokens, np.asarray(sample.key)
  assert t.shape == (length,) and t.dtype == np.int32 and len(key) == 5
  assert sample.answer_index == 15 * CT + 3 and sample.answer_index // CT == 15
  np.testing.assert_array_equal(t[sample.answer_index + 1:sample.answer_index + 6], key)
  question = tok.encode(QUESTION_HEAD) + tok.encode(QUESTION_TAIL)
  assert sample.question_start == 15 * CT + 4 - 11 and sample.question_start // CT == 14
  np.testing.assert_array_equal(t[sample.question_start:15 * CT + 4], question)
  head = tok.encode(NEEDLE_HEAD)
  needle_len = len(head) + 6
  before = sample.question_start - needle_len
  reach = _reach(before, sample.question_start, needle_len)
  assert sample.needle_start == round(depth * reach)
  # the needle ends before the question's chunk (retrievable by GCA; depth 1: right at it)
  assert sample.needle_start + needle_len <= 14 * CT
  if depth == 1.0:
    assert sample.needle_start + needle_len == 14 * CT
  np.testing.assert_array_equal(t[sample.needle_start:sample.needle_start + len(head)], head)
  np.testing.assert_array_equal(t[sample.needle_start + len(head):][:5], key)
  text = np.concatenate([t[:sample.needle_start],
                         t[sample.needle_start + needle_len:sample.question_start],
                         t[sample.answer_index + 6:]])
  assert len(text) == length - needle_len - 11 - 5
  np.testing.assert_array_equal(text, 5000 + (text[0] - 5000 + np.arange(len(text))) % 3000)


def test_official_eval_sample_wraps_short_filler(tok):
  filler = np.arange(5000, 5100, dtype=np.int32)
  sample = make_passkey_sample(filler, CT * 8, 0.5, tok, np.random.default_rng(0), chunk_text=CT)
  body = sample.tokens[:sample.needle_start]
  assert set(np.diff(body).tolist()) <= {1, -99}
  assert (np.diff(body) == -99).sum() >= 1


def test_official_eval_sample_seeds(tok, book):
  a = make_passkey_sample(book, CT * 16, 0.5, tok, np.random.default_rng(5), chunk_text=CT)
  b = make_passkey_sample(book, CT * 16, 0.5, tok, np.random.default_rng(5), chunk_text=CT)
  c = make_passkey_sample(book, CT * 16, 0.5, tok, np.random.default_rng(6), chunk_text=CT)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert a.key == b.key and a.key != c.key
  with pytest.raises(ValueError, match="depth=1.5"):
    make_passkey_sample(book, CT * 16, 1.5, tok, np.random.default_rng(0), chunk_text=CT)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_landmark_sample(tok, depth):
  length = CT * 16
  sample = make_landmark_passkey_sample(length, depth, tok, np.random.default_rng(4), chunk_text=CT)
  t = sample.tokens
  assert t.shape == (length,) and t.dtype == np.int32
  key_text = tok.decode(sample.key)
  n = int(key_text)
  assert 1 <= n <= 50000 and key_text == str(n)
  assert sample.answer_index == 15 * CT + 3 and sample.answer_index // CT == 15
  np.testing.assert_array_equal(t[sample.answer_index + 1:][:len(sample.key)], sample.key)
  assert tok.decode(t[sample.question_start:sample.answer_index + 1]) == \
      " What is the pass key? The pass key is "
  assert sample.question_start // CT == 14
  task = tok.encode(LANDMARK_TASK)
  np.testing.assert_array_equal(t[:len(task)], task)
  needle = tok.encode(LANDMARK_NEEDLE.format(n=n))
  np.testing.assert_array_equal(t[sample.needle_start:sample.needle_start + len(needle)], needle)
  unit = len(tok.encode(" " + LANDMARK_FILLER))
  offset = sample.needle_start - len(task)
  before = sample.question_start - len(task) - len(needle)
  assert offset % unit == 0
  if depth == 0.0:
    assert offset == 0
  if depth == 1.0:
    assert offset == (before // unit) * unit
  if depth == 0.5:
    assert abs(offset - before / 2) <= unit / 2
  text = tok.decode(t)
  after_task = " The pass key is" if offset == 0 else " " + LANDMARK_FILLER
  assert text.startswith(LANDMARK_TASK + after_task)
  assert text.count(f"The pass key is {n}. Remember it. {n} is the pass key.") == 1


def test_landmark_keys_and_seeds(tok):
  keys = [int(tok.decode(make_landmark_passkey_sample(CT * 8, 0.5, tok, np.random.default_rng(s),
                                                      chunk_text=CT).key))
          for s in range(50)]
  assert all(1 <= k <= 50000 for k in keys) and len(set(keys)) > 45
  a = make_landmark_passkey_sample(CT * 8, 0.3, tok, np.random.default_rng(9), chunk_text=CT)
  b = make_landmark_passkey_sample(CT * 8, 0.3, tok, np.random.default_rng(9), chunk_text=CT)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert a.answer_index == b.answer_index == 7 * CT + 3


# ------------------------------------------------------------------------- multi-key and 2-hop

from gca_jax.data.passkey import (HOP_ARROW, HOP_NEEDLE_HEAD, HOP_QUESTION_HEAD,  # noqa: E402
                                  MULTIKEY_NEEDLE_HEAD, MULTIKEY_QUESTION_HEAD, landmark_haystack,
                                  make_2hop_passkey_sample, make_multikey_passkey_sample)


def _check_answer_layout(s, length, k, chunk_text=CT, offset=4):
  """The answer sits `offset` tokens into its chunk, the question starts in an earlier chunk."""
  a = s.answer_start
  assert a == answer_start(length, k, offset, chunk_text=chunk_text) and a % chunk_text == offset
  assert (s.answer_index) // chunk_text == a // chunk_text
  assert s.question_start // chunk_text < a // chunk_text
  np.testing.assert_array_equal(s.tokens[a:a + k], s.key)
  assert s.tokens.shape == (length,) and s.tokens.dtype == np.int32


@pytest.mark.parametrize("length,depths,offset,chunk_text", [
    (CT * 8, (0.0, 0.5, 1.0, 0.5), 4, CT),
    (CT * 16 + 30, (0.9, 0.1, 0.3), 4, CT),
    (CT * 5 + 7, (1.0, 1.0), 2, CT),
    (15 * 12, (0.25, 0.75), 4, 15),  # small chunks (the test models' chunk_size 16)
])
def test_multikey_layout(tok, length, depths, offset, chunk_text):
  filler = np.arange(5000, 9000, dtype=np.int32)  # distinct ids: the filler's order is visible
  s = make_multikey_passkey_sample(filler, length, depths, tok, np.random.default_rng(11),
                                   chunk_text=chunk_text, answer_offset=offset)
  n = len(depths)
  t = s.tokens
  _check_answer_layout(s, length, 5, chunk_text, offset)
  assert len(s.names) == n and len(set(s.names)) == n  # distinct X's (all ids distinct)
  assert len(set(sum(s.names + s.values, ()))) == n * 7
  assert s.key == s.values[s.query]
  head = tok.encode(MULTIKEY_NEEDLE_HEAD)
  needle_len = len(head) + 2 + 1 + 5 + 1
  for i in range(n):
    st = s.needle_starts[i]
    np.testing.assert_array_equal(t[st:st + len(head)], head)
    np.testing.assert_array_equal(t[st + len(head):st + len(head) + 2], s.names[i])
    assert tok.decode(t[st + len(head) + 2:st + len(head) + 3]) == " is"
    assert s.value_starts[i] == st + len(head) + 3
    np.testing.assert_array_equal(t[s.value_starts[i]:s.value_starts[i] + 5], s.values[i])
    assert tok.decode(t[st + needle_len - 1:st + needle_len]) == "|"
    assert st + needle_len <= s.question_start
  # needle i sits after round(depth_i * reach) filler tokens (all end before the question chunk)
  before = s.question_start - n * needle_len
  reach = _reach(before, s.question_start, n * needle_len, chunk_text)
  if (s.question_start // chunk_text) * chunk_text >= n * needle_len:
    assert max(s.needle_starts) + needle_len <= (s.question_start // chunk_text) * chunk_text
  for i in range(n):
    ahead = sum(needle_len for j in range(n) if (s.needle_starts[j] < s.needle_starts[i]))
    assert s.needle_starts[i] - ahead == round(depths[i] * reach)
  # question: "|What is the special magic number for" X "? The special magic number for" X " is"
  qh = tok.encode(MULTIKEY_QUESTION_HEAD)
  q = t[s.question_start:s.answer_start]
  np.testing.assert_array_equal(q[:len(qh)], qh)
  np.testing.assert_array_equal(q[len(qh):len(qh) + 2], s.names[s.query])
  np.testing.assert_array_equal(q[-3:-1], s.names[s.query])
  assert tok.decode(q[-1:]) == " is"
  # the question's first mention of the name lies wholly before the answer chunk
  assert s.question_start + len(qh) + 2 <= (s.answer_start // chunk_text) * chunk_text
  # everything else is the filler, in order (wrapping)
  keep = np.ones(length, bool)
  for st in s.needle_starts:
    keep[st:st + needle_len] = False
  keep[s.question_start:s.answer_start + 5] = False
  text = t[keep]
  assert len(text) == length - n * needle_len - len(q) - 5
  np.testing.assert_array_equal(text, 5000 + (text[0] - 5000 + np.arange(len(text))) % 4000)


def test_multikey_seeds_and_query(tok, book):
  mk = lambda seed, **kw: make_multikey_passkey_sample(  # noqa: E731
      book, CT * 10, (0.2, 0.4, 0.6, 0.8), tok, np.random.default_rng(seed), chunk_text=CT, **kw)
  a, b, c = mk(3), mk(3), mk(4)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert a.key == b.key and a.names == b.names and a.query == b.query
  assert a.values != c.values and a.names != c.names
  assert {mk(s).query for s in range(40)} == {0, 1, 2, 3}
  for q in range(4):
    s = mk(5, query=q)
    assert s.query == q and s.key == s.values[q]
  with pytest.raises(ValueError, match="query=4 must index"):
    mk(0, query=4)
  with pytest.raises(ValueError, match="depth=1.5"):
    make_multikey_passkey_sample(book, CT * 10, (0.1, 1.5), tok, np.random.default_rng(0),
                                 chunk_text=CT)
  with pytest.raises(ValueError, match="leaves no room for 4 needles"):
    make_multikey_passkey_sample(book, CT * 2, (0.1,) * 4, tok, np.random.default_rng(0),
                                 chunk_text=CT)


@pytest.mark.parametrize("length,depths,offset", [
    (CT * 8, (0.2, 0.7), 4), (CT * 8, (0.9, 0.1), 4), (CT * 12 + 40, (0.0, 1.0), 3),
    (CT * 6, (0.5, 0.5), 4)])
def test_2hop_layout_and_chain(tok, length, depths, offset):
  filler = np.arange(5000, 9000, dtype=np.int32)
  s = make_2hop_passkey_sample(filler, length, depths, tok, np.random.default_rng(2),
                               chunk_text=CT, answer_offset=offset)
  t = s.tokens
  arrow = tok.encode(HOP_ARROW)
  (x, y), (y2, z) = s.names, s.values
  assert s.values[0] == s.names[1] == y == y2  # the chain X -> Y -> Z
  assert len(set(x + y + z)) == 15  # X, Y, Z: 15 distinct ids
  assert s.key == y + tuple(arrow) + z and len(s.key) == 5 + len(arrow) + 5
  _check_answer_layout(s, length, len(s.key), CT, offset)
  head = tok.encode(HOP_NEEDLE_HEAD)
  nl = len(head) + 5 + len(arrow) + 5 + 1
  for i, (src, dst) in enumerate([(x, y), (y, z)]):
    st = s.needle_starts[i]
    expect = head + list(src) + arrow + list(dst) + tok.encode("|")
    np.testing.assert_array_equal(t[st:st + nl], expect)
    assert tok.decode(t[st:st + nl]).startswith("|DEF ")
    assert s.value_starts[i] == st + len(head) + 5 + len(arrow)
    assert st + nl <= s.question_start
  before = s.question_start - 2 * nl
  reach = _reach(before, s.question_start, 2 * nl)
  first = int(np.argmin(s.needle_starts)) if s.needle_starts[0] != s.needle_starts[1] else 0
  assert s.needle_starts[first] == round(depths[first] * reach)
  assert s.needle_starts[1 - first] - nl == round(depths[1 - first] * reach)
  qh = tok.encode(HOP_QUESTION_HEAD)
  q = t[s.question_start:s.answer_start]
  np.testing.assert_array_equal(q[:len(qh)], qh)
  np.testing.assert_array_equal(q[len(qh):len(qh) + 5], x)
  np.testing.assert_array_equal(q[-5 - len(arrow):], list(x) + arrow)
  assert s.question_start + len(qh) + 5 <= (s.answer_start // CT) * CT


def test_2hop_seeds(tok, book):
  a = make_2hop_passkey_sample(book, CT * 8, (0.3, 0.6), tok, np.random.default_rng(1),
                               chunk_text=CT)
  b = make_2hop_passkey_sample(book, CT * 8, (0.3, 0.6), tok, np.random.default_rng(1),
                               chunk_text=CT)
  c = make_2hop_passkey_sample(book, CT * 8, (0.3, 0.6), tok, np.random.default_rng(2),
                               chunk_text=CT)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert a.key == b.key and a.key != c.key
  with pytest.raises(ValueError, match="2 depths given for 3 needles|3 depths given for 2"):
    make_2hop_passkey_sample(book, CT * 8, (0.3, 0.6, 0.1), tok, np.random.default_rng(1),
                             chunk_text=CT)


def test_variants_in_landmark_haystack(tok):
  prefix, unit = landmark_haystack(tok)
  s = make_multikey_passkey_sample(unit, CT * 8, (0.5, 0.0), tok, np.random.default_rng(0),
                                   prefix_tokens=prefix, filler_start=0, chunk_text=CT)
  np.testing.assert_array_equal(s.tokens[:len(prefix)], prefix)
  assert s.needle_starts[1] == len(prefix)
  needle_len = len(tok.encode(MULTIKEY_NEEDLE_HEAD)) + 2 + 1 + 5 + 1
  assert tok.decode(s.tokens[len(prefix) + needle_len:]).startswith(" " + LANDMARK_FILLER)
  _check_answer_layout(s, CT * 8, 5)
  h = make_2hop_passkey_sample(unit, CT * 8, (0.5, 0.9), tok, np.random.default_rng(0),
                               prefix_tokens=prefix, filler_start=0, chunk_text=CT)
  assert tok.decode(h.tokens).startswith(LANDMARK_TASK + " " + LANDMARK_FILLER)


def test_chunk_text_is_required(tok, book):
  """No builder defaults the text-per-chunk count: it must come from the model config."""
  from gca_jax.data.passkey import make_2hop_passkey_sample, make_multikey_passkey_sample
  rng = np.random.default_rng(0)
  for call in (lambda: PasskeyConfig(0.1), lambda: answer_start(CT * 4, 5),
               lambda: insert_passkey(book[:CT * 8 + 1], tok, rng, 10),
               lambda: make_passkey_sample(book, CT * 8, 0.5, tok, rng),
               lambda: make_landmark_passkey_sample(CT * 8, 0.5, tok, rng),
               lambda: make_multikey_passkey_sample(book, CT * 8, (0.5,), tok, rng),
               lambda: make_2hop_passkey_sample(book, CT * 8, (0.2, 0.5), tok, rng)):
    with pytest.raises(TypeError, match="chunk_text"):
      call()
  # a model with chunks of 15 text tokens: the answer sits 4 tokens into the last whole chunk
  s = make_passkey_sample(book, 150, 0.5, tok, rng, chunk_text=15)
  assert s.answer_index + 1 == 15 * 9 + 4
