"""One trainer per run_dir: `<run_dir>/train.lock` holds the owner's pid and host.

The lock file is written completely to a temporary file and then hard-linked into place (atomic,
fails if it exists). A second trainer on the same run_dir refuses with `RunDirLockedError`
naming the holder. A lock left by a dead pid on this host (kill -9) is taken over with a warning;
a lock of another host cannot be checked from here and is refused (delete the file if that host's
trainer is gone). On a cloud run_dir (gs://...) there is no atomic create-if-absent: the lock is
written when absent and read back, which refuses a second trainer unless both write within the
same moment.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Callable

from gca_jax.train import fs
from gca_jax.train.checkpoint import CheckpointError

LOCK_FILE = "train.lock"


class RunDirLockedError(CheckpointError):
  """Another live trainer holds the run_dir's lock; the message names it."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class RunDirLock:
  def __init__(self, run_dir: str, warn: Callable[[str], None] = print):
    self.path = fs.join(run_dir, LOCK_FILE)
    self.warn = warn
    self.info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}

  def _try_create(self) -> bool:
    if not fs.is_local(self.path):
      if fs.exists(self.path):
        return False
      fs.write_text_atomic(self.path, json.dumps(self.info))
      return self._read() == self.info
    tmp = f"{self.path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(self.info, f)
    try:
      os.link(tmp, self.path)
      return True
    except FileExistsError:
      return False
    finally:
      os.remove(tmp)

  def acquire(self) -> "RunDirLock":
    for _ in range(3):
      if self._try_create():
        return self
      held = self._read()
      pid, host = held.get("pid"), held.get("host")
      since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("time", 0)))
      if (host == self.info["host"] and isinstance(pid, int) and pid != os.getpid()
          and not _alive(pid)):
        self.warn(f"warning: taking over the stale lock {self.path} of pid {pid} on {host} "
                  f"(that process is gone)")
        try:
          fs.remove(self.path)
        except (FileNotFoundError, OSError):
          pass
        continue
      raise RunDirLockedError(
          f"run_dir {fs.dirname(self.path)!r} is in use by pid {pid} on host {host} "
          f"(since {since}; lock file {self.path}); wait for it, use another run_dir, or delete "
          f"the lock file if that trainer is gone")
    raise RunDirLockedError(f"could not take the lock {self.path}")

  def _read(self) -> dict:
    try:
      held = json.loads(fs.read_text(self.path))
    except (OSError, ValueError):
      return {}
    return held if isinstance(held, dict) else {}

  def release(self) -> None:
    held = self._read()
    if held.get("pid") == self.info["pid"] and held.get("host") == self.info["host"]:
      try:
        fs.remove(self.path)
      except OSError:
        pass
