"""GPU parity of the Pallas Triton GCA kernels (compiled, not interpreted) against the XLA reference.

For each shape and dtype: forward and all gradients (q, k, v, weights) of `gca_triton` vs
`gca_reference` evaluated in f32 at Precision.HIGHEST on the same (bf16-rounded) values. The kernel
runs with every output buffer pre-filled with NaN (`poison_outputs=True`), and once more without,
which must agree bitwise (full coverage + determinism of the dK/dV accumulation). Tolerance on
‖out − ref‖/‖ref‖: f32 ≤ 1e-3, bf16 ≤ 2e-2; NaN/inf never passes. Also: what impl="auto" picks, the
single-pass TF32 variant (reported, not gating) and a DRT model forward/gradient with
gca_impl="pallas_triton" vs "xla".
Prints one JSON line per check; exits 1 if any gating check fails.
Usage: PYTHONPATH=. python scripts/kernel_parity.py [--out results.json] [--quick]
       [--only paper/bfloat16,model]   (a subset: check/dtype names, "model" for the DRT check)
"""

import argparse
import json
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from gca_jax import ops
from gca_jax.kernels import common, gca_triton
from gca_jax.ops.gca import gca_reference

TOL = {"float32": 1e-3, "bfloat16": 2e-2}
NAMES = ("o", "dq", "dk", "dv", "dw")


def make_inputs(seed, B, C, M, S, H, Hkv, D, K, dtype, *, causal, extra):
  ks = jax.random.split(jax.random.key(seed), 6)
  q = jax.random.normal(ks[0], (B, C, S, H, D), jnp.float32).astype(dtype)
  k = jax.random.normal(ks[1], (B, M, S, Hkv, D), jnp.float32).astype(dtype)
  v = jax.random.normal(ks[2], (B, M, S, Hkv, D), jnp.float32).astype(dtype)
  do = jax.random.normal(ks[3], (B, C, S, H, D), jnp.float32).astype(dtype)
  if causal:
    idx, w = common.random_retrieval(ks[4], B, C, M, K)
  else:
    idx = jax.random.randint(ks[4], (B, C, K), 0, M, jnp.int32)
    w = jax.random.uniform(ks[5], (B, C, K), jnp.float32)
  if extra:  # duplicate index in a row, a row of zero weights, an empty slot per row, unread chunks
    idx = idx.at[:, :, 1 % K].set(idx[:, :, 0]) if K > 1 else idx
    w = w.at[:, 0, :].set(0.0).at[:, :, -1].set(0.0)
    if M > 2:
      idx = jnp.minimum(idx, M - 2)  # chunk M-1 never read
  return q, k, v, idx, w, do


def reference(q, k, v, idx, w, do):
  up = lambda x: x.astype(jnp.float32)

  @jax.jit
  def f(q, k, v, w, do):
    with jax.default_matmul_precision("highest"):
      o, vjp = jax.vjp(lambda q, k, v, w: gca_reference(q, k, v, idx, w), q, k, v, w)
      return (o, *vjp(do))
  return f(up(q), up(k), up(v), w, up(do))


def kernel(q, k, v, idx, w, do, **kw):
  @jax.jit
  def f(q, k, v, w, do):
    o, vjp = jax.vjp(lambda q, k, v, w: gca_triton.gca_triton(q, k, v, idx, w, **kw), q, k, v, w)
    return (o, *vjp(do))
  return f(q, k, v, w, do)


