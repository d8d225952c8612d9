"""Parity of the GPU attention paths against the XLA references (run on a GPU through `device`).

Checks `sliding_window_attention` / `causal_attention` / `chunk_attention` with impl="cudnn" (and
what "auto" picks) against the blockwise/dense XLA versions, forward and all gradients, bf16; and
a DRT forward + gradient with swa_impl="auto" vs "xla" (SWA layers and chunk encoder). Prints one
JSON line per check; exits 1 on a failure.
Usage: python scripts/gpu_parity.py [--out results.json] [--only model]  (only: "ops" or "model")
"""

import argparse
import json
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np

from gca_jax import DRT, DRTConfig, ops
from gca_jax.ops import swa


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _inputs(seed, qshape, kshape, dtype):
  ks = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(ks[0], qshape, dtype), jax.random.normal(ks[1], kshape, dtype),
          jax.random.normal(ks[2], kshape, dtype), jax.random.normal(ks[3], qshape, dtype))


def _compare(results, check, fn, ref, q, k, v, do, **shape):
  """fn (the cuDNN path, jitted) vs ref (an f32 reference), forward and dq/dk/dv; appends and
  prints one result row."""
  f32 = lambda x: x.astype(jnp.float32)
  o_ref, vjp_ref = jax.vjp(lambda q, k, v: ref(f32(q), f32(k), f32(v)), q, k, v)
  g_ref = vjp_ref(f32(do))
  o, vjp = jax.vjp(jax.jit(fn), q, k, v)
  g = vjp(do)
  errs = {"out": rel(o, o_ref), "dq": rel(g[0], g_ref[0]), "dk": rel(g[1], g_ref[1]),
          "dv": rel(g[2], g_ref[2])}
  ok = all(e <= 2e-2 for e in errs.values()) and all(np.all(np.isfinite(np.asarray(x)))
                                                      for x in (o, *g))
  results.append(dict(check=check, **shape, dtype=str(jnp.dtype(q.dtype)),
                      auto=ops.resolve_attention_impl("auto", q), rel_err=errs, ok=bool(ok)))
  print(json.dumps(results[-1]), flush=True)


def check_attention(results, B, T, H, G, D, W, dtype):
  q, k, v, do = _inputs(T + W + H, (B, T, H, D), (B, T, G, D), dtype)
  shape = dict(B=B, T=T, H=H, G=G, D=D, W=W)
  _compare(results, "swa_cudnn",
           lambda q, k, v: ops.sliding_window_attention(q, k, v, W, impl="cudnn"),
           lambda q, k, v: swa.swa_xla(q, k, v, W), q, k, v, do, **shape)
  _compare(results, "causal_cudnn", lambda q, k, v: ops.causal_attention(q, k, v, impl="cudnn"),
           swa.attention_reference, q, k, v, do, **shape)


def check_chunk_attention(results, N, S, H, G, D, dtype):
  """ops.chunk_attention (the chunk encoder's unmasked in-chunk attention) with cuDNN."""
  q, k, v, do = _inputs(N + S + H, (N, S, H, D), (N, S, G, D), dtype)
  _compare(results, "chunk_cudnn", lambda q, k, v: ops.chunk_attention(q, k, v, impl="cudnn"),
           lambda q, k, v: swa.attention_reference(q, k, v, causal=False), q, k, v, do,
           N=N, S=S, H=H, G=G, D=D)


def check_model(results):
  cfg = DRTConfig(vocab_size=512, d_model=128, num_heads=4, mlp_dim=256, lower_layers=2,
                  upper_groups=(2,), window=128, top_k=4, dtype="bfloat16")
  toks = jax.random.randint(jax.random.key(0), (2, 63 * 20), 0, 512)
  params = flax.core.meta.unbox(DRT(cfg).init(jax.random.key(1), toks)["params"])

  def loss(p, c):
    logits = DRT(c).apply({"params": p}, toks[:, :-1])
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, toks[:, 1:, None], -1)[..., 0])

  l_auto, g_auto = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, cfg)
  l_xla, g_xla = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, cfg.replace(swa_impl="xla"))
  gerr = rel(jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g_auto)]),
             jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g_xla)]))
  auto = ops.resolve_attention_impl("auto", jnp.zeros((1, 1, 1, 32), jnp.bfloat16))
  ok = abs(float(l_auto) - float(l_xla)) < 2e-2 * abs(float(l_xla)) and gerr < 5e-2 and auto == "cudnn"
  results.append(dict(check="drt_bf16_auto_vs_xla", auto_impl=auto, loss_auto=float(l_auto),
                      loss_xla=float(l_xla), grad_rel_err=gerr, ok=bool(ok)))
  print(json.dumps(results[-1]), flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  ap.add_argument("--only", default=None, choices=("ops", "model"))
  args = ap.parse_args()
  print(json.dumps(dict(jax=jax.__version__, backend=jax.default_backend(),
                        devices=[str(d) for d in jax.devices()])), flush=True)
  results = []
  if args.only != "model":
    for case in [(2, 1000, 4, 4, 64, 128), (1, 4096, 12, 12, 64, 512), (1, 777, 8, 2, 128, 100),
                 (2, 2048, 4, 4, 32, 2048)]:
      check_attention(results, *case, jnp.bfloat16)
    for case in [(1040, 64, 12, 12, 64), (37, 64, 8, 2, 128)]:
      check_chunk_attention(results, *case, jnp.bfloat16)
  if args.only != "ops":
    check_model(results)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
  bad = [r for r in results if not r["ok"]]
  print(f"{len(results) - len(bad)}/{len(results)} checks passed")
  sys.exit(1 if bad else 0)


if __name__ == "__main__":
  main()
