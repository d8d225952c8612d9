"""Host <-> device transfer paths for the streaming engine's host chunk memory (issue 4).

The host path of the streaming engine (`gca_jax.ops.host_store`) moves, per 8064-token segment
of `drt_128m`, the 1032 selected chunks (101 MB of bf16 encoder outputs) host -> device through
an `io_callback` result and the 128 new chunks (12.6 MB) device -> host through an `io_callback`
argument.
This measures each way of doing that, in one process, on the default device:
  - `device_put`        jax.device_put of a numpy array (pageable host memory)
  - `callback_h2d`      a jitted function whose io_callback returns the array (the engine's path)
  - `callback_h2d_pinned`  the same with the returned array page-locked (cudaHostRegister)
  - `callback_d2h`      a jitted function passing a device array to an io_callback
  - `numpy_copy`        one host memcpy of the same bytes (the host's own bandwidth)
Each: median of `--iters` after 2 warm-ups (`bench/_timing.timeit`), ms and GB/s.

Usage: PYTHONPATH=. python bench/host_transfer.py --out host_transfer.json [--mb 101] [--iters 10]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import io_callback  # noqa: E402

from _timing import timeit  # noqa: E402
from gca_jax.ops.host_store import cuda_host_register  # noqa: E402


def timed(f, iters):
  """Median seconds of `f()` (the shared bench timer, 2 warm-ups)."""
  return timeit(f, (), iters, warmup=2, max_reps=1)["median_ms"] / 1e3


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  ap.add_argument("--mb", type=float, default=101.0)
  ap.add_argument("--iters", type=int, default=10)
  args = ap.parse_args()
  n = int(args.mb * 1e6) // 2
  host = np.random.default_rng(0).integers(0, 2**16, n, dtype=np.uint16)
  res = {"bytes": host.nbytes, "device": jax.devices()[0].device_kind, "jax": jax.__version__}

  def add(name, sec):
    res[name] = {"ms": round(sec * 1e3, 3), "GBps": round(host.nbytes / sec / 1e9, 2)}
    print(name, res[name], flush=True)

  add("numpy_copy", timed(lambda: np.copy(host), args.iters))
  add("device_put", timed(lambda: jax.device_put(host), args.iters))

  def h2d(src):
    f = jax.jit(lambda x: io_callback(lambda: src, jax.ShapeDtypeStruct(src.shape, src.dtype),
                                      ordered=True) + x)
    z = jnp.zeros((), jnp.uint16)
    return lambda: f(z)

  add("callback_h2d", timed(h2d(host), args.iters))
  pinned = np.empty_like(host)
  pinned[...] = host
  ok = cuda_host_register(pinned)
  res["pinned_registered"] = ok
  if ok:
    add("callback_h2d_pinned", timed(h2d(pinned), args.iters))
    add("device_put_pinned", timed(lambda: jax.device_put(pinned), args.iters))
  dev = jax.device_put(host)
  sink = np.empty_like(host)

  def take(x):
    sink[...] = x

  g = jax.jit(lambda x: io_callback(take, None, x, ordered=True))
  add("callback_d2h", timed(lambda: (g(dev), sink)[1], args.iters))
  add("device_get", timed(lambda: jax.device_get(dev + 0), args.iters))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
