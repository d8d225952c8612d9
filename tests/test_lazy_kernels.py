"""Kernels are imported lazily and optionally: with the Pallas Triton / TPU modules hidden,
gca_jax imports, a DRT forward runs on CPU, "auto" falls back to XLA with one warning, and an
explicit impl raises a clear error naming the missing module."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CODE = r"""
import sys, importlib.abc
HIDE = ("jax.experimental.pallas.triton", "jax._src.pallas.triton", "jax._src.pallas.mosaic_gpu",
        "jax.experimental.pallas.mosaic_gpu", "jax.experimental.pallas.tpu",
        "jax._src.pallas.mosaic")
class Hide(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if any(name == h or name.startswith(h + ".") for h in HIDE):
      raise ImportError(f"hidden {name}")
sys.meta_path.insert(0, Hide())
import logging
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="LOG %(message)s")
import jax, jax.numpy as jnp, numpy as np
import gca_jax
from gca_jax import DRT, DRTConfig, ops
cfg = DRTConfig(vocab_size=97, d_model=32, num_heads=4, mlp_dim=64, lower_layers=1,
                upper_groups=(1,), encoder_layers=1, window=8, chunk_size=8, top_k=2,
                model_kind="drt", dtype="float32")
t = np.zeros((1, 32), np.int32)
p = DRT(cfg).init(jax.random.key(0), t)
print("forward", DRT(cfg).apply(p, t).shape)
r = np.random.default_rng(0)
q = jnp.asarray(r.normal(size=(1, 2, 16, 2, 16)), jnp.float32)
k = jnp.asarray(r.normal(size=(1, 3, 16, 2, 16)), jnp.float32)
idx = jnp.zeros((1, 2, 2), jnp.int32); w = jnp.ones((1, 2, 2), jnp.float32)
jax.default_backend = lambda: "gpu"   # as if on a GPU: auto must fall back to XLA
for _ in range(3):
  assert ops.resolve_gca_impl("auto", q, k, k, idx, w) == "xla"
try:
  ops.grouped_cross_attention(q, k, k, idx, w, impl="pallas_triton")
except ops.UnsupportedGCAInput as e:
  print("ERR", e)
"""


def test_missing_pallas_backends():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, env=env,
                     cwd=ROOT, timeout=300)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  out = r.stdout
  assert "forward (1, 32, 97)" in out
  logs = [l for l in out.splitlines() if l.startswith("LOG ")]
  assert len(logs) == 1 and "pallas_triton" in logs[0] and "XLA" in logs[0], out
  err = [l for l in out.splitlines() if l.startswith("ERR ")]
  assert err and "gca_jax.kernels.gca_triton" in err[0] and "hidden" in err[0], out
