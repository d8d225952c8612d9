"""Damaged checkpoints give one line naming the step and the cause."""

import glob
import re
import os
import signal

import jax
import pytest

from _train_helpers import compile_cache, small_run_config  # noqa: F401
from gca_jax.train import CheckpointError, TrainHooks, train

pytestmark = pytest.mark.usefixtures("compile_cache")
ONE = jax.devices()[:1]


@pytest.fixture
def run(tmp_path):
  run_dir = str(tmp_path / "run")
  cfg = small_run_config(run_dir, str(tmp_path / "cache"), **{"checkpoint.every": 0})
  stop = TrainHooks(on_step=lambda s, m: s == 2 and os.kill(os.getpid(), signal.SIGTERM))
  assert train(cfg, devices=ONE, message=lambda s: None, hooks=stop).step == 2
  return cfg, os.path.join(run_dir, "checkpoints", "2")


def _resume_error(cfg):
  with pytest.raises(CheckpointError) as e:
    train(cfg, devices=ONE, message=lambda s: None)
  msg = str(e.value)
  # the only step is damaged: no intact step to fall back to -> one line naming step 2
  assert "\n" not in msg and "no intact checkpoint in" in msg and "step 2: " in msg
  return msg


def test_missing_iterator_file_is_not_blamed_on_process_count(run):
  cfg, step_dir = run
  os.remove(os.path.join(step_dir, "data_iter", "process_0-of-1.json"))
  msg = _resume_error(cfg)
  assert "process_0-of-1.json is missing" in msg and "different number" not in msg


def test_missing_metadata_is_named(run):
  cfg, step_dir = run
  os.remove(os.path.join(step_dir, "state", "_METADATA"))
  assert "_METADATA is missing" in _resume_error(cfg)


def test_truncated_state_file_is_one_line(run):
  cfg, step_dir = run
  big = max(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")),
            key=os.path.getsize)
  with open(big, "r+b") as f:
    f.truncate(os.path.getsize(big) // 2)
  assert "cannot be read" in _resume_error(cfg)


def test_flipped_bytes_are_detected_on_resume(run):
  """A byte changed inside a parameter's stored data: Orbax reads it without error; the step's
  fingerprints name the leaf (the only step: nothing intact to fall back to)."""
  cfg, step_dir = run
  big = max(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")),
            key=os.path.getsize)
  with open(big, "r+b") as f:
    f.seek(os.path.getsize(big) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))
  msg = _resume_error(cfg)
  assert re.search(r"step 2: (params|opt_state)/\S+: bytes differ from the saved sha256", msg), msg
