"""`python train.py --config configs/tiny.py ...` = `gca-train ...` (gca_jax/cli/train.py)."""

from gca_jax.cli import train_main

if __name__ == "__main__":
  train_main()
