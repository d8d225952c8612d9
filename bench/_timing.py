"""Shared timer of the benchmark scripts: median / min wall time of a jitted call."""

import statistics
import time


def timeit(fn, args, iters: int, warmup: int = 3, min_sample_s: float = 0.02,
           max_reps: int = 100) -> dict:
  """Runs `fn(*args)` `warmup` times, then `iters` timed samples. A sample is `reps` calls
  dispatched back to back and blocked once at the end, divided by `reps`; `reps` is chosen from
  the warm-up so a sample lasts about `min_sample_s` (1 for calls longer than that), so the
  per-call host dispatch and synchronisation do not enter the time of sub-millisecond kernels.
  Returns {"median_ms", "min_ms", "reps"}."""
  import jax
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  once = time.perf_counter() - t0
  reps = max(1, min(max_reps, int(min_sample_s / max(once, 1e-6))))
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    for _ in range(reps):
      r = fn(*args)
    jax.block_until_ready(r)
    ts.append((time.perf_counter() - t0) / reps)
  return dict(median_ms=1e3 * statistics.median(ts), min_ms=1e3 * min(ts), reps=reps)
