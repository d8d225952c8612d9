"""Streaming long-context inference (`gca_jax.inference.stream`: DRT) and the long-context
evaluation tasks built on it (`gca_jax.inference.tasks`)."""

from gca_jax.inference.stream import (TRACE_COUNTS, DRTStream, HostMemory, blocked_topk_retrieval,
                                      grow_state, init_state, memory_bytes, resolve_memory,
                                      segment_step, stream_logits_at, stream_logprobs_at,
                                      stream_nll)

__all__ = ["TRACE_COUNTS", "DRTStream", "HostMemory", "blocked_topk_retrieval",
           "grow_state", "init_state", "memory_bytes", "resolve_memory",
           "segment_step", "stream_logits_at", "stream_logprobs_at", "stream_nll"]
