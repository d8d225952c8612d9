"""train.py with one test hook, for tests/test_multiprocess.py.

    python tests/_mp_worker.py <train.py flags>

With MP_WAIT_STEP=K, MP_WAIT_PROCESS=P and MP_MARKER=path in the environment, process P writes
`path` after step K and then waits (up to 60 s) until its SIGTERM handler has fired, so the
test can send the signal from outside at a known step. Everything else is train.py's `main`.
"""

import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gca_jax.cli.train as cli  # noqa: E402  (train.py's body; defines its flags)
from absl import app  # noqa: E402

import gca_jax.train as gca_train  # noqa: E402
from gca_jax.train.trainer import TrainHooks  # noqa: E402

_TRAIN = gca_train.train


def _wait_for_sigterm(step: int, metrics: dict) -> None:
  del metrics
  import jax
  if step != int(os.environ["MP_WAIT_STEP"]) or \
      jax.process_index() != int(os.environ["MP_WAIT_PROCESS"]):
    return
  with open(os.environ["MP_MARKER"], "w") as f:
    f.write(str(step))
  preemption = signal.getsignal(signal.SIGTERM).__self__   # the trainer's _Preemption
  deadline = time.time() + 60
  while not preemption.flag.is_set() and time.time() < deadline:
    time.sleep(0.02)


def _train(config, **kw):
  hooks = TrainHooks(on_step=_wait_for_sigterm) if "MP_WAIT_STEP" in os.environ else None
  return _TRAIN(config, hooks=hooks, **kw)


gca_train.train = _train   # train.py's main imports it from gca_jax.train at call time

if __name__ == "__main__":
  from gca_jax.cli import train_main
  train_main(sys.argv)   # resolves --config names / configs/X.py like train.py
