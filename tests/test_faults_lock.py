"""One trainer per run_dir: a live holder is refused by name, a dead one's lock is taken over."""

import json
import os
import socket
import subprocess
import time

import jax
import pytest

from _train_helpers import compile_cache, small_run_config  # noqa: F401
from gca_jax.train import train
from gca_jax.train.lock import LOCK_FILE, RunDirLockedError

pytestmark = pytest.mark.usefixtures("compile_cache")
ONE = jax.devices()[:1]


def _lock(run_dir, pid):
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, LOCK_FILE), "w") as f:
    json.dump({"pid": pid, "host": socket.gethostname(), "time": time.time()}, f)


def test_second_trainer_is_refused_naming_the_holder(tmp_path):
  run_dir = str(tmp_path / "run")
  holder = subprocess.Popen(["sleep", "60"])
  try:
    _lock(run_dir, holder.pid)
    cfg = small_run_config(run_dir, str(tmp_path / "cache"), **{"train.steps": 1})
    with pytest.raises(RunDirLockedError, match=f"in use by pid {holder.pid} on host"):
      train(cfg, devices=ONE, message=lambda s: None)
    assert not os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
    assert not os.path.exists(os.path.join(run_dir, "config.json"))
  finally:
    holder.kill()
    holder.wait()


def test_stale_lock_is_taken_over_and_released(tmp_path):
  run_dir = str(tmp_path / "run")
  dead = subprocess.Popen(["true"])
  dead.wait()
  _lock(run_dir, dead.pid)
  msgs = []
  cfg = small_run_config(run_dir, str(tmp_path / "cache"), **{"train.steps": 1})
  assert train(cfg, devices=ONE, message=msgs.append).status == "completed"
  assert any("taking over the stale lock" in m and str(dead.pid) in m for m in msgs), msgs
  assert not os.path.exists(os.path.join(run_dir, LOCK_FILE))
