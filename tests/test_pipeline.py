"""Corpus reading, token stream + cache, Grain training pipeline, eval windows (docs/method.md §4)."""

import os

import numpy as np
import pytest

from gca_jax.data import (CorpusError, PasskeyConfig, Tokenizer, make_eval_windows,
                          make_train_dataset, read_documents, tokenize_corpus)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")
VALID = os.path.join(ROOT, "data", "corpus", "valid")


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load(SHIPPED)


@pytest.fixture(scope="module")
def valid_tokens(tok):
  return np.asarray(tokenize_corpus(VALID, tok).tokens)


def window_starts(batch, seq_len):
  """Window index of each row of an np.arange stream batch (checks the row is a window)."""
  inputs, targets = batch["inputs"], batch["targets"]
  starts = inputs[:, 0]
  assert np.all(starts % seq_len == 0)
  np.testing.assert_array_equal(inputs, starts[:, None] + np.arange(seq_len))
  np.testing.assert_array_equal(targets, inputs + 1)
  return list(starts // seq_len)


# --- corpus -------------------------------------------------------------------------------


def test_empty_dir(tmp_path):
  (tmp_path / "notes.csv").write_text("a,b")
  with pytest.raises(CorpusError, match=r"no \*\.txt.*1 files with other suffixes"):
    read_documents(tmp_path)


def test_missing_path(tmp_path):
  with pytest.raises(CorpusError, match="nope.*does not exist"):
    read_documents(tmp_path / "nope")


def test_only_empty_files(tmp_path):
  (tmp_path / "a.txt").write_text("")
  (tmp_path / "b.txt").write_text("  \n\n")
  with pytest.raises(CorpusError,
                     match=r"no usable documents.*skipped 2 empty \(e\.g\. a\.txt, b\.txt\)"):
    read_documents(tmp_path)


def test_non_utf8_counted_and_skipped(tmp_path):
  (tmp_path / "good.txt").write_text("good text\n")
  (tmp_path / "bad.txt").write_bytes(b"caf\xe9 latin-1\n")
  docs, stats = read_documents(tmp_path)
  assert docs == ["good text\n"]
  assert (stats.files, stats.documents, stats.non_utf8, stats.skipped) == (2, 1, 1, 1)
  assert stats.examples == {"non_utf8": ["bad.txt"]}
  assert "skipped 1 non_utf8 (e.g. bad.txt)" in stats.summary()


def test_jsonl_bad_lines(tmp_path):
  lines = ['{"text": "first"}', "not json", '{"title": "no text"}', "[1, 2]", '{"text": ""}',
           "", '{"text": "second", "id": 7}', '{"text": 3}']
  (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
  docs, stats = read_documents(tmp_path / "c.jsonl")
  assert docs == ["first", "second"]
  assert (stats.bad_json, stats.missing_field, stats.empty) == (2, 2, 1)
  assert stats.examples["bad_json"] == ["c.jsonl:2", "c.jsonl:4"]
  assert stats.examples["missing_field"] == ["c.jsonl:3", "c.jsonl:8"]
  assert stats.chars == len("first") + len("second")
  docs, stats = read_documents(tmp_path / "c.jsonl", text_field="title")
  assert docs == ["no text"] and stats.missing_field == 4


def test_directory_order_and_filters(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / ".cache").mkdir()
  (tmp_path / "b.txt").write_text("B")
  (tmp_path / "a.txt").write_text("A")
  (tmp_path / "a" / "z.md").write_text("Z")
  (tmp_path / "a" / "y.jsonl").write_text('{"text": "Y1"}\n{"text": "Y2"}\n')
  (tmp_path / ".cache" / "x.txt").write_text("hidden")
  (tmp_path / ".hidden.txt").write_text("hidden")
  (tmp_path / "tokens.npy").write_bytes(b"\x93NUMPY")
  docs, stats = read_documents(tmp_path)
  assert docs == ["Y1", "Y2", "Z", "A", "B"]
  assert (stats.files, stats.documents, stats.ignored_files) == (4, 5, 1)


# --- token stream ---------------------------------------------------------------------------


def test_tokenize_corpus_layout_and_cache(tmp_path, tok):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  texts = ["Call me Ishmael.", "Some years ago—never mind how long precisely.", "Whale 🐳"]
  for i, t in enumerate(texts):
    (corpus / f"{i}.txt").write_text(t)
  expected = np.concatenate([np.asarray(tok.encode(t) + [tok.eot_id]) for t in texts])
  cache = tmp_path / "cache"
  first = tokenize_corpus(corpus, tok, cache)
  assert first.tokens.dtype == np.int32
  np.testing.assert_array_equal(first.tokens, expected)
  assert (first.num_documents, first.from_cache) == (3, False)
  assert int(np.sum(first.tokens == tok.eot_id)) == 3
  assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]
  again = tokenize_corpus(corpus, tok, cache)
  assert again.from_cache and again.cache_path == first.cache_path
  np.testing.assert_array_equal(again.tokens, expected)
  assert again.stats.documents == 3
  (corpus / "1.txt").write_text("Changed text, new length.")
  changed = tokenize_corpus(corpus, tok, cache)
  assert not changed.from_cache and changed.cache_path != first.cache_path
  assert len(list(cache.glob("*.npy"))) == 2


def test_too_short_corpus_errors():
  tokens = np.arange(100, dtype=np.int32)
  with pytest.raises(CorpusError, match=r"need 129 tokens, the stream has 100"):
    make_train_dataset(tokens, seq_len=128, global_batch_size=1, seed=0)
  with pytest.raises(CorpusError, match=r"need 193 tokens, the stream has 100"):
    make_train_dataset(tokens, seq_len=48, global_batch_size=4, seed=0, process_index=1,
                       process_count=4)
  with pytest.raises(CorpusError, match=r"need 161 tokens, the stream has 100"):
    make_train_dataset(tokens, seq_len=8, global_batch_size=20, seed=0, num_epochs=1)
  with pytest.raises(CorpusError, match=r"seq_len\+1=129 tokens needed, the stream has 100"):
    make_eval_windows(tokens, 128, 4)


def test_bad_arguments(tok):
  tokens = np.arange(1000, dtype=np.int32)
  with pytest.raises(ValueError, match="global_batch_size=6 is not divisible by process_count=4"):
    make_train_dataset(tokens, seq_len=8, global_batch_size=6, seed=0, process_count=4)
  with pytest.raises(ValueError, match=r"process_index=2 must lie in \[0, 2\)"):
    make_train_dataset(tokens, seq_len=8, global_batch_size=2, seed=0, process_index=2,
                       process_count=2)
  with pytest.raises(ValueError, match="seed=-1 must be a non-negative integer"):
    make_train_dataset(tokens, seq_len=8, global_batch_size=2, seed=-1)
  with pytest.raises(ValueError, match="needs the tokenizer"):
    make_train_dataset(tokens, seq_len=8, global_batch_size=2, seed=0,
                       passkey=PasskeyConfig(0.5, chunk_text=63))
  with pytest.raises(ValueError, match="too short for a passkey answer"):
    make_train_dataset(tokens, seq_len=32, global_batch_size=2, seed=0,
                       passkey=PasskeyConfig(0.5, chunk_text=63), tokenizer=tok)


# --- training dataset ---------------------------------------------------------------------


SEQ = 8
STREAM = np.arange(SEQ * 40 + 1, dtype=np.int32)  # 40 windows; row content names its window


def test_one_epoch_covers_every_window_once():
  ds = make_train_dataset(STREAM, seq_len=SEQ, global_batch_size=4, seed=1, num_epochs=1)
  batches = list(ds)
  assert len(batches) == 10
  for b in batches:
    assert b["inputs"].shape == (4, SEQ) and b["inputs"].dtype == np.int32
    assert b["targets"].dtype == np.int32 and b["loss_weights"].dtype == np.float32
    np.testing.assert_array_equal(b["loss_weights"], np.ones((4, SEQ), np.float32))
  order = [w for b in batches for w in window_starts(b, SEQ)]
  assert sorted(order) == list(range(40))
  assert order != list(range(40))


def test_each_epoch_is_reshuffled():
  ds = make_train_dataset(STREAM, seq_len=SEQ, global_batch_size=4, seed=1, num_epochs=3)
  order = [w for b in ds for w in window_starts(b, SEQ)]
  epochs = [order[:40], order[40:80], order[80:]]
  assert all(sorted(e) == list(range(40)) for e in epochs)
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_forever_crosses_epochs():
  it = iter(make_train_dataset(STREAM, seq_len=SEQ, global_batch_size=3, seed=1))
  order = [w for _ in range(30) for w in window_starts(next(it), SEQ)]
  assert len(order) == 90
  assert sorted(order[:40]) == list(range(40)) and sorted(order[40:80]) == list(range(40))


def test_process_shards_are_disjoint():
  def order(pi, seed=5):
    ds = make_train_dataset(STREAM, seq_len=SEQ, global_batch_size=4, seed=seed,
                            process_index=pi, process_count=2, num_epochs=1)
    return [w for b in ds for w in window_starts(b, SEQ)]
  p0, p1 = order(0), order(1)
  assert len(p0) == len(p1) == 20
  assert set(p0).isdisjoint(p1)
  assert set(p0) | set(p1) == set(range(40))
  assert order(0) == p0 and order(1) == p1
  p0_other = order(0, seed=6)
  assert sorted(p0_other) == sorted(p0) and p0_other != p0


def test_uneven_shards_drop_remainder():
  stream = np.arange(SEQ * 41 + 1, dtype=np.int32)
  sets = []
  for pi in range(3):
    ds = make_train_dataset(stream, seq_len=SEQ, global_batch_size=3, seed=0, process_index=pi,
                            process_count=3, num_epochs=1)
    sets.append({w for b in ds for w in window_starts(b, SEQ)})
  assert [len(s) for s in sets] == [13, 13, 13]
  assert sets[0] == set(range(13)) and sets[2] == set(range(26, 39))


def test_resume_is_exact(tok, valid_tokens):
  kw = dict(seq_len=63 * 4, global_batch_size=4, seed=11, passkey=PasskeyConfig(0.5, chunk_text=63),
            tokenizer=tok)
  it = iter(make_train_dataset(valid_tokens, **kw))
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(7)]
  resumed = iter(make_train_dataset(valid_tokens, **kw))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in ("inputs", "targets", "loss_weights"):
      np.testing.assert_array_equal(got[k], want[k])
  passkey_rows = sum(int((b["loss_weights"] < 1).any(axis=1).sum()) for b in expected)
  assert 6 <= passkey_rows <= 22


