"""One DRT upper layer (SWA + GCA + MLP) vs a full-causal-attention layer and a SWA-only layer.

Width of the 128M model (d 768, 12 heads of 64, SwiGLU 2048, W = 512, K = 8), bf16 compute, f32
params, at 16K and 64K tokens (batch 1). Times forward and forward+backward (gradient w.r.t. the
input and the layer's params) of one layer, median of N after warmup; the DRT layer gets chunk
memory and retrieval as the model makes them (causal random top-k). Each case in one process.

Usage: PYTHONPATH=. python bench/layer.py --out layer.json [--lengths 16128,64512] [--iters 10]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax
import jax
import jax.numpy as jnp
import numpy as np

from _timing import timeit
from gca_jax.layers import BlockConfig, DecoderBlock, UpperBlock

D, H, MLP, W, K, S = 768, 12, 2048, 512, 8, 64


def run_case(kind: str, T: int, iters: int) -> dict:
  dt = jnp.bfloat16
  rng = np.random.default_rng(0)
  bc = BlockConfig(num_heads=H, head_dim=D // H, mlp_dim=MLP, window=W, chunk_size=S, dtype=dt,
                   param_dtype=jnp.float32)
  if kind == "drt_upper":
    C = -(-T // (S - 1))
    N = C * S
    x = jnp.asarray(rng.standard_normal((1, N, D)), dt)
    kmem = jnp.asarray(rng.standard_normal((1, C, S, H, D // H)), dt)
    vmem = jnp.asarray(rng.standard_normal((1, C, S, H, D // H)), dt)
    idx = np.zeros((1, C, K), np.int32)
    w = np.zeros((1, C, K), np.float32)
    for c in range(2, C):
      sel = rng.choice(c - 1, size=min(K, c - 1), replace=False)
      idx[0, c, :len(sel)] = sel
      w[0, c, :len(sel)] = 1.0 / len(sel)
    idx, w = jnp.asarray(idx), jnp.asarray(w)
    mod = UpperBlock(bc)
    params = flax.core.meta.unbox(mod.init(jax.random.key(0), x, kmem, vmem, idx, w))
    f = lambda p, x, km, vm: mod.apply(p, x, km, vm, idx, w)
    args = (params, x, kmem, vmem)
    grad_args = (0, 1, 2, 3)
  else:
    N = T
    x = jnp.asarray(rng.standard_normal((1, N, D)), dt)
    mod = DecoderBlock(bc, mode="window" if kind == "swa" else "causal")
    params = flax.core.meta.unbox(mod.init(jax.random.key(0), x))
    f = lambda p, x: mod.apply(p, x)
    args = (params, x)
    grad_args = (0, 1)
  fwd = jax.jit(f)
  loss = lambda *a: jnp.sum(f(*a).astype(jnp.float32) ** 2)
  fb = jax.jit(jax.grad(loss, argnums=grad_args))
  return dict(kind=kind, tokens=T, positions=N,
              fwd_ms=timeit(fwd, args, iters, warmup=2)["median_ms"],
              fwd_bwd_ms=timeit(fb, args, iters, warmup=2)["median_ms"], device=jax.devices()[0].device_kind,
              jax=jax.__version__)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  ap.add_argument("--lengths", default="16128,64512")
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--worker", default=None)
  args = ap.parse_args()
  if args.worker:
    kind, T = args.worker.split(":")
    print("RESULT " + json.dumps(run_case(kind, int(T), args.iters)))
    return
  import subprocess
  results = []
  for T in [int(t) for t in args.lengths.split(",")]:
    for kind in ("swa", "drt_upper", "full"):
      p = subprocess.run([sys.executable, __file__, "--worker", f"{kind}:{T}", "--iters",
                          str(args.iters)], capture_output=True, text=True)
      line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
      r = json.loads(line[-1][7:]) if line else {"kind": kind, "tokens": T, "error": p.stderr[-1500:]}
      results.append(r)
      print(json.dumps(r), flush=True)
      if args.out:
        with open(args.out, "w") as f:
          json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
