"""gca_jax: DRT / Grouped Cross Attention (arXiv 2410.01651) in JAX + Flax Linen."""

# kernels first: importing them registers "pallas_triton" / "pallas_tpu" with gca_jax.ops
from gca_jax import kernels, ops  # noqa: I001
from gca_jax import layers
from gca_jax.config import ConfigError, DRTConfig
from gca_jax.models import DRT, cross_entropy_loss

__all__ = ["ConfigError", "DRT", "DRTConfig", "cross_entropy_loss", "kernels", "layers", "ops"]
__version__ = "0.1.0"