def test_passkey_fraction(tok, valid_tokens):
  def passkey_rows(fraction):
    ds = make_train_dataset(valid_tokens, seq_len=63 * 4, global_batch_size=8, seed=2,
                            passkey=PasskeyConfig(fraction, chunk_text=63), tokenizer=tok)
    it = iter(ds)
    rows = [next(it) for _ in range(25)]
    return sum(int((b["loss_weights"] < 1).any(axis=1).sum()) for b in rows)
  assert passkey_rows(0.0) == 0
  assert passkey_rows(1.0) == 200
  assert 70 <= passkey_rows(0.5) <= 130


def test_passkey_rows_mark_their_answer(tok, valid_tokens):
  """With passkey mixing every batch has "answer_mask": 1 at the target of the key's first
  token in passkey rows (the train step's answer accuracy), 0 in plain windows."""
  from gca_jax.data.passkey import NEEDLE_HEAD
  head = np.asarray(tok.encode(NEEDLE_HEAD))
  it = iter(make_train_dataset(valid_tokens, seq_len=63 * 4, global_batch_size=8, seed=4,
                               passkey=PasskeyConfig(0.5, key_len_train=5, chunk_text=63),
                               tokenizer=tok))
  for _ in range(3):
    b = next(it)
    for r in range(8):
      pos = np.flatnonzero(b["answer_mask"][r])
      if (b["loss_weights"][r] == 1).all():
        assert pos.size == 0
        continue
      assert pos.size == 1 and pos[0] % 63 == 3
      key = b["targets"][r, pos[0]:pos[0] + 5]
      needle = np.concatenate([head, key])
      win = b["inputs"][r]
      assert any(np.array_equal(win[i:i + len(needle)], needle)
                 for i in range(pos[0] - len(needle)))
  plain = next(iter(make_train_dataset(valid_tokens, seq_len=60, global_batch_size=2, seed=0)))
  assert "answer_mask" not in plain


