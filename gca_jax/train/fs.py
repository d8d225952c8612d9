"""File operations on run directories, local or in the cloud (`gs://...`), through `etils.epath`.

Local paths keep the POSIX guarantees the trainer relies on (temp file + `os.replace`, `os.link`
for the lock). On object stores a single object is written whole (it appears complete or not at
all), so `write_text_atomic` is one write; there is no append, so `append_lines` rewrites the
object; there is no atomic create-if-absent, so the run_dir lock there is best-effort
(`gca_jax/train/lock.py`). Orbax and Grain address cloud paths themselves.
"""

from __future__ import annotations

import os
import shutil

from etils import epath


def is_local(path) -> bool:
  return "://" not in os.fspath(path)


def abspath(path) -> str:
  """Absolute local path; a cloud path unchanged."""
  path = os.fspath(path)
  return os.path.abspath(path) if is_local(path) else path.rstrip("/")


def join(base, *parts) -> str:
  base = os.fspath(base)
  if is_local(base):
    return os.path.join(base, *parts)
  return "/".join([base.rstrip("/"), *(str(p).strip("/") for p in parts)])


def dirname(path) -> str:
  path = os.fspath(path)
  return os.path.dirname(path) if is_local(path) else path.rstrip("/").rsplit("/", 1)[0]


def exists(path) -> bool:
  return os.path.exists(path) if is_local(path) else epath.Path(path).exists()


def isfile(path) -> bool:
  return os.path.isfile(path) if is_local(path) else epath.Path(path).is_file()


def isdir(path) -> bool:
  return os.path.isdir(path) if is_local(path) else epath.Path(path).is_dir()


def listdir(path) -> list[str]:
  if is_local(path):
    return os.listdir(path)
  return [p.name for p in epath.Path(path).iterdir()]


def makedirs(path) -> None:
  if is_local(path):
    os.makedirs(path, exist_ok=True)
  else:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path) -> str:
  if is_local(path):
    with open(path) as f:
      return f.read()
  return epath.Path(path).read_text()


def write_text_atomic(path, text: str) -> None:
  """`path` holds `text` whole or keeps its old content (temp + rename; one object write)."""
  path = os.fspath(path)
  if not is_local(path):
    epath.Path(path).write_text(text)
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def append_lines(path, lines: list[str]) -> None:
  """Appends lines (each ending in a newline); on object stores the object is rewritten."""
  path = os.fspath(path)
  if is_local(path):
    with open(path, "a") as f:
      f.writelines(lines)
    return
  p = epath.Path(path)
  old = p.read_text() if p.exists() else ""
  p.write_text(old + "".join(lines))


def remove(path) -> None:
  if is_local(path):
    os.remove(path)
  else:
    epath.Path(path).unlink()


def move(src, dst) -> None:
  """Moves a file or directory tree (on object stores: copy, then delete)."""
  if is_local(src) and is_local(dst):
    shutil.move(src, dst)
    return
  s, d = epath.Path(src), epath.Path(dst)
  if s.is_dir():
    _copytree(s, d)
    s.rmtree()
  else:
    s.copy(d)
    s.unlink()


def _copytree(s: epath.Path, d: epath.Path) -> None:
  d.mkdir(parents=True, exist_ok=True)
  for child in s.iterdir():
    if child.is_dir():
      _copytree(child, d / child.name)
    else:
      child.copy(d / child.name)
