"""ArrayRecord token shards: scripts/pretokenize.py, gca_jax/data/shards.py, and the training
pipeline reading them (same samples as the text path, per-process slices, exact resume)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gca_jax.data import (CorpusError, PasskeyConfig, Tokenizer, make_train_dataset,
                          read_documents, tokenize_corpus, train_tokenizer)
from gca_jax.data.pipeline import num_windows, process_slice, resolve_format
from gca_jax.data.shards import (MANIFEST, ShardError, ShardTokens, open_shards, pretokenize,
                                 read_manifest, token_dtype)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")
VALID = os.path.join(ROOT, "data", "corpus", "valid")
SEQ = 63 * 4


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load(SHIPPED)


@pytest.fixture(scope="module")
def text_tokens(tok):
  return np.asarray(tokenize_corpus(VALID, tok).tokens)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, tok):
  """The shipped validation corpus in blocks of 100 tokens, 1000 per shard: windows of SEQ
  tokens cross block and shard boundaries."""
  out = tmp_path_factory.mktemp("shards") / "valid"
  pretokenize(VALID, SHIPPED, out, workers=0, shard_tokens=1000, block_tokens=100)
  return str(out)


def _messy_corpus(root):
  (root / "sub").mkdir(parents=True)
  (root / "a.txt").write_text("Call me Ishmael. Some years ago\n\nnever mind how long.")
  (root / "b.txt").write_bytes(b"caf\xe9 latin-1\n")
  (root / "c.txt").write_text("   \n")
  (root / "sub" / "d.jsonl").write_text(
      '{"text": "first line doc"}\nnot json\n{"title": "x"}\n{"text": "Whale \\ud83d\\udc33"}\n')
  (root / "notes.csv").write_text("a,b")
  return root


def test_stream_and_report_equal_the_text_path(tmp_path, tok):
  corpus = _messy_corpus(tmp_path / "corpus")
  out = tmp_path / "out"
  m = pretokenize(corpus, SHIPPED, out, workers=0, shard_tokens=10, block_tokens=4)
  text = tokenize_corpus(corpus, tok)
  shards = open_shards(out, tok)
  np.testing.assert_array_equal(np.asarray(shards), text.tokens)
  assert len(shards) == len(text.tokens) == m["num_tokens"]
  _, stats = read_documents(corpus)
  assert m["source"]["stats"] == {**stats.to_dict(), "skipped": 4}
  assert (stats.non_utf8, stats.empty, stats.bad_json, stats.missing_field) == (1, 1, 1, 1)
  assert stats.ignored_files == 1
  assert m["num_documents"] == 3 == sum(s["documents"] for s in m["shards"])
  assert [s["tokens"] for s in m["shards"]][:-1] == [8] * (len(m["shards"]) - 1)
  assert sum(s["tokens"] for s in m["shards"]) == m["num_tokens"]
  assert m["dtype"] == "uint16" and m["tokenizer"]["sha256"] == tok.sha256
  assert m["tokenizer"]["vocab_size"] == 4096 and m["tokenizer"]["eot_id"] == tok.eot_id
  assert [f["name"] for f in m["source"]["files"]] == ["a.txt", "b.txt", "c.txt", "sub/d.jsonl"]
  assert [f["documents"] for f in m["source"]["files"]] == [1, 0, 0, 2]
  assert sorted(os.listdir(out)) == [MANIFEST] + [s["name"] for s in m["shards"]]
  assert sorted(os.listdir(tmp_path)) == ["corpus", "out"]  # the temp dir is gone
  i = 5
  assert shards[i] == text.tokens[i] and shards[-1] == text.tokens[-1] == tok.eot_id


def test_workers_write_the_same_shards(tmp_path, tok):
  a = pretokenize(VALID, SHIPPED, tmp_path / "w0", workers=0, shard_tokens=4096 * 2)
  b = pretokenize(VALID, SHIPPED, tmp_path / "w2", workers=2, shard_tokens=4096 * 2)
  a.pop("created"), b.pop("created")
  assert a == b and len(a["shards"]) >= 2
  np.testing.assert_array_equal(np.asarray(ShardTokens(tmp_path / "w2")),
                                np.asarray(ShardTokens(tmp_path / "w0")))


def test_script_with_a_glob(tmp_path, tok):
  out = tmp_path / "out"
  r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "pretokenize.py"),
                      "--input", os.path.join(VALID, "13[45]_*.txt"), "--tokenizer", SHIPPED,
                      "--out", str(out), "--workers", "0", "--block_tokens", "512"],
                     capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
  assert r.returncode == 0, r.stderr
  m = read_manifest(out)
  assert [f["name"] for f in m["source"]["files"]] == ["134_chapter_133.txt",
                                                       "135_chapter_134.txt"]
  expected = tokenize_corpus(os.path.join(VALID, "13[45]_*.txt"), tok).tokens
  np.testing.assert_array_equal(np.asarray(open_shards(out)), expected)
  assert f"{m['num_tokens']} tokens (uint16), 2 documents" in r.stdout


def test_output_is_atomic_and_not_overwritten(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "a.txt").write_text("  ")
  with pytest.raises(CorpusError, match="no usable documents"):
    pretokenize(empty, SHIPPED, tmp_path / "out", workers=0)
  assert sorted(os.listdir(tmp_path)) == ["empty"]  # neither out nor its temp dir
  first = pretokenize(VALID, SHIPPED, tmp_path / "out", workers=0)
  with pytest.raises(ShardError, match="exists"):
    pretokenize(VALID, SHIPPED, tmp_path / "out", workers=0)
  (empty / "a.txt").write_text("short text")
  second = pretokenize(empty, SHIPPED, tmp_path / "out", workers=0, overwrite=True)
  assert second["num_documents"] == 1 != first["num_documents"]
  assert read_manifest(tmp_path / "out")["num_tokens"] == second["num_tokens"]
  assert sorted(os.listdir(tmp_path)) == ["empty", "out"]


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="shard_tokens=10 must be >= block_tokens=64"):
    pretokenize(VALID, SHIPPED, tmp_path / "o", shard_tokens=10, block_tokens=64)
  with pytest.raises(ValueError, match="group_size:1"):
    pretokenize(VALID, SHIPPED, tmp_path / "o", writer_options="group_size:64")


def test_token_dtype():
  assert token_dtype(4096) == np.uint16 and token_dtype(65535) == np.uint16
  assert token_dtype(65536) == np.uint32 and token_dtype(256000) == np.uint32


def test_manifest_checks(shard_dir, tmp_path, tok):
  import shutil
  bad = tmp_path / "bad"
  shutil.copytree(shard_dir, bad)
  m = json.loads((bad / MANIFEST).read_text())
  m["shards"][0]["tokens"] += 1
  (bad / MANIFEST).write_text(json.dumps(m))
  with pytest.raises(ShardError, match="sum to .*num_tokens is"):
    read_manifest(bad)
  m["shards"][0]["tokens"] -= 1
  m["dtype"] = "uint32"
  (bad / MANIFEST).write_text(json.dumps(m))
  with pytest.raises(ShardError, match="dtype uint32 does not fit vocab_size 4096"):
    read_manifest(bad)
  m["dtype"] = "uint16"
  (bad / MANIFEST).write_text(json.dumps(m))
  os.remove(bad / m["shards"][3]["name"])
  t = ShardTokens(bad)
  assert t.restrict(0, 1000)[:50].shape == (50,)  # this view reads shard 0 only
  with pytest.raises(ShardError, match="missing shard file.*shard-00003"):
    t[3500:3600]
  with pytest.raises(ShardError, match="not a shard dir: no manifest.json"):
    ShardTokens(tmp_path)


def test_tokenizer_mismatch_is_refused(shard_dir, tmp_path):
  corpus = tmp_path / "c"
  corpus.mkdir()
  (corpus / "a.txt").write_text("the whale and the sea, the ship and the sea.\n" * 40)
  other = Tokenizer.load(train_tokenizer(str(corpus), str(tmp_path / "other"), 300))
  with pytest.raises(ShardError, match=r"tokenized with .*gca_tiny\.model.*other\.model.*"
                                       r"re-run scripts/pretokenize\.py"):
    tokenize_corpus(shard_dir, other)


def test_format_selection(shard_dir, tok):
  assert resolve_format(shard_dir) == "arrayrecord" and resolve_format(VALID) == "text"
  with pytest.raises(CorpusError, match="is a shard dir .* format='text'"):
    tokenize_corpus(shard_dir, tok, format="text")
  with pytest.raises(CorpusError, match="not a shard dir.*pretokenize"):
    tokenize_corpus(VALID, tok, format="arrayrecord")
  with pytest.raises(ValueError, match="format='npy' must be one of"):
    resolve_format(VALID, "npy")
  st = tokenize_corpus(shard_dir, tok, "/nonexistent/cache", format="arrayrecord")
  assert st.shards == shard_dir and isinstance(st.tokens, ShardTokens)
  assert st.num_documents == 7 and st.stats.documents == 7 and st.stats.files == 7


@pytest.mark.parametrize("count", [1, 2, 4])
def test_same_training_samples_as_text_path(shard_dir, tok, text_tokens, count):
  shards = open_shards(shard_dir, tok)
  kw = dict(seq_len=SEQ, global_batch_size=4 * count, seed=3, process_count=count,
            passkey=PasskeyConfig(0.5, chunk_text=63), tokenizer=tok, num_epochs=2)
  for p in range(count):
    a = list(make_train_dataset(text_tokens, process_index=p, **kw))
    b = list(make_train_dataset(shards, process_index=p, **kw))
    assert len(a) == len(b) == 2 * (num_windows(len(text_tokens), SEQ) // count) // 4
    for x, y in zip(a, b):
      assert x.keys() == y.keys()
      for k in x:
        assert x[k].dtype == y[k].dtype
        np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("count", [2, 4])
def test_process_slices_are_disjoint_and_cover(shard_dir, text_tokens, count):
  shards = open_shards(shard_dir)
  n = num_windows(len(shards), SEQ)
  slices = [process_slice(shards, SEQ, p, count) for p in range(count)]
  windows = [set(range(s.first_window, s.first_window + s.num_windows)) for s in slices]
  assert sum(len(w) for w in windows) == len(set().union(*windows)) == n // count * count
  assert set().union(*windows) == set(range(n // count * count))
  for s in slices:
    lo, hi = s.token_range
    view = s.tokens
    assert (view.lo, view.hi) == (lo, hi)
    assert len(view.source) == view.end_block - view.first_block  # only its records
    np.testing.assert_array_equal(np.asarray(view), text_tokens[lo:hi])
    with pytest.raises(IndexError, match="outside this view"):
      view[hi - 1:hi + 1]
    if lo:
      with pytest.raises(IndexError, match="outside this view"):
        view[lo - 1:lo + 1]
  for a, b in zip(slices, slices[1:]):
    assert a.token_range[1] == b.token_range[0] + 1  # one shared token
    assert 0 <= a.tokens.end_block - b.tokens.first_block <= 1  # at most one shared block
  blocks = sum(s.tokens.end_block - s.tokens.first_block for s in slices)
  total = -(-len(shards) // 100)
  assert blocks <= total + count - 1
  assert max(s.tokens.end_block - s.tokens.first_block for s in slices) <= total // count + 2


def test_resume_is_exact(shard_dir, tok):
  kw = dict(seq_len=SEQ, global_batch_size=4, seed=11, tokenizer=tok,
            passkey=PasskeyConfig(0.5, chunk_text=63))
  it = iter(make_train_dataset(open_shards(shard_dir, tok), **kw))
  for _ in range(15):  # about one epoch (70 windows), so the 12 checked batches cross it
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(12)]
  resumed = iter(make_train_dataset(open_shards(shard_dir, tok), **kw))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  assert any(int((b["loss_weights"] < 1).any(axis=1).sum()) for b in expected)


def test_views_pickle_and_read(shard_dir, text_tokens):
  import pickle
  view = open_shards(shard_dir).restrict(250, 2600)
  view[300:320]
  again = pickle.loads(pickle.dumps(view))
  np.testing.assert_array_equal(again[299:2600], text_tokens[299:2600])
  with pytest.raises(IndexError, match=r"outside this view's \[250, 2600\)"):
    again.restrict(0, 300)
  with pytest.raises(TypeError, match="step-1 slices"):
    again[300:400:2]


def test_run_config_format_field(shard_dir, tmp_path):
  from gca_jax.train import run_config as rc
  c = rc.base_config()
  c.data.format = "parquet"
  with pytest.raises(rc.RunConfigError, match=r"config\.data\.format='parquet': must be one of"):
    rc.validate(c, num_devices=1, check_paths=False)
  c.data.format = "arrayrecord"
  c.data.train_path = VALID
  c.data.tokenizer = SHIPPED
  c.data.eval_path = shard_dir
  with pytest.raises(rc.RunConfigError, match=r"config\.data\.train_path=.*not a shard dir"):
    rc.validate(c, num_devices=1)
  c.data.train_path = shard_dir
  rc.validate(c, num_devices=1)
  c.data.eval_path = VALID
  with pytest.raises(rc.RunConfigError, match=r"config\.data\.eval_path=.*not a shard dir"):
    rc.validate(c, num_devices=1)
  c.train.eval_every = -1
  rc.validate(c, num_devices=1)
  c.train.eval_every = 0
  c.data.format = "text"
  with pytest.raises(rc.RunConfigError, match=r"config\.data\.train_path=.*is a shard dir"):
    rc.validate(c, num_devices=1)
  c.data.format = "auto"
  rc.validate(c, num_devices=1)


def test_trainer_data_from_shards_equals_text(shard_dir, tmp_path):
  """The trainer's `build_data` (unchanged) reads a shard dir through `tokenize_corpus`: same
  training batches, eval windows and corpus report as the text corpus it was made from."""
  from gca_jax.train import run_config as rc
  from gca_jax.train.trainer import build_data
  c = rc.base_config()
  c.data.seq_len, c.data.tokenizer, c.data.cache_dir = SEQ, SHIPPED, ""
  c.data.passkey_fraction = 0.25
  c.train.global_batch_size = 4
  out = {}
  for name, path in (("text", VALID), ("shards", shard_dir)):
    c.data.train_path = c.data.eval_path = path
    mcfg = rc.validate(c, num_devices=1)
    run_dir = tmp_path / name
    run_dir.mkdir()
    d = build_data(c, mcfg, run_dir=str(run_dir))
    it = iter(d.train_ds)
    out[name] = (d, [next(it) for _ in range(3)],
                 json.loads((run_dir / "corpus_report.json").read_text()))
  (dt, bt, rt), (ds, bs, rs) = out["text"], out["shards"]
  assert dt.train_tokens == ds.train_tokens == 24375
  np.testing.assert_array_equal(dt.eval_tokens, ds.eval_tokens)
  for k in dt.eval_windows:
    np.testing.assert_array_equal(dt.eval_windows[k], ds.eval_windows[k])
  for x, y in zip(bt, bs):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  for r in (rt, rs):
    for split in r.values():
      split.pop("from_cache"), split.pop("path")
  assert rt == rs
