"""GPU parity of the cuDNN attention paths against the XLA references (docs/method.md §2.1-2.2).

`sliding_window_attention` / `causal_attention` / `chunk_attention` with impl="cudnn" vs the
blockwise / dense XLA versions in f32: forward and dq/dk/dv, bf16, ≤ 2e-2 relative, all finite;
and a DRT loss/gradient with swa_impl="auto" (which must resolve to "cudnn") vs "xla".
Rows: $GCA_PARITY_OUT/attention_parity.jsonl and model_parity.jsonl.
Run: JAX_PLATFORMS=cuda GCA_PARITY_OUT=out python -m pytest -m gpu tests/gpu
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax.ops import swa

import _parity as P

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not P.GPU, reason=P.NO_GPU)]

SWA_CASES = [(2, 1000, 4, 4, 64, 128), (1, 4096, 12, 12, 64, 512), (1, 777, 8, 2, 128, 100),
             (2, 2048, 4, 4, 32, 2048)]           # (B, T, H, G, D, W)
CHUNK_CASES = [(1040, 64, 12, 12, 64), (37, 64, 8, 2, 128)]   # (N, S, H, G, D)


@pytest.mark.parametrize("case", SWA_CASES, ids=lambda c: "B{}_T{}_H{}_G{}_D{}_W{}".format(*c))
def test_swa_and_causal_cudnn(case):
  rows = P.swa_rows(*case, jnp.bfloat16)
  assert [r["check"] for r in rows] == ["swa_cudnn", "causal_cudnn"]
  for r in rows:
    assert r["ok"], P.explain(r)


@pytest.mark.parametrize("case", CHUNK_CASES, ids=lambda c: "N{}_S{}_H{}_G{}_D{}".format(*c))
def test_chunk_cudnn(case):
  r = P.chunk_row(*case, jnp.bfloat16)
  assert r["ok"], P.explain(r)


def test_drt_swa_auto_is_cudnn_and_matches_xla():
  r = P.drt_row("drt_bf16_auto_vs_xla", "swa_impl", "auto", expect_auto="cudnn")
  assert r["ok"], P.explain(r)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows,W", [(8064, 512), (1000, 128), (64, 128)])
def test_swa_with_prefix_kernel_matches_xla(rows, W, dtype):
  """The streaming window-cache attention kernel (kernels/swa_prefix_triton.py, compiled) against
  the jnp path in f32, every prefix fill, poisoned output buffer; bf16 also through the op's
  dispatch (impl="cudnn" -> the registered kernel)."""
  from gca_jax.kernels.swa_prefix_triton import swa_prefix_triton
  Wc = W - 1
  r = np.random.default_rng(rows + W)
  dt = jnp.dtype(dtype)
  q = jnp.asarray(r.standard_normal((2, rows, 12, 64)), dt)
  k, v = (jnp.asarray(r.standard_normal((2, rows + Wc, 12, 64)), dt) for _ in range(2))
  f32 = lambda x: x.astype(jnp.float32)
  kern = jax.jit(lambda q, k, v, n: swa_prefix_triton(q, k, v, n, W, poison_outputs=True))
  op = jax.jit(lambda q, k, v, n: swa.swa_with_prefix(q, k, v, n, W, impl="cudnn"))
  ref = jax.jit(lambda q, k, v, n: swa.swa_with_prefix(f32(q), f32(k), f32(v), n, W, impl="xla"))
  tol = P.KERNEL_TOL[dtype]
  for n_empty in (0, Wc // 3, Wc):
    n = jnp.int32(n_empty)
    want = np.asarray(ref(q, k, v, n))
    outs = [kern(q, k, v, n)] + ([op(q, k, v, n)] if dtype == "bfloat16" else [])
    for got in outs:
      got = np.asarray(f32(got))
      assert np.isfinite(got).all(), n_empty
      rel = np.linalg.norm(got - want) / np.linalg.norm(want)
      P.record("attention_parity", dict(check="swa_with_prefix_kernel", dtype=dtype, P=rows, W=W,
                                        n_empty=n_empty, rel=float(rel), ok=bool(rel <= tol)))
      assert rel <= tol, (n_empty, rel)
