"""GPU parity of the cuDNN attention paths against the XLA references (docs/method.md §2.1-2.2).

`sliding_window_attention` / `causal_attention` / `chunk_attention` with impl="cudnn" vs the
blockwise / dense XLA versions in f32: forward and dq/dk/dv, bf16, ≤ 2e-2 relative, all finite;
and a DRT loss/gradient with swa_impl="auto" (which must resolve to "cudnn") vs "xla".
Rows: $GCA_PARITY_OUT/attention_parity.jsonl and model_parity.jsonl.
Run: JAX_PLATFORMS=cuda GCA_PARITY_OUT=out python -m pytest -m gpu tests/gpu
"""

import jax.numpy as jnp
import pytest

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
