"""`python eval.py --run_dir runs/tiny ...` = `gca-eval ...` (gca_jax/cli/eval.py)."""

from gca_jax.cli import eval_main

if __name__ == "__main__":
  eval_main()
