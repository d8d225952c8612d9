"""Errors of the operators and their kernels (a leaf module: imports nothing of gca_jax)."""


class UnsupportedGCAInput(ValueError):
  """The chosen GCA implementation cannot run these shapes or dtypes (the message says why)."""
