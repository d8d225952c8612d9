"""SWA-only baseline of the retrieval recipe (checkpoints/sotu_swa): configs/recall_tiny.py with
model_kind "swa", 6 sliding-window layers (2 lower + 2 upper + 2 extra for the encoder), same
data, curriculum, optimiser and budget.

    python train.py --config configs/recall_tiny_swa.py
"""

from gca_jax.configs import recall_tiny


def get_config():
  return recall_tiny.get_config("swa")
