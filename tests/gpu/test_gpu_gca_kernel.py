"""GPU parity of the Pallas Triton GCA kernel (compiled) against the XLA reference (docs/method.md §3).

Per shape and dtype: forward and all gradients (q, k, v, weights) vs `gca_reference` in f32 at
Precision.HIGHEST on the same rounded values, with every kernel output pre-filled with NaN; a
second run agrees bitwise; unread memory chunks get exactly zero dK/dV; "auto" picks the kernel.
‖out − ref‖/‖ref‖ ≤ 1e-3 (f32, TF32 dots) / 2e-2 (bf16); NaN never passes. Plus random shapes
(seed: env GCA_PARITY_SEED, default 0) and a DRT loss/gradient with gca_impl="pallas_triton" vs
"xla". Rows: $GCA_PARITY_OUT/gca_kernel_parity.jsonl and model_parity.jsonl.
Run: JAX_PLATFORMS=cuda GCA_PARITY_OUT=out python -m pytest -m gpu tests/gpu
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

import _parity as P

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not P.GPU, reason=P.NO_GPU)]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# name: (B, C, M, S, H, Hkv, D, K), options
CASES = {
    "mha_small": ((2, 17, 17, 64, 4, 4, 64, 8), dict(tf32_variant=True)),
    "gqa_d128_k5": ((2, 33, 20, 64, 8, 2, 128, 5), {}),
    "gqa3_m_lt_k": ((1, 9, 3, 64, 6, 2, 64, 6), {}),
    "gqa4_d64": ((2, 9, 9, 64, 8, 2, 64, 4), {}),      # R = 4: two heads per forward program
    "mqa_d128_r3": ((1, 6, 6, 64, 3, 1, 128, 3), {}),
    "mqa_r3": ((1, 12, 12, 64, 3, 1, 64, 3), {}),
    "causal_retrieval": ((2, 40, 40, 64, 4, 4, 64, 8), dict(causal=True, extra=False)),
    # the paper shape: batch 4 x 16K tokens, model-like retrieval
    "paper": ((4, 260, 260, 64, 12, 12, 64, 8), dict(causal=True, extra=False, tf32_variant=True)),
}
N_RANDOM = 1   # random shapes per dtype


def _assert_ok(row):
  assert row["ok"], P.explain(row)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_gca_kernel_parity(name, dtype):
  shape, opts = CASES[name]
  _assert_ok(P.gca_kernel_row(name, *shape, DTYPES[dtype], **opts))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("i", range(N_RANDOM))
def test_gca_kernel_parity_random_shape(i, dtype):
  seed = int(os.environ.get("GCA_PARITY_SEED", "0"))
  rng = np.random.default_rng([seed, i, dtype == "bfloat16"])
  s = P.random_gca_shape(rng, DTYPES[dtype])
  row = P.gca_kernel_row(f"random_{seed}_{i}", s["B"], s["C"], s["M"], s["S"], s["H"], s["Hkv"],
                         s["D"], s["K"], DTYPES[dtype], seed=seed * 1000 + i)
  _assert_ok(row)


def test_drt_gca_pallas_triton_vs_xla():
  _assert_ok(P.drt_row("drt_gca_pallas_triton_vs_xla", "gca_impl", "pallas_triton"))