def _check(results, name, B, C, M, S, H, Hkv, D, K, dtype, *, causal=False, extra=True,
          tf32_variant=False, out=None):
  row = dict(check=name, B=B, C=C, M=M, S=S, H=H, Hkv=Hkv, D=D, K=K, dtype=str(jnp.dtype(dtype)),
             causal=causal)
  try:
    t0 = time.time()
    q, k, v, idx, w, do = make_inputs(hash((B, C, M, H, D, K)) % 1000, B, C, M, S, H, Hkv, D, K,
                                      dtype, causal=causal, extra=extra)
    row["auto_impl"] = ops.resolve_gca_impl("auto", q, k, v, idx, w)
    row["plan"] = {p: dict(zip(("heads_per_program", "num_stages", "smem_estimate"),
                               gca_triton.plan(p, S, S, D, H // Hkv, dtype)))
                   for p in ("fwd", "dq", "dkv")}
    ref = [np.asarray(x, np.float32) for x in reference(q, k, v, idx, w, do)]
    got = [np.asarray(x.astype(jnp.float32)) for x in kernel(q, k, v, idx, w, do, poison_outputs=True)]
    again = [np.asarray(x.astype(jnp.float32)) for x in kernel(q, k, v, idx, w, do)]
    tol = TOL[row["dtype"]]
    row["rel_err"] = {n: common.rel_err(g, r) for n, g, r in zip(NAMES, got, ref)}
    row["finite"] = bool(all(np.all(np.isfinite(g)) for g in got))
    row["bitwise_repeat"] = bool(all(np.array_equal(a, b) for a, b in zip(got, again)))
    # memory chunks without a non-zero-weight reader must get exactly zero dK / dV
    read = np.zeros((B, M), bool)
    idx_np, w_np = np.asarray(idx), np.asarray(w)
    for b in range(B):
      read[b, idx_np[b][w_np[b] != 0]] = True
    row["unread_chunks"] = int(np.sum(~read))
    row["unread_chunk_zero"] = bool(np.all(got[2][~read] == 0) and np.all(got[3][~read] == 0))
    row["ok"] = bool(row["finite"] and row["bitwise_repeat"] and row["unread_chunk_zero"]
                     and all(e <= tol for e in row["rel_err"].values())
                     and row["auto_impl"] == ("pallas_triton" if jax.default_backend() == "gpu"
                                              else "xla"))
    if tf32_variant and row["dtype"] == "float32":   # single-pass TF32: reported, not gating
      tf = [np.asarray(x) for x in kernel(q, k, v, idx, w, do, precision="tf32")]
      row["tf32_rel_err"] = {n: common.rel_err(g, r) for n, g, r in zip(NAMES, tf, ref)}
    row["seconds"] = round(time.time() - t0, 1)
  except Exception as e:  # report and keep going
    row.update(ok=False, error=f"{type(e).__name__}: {e}"[:3000], trace=traceback.format_exc()[-3000:])
  results.append(row)
  print(json.dumps(row), flush=True)
  _save(results, out)


def _save(results, out):
  if out:
    with open(out, "w") as f:
      json.dump(results, f, indent=1)


def check_model(results):
  import flax
  from gca_jax import DRT, DRTConfig
  row = dict(check="drt_gca_pallas_triton_vs_xla")
  try:
    cfg = DRTConfig(vocab_size=512, d_model=128, num_heads=4, mlp_dim=256, lower_layers=2,
                    upper_groups=(2,), window=128, top_k=4, dtype="bfloat16", gca_impl="pallas_triton")
    toks = jax.random.randint(jax.random.key(0), (2, 63 * 20), 0, 512)
    params = flax.core.meta.unbox(DRT(cfg).init(jax.random.key(1), toks)["params"])

    def loss(p, c):
      logits = DRT(c).apply({"params": p}, toks[:, :-1]).astype(jnp.float32)
      return jnp.mean(jax.nn.logsumexp(logits, -1)
                      - jnp.take_along_axis(logits, toks[:, 1:, None], -1)[..., 0])

    l_k, g_k = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, cfg)
    l_x, g_x = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, cfg.replace(gca_impl="xla"))
    flat = lambda g: jnp.concatenate([x.ravel().astype(jnp.float32) for x in jax.tree_util.tree_leaves(g)])
    gerr = common.rel_err(flat(g_k), flat(g_x))
    row.update(loss_kernel=float(l_k), loss_xla=float(l_x), grad_rel_err=gerr,
               ok=bool(abs(float(l_k) - float(l_x)) < 2e-2 * abs(float(l_x)) and gerr < 5e-2
                       and np.isfinite(float(l_k))))
  except Exception as e:
    row.update(ok=False, error=f"{type(e).__name__}: {e}"[:3000], trace=traceback.format_exc()[-3000:])
  results.append(row)
  print(json.dumps(row), flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  ap.add_argument("--quick", action="store_true", help="skip the paper-size shapes")
  ap.add_argument("--only", default=None, help="comma list of check/dtype names and/or 'model'")
  args = ap.parse_args()
  only = set(args.only.split(",")) if args.only else None
  print(json.dumps(dict(jax=jax.__version__, backend=jax.default_backend(),
                        devices=[str(d) for d in jax.devices()])), flush=True)
  results = []
  kw = dict(out=args.out)

  def check(results, name, B, C, M, S, H, Hkv, D, K, dtype, **k):  # the selection of --only
    if only is None or f"{name}/{jnp.dtype(dtype).name}" in only:
      _check(results, name, B, C, M, S, H, Hkv, D, K, dtype, **k)

  for dtype in (jnp.float32, jnp.bfloat16):
    # duplicates, a row of zero weights, an empty slot per row, an unread chunk (extra=True)
    check(results, "mha_small", 2, 17, 17, 64, 4, 4, 64, 8, dtype, tf32_variant=True, **kw)
    check(results, "gqa_d128_k5", 2, 33, 20, 64, 8, 2, 128, 5, dtype, **kw)
    check(results, "gqa3_m_lt_k", 1, 9, 3, 64, 6, 2, 64, 6, dtype, **kw)
    # R = 4 at D = 64: two heads per forward program (f32: the dQ pass one head, see `plan`)
    check(results, "gqa4_d64", 2, 9, 9, 64, 8, 2, 64, 4, dtype, **kw)
    check(results, "mqa_d128_r3", 1, 6, 6, 64, 3, 1, 128, 3, dtype, **kw)
    check(results, "mqa_r3", 1, 12, 12, 64, 3, 1, 64, 3, dtype, **kw)
    check(results, "causal_retrieval", 2, 40, 40, 64, 4, 4, 64, 8, dtype, causal=True, extra=False,
          **kw)
    if not args.quick:   # the paper shape: batch 4 x 16K tokens, model-like retrieval
      check(results, "paper", 4, 260, 260, 64, 12, 12, 64, 8, dtype, causal=True, extra=False,
            tf32_variant=True, **kw)
  if only is None or "model" in only:
    check_model(results)
  _save(results, args.out)
  bad = [r for r in results if not r["ok"]]
  print(json.dumps(dict(summary=f"{len(results) - len(bad)}/{len(results)} checks passed",
                        failed=[r["check"] + "/" + r.get("dtype", "") for r in bad])), flush=True)
  sys.exit(1 if bad else 0)


if __name__ == "__main__":
  main()
