"""gca_jax: DRT / Grouped Cross Attention (arXiv 2410.01651) in JAX + Flax Linen."""

from gca_jax import layers, ops
from gca_jax.config import ConfigError, DRTConfig
from gca_jax.models import DRT, cross_entropy_loss

__all__ = ["ConfigError", "DRT", "DRTConfig", "cross_entropy_loss", "layers", "ops"]
__version__ = "0.1.0"
