"""Signals: Ctrl-C saves and stops like SIGTERM, a second Ctrl-C aborts; a second SIGTERM
during the preemption save does not cut it short."""

import os
import signal
import subprocess
import sys

import jax
import pytest

from _train_helpers import ROOT, compile_cache, small_run_config  # noqa: F401
from gca_jax.train import Checkpointer, TrainHooks, train

pytestmark = pytest.mark.usefixtures("compile_cache")
ONE = jax.devices()[:1]


def _kill_at(step, *sigs):
  def on_step(s, m):
    if s == step:
      for sig in sigs:
        os.kill(os.getpid(), sig)
  return TrainHooks(on_step=on_step)


def test_sigint_saves_and_stops(tmp_path):
  run_dir = str(tmp_path / "run")
  cfg = small_run_config(run_dir, str(tmp_path / "cache"), **{"checkpoint.every": 0})
  msgs = []
  res = train(cfg, devices=ONE, message=msgs.append, hooks=_kill_at(2, signal.SIGINT))
  assert res.status == "preempted" and res.step == 2
  assert any(m.startswith("SIGINT received: saving step 2") for m in msgs), msgs
  ck = Checkpointer(run_dir, read_only=True)
  assert ck.all_steps() == [2]
  ck.close()
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_second_sigint_aborts(tmp_path):
  cfg = small_run_config(str(tmp_path / "run"), str(tmp_path / "cache"),
                         **{"checkpoint.every": 0})
  with pytest.raises(KeyboardInterrupt):
    train(cfg, devices=ONE, message=lambda s: None,
          hooks=_kill_at(2, signal.SIGINT, signal.SIGINT))
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


_SCRIPT = r"""
import os, signal, sys
sys.path.insert(0, "tests")
import jax
from _train_helpers import small_run_config
from gca_jax.train import TrainHooks, train
from gca_jax.train import checkpoint
orig_wait = checkpoint.Checkpointer.wait
def wait(self):  # a second SIGTERM arrives while the preemption save is being written
  os.kill(os.getpid(), signal.SIGTERM)
  orig_wait(self)
checkpoint.Checkpointer.wait = wait
cfg = small_run_config(sys.argv[1], sys.argv[2], **{"checkpoint.every": 0, "train.steps": 6})
hooks = TrainHooks(on_step=lambda s, m: s == 2 and os.kill(os.getpid(), signal.SIGTERM))
r = train(cfg, devices=jax.devices()[:1], message=print, hooks=hooks)
print("RESULT", r.status, r.step)
"""


def test_second_sigterm_during_save_is_ignored(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  run_dir = str(tmp_path / "run")
  p = subprocess.run([sys.executable, "-c", _SCRIPT, run_dir, str(tmp_path / "cache")],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "RESULT preempted 2" in p.stdout
  assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["2"]
