"""Benchmark of the GCA operator: Pallas Triton kernel vs the XLA reference (GPU).

Cases: the paper shape (batch 4 × 16K tokens = 260 chunks of 64, K=8, H=Hkv=12, D=64, bf16) and
64K tokens (1040 chunks) at batch 1 and 4. Indices/weights as the model makes them (Gumbel top-K
over strictly earlier chunks, shifted one chunk, empty slots index 0 / weight 0).

For each (case, impl), in its own process (so the allocator's peak is that run's alone):
  * forward and forward+backward time: jit, 3 warmups, median (and min) of N timed samples, each
    a batch of calls dispatched back to back and blocked once (`bench/_timing.timeit`: about
    20 ms per sample, so host dispatch and sync do not enter sub-millisecond times);
  * peak device memory: memory_stats()["peak_bytes_in_use"] after the forward runs and after the
    forward+backward runs (inputs included), and XLA's compiled memory analysis
    (argument + output + temp bytes) of both functions;
  * kernel only: the time of each pass (forward kernel, dQ/dw kernel, dK/dV kernel + its XLA
    inverted index) and a small sweep of Triton num_warps / num_stages per pass (paper case).
Bytes the operator must move (common.operator_bytes):
  unique   = forward: q + k + v + o + lse(f32 [B,C,K,H,S]) + indices/weights;
             backward: q + k + v + dO + lse + idx/w (read) + dq + dk + dv + dw (write).
  gathered = the same with K/V counted once per (query chunk, slot) that reads them (forward and
             dQ pass) and q/dO/lse once per reader (dK/dV pass): the traffic without cache reuse.
Achieved GB/s = bytes / median time; "fraction" = that / the device-to-device copy bandwidth
measured in the same run (x -> x + 1 over a 2 GiB buffer: 2 GiB read + 2 GiB written).
Usage: PYTHONPATH=. python bench/gca_kernel.py --out results.json [--iters 20] [--no-sweep]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

from _timing import timeit

CASES = {
    "paper_16k_b4": dict(B=4, C=260, M=260, S=64, H=12, Hkv=12, D=64, K=8),
    "64k_b1": dict(B=1, C=1040, M=1040, S=64, H=12, Hkv=12, D=64, K=8),
    "64k_b4": dict(B=4, C=1040, M=1040, S=64, H=12, Hkv=12, D=64, K=8),
}
EXTRA_CASES = {"tiny": dict(B=1, C=8, M=8, S=64, H=2, Hkv=2, D=64, K=3)}  # CPU dry runs
SWEEP = [(4, 1), (4, 2), (4, 3), (8, 2), (8, 3)]


def _peak():
  import jax
  try:
    return int(jax.devices()[0].memory_stats().get("peak_bytes_in_use", -1))
  except Exception:
    return -1


def _mem_analysis(fn, args):
  try:
    m = fn.lower(*args).compile().memory_analysis()
    return dict(argument=int(m.argument_size_in_bytes), output=int(m.output_size_in_bytes),
                temp=int(m.temp_size_in_bytes),
                total=int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                          - getattr(m, "alias_size_in_bytes", 0)))
  except Exception as e:
    return dict(error=f"{type(e).__name__}: {e}"[:300])


def random_retrieval(key, B: int, C: int, M: int, K: int, *, causal: bool = True):
  """Indices/weights like the model's (benchmarks, parity): Gumbel top-K of random scores over the
  memory chunks j < c (strict causal) when causal and M == C, else over all M; softmax weights;
  slots without a valid chunk get index 0 and weight 0; then the causal shift by one chunk (chunk
  0 reads nothing). Returns (indices int32 [B,C,K], weights f32 [B,C,K])."""
  import jax
  import jax.numpy as jnp
  from gca_jax.layers.retrieval import gumbel_noise, masked_topk_weights, shift_to_next_chunk
  k1, k2 = jax.random.split(key)
  scores = jax.random.normal(k1, (B, C, M), jnp.float32)
  if causal and M == C:
    valid = jnp.arange(M)[None, None, :] < jnp.arange(C)[None, :, None]
  else:
    valid = jnp.ones((B, C, M), bool)
  valid = jnp.broadcast_to(valid, (B, C, M))
  idx, w, _ = masked_topk_weights(scores, valid, K, gumbel_noise(k2, (B, C, M)))
  if causal and M == C:
    idx, w = shift_to_next_chunk(idx, w)
  return idx, w


def worker_copy(iters):
  import jax
  import jax.numpy as jnp
  n = 2**29  # 2 GiB of f32
  x = jnp.zeros((n,), jnp.float32)
  f = jax.jit(lambda x: x + 1.0)
  t = timeit(f, (x,), iters)
  return dict(bytes=2 * 4 * n, copy_GBps=2 * 4 * n / (t["median_ms"] * 1e-3) / 1e9, **t)


def worker_case(case, impl, iters, sweep):
  import jax
  import jax.numpy as jnp
  from gca_jax.kernels import common, gca_triton
  from gca_jax.ops.gca import gca_reference

  p = {**CASES, **EXTRA_CASES}[case]
  B, C, M, S, H, Hkv, D, K = (p[x] for x in ("B", "C", "M", "S", "H", "Hkv", "D", "K"))
  dt = jnp.bfloat16
  ks = jax.random.split(jax.random.key(0), 5)
  q = jax.random.normal(ks[0], (B, C, S, H, D), dt)
  k = jax.random.normal(ks[1], (B, M, S, Hkv, D), dt)
  v = jax.random.normal(ks[2], (B, M, S, Hkv, D), dt)
  do = jax.random.normal(ks[3], (B, C, S, H, D), dt)
  idx, w = jax.jit(lambda key: random_retrieval(key, B, C, M, K))(ks[4])
  jax.block_until_ready((q, k, v, do, idx, w))
  op = (lambda q, k, v, i, w: gca_triton.gca_triton(q, k, v, i, w)) if impl == "pallas_triton" \
      else gca_reference
  fwd = jax.jit(lambda q, k, v, i, w: op(q, k, v, i, w))

  def _fb(q, k, v, i, w, do):
    o, vjp = jax.vjp(lambda q, k, v, w: op(q, k, v, i, w), q, k, v, w)
    return (o, *vjp(do))
  fb = jax.jit(_fb)
  out = dict(case=case, impl=impl, **p, dtype="bfloat16")
  counts = jnp.zeros((B, M), jnp.int32).at[jnp.arange(B)[:, None], idx.reshape(B, -1)].add(
      (w.reshape(B, -1) != 0).astype(jnp.int32))
  out["readers_per_chunk"] = dict(mean=float(jnp.mean(counts)), max=int(jnp.max(counts)))
  out["memory_analysis"] = dict(fwd=_mem_analysis(fwd, (q, k, v, idx, w)),
                                fwd_bwd=_mem_analysis(fb, (q, k, v, idx, w, do)))
  base = _peak()
  out["fwd"] = timeit(fwd, (q, k, v, idx, w), iters)
  out["peak_bytes_after_fwd"] = _peak()
  out["fwd_bwd"] = timeit(fb, (q, k, v, idx, w, do), iters)
  out["peak_bytes_after_fwd_bwd"] = _peak()
  out["peak_bytes_inputs"] = base
  if impl == "pallas_triton":
    cfg = lambda nw=None, ns=None: dict(gca_triton._config(D, None, None, nw, ns, None, False))
    idx_c, w32 = common.clip_indices(idx, M), w.astype(jnp.float32)
    _, lse = jax.jit(lambda *a: gca_triton._fwd(*a, cfg()))(q, k, v, idx_c, w32)
    passes = {
        "fwd": (lambda c: jax.jit(lambda q, k, v, i, w: gca_triton._fwd(q, k, v, i, w, c)),
                (q, k, v, idx_c, w32)),
        "dq": (lambda c: jax.jit(lambda *a: gca_triton._bwd_dq(*a, c)),
               (q, k, v, idx_c, w32, lse, do)),
        "dkv": (lambda c: jax.jit(lambda *a: gca_triton._bwd_dkv(*a, c)),
                (q, k, v, idx_c, w32, lse, do)),
    }
    out["passes"] = {n: timeit(mk(cfg()), a, iters) for n, (mk, a) in passes.items()}
    out["inverted_index"] = timeit(jax.jit(lambda i, w: common.inverted_index(i, w, M)),
                                    (idx_c, w32), iters)
    if sweep:
      out["sweep"] = {}
      for n, (mk, a) in passes.items():
        res = {}
        for nw, ns in SWEEP:
          try:
            res[f"w{nw}_s{ns}"] = timeit(mk(cfg(nw, ns)), a, max(5, iters // 2))["median_ms"]
          except Exception as e:
            res[f"w{nw}_s{ns}"] = f"{type(e).__name__}: {e}"[:200]
        out["sweep"][n] = res
  return out


def run_worker(spec, timeout):
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
  t0 = time.time()
  try:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(spec=spec, error=f"timeout after {timeout}s")
  lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
  if r.returncode != 0 or not lines:
    return dict(spec=spec, error=f"rc={r.returncode}", stderr=r.stderr[-3000:])
  res = json.loads(lines[-1])
  res["worker_seconds"] = round(time.time() - t0, 1)
  return res


def derive(res, copy_gbps):
  from gca_jax.kernels import common
  p = {x: res[x] for x in ("B", "C", "M", "S", "H", "Hkv", "D", "K")}
  for mode, bwd in (("fwd", False), ("fwd_bwd", True)):
    if mode not in res:
      continue
    t = res[mode]["median_ms"] * 1e-3
    by = common.operator_bytes(p["B"], p["C"], p["M"], p["S"], p["H"], p["Hkv"], p["D"], p["K"], 2,
                               backward=bwd)
    fl = common.operator_flops(p["B"], p["C"], p["S"], p["S"], p["H"], p["D"], p["K"], backward=bwd)
    res[mode].update(
        bytes_unique=by["unique"], bytes_gathered=by["gathered"],
        GBps_unique=by["unique"] / t / 1e9, GBps_gathered=by["gathered"] / t / 1e9,
        frac_copy_bw_unique=by["unique"] / t / 1e9 / copy_gbps if copy_gbps else None,
        frac_copy_bw_gathered=by["gathered"] / t / 1e9 / copy_gbps if copy_gbps else None,
        hbm_floor_ms_unique=1e3 * by["unique"] / (copy_gbps * 1e9) if copy_gbps else None,
        flops=fl, TFLOPs=fl / t / 1e12)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  ap.add_argument("--iters", type=int, default=20)
  ap.add_argument("--no-sweep", action="store_true")
  ap.add_argument("--cases", default=",".join(CASES))
  ap.add_argument("--impls", default="pallas_triton,xla")
  ap.add_argument("--timeout", type=int, default=400)
  ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()

  if args.worker:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
      sys.path.insert(0, root)
    spec = json.loads(args.worker)
    if spec["what"] == "copy":
      res = worker_copy(spec["iters"])
    else:
      res = worker_case(spec["case"], spec["impl"], spec["iters"], spec["sweep"])
    import jax
    res["device"] = str(jax.devices()[0].device_kind)
    res["jax"] = jax.__version__
    print(json.dumps(res), flush=True)
    return

  results = dict(cases={}, notes=__doc__)
  copy = run_worker(dict(what="copy", iters=args.iters), args.timeout)
  results["copy"] = copy
  copy_gbps = copy.get("copy_GBps")
  print(json.dumps(dict(copy=copy)), flush=True)
  for case in args.cases.split(","):
    for impl in args.impls.split(","):
      res = run_worker(dict(what="case", case=case, impl=impl, iters=args.iters,
                            sweep=(not args.no_sweep) and case == "paper_16k_b4"), args.timeout)
      if "error" not in res:
        derive(res, copy_gbps)
      results["cases"][f"{case}/{impl}"] = res
      print(json.dumps({f"{case}/{impl}": res}), flush=True)
      _save(results, args.out)   # partial results survive a killed run
  summary = {}
  for case in args.cases.split(","):
    kr, xr = results["cases"].get(f"{case}/pallas_triton", {}), results["cases"].get(f"{case}/xla", {})
    row = {}
    for mode in ("fwd", "fwd_bwd"):
      if mode in kr:
        row[f"{mode}_kernel_ms"] = round(kr[mode]["median_ms"], 3)
        row[f"{mode}_kernel_frac_hbm_unique"] = round(kr[mode]["frac_copy_bw_unique"] or 0, 3)
        row[f"{mode}_kernel_frac_hbm_gathered"] = round(kr[mode]["frac_copy_bw_gathered"] or 0, 3)
        row[f"{mode}_kernel_TFLOPs"] = round(kr[mode]["TFLOPs"], 1)
      if mode in xr:
        row[f"{mode}_xla_ms"] = round(xr[mode]["median_ms"], 3)
      if mode in kr and mode in xr:
        row[f"{mode}_speedup_vs_xla"] = round(xr[mode]["median_ms"] / kr[mode]["median_ms"], 2)
    for name, r in (("kernel", kr), ("xla", xr)):
      if "peak_bytes_after_fwd_bwd" in r:
        row[f"peak_GiB_fwd_{name}"] = round(r["peak_bytes_after_fwd"] / 2**30, 3)
        row[f"peak_GiB_fwd_bwd_{name}"] = round(r["peak_bytes_after_fwd_bwd"] / 2**30, 3)
      if "error" in r:
        row[f"{name}_error"] = r["error"]
    summary[case] = row
  results["summary"] = summary
  results["copy_GBps"] = copy_gbps
  print(json.dumps(dict(summary=summary, copy_GBps=copy_gbps), indent=1), flush=True)
  _save(results, args.out)


def _save(results, out):
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
