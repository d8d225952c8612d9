"""The TPU kernels' launch parameters (`gca_tpu.TPULaunch`, `LAUNCH_TABLE`): head-group blocks
proven against the float64 reference in interpret mode (forward and every gradient), the same
result as the all-heads launch, the Mosaic lowering with them, the checks, the table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax.kernels import common, gca_tpu
from gca_jax.ops.errors import UnsupportedGCAInput
from test_kernels import _inputs, _reference


def _fwd_bwd(q, k, v, idx, w, do, launch, dtype=jnp.float32):
  cast = lambda x: jnp.asarray(x, dtype)  # noqa: E731
  f = lambda q, k, v, w: gca_tpu.gca_tpu(q, k, v, idx, w, interpret=True, launch=launch)  # noqa: E731
  o, vjp = jax.vjp(f, cast(q), cast(k), cast(v), jnp.asarray(w))
  return [np.asarray(x.astype(jnp.float32)) for x in (o, *vjp(cast(do)))]


@pytest.mark.parametrize("H,G,D,hb", [(16, 16, 64, 8), (16, 4, 64, 8), (16, 8, 128, 8),
                                      (32, 8, 64, 16)])
def test_head_groups_match_reference_and_default(H, G, D, hb):
  q, k, v, idx, w, do = _inputs(31 + H + G, B=2, C=3, S=16, H=H, D=D, M=4, G=G, K=3)
  ref = _reference(q, k, v, idx, w, do)
  got = _fwd_bwd(q, k, v, idx, w, do, gca_tpu.TPULaunch(heads_per_block=hb))
  base = _fwd_bwd(q, k, v, idx, w, do, gca_tpu.TPULaunch())
  for name, g, r, b in zip(("o", "dq", "dk", "dv", "dw"), got, ref, base):
    assert np.all(np.isfinite(g)), name
    assert common.rel_err(g, r) < 1e-5, (name, common.rel_err(g, r))
    assert common.rel_err(g, b) < 1e-6, (name, common.rel_err(g, b))


def test_head_groups_bf16():
  q, k, v, idx, w, do = _inputs(5, B=1, C=3, S=16, H=16, D=64, M=3, G=8, K=2)
  ref = _reference(q, k, v, idx, w, do)
  got = _fwd_bwd(q, k, v, idx, w, do, gca_tpu.TPULaunch(heads_per_block=8), jnp.bfloat16)
  for g, r in zip(got, ref):
    assert np.all(np.isfinite(g)) and common.rel_err(g, r) < 2e-2


@pytest.mark.parametrize("launch,H,G,D,match", [
    (gca_tpu.TPULaunch(heads_per_block=6), 16, 16, 64, "must divide H=16"),
    (gca_tpu.TPULaunch(heads_per_block=4), 16, 16, 64, "multiple of 8"),
    (gca_tpu.TPULaunch(heads_per_block=8), 16, 1, 128, "multiple of H/Hkv=16"),
    (gca_tpu.TPULaunch(heads_per_block=8), 16, 2, 64, "even number"),
    (gca_tpu.TPULaunch(vmem_limit_bytes=0), 16, 16, 64, "vmem_limit_bytes"),
])
def test_bad_launch_names_the_field(launch, H, G, D, match):
  assert match in launch.reason(H, G, D)
  q, k, v, idx, w, _ = _inputs(1, B=1, C=2, S=16, H=H, D=D, M=2, G=G, K=1)
  with pytest.raises(UnsupportedGCAInput, match=match):
    gca_tpu.gca_tpu(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), idx, jnp.asarray(w),
                    interpret=True, launch=launch)


def test_table_lookup_and_override(monkeypatch):
  monkeypatch.setattr(gca_tpu, "LAUNCH_TABLE", dict(gca_tpu.LAUNCH_TABLE))
  assert gca_tpu.launch_for("TPU v5 lite") == gca_tpu.TPULaunch()
  gca_tpu.set_launch("TPU v5", gca_tpu.TPULaunch(heads_per_block=8))
  gca_tpu.set_launch("TPU v5 lite", gca_tpu.TPULaunch(vmem_limit_bytes=1 << 26))
  assert gca_tpu.launch_for("TPU v5 lite").vmem_limit_bytes == 1 << 26   # the longest prefix
  assert gca_tpu.launch_for("TPU v5e-next").heads_per_block == 8          # "TPU v5" prefix
  assert gca_tpu.launch_for("TPU v5p") == gca_tpu.TPULaunch()             # its own entry
  assert gca_tpu.launch_for("some other chip") == gca_tpu.LAUNCH_TABLE["default"]
  with pytest.raises(TypeError, match="TPULaunch"):
    gca_tpu.set_launch("TPU v4", {"heads_per_block": 8})


def test_head_groups_lower_for_tpu():
  """Mosaic lowering (no TPU) with head-group blocks and a VMEM limit: three kernels."""
  dt = jnp.bfloat16
  q = jax.ShapeDtypeStruct((2, 5, 64, 16, 64), dt)
  k = jax.ShapeDtypeStruct((2, 4, 64, 4, 64), dt)
  idx = jax.ShapeDtypeStruct((2, 5, 8), jnp.int32)
  w = jax.ShapeDtypeStruct((2, 5, 8), jnp.float32)
  cfg = gca_tpu._cfg(False, gca_tpu.TPULaunch(heads_per_block=8, vmem_limit_bytes=48 << 20))
  fn = lambda q, k, v, i, w: gca_tpu._gca(q, k, v, i, w, cfg)  # noqa: E731
  loss = lambda q, k, v, w, i: jnp.sum(fn(q, k, v, i, w).astype(jnp.float32))  # noqa: E731
  try:
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(q, k, k, w, idx).lower(
        lowering_platforms=("tpu",)).as_text()
  except (ImportError, AttributeError) as e:
    pytest.skip(f"lowering hook unavailable: {e}")
  assert text.count("tpu_custom_call") == 3
