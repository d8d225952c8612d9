"""`import configs.tiny` in a checkout = the shipped gca_jax/configs/tiny.py (its path is this
package's search path)."""

import gca_jax.configs as _shipped

__path__ = list(_shipped.__path__)
