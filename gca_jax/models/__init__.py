"""Models: DRT and its baselines (docs/method.md §2)."""

from gca_jax.models.drt import DRT, insert_landmarks, remove_landmarks, resolved_impls
from gca_jax.models.loss import cross_entropy_loss

__all__ = ["DRT", "cross_entropy_loss", "insert_landmarks", "remove_landmarks", "resolved_impls"]
