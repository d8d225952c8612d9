"""CLI: export a train.py run as a model directory (model.safetensors + config.json + tokenizer).

  python -m gca_jax.export --run_dir runs/tiny --out exports/tiny [--step N]
      [--dtype bfloat16|float32] [--tokenizer PATH]
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m gca_jax.export", description=__doc__.split("\n")[0])
  p.add_argument("--run_dir", required=True, help="train.py run directory (Orbax checkpoints)")
  p.add_argument("--out", required=True, help="export directory to write (replaced atomically)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None,
                 help="cast float params (default: keep the checkpoint's dtype)")
  p.add_argument("--tokenizer", default=None, help="override the run's data.tokenizer")
  args = p.parse_args(argv)
  from gca_jax.export import ExportError, export_run, load_model
  try:
    out = export_run(args.run_dir, args.out, args.step, dtype=args.dtype,
                     tokenizer=args.tokenizer)
    m = load_model(out, dtype="stored")
  except ExportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  n = sum(x.size for x in __import__("jax").tree.leaves(m.params))
  print(f"exported step {m.meta.get('step')} of {args.run_dir} ({m.config.model_kind}, "
        f"{n / 1e6:.2f}M params) to {out}; tokenizer: {m.tokenizer or 'none'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
