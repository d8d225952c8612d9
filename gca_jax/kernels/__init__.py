"""Fused Pallas kernels for the GCA operator (docs/method.md §3), registered with `gca_jax.ops.gca`.

* "pallas_triton" (`gca_triton.gca_triton`, exported as `pallas_triton`): GPU, Pallas Triton
  backend — platforms ("gpu",).
* "pallas_tpu" (`gca_tpu.gca_tpu`, exported as `pallas_tpu`): TPU, Pallas Mosaic with scalar
  prefetch — platforms ("tpu",).

`grouped_cross_attention(..., impl="auto")` picks the kernel of the running backend when its
`supports(q, k, v, indices, weights)` returns None, else the XLA reference; an explicit impl with
unsupported inputs raises `UnsupportedGCAInput` with the reason. Both kernels also run on CPU in
Pallas interpret mode (explicit impl, or call `pallas_triton` / `pallas_tpu` directly) for testing.

Registration runs when this package is imported (`import gca_jax` does it); `gca_jax.ops` never
imports this package.
"""

from gca_jax.kernels import common, gca_tpu, gca_triton
from gca_jax.ops.gca import register_gca_impl, registered_gca_impls

pallas_triton = gca_triton.gca_triton
pallas_tpu = gca_tpu.gca_tpu
supports_triton = gca_triton.supports
supports_tpu = gca_tpu.supports


def register() -> None:
  """(Re-)registers both kernels with the GCA dispatch (idempotent)."""
  if "pallas_triton" not in registered_gca_impls():
    register_gca_impl("pallas_triton", pallas_triton, platforms=("gpu",), supports=supports_triton)
  if "pallas_tpu" not in registered_gca_impls():
    register_gca_impl("pallas_tpu", pallas_tpu, platforms=("tpu",), supports=supports_tpu)


register()

__all__ = ["common", "gca_tpu", "gca_triton", "pallas_tpu", "pallas_triton", "register",
           "supports_tpu", "supports_triton"]
