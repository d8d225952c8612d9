"""Command-line entry points `gca-train` / `gca-eval` (= `python train.py` / `python eval.py`).

The flags and exit codes are documented in gca_jax/cli/train.py and gca_jax/cli/eval.py.
`--config` takes a file path or the name of a shipped config (`tiny`, `drt_128m`, ... in
gca_jax/configs/); a missing `configs/<name>.py` path falls back to the shipped file too.
"""

from __future__ import annotations

import os
import sys

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> list[str]:
  """Names of the run configs in gca_jax/configs/ (each a module with get_config())."""
  return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                if f.endswith(".py") and not f.startswith("_"))


def resolve_config(value: str) -> str:
  """--config value -> a config file path (`:args` suffix kept).

  An existing path is returned as is; a bare name (`tiny`, `tiny.py`) or a missing
  `.../configs/<name>.py` becomes gca_jax/configs/<name>.py. Raises ValueError naming the
  shipped configs if the value is neither."""
  path, sep, rest = value.partition(":")
  if os.path.exists(path):
    return value
  base = os.path.basename(path)
  name = base[:-3] if base.endswith(".py") else base
  bare = os.sep not in path and "/" not in path
  if (bare or os.path.basename(os.path.dirname(path)) == "configs") and name in shipped_configs():
    return os.path.join(CONFIG_DIR, name + ".py") + sep + rest
  raise ValueError(f"--config={value!r}: no such file, and not a shipped config (one of: "
                   f"{', '.join(shipped_configs())})")


def resolve_config_args(argv: list[str]) -> list[str]:
  """argv with the value of `--config X` / `--config=X` passed through resolve_config."""
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a in ("--config", "-config") and i + 1 < len(argv):
      out += [a, resolve_config(argv[i + 1])]
      i += 2
      continue
    for flag in ("--config=", "-config="):
      if a.startswith(flag):
        a = flag + resolve_config(a[len(flag):])
        break
    out.append(a)
    i += 1
  return out


def _run(module, argv: list[str] | None) -> None:
  from absl import app
  argv = list(sys.argv if argv is None else argv)
  try:
    argv = argv[:1] + resolve_config_args(argv[1:])
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  main_mod = sys.modules.get("__main__")
  if main_mod is not None:
    main_mod.__doc__ = module.__doc__   # absl's --help prints the __main__ docstring
  app.run(module.main, argv=argv, flags_parser=module._parse_flags)


def train_main(argv: list[str] | None = None) -> None:
  """`gca-train`: train (or resume) a model; see gca_jax/cli/train.py."""
  from gca_jax.cli import train
  _run(train, argv)


def eval_main(argv: list[str] | None = None) -> None:
  """`gca-eval`: evaluate a run or an export; see gca_jax/cli/eval.py."""
  from gca_jax.cli import eval as eval_cli
  _run(eval_cli, argv)
