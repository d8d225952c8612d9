"""Train (or resume) a DRT / baseline language model.

    python train.py --config configs/tiny.py [--config.section.field=value ...]

Examples:
    python train.py --config configs/tiny.py --config.train.steps=50 --config.run_dir=runs/t50
    python train.py --config configs/drt_128m.py --config.data.train_path=/data/pg19/train \\
        --config.data.tokenizer=/data/tok32k.model --config.run_dir=/ckpt/drt128m
    python train.py --config configs/recall_tiny.py      # the retrieval recipe (docs/results.md)

The run resumes automatically from the latest complete checkpoint in `config.run_dir`.
SIGTERM or Ctrl-C: the current step finishes, a checkpoint is saved and the process exits 0
(a second Ctrl-C aborts with exit 130).
Exit codes: 0 done or preempted-and-saved; 2 invalid config (an unknown --config.x.y field
names the closest valid one); 3 non-finite loss; 1 other errors.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gca_jax.train import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Run config file (configs/*.py) with get_config(); override fields with "
    "--config.section.field=value.", lock_config=True)
_DIST = distributed.define_flags()   # --distributed, --coordinator_address, ... (multi-process)
_COMPILE_CACHE = flags.DEFINE_string(
    "compilation_cache", "", "Directory for JAX's persistent compilation cache ('' = off).")


def _config_field_names(node, prefix: str = "") -> list[str]:
  out = []
  for k in node.keys():
    v = node[k]
    name = f"{prefix}{k}"
    out.append(name)
    if hasattr(v, "keys") and callable(v.keys):
      out.extend(_config_field_names(v, name + "."))
  return out


def _unknown_field_message(argv, error) -> str | None:
  """'config.model.foo is not a config field; did you mean config.model.mlp_dim?' or None."""
  import difflib

  from gca_jax.train.run_config import base_config
  names = _config_field_names(base_config())
  for a in argv[1:]:
    if not a.startswith("--config."):
      continue
    field = a[len("--config."):].split("=", 1)[0]
    if field in names:
      continue
    parts = field.split(".")
    i = 0   # the first component that is not a field
    while i < len(parts) and ".".join(parts[:i + 1]) in names:
      i += 1
    bad, parent = ".".join(parts[:i + 1]), ".".join(parts[:i])
    pool = [n for n in names if n.count(".") == i and n.startswith(parent + "." if i else "")]
    close = difflib.get_close_matches(bad, pool, n=1, cutoff=0.0)
    hint = f"; did you mean config.{close[0]}?" if close else ""
    return f"error: config.{bad} is not a config field (--config.{field}){hint}"
  return None


def _parse_flags(argv):
  """absl flag parsing; an unknown config field or a bad flag exits 2 with one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError) as e:
    msg = _unknown_field_message(argv, e)
    if msg is None:
      msg = f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    print(msg, file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required (e.g. --config configs/tiny.py)")
  distributed.initialize_from_flags(_DIST)   # before anything touches jax devices
  import jax
  if _COMPILE_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE.value)
  from gca_jax.config import ConfigError
  from gca_jax.data import CorpusError
  from gca_jax.train import (CheckpointError, NonFiniteLossError, RunConfigError, train)
  logging.set_verbosity(logging.WARNING)
  try:
    result = train(config)
  except (RunConfigError, ConfigError, CorpusError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except KeyboardInterrupt:
    print("error: interrupted twice (SIGINT): aborted; the run resumes from its last complete "
          "checkpoint", file=sys.stderr)
    sys.exit(130)
  print(f"{result.status} at step {result.step} (run_dir {result.run_dir})", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
