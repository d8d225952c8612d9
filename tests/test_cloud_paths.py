"""Cloud run_dirs (gs://...) go through etils.epath (gca_jax/train/fs.py): the lock, metrics.jsonl,
JSON files, checkpoint paths and the damaged-step move, on a mocked bucket mapped to tmp_path
(no network here; Orbax and Grain address cloud paths themselves)."""

import json
import os
import sys

import pytest
from etils.epath import testing as ept

from gca_jax.train import fs
from gca_jax.train import metrics as metrics_mod
from gca_jax.train.checkpoint import checkpoint_dir
from gca_jax.train.lock import RunDirLock, RunDirLockedError
from gca_jax.train.metrics import MetricsLogger, read_metrics

B = "gs://bucket"


@pytest.fixture
def bucket(tmp_path):
  root = tmp_path / "bucket"
  root.mkdir()
  calls = []

  def local(p):
    s = os.fspath(p)
    if s.startswith(B):
      calls.append(s)
      return str(root) + s[len(B):]
    return s

  def redirect(fn, path, *a, **k):
    a = tuple(local(x) if isinstance(x, (str, os.PathLike)) and os.fspath(x).startswith(B)
              else x for x in a)
    return fn(local(path), *a, **k)

  names = ("open", "exists", "isdir", "makedirs", "mkdir", "stat", "listdir", "glob", "remove",
           "rename", "replace", "rmtree", "copy", "walk")
  with ept.mock_epath(**{n: redirect for n in names}):
    yield root, calls


def test_fs_on_a_bucket(bucket):
  root, calls = bucket
  assert fs.abspath(B + "/run/") == B + "/run" and fs.join(B + "/run", "a", "b") == B + "/run/a/b"
  assert fs.dirname(B + "/run/x.json") == B + "/run"
  fs.makedirs(B + "/run/sub")
  fs.write_text_atomic(B + "/run/sub/x.json", '{"a": 1}')
  fs.append_lines(B + "/run/sub/log", ["1\n"])
  fs.append_lines(B + "/run/sub/log", ["2\n", "3\n"])
  assert (root / "run" / "sub" / "log").read_text() == "1\n2\n3\n"
  assert json.loads(fs.read_text(B + "/run/sub/x.json")) == {"a": 1}
  assert fs.isfile(B + "/run/sub/x.json") and fs.isdir(B + "/run/sub")
  assert not fs.exists(B + "/run/none")
  assert sorted(fs.listdir(B + "/run/sub")) == ["log", "x.json"]
  fs.move(B + "/run/sub", B + "/run/moved")
  assert sorted(os.listdir(root / "run")) == ["moved"]
  assert (root / "run" / "moved" / "log").read_text() == "1\n2\n3\n"
  assert calls, "the bucket was never reached through epath"


def test_lock_on_a_bucket(bucket):
  root, _ = bucket
  run = B + "/run"
  fs.makedirs(run)
  lock = RunDirLock(run).acquire()
  held = json.loads((root / "run" / "train.lock").read_text())
  assert held["pid"] == os.getpid()
  other = RunDirLock(run)
  other.info = {**other.info, "host": "another-host"}
  with pytest.raises(RunDirLockedError, match=r"gs://bucket/run.*in use by pid \d+ on host"):
    other.acquire()
  other.release()                     # not its lock: left alone
  assert (root / "run" / "train.lock").exists()
  lock.release()
  assert not (root / "run" / "train.lock").exists()
  RunDirLock(run).acquire().release()


def test_metrics_on_a_bucket_are_buffered_and_flushed(bucket, monkeypatch):
  root, _ = bucket
  run = B + "/run"
  obj = root / "run" / "metrics.jsonl"
  monkeypatch.setitem(sys.modules, "tensorboardX", None)   # no GCS client here
  log = MetricsLogger(run, total_steps=10, progress_bar=False)
  log._tb = None
  log.train(1, {"loss": 2.5})
  log.train(2, {"loss": 2.4})
  assert not obj.exists()                     # buffered: no append on object stores
  log.event(2, "checkpoint")                  # events are written at once
  assert [r["step"] for r in read_metrics(run)] == [1, 2, 2]
  monkeypatch.setattr(metrics_mod, "CLOUD_FLUSH_S", 0.0)
  log.train(3, {"loss": 2.3})                 # interval passed: rewritten
  assert len(obj.read_text().splitlines()) == 4
  monkeypatch.setattr(metrics_mod, "CLOUD_FLUSH_S", 1e9)
  log.train(4, {"loss": 2.2})
  log.close()
  assert [r.get("loss") for r in read_metrics(run)] == [2.5, 2.4, None, 2.3, 2.2]
  again = MetricsLogger(run, total_steps=10, start_step=2, progress_bar=False)   # a resume at 2
  again._tb = None
  again.close()
  assert [r["step"] for r in read_metrics(run)] == [1, 2, 2]


def test_checkpoint_dir_keeps_the_cloud_path():
  assert checkpoint_dir(B + "/run") == B + "/run/checkpoints"
  assert checkpoint_dir("run") == os.path.join(os.path.abspath("run"), "checkpoints")
