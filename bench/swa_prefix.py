"""Time of the streaming window-cache attention (`ops.swa.swa_with_prefix`, docs/method.md §8) on
one GPU, per call: the Pallas Triton kernel for a few launch parameters, one cuDNN flash call over
[W-1 cache rows + P rows] (zero queries for the cache rows), and the blocked jnp path. drt_128m's
shapes: B 1, H 12, D 64, W 512, bf16, prefix full (n_empty 0).

Usage: PYTHONPATH=. python bench/swa_prefix.py --out swa_prefix.json [--rows 8064,16128]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.kernels.swa_prefix_triton import SwaPrefixParams, swa_prefix_triton
from gca_jax.ops import swa

PARAMS = [(64, 64, 4, 2), (128, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 3), (128, 128, 8, 2),
          (64, 128, 4, 2)]


def _time(fn, *args, n=50):
  jax.block_until_ready(fn(*args))
  t = time.perf_counter()
  for _ in range(n):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / n * 1e3


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True)
  ap.add_argument("--rows", default="8064,16128")
  ap.add_argument("--window", type=int, default=512)
  a = ap.parse_args()
  W, rows_out = a.window, []
  for P in map(int, a.rows.split(",")):
    r = np.random.default_rng(P)
    q = jnp.asarray(r.standard_normal((1, P, 12, 64)), jnp.bfloat16)
    k, v = (jnp.asarray(r.standard_normal((1, P + W - 1, 12, 64)), jnp.bfloat16) for _ in range(2))
    n = jnp.int32(0)
    ref = swa.swa_with_prefix_xla(q, k, v, n, W).astype(jnp.float32)
    row = dict(P=P, W=W)
    for bq, bk, nw, ns in PARAMS:
      p = SwaPrefixParams(bq, bk, nw, ns)
      f = jax.jit(lambda q, k, v, n, p=p: swa_prefix_triton(q, k, v, n, W, params=p))
      err = float(jnp.linalg.norm(f(q, k, v, n).astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
      row[f"triton_{bq}_{bk}_{nw}_{ns}"] = dict(ms=round(_time(f, q, k, v, n), 4), rel=err)
    cud = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
        jnp.concatenate([jnp.zeros((1, W - 1, 12, 64), q.dtype), q], 1), k, v, is_causal=True,
        local_window_size=(W - 1, 0), implementation="cudnn")[:, W - 1:])
    row["cudnn_one_call"] = dict(ms=round(_time(cud, q, k, v), 4))
    xla = jax.jit(lambda q, k, v, n: swa.swa_with_prefix_xla(q, k, v, n, W))
    row["xla_blocked"] = dict(ms=round(_time(xla, q, k, v, n), 4))
    print(json.dumps(row), flush=True)
    rows_out.append(row)
  json.dump(dict(rows=rows_out, device=jax.devices()[0].device_kind, jax=jax.__version__,
                 date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), open(a.out, "w"), indent=1)


if __name__ == "__main__":
  main()
