"""Shared timer of the benchmark scripts: median / min wall time of a jitted call."""

import statistics
import time


def timeit(fn, args, iters: int, warmup: int = 3) -> dict:
  """Runs `fn(*args)` `warmup` times, then `iters` timed times (each blocked until ready).
  Returns {"median_ms", "min_ms"}."""
  import jax
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return dict(median_ms=1e3 * statistics.median(ts), min_ms=1e3 * min(ts))
