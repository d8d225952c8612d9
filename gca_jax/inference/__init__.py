"""Streaming inference (docs/method.md §8): a model-agnostic engine over the layers' streaming mode
(`Stream`, `stream_nll`, `stream_logprobs_at`), memory planning and text generation."""

from gca_jax.inference.engine import (TRACE_COUNTS, Stream, cache_bytes, cache_shapes,
                                      device_free_bytes, model_cache_bytes, resolve_memory)
from gca_jax.inference.generate import generate
from gca_jax.ops.host_store import HostStore
from gca_jax.inference.runner import run_segments, stream_logprobs_at, stream_nll

__all__ = ["TRACE_COUNTS", "HostStore", "Stream", "cache_bytes", "cache_shapes",
           "device_free_bytes", "generate", "model_cache_bytes", "resolve_memory",
           "run_segments", "stream_logprobs_at", "stream_nll"]
