"""The GPU parity harness (tests/gpu/_parity.py) on CPU: the same checks on Pallas interpret mode
and the XLA attention at small shapes; a wrong or NaN output fails; rows reach GCA_PARITY_OUT;
the gpu tests are collected and skipped without a GPU."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

import _parity as P
from gca_jax.kernels import gca_triton
from gca_jax.ops.gca import gca_reference

pytestmark = pytest.mark.skipif(P.GPU, reason="CPU harness; on a GPU the gpu tests run")

TINY = (1, 3, 4, 16, 2, 1, 16, 2)   # B, C, M, S, H, Hkv, D, K (Triton: S, D powers of two >= 16)


def test_gca_row_passes_interpreted_kernel(tmp_path, monkeypatch):
  monkeypatch.setenv("GCA_PARITY_OUT", str(tmp_path))
  P._STARTED.discard("gca_kernel_parity")
  row = P.gca_kernel_row("tiny", *TINY, jnp.float32)
  assert row["ok"], P.explain(row)
  assert row["auto_impl"] == "xla" and row["unread_chunks"] >= 1 and row["bitwise_repeat"]
  assert max(row["rel_err"].values()) < 1e-5 and set(row["rel_err"]) == set(P.NAMES)
  lines = (tmp_path / "gca_kernel_parity.jsonl").read_text().splitlines()
  assert json.loads(lines[0])["backend"] == "cpu" and json.loads(lines[1])["check"] == "tiny"


@pytest.mark.parametrize("fault", ["nan", "scale"])
def test_gca_row_fails_on_a_wrong_kernel(fault):
  def bad(q, k, v, i, w):
    o = gca_reference(q, k, v, i, w)
    return o.at[0, 0, 0, 0, 0].set(jnp.nan) if fault == "nan" else o * 1.01
  row = P.gca_kernel_row(f"bad_{fault}", *TINY, jnp.float32, kernel=bad)
  assert row["ok"] is False and row["auto_impl"] == "xla"
  if fault == "nan":
    assert not row["finite"] and not P.within(row["rel_err"], 1.0)
  else:
    assert row["finite"] and 5e-3 < row["rel_err"]["o"] < 2e-2


def test_random_shapes_are_supported_and_vary():
  rng = np.random.default_rng(0)
  shapes = [P.random_gca_shape(rng, jnp.float32) for _ in range(20)]
  assert len({tuple(s.values()) for s in shapes}) > 10
  for s in shapes[:5]:
    q = jnp.zeros((s["B"], s["C"], s["S"], s["H"], s["D"]), jnp.float32)
    k = jnp.zeros((s["B"], s["M"], s["S"], s["Hkv"], s["D"]), jnp.float32)
    idx = jnp.zeros((s["B"], s["C"], s["K"]), jnp.int32)
    assert gca_triton.supports(q, k, k, idx, idx.astype(jnp.float32)) is None


def test_attention_rows_pass_xla_and_fail_a_wrong_path():
  rows = P.swa_rows(1, 24, 2, 1, 16, 8, jnp.float32, impl="xla")
  assert [r["ok"] for r in rows] == [True, True], [P.explain(r) for r in rows]
  assert rows[0]["rel_err"]["out"] < 1e-5 and rows[0]["auto"] == "xla"
  q, k, v, do = P._attn_inputs(0, (1, 24, 2, 16), (1, 24, 1, 16), jnp.float32)
  wrong = P.attention_row("wrong_window", lambda q, k, v: P.swa.swa_xla(q, k, v, 4),
                          lambda q, k, v: P.swa.swa_xla(q, k, v, 8), q, k, v, do)
  assert not wrong["ok"] and wrong["rel_err"]["out"] > 2e-2


class _TinyLM(nn.Module):
  """Stands in for DRT in the row logic (a DRT compile costs minutes on the shared CPUs)."""
  cfg: object

  @nn.compact
  def __call__(self, toks):
    h = nn.Embed(self.cfg.vocab_size + 1, 8)(toks)
    return nn.Dense(self.cfg.vocab_size)(h) * (2.0 if self.cfg.gca_impl == "pallas_tpu" else 1.0)


@pytest.mark.parametrize("impl,ok", [("auto", True), ("pallas_tpu", False)])
def test_drt_row_compares_the_impl_with_xla(monkeypatch, impl, ok):
  monkeypatch.setattr(P, "DRT", _TinyLM)
  row = P.drt_row("tiny", "gca_impl", impl, n_chunks=2)
  assert row["ok"] is ok, P.explain(row)
  assert "error" not in row and (row["grad_rel_err"] == 0.0) is ok
  assert abs(row["loss_xla"] - np.log(512)) < 0.1   # near-uniform logits at init


def test_gpu_tests_collected_and_skipped_on_cpu():
  here = os.path.dirname(os.path.abspath(__file__))
  r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "--strict-markers", "-m", "gpu",
                      "-p", "no:cacheprovider", here], capture_output=True, text=True,
                     cwd=os.path.dirname(os.path.dirname(here)), timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  out = r.stdout + r.stderr
  assert r.returncode == 0, out[-3000:]
  skipped = sum(int(n) for n in re.findall(r"SKIPPED \[(\d+)\]", out))
  assert skipped == 2 * 8 + 2 + 1 + 4 + 2 + 1 + 6, out[-3000:]
  assert "passed" not in out and "failed" not in out
  assert "needs a GPU" in out and jax.default_backend() == "cpu"


def test_random_retrieval_is_model_like():
  """bench/gca_kernel.random_retrieval (the causal GPU cases): chunk c reads only chunks < c - 1
  (strict causal top-K, then the one-chunk shift), weights sum to 1 where a chunk exists."""
  idx, w = (np.asarray(x) for x in P.random_retrieval(jax.random.key(3), 2, 10, 10, 3))
  assert idx.shape == w.shape == (2, 10, 3) and idx.dtype == np.int32
  c = np.arange(10)[None, :, None]
  assert np.all(w[:, :2] == 0) and np.all(idx[w > 0] < np.broadcast_to(c - 1, w.shape)[w > 0])
  np.testing.assert_allclose(w[:, 2:].sum(-1), 1.0, rtol=1e-6)
  assert np.array_equal((w > 0).sum(-1)[0], np.minimum(np.maximum(np.arange(10) - 1, 0), 3))
