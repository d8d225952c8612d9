"""Landmark Attention baseline of the retrieval recipe (checkpoints/sotu_landmark):
configs/recall_tiny.py with model_kind "landmark" (blocks of 63 tokens + a landmark, grouped
softmax), 6 layers, same data, curriculum, optimiser and budget.

    python train.py --config configs/recall_tiny_landmark.py
"""

from gca_jax.configs import recall_tiny


def get_config():
  return recall_tiny.get_config("landmark")
