"""Parity checks of the GPU paths against the XLA references: one JSON row per check.

Used by tests/gpu/test_gpu_*.py (compiled on a GPU) and by tests/gpu/test_parity_harness.py (the
same code on CPU: Pallas interpret mode / the XLA attention, small shapes). Rows go to stdout and,
when the env var GCA_PARITY_OUT names a directory, are appended to GCA_PARITY_OUT/<file>.jsonl
(the first row of a file per process: jax version, backend, devices).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from gca_jax import DRT, DRTConfig, ops
from gca_jax.kernels import common, gca_triton
from gca_jax.ops import swa
from gca_jax.ops.gca import gca_reference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench"))
from gca_kernel import random_retrieval  # noqa: E402

GPU = jax.default_backend() == "gpu"
NO_GPU = f"needs a GPU (jax.default_backend() is {jax.default_backend()!r}); run " \
         "JAX_PLATFORMS=cuda python -m pytest -m gpu tests/gpu"
KERNEL_TOL = {"float32": 1e-3, "bfloat16": 2e-2}   # f32: TF32 dots on the GPU
ATTN_TOL = 2e-2                                    # bf16 attention paths
NAMES = ("o", "dq", "dk", "dv", "dw")
_STARTED: set[str] = set()


def record(file: str, row: dict) -> dict:
  """Prints `row` as one JSON line and appends it to $GCA_PARITY_OUT/<file>.jsonl if set."""
  line = json.dumps(row, default=str)
  print(line, flush=True)
  out = os.environ.get("GCA_PARITY_OUT")
  if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{file}.jsonl"), "a") as f:
      if file not in _STARTED:
        f.write(json.dumps(dict(jax=jax.__version__, backend=jax.default_backend(),
                                devices=[str(d) for d in jax.devices()],
                                time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))) + "\n")
      f.write(line + "\n")
  _STARTED.add(file)
  return row


def all_finite(xs) -> bool:
  return bool(all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in xs))


def within(errs: dict, tol: float) -> bool:
  """Every error <= tol; NaN (a NaN output) never passes."""
  return bool(all(np.isfinite(e) and e <= tol for e in errs.values()))


# ----------------------------------------------------------------------------- GCA kernel

def gca_inputs(seed, B, C, M, S, H, Hkv, D, K, dtype, *, causal, extra):
  """Fresh inputs; causal: model-like retrieval (bench/gca_kernel.random_retrieval); extra: a
  duplicate index per row, a row of zero weights, an empty slot per row, an unread chunk."""
  ks = jax.random.split(jax.random.key(seed), 6)
  q = jax.random.normal(ks[0], (B, C, S, H, D), jnp.float32).astype(dtype)
  k = jax.random.normal(ks[1], (B, M, S, Hkv, D), jnp.float32).astype(dtype)
  v = jax.random.normal(ks[2], (B, M, S, Hkv, D), jnp.float32).astype(dtype)
  do = jax.random.normal(ks[3], (B, C, S, H, D), jnp.float32).astype(dtype)
  if causal:
    idx, w = random_retrieval(ks[4], B, C, M, K)
  else:
    idx = jax.random.randint(ks[4], (B, C, K), 0, M, jnp.int32)
    w = jax.random.uniform(ks[5], (B, C, K), jnp.float32)
  if extra:
    idx = idx.at[:, :, 1 % K].set(idx[:, :, 0]) if K > 1 else idx
    w = w.at[:, 0, :].set(0.0).at[:, :, -1].set(0.0)
    if M > 2:
      idx = jnp.minimum(idx, M - 2)  # chunk M-1 never read
  return q, k, v, idx, w, do


def gca_reference_grads(q, k, v, idx, w, do):
  """Forward + VJP of gca_reference in f32 at Precision.HIGHEST on the same (rounded) values."""
  up = lambda x: x.astype(jnp.float32)

  @jax.jit
  def f(q, k, v, w, do):
    with jax.default_matmul_precision("highest"):
      o, vjp = jax.vjp(lambda q, k, v, w: gca_reference(q, k, v, idx, w), q, k, v, w)
      return (o, *vjp(do))
  return f(up(q), up(k), up(v), w, up(do))


def gca_kernel_grads(q, k, v, idx, w, do, kernel=None, **kw):
  """Forward + VJP of `kernel` (default: gca_triton with **kw) on the inputs' own dtype."""
  kernel = kernel or (lambda q, k, v, i, w: gca_triton.gca_triton(q, k, v, i, w, **kw))

  @jax.jit
  def f(q, k, v, w, do):
    o, vjp = jax.vjp(lambda q, k, v, w: kernel(q, k, v, idx, w), q, k, v, w)
    return (o, *vjp(do))
  return f(q, k, v, w, do)


