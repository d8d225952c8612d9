"""Tokenizer: exact round trip, special ids, long training lines, determinism (docs/method.md §4 data)."""

import os
from pathlib import Path

import numpy as np
import pytest

from gca_jax.data import CorpusError, Tokenizer, train_tokenizer, training_sentences
from gca_jax.data.tokenizer import split_long_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")
VALID = os.path.join(ROOT, "data", "corpus", "valid")


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load(SHIPPED)


ROUND_TRIP = [
    "Call me Ishmael.",
    "  two leading spaces, three   inside, trailing \t\n",
    "line one\n\nline three\r\nwindows line",
    "emoji 😀🐳 and CJK 漢字かな한글",
    "NFKC would change these: ﬁ Ａ ① e\u0301 \u00a0nbsp",
    "\x00nul and \x7f del",
    "",
    " ",
    "\n",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_exact(tok, text):
  assert tok.decode(tok.encode(text)) == text


def test_round_trip_whole_chapter(tok):
  path = os.path.join(VALID, sorted(os.listdir(VALID))[0])
  text = open(path, encoding="utf-8").read()
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert 3.0 < len(text) / len(ids) < 6.0


def test_byte_fallback_for_unseen_characters(tok):
  ids = tok.encode("漢")
  assert [tok.id_to_piece(i) for i in ids] == ["<0xE6>", "<0xBC>", "<0xA2>"]
  assert [tok.id_to_piece(i) for i in tok.encode("\n")] == ["<0x0A>"]


def test_special_ids(tok):
  assert tok.vocab_size == 4096
  assert tok.eot_id == 1
  assert tok.id_to_piece(tok.eot_id) == "<eot>"
  assert tok.id_to_piece(0) == "<unk>"
  assert tok.eot_id not in tok.encode("<eot> end of text")
  assert tok.decode([tok.eot_id]) == ""
  assert min(tok.encode("Thar she blows")) >= 258
  assert len(tok.ordinary_ids) == 4096 - 2 - 256
  assert tok.ordinary_ids.min() == 258
  assert tok.model_path == SHIPPED


def test_no_dummy_prefix(tok):
  assert tok.id_to_piece(tok.encode("The")[0]) == "The"
  assert tok.id_to_piece(tok.encode(" The")[0]) == "▁The"


def test_meta_symbol_decodes_as_space(tok):
  assert tok.decode(tok.encode("a\u2581b")) == "a b"


def test_split_long_line_cuts_before_spaces():
  line = "word " * 300
  pieces = split_long_line(line, 64)
  assert "".join(pieces) == line
  assert all(len(p.encode()) < 64 for p in pieces)
  assert all(p.startswith(" ") for p in pieces[1:])
  assert len(pieces) == 25


def test_split_long_line_multibyte_without_spaces():
  line = "漢字" * 100
  pieces = split_long_line(line, 10)
  assert "".join(pieces) == line
  assert [len(p) for p in pieces[:3]] == [3, 3, 3]
  assert all(len(p.encode()) < 10 for p in pieces)


def test_training_sentences_keep_long_line():
  long_line = "zqxv " * 2000
  sents = list(training_sentences(["short line\n\n" + long_line + "\nend"], 4192))
  assert sents[0] == "short line"
  assert sents[-1] == "end"
  assert "".join(sents[1:-1]) == long_line
  assert len(sents) == 5
  assert max(len(s.encode()) for s in sents) < 4192


def test_long_line_is_learned(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_text("the cat sat on the mat. " * 20 + "\n" + "zqxv " * 2000 + "\n")
  t = Tokenizer.load(train_tokenizer(str(corpus), str(tmp_path / "tok"), 300))
  assert [t.id_to_piece(i) for i in t.encode(" zqxv zqxv")] == ["▁zqxv", "▁zqxv"]


def test_training_is_deterministic(tmp_path):
  a = train_tokenizer(VALID, str(tmp_path / "a"), 600, seed=3)
  b = train_tokenizer([VALID], str(tmp_path / "b"), 600, seed=3)
  assert open(a, "rb").read() == open(b, "rb").read()
  t = Tokenizer.load(a)
  assert t.vocab_size == 600
  text = "Thar she blows! 🐋 — 鯨"
  assert t.decode(t.encode(text)) == text


def test_errors(tmp_path):
  with pytest.raises(CorpusError, match="no corpus paths"):
    train_tokenizer([], str(tmp_path / "x"), 300)
  with pytest.raises(FileNotFoundError, match="missing.model"):
    Tokenizer.load(tmp_path / "missing.model")
  with pytest.raises(CorpusError, match="does not exist"):
    train_tokenizer(str(tmp_path / "nope"), str(tmp_path / "x"), 300)


def test_encode_batch_matches_encode(tok):
  texts = ["one", "two words", "漢字 three"]
  assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
  assert isinstance(tok.ordinary_ids, np.ndarray)


def test_vocab_too_large_for_corpus(tmp_path):
  (tmp_path / "a.txt").write_text("tiny corpus\n")
  with pytest.raises(CorpusError, match="training a 5000-piece tokenizer"):
    train_tokenizer(str(tmp_path), str(tmp_path / "tok"), 5000)


def test_train_tokenizer_cli(tmp_path):
  import subprocess
  import sys
  root = Path(__file__).resolve().parents[1]
  script = root / "scripts" / "train_tokenizer.py"
  prefix = tmp_path / "tk"
  p = subprocess.run([sys.executable, str(script), "--input", str(root / "data/corpus/valid"),
                      "--model_prefix", str(prefix), "--vocab_size", "400", "--num_threads", "1"],
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  assert Tokenizer.load(str(prefix) + ".model").vocab_size == 400
  bad = subprocess.run([sys.executable, str(script), "--input", str(tmp_path / "missing"),
                        "--model_prefix", str(tmp_path / "x"), "--vocab_size", "400"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_load_and_train_through_epath_cloud_paths(tmp_path, tok):
  """gs:// tokenizer paths go through etils.epath (a mocked bucket mapped to tmp_path here): the
  model loads from it, hashes the same bytes, and train_tokenizer writes to it."""
  from etils import epath
  from etils.epath import testing as ept
  bucket = tmp_path / "bucket"
  bucket.mkdir()

  def local(p):
    s = os.fspath(p)
    return s.replace("gs://bucket", str(bucket)) if s.startswith("gs://bucket") else s

  def redirect(fn, path, *a, **k):
    return fn(local(path), *a, **k)

  fns = {n: redirect for n in ("open", "exists", "isdir", "makedirs", "mkdir", "stat", "listdir",
                               "glob", "remove", "rename", "replace")}
  (bucket / "gca_tiny.model").write_bytes(Path(SHIPPED).read_bytes())
  with ept.mock_epath(**fns):
    assert epath.Path("gs://bucket/gca_tiny.model").exists()
    cloud = Tokenizer.load("gs://bucket/gca_tiny.model")
    assert cloud.model_path == "gs://bucket/gca_tiny.model"
    assert cloud.sha256 == tok.sha256 and cloud.vocab_size == tok.vocab_size
    text = "Call me Ishmael. Some years ago"
    assert cloud.encode(text) == tok.encode(text)
    with pytest.raises(FileNotFoundError, match="gs://bucket/missing.model"):
      Tokenizer.load("gs://bucket/missing.model")
    out = train_tokenizer(VALID, "gs://bucket/sub/tiny", 400)
    assert out == "gs://bucket/sub/tiny.model"
  assert (bucket / "sub" / "tiny.model").stat().st_size > 1000
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(CorpusError, match="not a SentencePiece model"):
    Tokenizer.load(tmp_path / "junk.model")
