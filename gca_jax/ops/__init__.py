"""Operators with an `impl` switch: GCA (docs/method.md §3), sliding-window / causal / in-chunk
attention, and the fused LM head + cross-entropy `lm_head_loss` (docs/method.md §2.6).

Kernels register into `gca_jax.ops.gca` (`register_gca_impl`); this package never imports them.
"""

from gca_jax.ops.errors import UnsupportedGCAInput
from gca_jax.ops.gca import (available_gca_impls, gca_reference, grouped_cross_attention,
                             register_gca_impl, registered_gca_impls, resolve_gca_impl)
from gca_jax.ops.lm_loss import (LM_LOSS_IMPLS, LMLoss, LMLossBlocks, lm_head_loss,
                                 lm_head_loss_reference)
from gca_jax.ops.swa import (attention_reference, causal_attention, chunk_attention,
                             resolve_attention_impl, sliding_window_attention, swa_xla)

__all__ = [
    "LMLoss", "LMLossBlocks", "LM_LOSS_IMPLS", "UnsupportedGCAInput", "attention_reference",
    "available_gca_impls", "causal_attention", "chunk_attention",
    "gca_reference", "grouped_cross_attention", "lm_head_loss", "lm_head_loss_reference",
    "register_gca_impl", "registered_gca_impls",
    "resolve_attention_impl",
    "resolve_gca_impl", "sliding_window_attention", "swa_xla",
]