def gca_kernel_row(name, B, C, M, S, H, Hkv, D, K, dtype, *, causal=False, extra=True,
                   tf32_variant=False, seed=None, kernel=None, expect_auto=None) -> dict:
  """Kernel vs reference: forward and dq/dk/dv/dw; the run with every output pre-filled with NaN
  (poison_outputs) and a second run must agree bitwise; unread chunks get exactly zero dK/dV;
  what "auto" picks. `ok` gates all of that; the TF32 variant is reported only."""
  row = dict(check=name, B=B, C=C, M=M, S=S, H=H, Hkv=Hkv, D=D, K=K,
             dtype=str(jnp.dtype(dtype)), causal=causal)
  try:
    t0 = time.time()
    seed = hash((B, C, M, H, D, K)) % 1000 if seed is None else seed
    row["seed"] = seed
    q, k, v, idx, w, do = gca_inputs(seed, B, C, M, S, H, Hkv, D, K, dtype, causal=causal,
                                     extra=extra)
    row["auto_impl"] = ops.resolve_gca_impl("auto", q, k, v, idx, w)
    row["plan"] = {p: dict(zip(("heads_per_program", "num_stages", "smem_estimate"),
                               gca_triton.plan(p, S, S, D, H // Hkv, dtype)))
                   for p in ("fwd", "dq", "dkv")}
    ref = [np.asarray(x, np.float32) for x in gca_reference_grads(q, k, v, idx, w, do)]
    poison = {} if kernel else dict(poison_outputs=True)
    got = [np.asarray(x.astype(jnp.float32))
           for x in gca_kernel_grads(q, k, v, idx, w, do, kernel, **poison)]
    again = [np.asarray(x.astype(jnp.float32))
             for x in gca_kernel_grads(q, k, v, idx, w, do, kernel)]
    row["rel_err"] = {n: common.rel_err(g, r) for n, g, r in zip(NAMES, got, ref)}
    row["finite"] = all_finite(got)
    row["bitwise_repeat"] = bool(all(np.array_equal(a, b, equal_nan=False)
                                     for a, b in zip(got, again)))
    read = np.zeros((B, M), bool)
    idx_np, w_np = np.asarray(idx), np.asarray(w)
    for b in range(B):
      read[b, idx_np[b][w_np[b] != 0]] = True
    row["unread_chunks"] = int(np.sum(~read))
    row["unread_chunk_zero"] = bool(np.all(got[2][~read] == 0) and np.all(got[3][~read] == 0))
    if expect_auto is None:
      expect_auto = "pallas_triton" if GPU else "xla"
    row["ok"] = bool(row["finite"] and row["bitwise_repeat"] and row["unread_chunk_zero"]
                     and within(row["rel_err"], KERNEL_TOL[row["dtype"]])
                     and row["auto_impl"] == expect_auto)
    if tf32_variant and row["dtype"] == "float32" and kernel is None:  # reported, not gating
      tf = [np.asarray(x) for x in gca_kernel_grads(q, k, v, idx, w, do, precision="tf32")]
      row["tf32_rel_err"] = {n: common.rel_err(g, r) for n, g, r in zip(NAMES, tf, ref)}
    row["seconds"] = round(time.time() - t0, 1)
  except Exception as e:  # the row says why; the test fails on ok=False
    row.update(ok=False, error=f"{type(e).__name__}: {e}"[:3000],
               trace=traceback.format_exc()[-3000:])
  return record("gca_kernel_parity", row)


def random_gca_shape(rng: np.random.Generator, dtype) -> dict:
  """A random shape the Triton kernels accept (S = 64; D in {64, 128}; GQA/MQA; any C, M, K)."""
  while True:
    Hkv, R, D = int(rng.choice([1, 2, 4])), int(rng.integers(1, 5)), int(rng.choice([64, 128]))
    shape = dict(B=int(rng.integers(1, 3)), C=int(rng.integers(1, 30)),
                 M=int(rng.integers(1, 30)), S=64, H=Hkv * R, Hkv=Hkv, D=D,
                 K=int(rng.integers(1, 9)))
    if gca_triton.smem_reason(64, 64, D, R, dtype) is None:
      return shape


# ----------------------------------------------------------------------------- attention

def _attn_inputs(seed, qshape, kshape, dtype):
  ks = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(ks[0], qshape, dtype), jax.random.normal(ks[1], kshape, dtype),
          jax.random.normal(ks[2], kshape, dtype), jax.random.normal(ks[3], qshape, dtype))


def _jit_vjp(fn, precision=None):
  """jit of (q, k, v, do) -> (fn(q, k, v), dq, dk, dv), f32 dots at `precision` if given."""
  def f(q, k, v, do):
    o, vjp = jax.vjp(fn, q, k, v)
    return (o, *vjp(do))
  if precision is None:
    return jax.jit(f)

  def g(*args):
    with jax.default_matmul_precision(precision):
      return f(*args)
  return jax.jit(g)


def attention_row(check, fn, ref, q, k, v, do, **shape) -> dict:
  """fn (jitted, the inputs' dtype) vs ref (f32, Precision.HIGHEST), forward and dq/dk/dv."""
  row = dict(check=check, **shape, dtype=str(jnp.dtype(q.dtype)))
  try:
    t0 = time.time()
    f32 = lambda x: x.astype(jnp.float32)
    o_ref, *g_ref = _jit_vjp(lambda q, k, v: ref(f32(q), f32(k), f32(v)), "highest")(
        q, k, v, f32(do))
    o, *g = _jit_vjp(fn)(q, k, v, do)
    row["auto"] = ops.resolve_attention_impl("auto", q)
    row["rel_err"] = {n: common.rel_err(a, b)
                      for n, a, b in zip(("out", "dq", "dk", "dv"), (o, *g), (o_ref, *g_ref))}
    row["finite"] = all_finite((o, *g))
    row["ok"] = bool(row["finite"] and within(row["rel_err"], ATTN_TOL))
    row["seconds"] = round(time.time() - t0, 1)
  except Exception as e:
    row.update(ok=False, error=f"{type(e).__name__}: {e}"[:3000],
               trace=traceback.format_exc()[-3000:])
  return record("attention_parity", row)


def swa_rows(B, T, H, G, D, W, dtype, impl="cudnn") -> list[dict]:
  q, k, v, do = _attn_inputs(T + W + H, (B, T, H, D), (B, T, G, D), dtype)
  shape = dict(B=B, T=T, H=H, G=G, D=D, W=W, impl=impl)
  return [
      attention_row(f"swa_{impl}",
                    lambda q, k, v: ops.sliding_window_attention(q, k, v, W, impl=impl),
                    lambda q, k, v: swa.swa_xla(q, k, v, W), q, k, v, do, **shape),
      attention_row(f"causal_{impl}", lambda q, k, v: ops.causal_attention(q, k, v, impl=impl),
                    swa.attention_reference, q, k, v, do, **shape)]


def chunk_row(N, S, H, G, D, dtype, impl="cudnn") -> dict:
  """ops.chunk_attention (the chunk encoder's unmasked in-chunk attention)."""
  q, k, v, do = _attn_inputs(N + S + H, (N, S, H, D), (N, S, G, D), dtype)
  return attention_row(f"chunk_{impl}", lambda q, k, v: ops.chunk_attention(q, k, v, impl=impl),
                       lambda q, k, v: swa.attention_reference(q, k, v, causal=False),
                       q, k, v, do, N=N, S=S, H=H, G=G, D=D, impl=impl)


# ----------------------------------------------------------------------------- DRT model

GPU_MODEL = dict(vocab_size=512, d_model=128, num_heads=4, mlp_dim=256, lower_layers=2,
                 upper_groups=(2,), window=128, top_k=4, dtype="bfloat16")


def drt_row(check, field, impl, *, model=None, n_chunks=20, expect_auto=None) -> dict:
  """DRT loss and gradient with `field`=impl vs "xla" (bf16); `expect_auto`: what "auto"
  must resolve to (swa_impl only). ok: loss within 2e-2 relative, grads within 5e-2, finite."""
  row = dict(check=check, field=field, impl=impl)
  try:
    import flax
    cfg = DRTConfig(**{**(model or GPU_MODEL), field: impl})
    toks = jax.random.randint(jax.random.key(0), (2, cfg.text_per_chunk * n_chunks), 0,
                              cfg.vocab_size)
    params = flax.core.meta.unbox(DRT(cfg).init(jax.random.key(1), toks)["params"])

    def loss(p, c):
      logits = DRT(c).apply({"params": p}, toks[:, :-1]).astype(jnp.float32)
      return jnp.mean(jax.nn.logsumexp(logits, -1)
                      - jnp.take_along_axis(logits, toks[:, 1:, None], -1)[..., 0])

    step = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    l_k, g_k = step(params, cfg)
    l_x, g_x = step(params, cfg.replace(**{field: "xla"}))
    flat = lambda g: jnp.concatenate([x.ravel().astype(jnp.float32)
                                      for x in jax.tree_util.tree_leaves(g)])
    gerr = common.rel_err(flat(g_k), flat(g_x))
    row.update(loss_impl=float(l_k), loss_xla=float(l_x), grad_rel_err=gerr)
    ok = (np.isfinite(float(l_k)) and abs(float(l_k) - float(l_x)) < 2e-2 * abs(float(l_x))
          and np.isfinite(gerr) and gerr < 5e-2 and all_finite(jax.tree_util.tree_leaves(g_k)))
    if expect_auto is not None:
      row["auto_impl"] = ops.resolve_attention_impl("auto", jnp.zeros((1, 1, 1, 32), jnp.bfloat16))
      ok = ok and row["auto_impl"] == expect_auto
    row["ok"] = bool(ok)
  except Exception as e:
    row.update(ok=False, error=f"{type(e).__name__}: {e}"[:3000],
               trace=traceback.format_exc()[-3000:])
  return record("model_parity", row)


def explain(row: dict) -> str:
  """The failure message of a test: the row without the trace, then the trace."""
  short = {k: v for k, v in row.items() if k != "trace"}
  return json.dumps(short, default=str) + ("\n" + row["trace"] if "trace" in row else "")
