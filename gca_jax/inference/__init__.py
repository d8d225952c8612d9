"""Streaming long-context inference (`gca_jax.inference.stream`: DRT) and the long-context
evaluation tasks built on it (`gca_jax.inference.tasks`)."""

from gca_jax.inference.stream import (TRACE_COUNTS, DRTStream, HostMemory, blocked_topk_retrieval,
                                      grow_state, init_state, memory_bytes, resolve_memory,
                                      segment_step, stream_logits_at, stream_logprobs_at,
                                      stream_nll)
from gca_jax.inference.tasks import (LengthFitError, check_fit, estimate_memory, passkey_grid,
                                     ppl_vs_length, score_logprobs_at, score_nll)

__all__ = ["TRACE_COUNTS", "DRTStream", "HostMemory", "LengthFitError", "blocked_topk_retrieval",
           "check_fit", "estimate_memory", "grow_state", "init_state", "memory_bytes",
           "passkey_grid", "ppl_vs_length", "resolve_memory", "score_logprobs_at", "score_nll",
           "segment_step", "stream_logits_at", "stream_logprobs_at", "stream_nll"]
