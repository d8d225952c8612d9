"""Fused Pallas kernels, registered with the ops: the GCA operator (docs/method.md §3) with
`gca_jax.ops.gca`, the streaming window-cache attention with `gca_jax.ops.swa`.

* "pallas_triton" (`gca_triton.gca_triton`, exported as `pallas_triton`): GPU, Pallas Triton
  backend — platforms ("gpu",).
* "pallas_tpu" (`gca_tpu.gca_tpu`, exported as `pallas_tpu`): TPU, Pallas Mosaic with scalar
  prefetch — platforms ("tpu",).
* `swa_prefix` (`swa_prefix_triton.swa_prefix_triton`): GPU, Pallas Triton, the forward of
  `ops.swa.swa_with_prefix` (streaming only).

The kernel modules are imported lazily, on first use, and optionally: when a Pallas backend
(`jax.experimental.pallas.triton` / `.tpu`) cannot be imported, `impl="auto"` falls back to the
XLA reference (one logging.warning per kernel) and an explicit `impl=` raises
`UnsupportedGCAInput` naming the missing module. Both kernels also run on CPU in Pallas
interpret mode (explicit impl) for testing.

Registration runs when this package is imported (`import gca_jax` does it); `gca_jax.ops` never
imports this package.
"""

from __future__ import annotations

import importlib
import logging

import jax

from gca_jax.ops.errors import UnsupportedGCAInput
from gca_jax.ops.gca import register_gca_impl, registered_gca_impls
from gca_jax.ops.swa import register_swa_prefix_kernel

# name -> (module, kernel function, supports function, platforms)
_KERNELS = {
    "pallas_triton": ("gca_jax.kernels.gca_triton", "gca_triton", "supports", ("gpu",)),
    "pallas_tpu": ("gca_jax.kernels.gca_tpu", "gca_tpu", "supports", ("tpu",)),
    "swa_prefix_triton": ("gca_jax.kernels.swa_prefix_triton", "swa_prefix_triton", "supports",
                          ("gpu",)),
}
_LOADED: dict[str, object] = {}
_ERRORS: dict[str, str] = {}
_WARNED: set[str] = set()
_log = logging.getLogger(__name__)


def _load(name: str):
  """The kernel module of `name`, or None (the reason in _ERRORS[name])."""
  if name in _LOADED:
    return _LOADED[name]
  if name in _ERRORS:
    return None
  try:
    mod = importlib.import_module(_KERNELS[name][0])
  except ImportError as e:
    _ERRORS[name] = (f"kernel {name!r} unavailable: importing {_KERNELS[name][0]} failed "
                     f"({type(e).__name__}: {e}); the Pallas backend it needs is missing from "
                     f"this jax {jax.__version__}")
    return None
  _LOADED[name] = mod
  return mod


def _kernel(name: str):
  def call(*args, **kw):
    mod = _load(name)
    if mod is None:
      raise UnsupportedGCAInput(_ERRORS[name])
    return getattr(mod, _KERNELS[name][1])(*args, **kw)
  call.__name__ = name
  return call


def _supports(name: str):
  def supports(*args):
    mod = _load(name)
    if mod is None:
      if name not in _WARNED and jax.default_backend() in _KERNELS[name][3]:
        _WARNED.add(name)
        _log.warning("gca_jax: %s; falling back to the XLA reference", _ERRORS[name])
      return _ERRORS[name]
    return getattr(mod, _KERNELS[name][2])(*args)
  return supports


pallas_triton = _kernel("pallas_triton")
pallas_tpu = _kernel("pallas_tpu")
supports_triton = _supports("pallas_triton")
supports_tpu = _supports("pallas_tpu")
swa_prefix = _kernel("swa_prefix_triton")
supports_swa_prefix = _supports("swa_prefix_triton")


def register() -> None:
  """(Re-)registers both kernels with the GCA dispatch (idempotent; imports no kernel module)."""
  if "pallas_triton" not in registered_gca_impls():
    register_gca_impl("pallas_triton", pallas_triton, platforms=("gpu",), supports=supports_triton)
  if "pallas_tpu" not in registered_gca_impls():
    register_gca_impl("pallas_tpu", pallas_tpu, platforms=("tpu",), supports=supports_tpu)
  register_swa_prefix_kernel(swa_prefix, supports_swa_prefix)


register()


def __getattr__(attr: str):
  if attr in ("common", "gca_triton", "gca_tpu", "swa_prefix_triton"):
    return importlib.import_module(f"gca_jax.kernels.{attr}")
  raise AttributeError(f"module 'gca_jax.kernels' has no attribute {attr!r}")


__all__ = ["common", "gca_tpu", "gca_triton", "pallas_tpu", "pallas_triton", "register",
           "supports_swa_prefix", "supports_tpu", "supports_triton", "swa_prefix",
           "swa_prefix_triton"]
