"""Landmark Attention baseline of configs/multikey_tiny.py: same data, curriculum, optimiser
and budget, 6 layers (recall_tiny_landmark.py's model).

    python train.py --config configs/multikey_tiny_landmark.py
"""

from gca_jax.configs import multikey_tiny


def get_config():
  return multikey_tiny.get_config("landmark")
