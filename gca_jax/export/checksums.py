"""Adds the `files` checksums (sha256 + size of every file but config.json) to the config.json of
export directories written before checksums existed, after checking that each export loads.

  python -m gca_jax.export.checksums DIR [DIR ...]

Only config.json is rewritten (atomically: a temp file renamed over it); an export that already
has checksums is verified against them and left as it is.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from gca_jax.export import (CONFIG_FILE, FILES_KEY, ExportError, file_checksums, load_model,
                            read_config, verify_files)


def add_checksums(model_dir: str) -> bool:
  """Writes `files` into `model_dir`/config.json. Returns False when it was there already (and
  matched). ExportError when the export does not load or its recorded checksums differ."""
  info = read_config(model_dir)
  if FILES_KEY in info:
    verify_files(model_dir, info)
    return False
  load_model(model_dir, dtype="stored", verify=False)   # names, shapes and bytes are readable
  info[FILES_KEY] = file_checksums(model_dir)
  path = os.path.join(model_dir, CONFIG_FILE)
  fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", dir=model_dir)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(json.dumps(info, indent=1) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return True


def main(argv=None) -> int:
  dirs = sys.argv[1:] if argv is None else list(argv)
  if not dirs:
    print("usage: python -m gca_jax.export.checksums DIR [DIR ...]", file=sys.stderr)
    return 2
  code = 0
  for d in dirs:
    try:
      added = add_checksums(d)
    except ExportError as e:
      print(f"error: {e}", file=sys.stderr)
      code = 1
      continue
    print(f"{d}: {'checksums added' if added else 'checksums present and matching'}")
  return code


if __name__ == "__main__":
  sys.exit(main())
