"""Operators with an `impl` switch: GCA (docs/method.md §3) and sliding-window / causal / in-chunk attention.

Kernels register into `gca_jax.ops.gca` (`register_gca_impl`); this package never imports them.
"""

from gca_jax.ops.errors import UnsupportedGCAInput
from gca_jax.ops.gca import (available_gca_impls, gca_reference, grouped_cross_attention,
                             register_gca_impl, registered_gca_impls, resolve_gca_impl)
from gca_jax.ops.swa import (attention_reference, causal_attention, chunk_attention,
                             resolve_attention_impl, sliding_window_attention, swa_xla)

__all__ = [
    "UnsupportedGCAInput", "attention_reference", "available_gca_impls", "causal_attention",
    "chunk_attention",
    "gca_reference", "grouped_cross_attention", "register_gca_impl", "registered_gca_impls",
    "resolve_attention_impl",
    "resolve_gca_impl", "sliding_window_attention", "swa_xla",
]
