"""Streaming long-context inference for DRT (see `gca_jax.inference.stream`)."""

from gca_jax.inference.stream import (TRACE_COUNTS, DRTStream, blocked_topk_retrieval, grow_state,
                                      init_state, segment_step, stream_logits_at,
                                      stream_logprobs_at, stream_nll)

__all__ = ["TRACE_COUNTS", "DRTStream", "blocked_topk_retrieval", "grow_state", "init_state",
           "segment_step", "stream_logits_at", "stream_logprobs_at", "stream_nll"]