def test_eval_windows():
  tokens = np.arange(100, dtype=np.int32)
  ev = make_eval_windows(tokens, 8, 5)
  assert ev["inputs"].shape == (5, 8) and ev["inputs"].dtype == np.int32
  np.testing.assert_array_equal(ev["inputs"], np.arange(40).reshape(5, 8))
  np.testing.assert_array_equal(ev["targets"], np.arange(1, 41).reshape(5, 8))
  assert ev["loss_weights"].sum() == 40.0
  assert make_eval_windows(tokens, 8, 1000)["inputs"].shape == (12, 8)


# --- corpus globs and per-file reading (scripts/pretokenize.py) ----------------------------


def test_glob_corpus(tmp_path):
  for d in ("p1", "p2", "q"):
    (tmp_path / d).mkdir()
    (tmp_path / d / "x.txt").write_text(d)
  (tmp_path / "p1" / "deep").mkdir()
  (tmp_path / "p1" / "deep" / "y.md").write_text("deep")
  (tmp_path / "p3.txt").write_text("p3")
  (tmp_path / "p4.csv").write_text("no")
  docs, stats = read_documents(str(tmp_path / "p*"))
  assert docs == ["deep", "p1", "p2", "p3"]
  assert (stats.files, stats.ignored_files, stats.path) == (4, 1, str(tmp_path / "p*"))
  docs, _ = read_documents(str(tmp_path / "*" / "x.txt"))
  assert docs == ["p1", "p2", "q"]
  with pytest.raises(CorpusError, match=r"matches no files"):
    read_documents(str(tmp_path / "z*"))
  with pytest.raises(CorpusError, match=r"'\*\*' is not supported"):
    read_documents(str(tmp_path / "**" / "x.txt"))


