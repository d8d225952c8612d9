"""Faults in the input: a corpus with unreadable files / lines is reported, not silently lost;
a refused resume writes nothing; a run with nothing left to train says so."""

import json
import os
import shutil

import jax
import pytest

from _train_helpers import CORPUS_VALID, compile_cache, small_run_config  # noqa: F401
from gca_jax.data import CorpusError
from gca_jax.train import CheckpointError, train

pytestmark = pytest.mark.usefixtures("compile_cache")
ONE = jax.devices()[:1]


def _bad_corpus(tmp_path):
  d = tmp_path / "corpus"
  shutil.copytree(CORPUS_VALID, d)
  (d / "latin1.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 10)
  (d / "docs.jsonl").write_text('{"text": "a good line"}\n{not json\n{"other": 1}\n')
  return str(d)


def test_skipped_corpus_files_are_reported(tmp_path):
  corpus = _bad_corpus(tmp_path)
  run_dir = str(tmp_path / "run")
  msgs = []
  cfg = small_run_config(run_dir, str(tmp_path / "cache"), **{
      "data.train_path": corpus, "train.steps": 1, "checkpoint.every": 0})
  train(cfg, devices=ONE, message=msgs.append)
  warn = [m for m in msgs if m.startswith("warning: corpus data.train_path")]
  assert len(warn) == 1, msgs
  assert "non_utf8" in warn[0] and "latin1.txt" in warn[0] and "docs.jsonl:2" in warn[0]
  with open(os.path.join(run_dir, "corpus_report.json")) as f:
    rep = json.load(f)["train"]
  assert rep["non_utf8"] == 1 and rep["bad_json"] == 1 and rep["missing_field"] == 1
  assert rep["examples"]["non_utf8"] == ["latin1.txt"]
  assert rep["examples"]["missing_field"] == ["docs.jsonl:3"]
  assert rep["skipped"] == 3


def test_too_short_error_says_what_was_skipped(tmp_path):
  d = tmp_path / "tiny"
  d.mkdir()
  (d / "a.txt").write_text("just a few words")
  (d / "b.txt").write_bytes(b"\xff\xfe" * 1000)
  cfg = small_run_config(str(tmp_path / "run"), str(tmp_path / "cache"),
                         **{"data.train_path": str(d)})
  with pytest.raises(CorpusError, match=r"too short.*skipped 1 non_utf8 \(e\.g\. b\.txt\)"):
    train(cfg, devices=ONE, message=lambda s: None)


def test_refused_resume_leaves_config_json_alone(tmp_path):
  run_dir = str(tmp_path / "run")
  cache = str(tmp_path / "cache")
  train(small_run_config(run_dir, cache, **{"train.steps": 2}), devices=ONE,
        message=lambda s: None)
  path = os.path.join(run_dir, "config.json")
  before = open(path).read()
  with pytest.raises(CheckpointError, match="different model"):
    train(small_run_config(run_dir, cache, **{"train.steps": 4, "model.mlp_dim": 128}),
          devices=ONE, message=lambda s: None)
  assert open(path).read() == before
  msgs = []
  res = train(small_run_config(run_dir, cache, **{"train.steps": 1}), devices=ONE,
              message=msgs.append)
  assert res.step == 2
  assert any(m.startswith("nothing to train: run_dir") and "step 2 >= config.train.steps=1" in m
             for m in msgs), msgs
