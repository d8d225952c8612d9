"""SWA-only baseline of configs/multikey_tiny.py: same data, curriculum, optimiser and budget,
6 layers of sliding-window attention (window 128).

    python train.py --config configs/multikey_tiny_swa.py
"""

from gca_jax.configs import multikey_tiny


def get_config():
  return multikey_tiny.get_config("swa")