def test_glob_cache_key_differs_from_dir(tmp_path, tok):
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "a.txt").write_text("alpha beta")
  (tmp_path / "c" / "b.txt").write_text("gamma")
  cache = tmp_path / "cache"
  whole = tokenize_corpus(tmp_path / "c", tok, cache)
  part = tokenize_corpus(str(tmp_path / "c" / "a*"), tok, cache)
  assert part.cache_path != whole.cache_path and not part.from_cache
  np.testing.assert_array_equal(part.tokens, tok.encode("alpha beta") + [tok.eot_id])
  assert tokenize_corpus(str(tmp_path / "c" / "a*"), tok, cache).from_cache


def test_stats_add_merges_files_in_order():
  from gca_jax.data.corpus import CorpusStats
  a = CorpusStats(path="p", files=1, documents=2, chars=10, empty=1, examples={"empty": ["x"]})
  b = CorpusStats(path="q", files=2, documents=1, chars=5, empty=5, non_utf8=1,
                  examples={"empty": ["y1", "y2", "y3", "y4", "y5"], "non_utf8": ["z"]})
  a.add(b)
  assert (a.path, a.files, a.documents, a.chars, a.empty, a.non_utf8) == ("p", 3, 3, 15, 6, 1)
  assert a.examples == {"empty": ["x", "y1", "y2", "y3", "y4"], "non_utf8": ["z"]}
