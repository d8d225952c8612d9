"""Fused GCA kernels for TPU: Pallas Mosaic with scalar prefetch (forward, dQ/dw, dK/dV).

Operator and backward: see docs/method.md §3 and `gca_triton` (same math, same residual: the per-slot
log-sum-exp lse [B,C,K,H,S] f32; the per-row D_i = rowsum(dO ⊙ O_i) is recomputed as
rowsum(P_i ⊙ dO Vᵀ)).

Layout / tiling. The kernels see free reshapes of the inputs: q, dO, o as [B, C, S, H·D] and
k, v as [B, M, T, Hkv·D]; one block is a whole chunk, all heads: (S, H·D) for queries, (T, Hkv·D)
for memory. The last two block dims equal the array's, so the (8, 128) rule holds for any H, and a
head's columns are static lane slices. With D % 128 == 0 a head is whole 128-lane tiles. With
D == 64 two heads share a 128-lane tile ("two heads together"): the kernels load the aligned
128-lane tile, zero the other half with a lane mask, and where a query head and its kv head sit in
different halves (GQA) rotate by 64 lanes (`pltpu.roll`), so every matmul contracts over an aligned
128-lane tile whose other half is zero (the MXU pads a 64-deep contraction to 128 anyway) and no
unaligned lane slice is ever taken. This needs H and Hkv even at D == 64; other D must be a
multiple of 128 (`supports` gives the reason otherwise). S and T must be multiples of 16.

Grids (scalar-prefetched int32/f32 tables live in SMEM; index_maps pick blocks with them):
* forward: grid (B, C, K), K innermost ("arbitrary"): the k/v index_map returns block
  (b, indices[b,c,i]) so the pipeline DMAs memory chunk j (prefetching the next slot's chunk while
  computing this one); o accumulates in a VMEM f32 scratch across the K steps and is written at the
  last slot; lse (H, S) per (b, c, i) is written each step. Softmax statistics come out as
  columns [S,1]; they are turned into the lane-major lse row with a diagonal mask + sublane sum
  (no transpose op needed).
* dQ/dw: same grid; dq accumulates in VMEM; dw [B,C,1,K] is built lane by lane in its output block.
* dK/dV: grid (B, N), N = C·K + M, over the reader schedule of `common.reader_schedule` (memory
  chunks in order, each preceded by a sentinel entry, readers in (c, i) order, weight-0 readers
  moved to the end): the dk/dv output block index is the entry's memory chunk, so consecutive
  entries of one chunk keep the block resident in VMEM; the sentinel zeroes the f32 accumulators,
  each reader adds its contribution (transposed orientation: Pᵀ = exp(K Qᵀ − lse_row), so all
  reductions are over sublanes and the matmuls are NT/NN), the last entry writes dK/dV. A chunk
  without readers gets its sentinel only, i.e. zeros. Sequential and atomic-free: deterministic.
  B is the only "parallel" axis of this grid.

f32 inputs use Precision.HIGHEST dots; bf16 inputs feed the MXU directly with f32 accumulation.
On a CPU backend the kernels run in Pallas interpret mode (`interpret=True`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from gca_jax.kernels import common
from gca_jax.ops.errors import UnsupportedGCAInput

_DTYPES = (jnp.float32, jnp.bfloat16)
_NT = (((1,), (1,)), ((), ()))
_NN = (((1,), (0,)), ((), ()))


def supports(q, k, v, indices, weights) -> str | None:
  """None if the Mosaic TPU kernels can run these inputs, else the reason."""
  r = common.common_reason(q, k, v, indices, weights, dtypes=_DTYPES)
  if r is not None:
    return r
  backend = jax.default_backend()
  if backend not in ("tpu", "cpu"):
    return f"pallas_tpu runs on a TPU (or interpreted on CPU), not on {backend!r}"
  S, H, D = q.shape[2], q.shape[3], q.shape[4]
  T, Hkv = k.shape[2], k.shape[3]
  if S % 16 or T % 16:
    return f"chunk lengths S={S}, T={T} must be multiples of 16 (sublane tiling)"
  if D % 128 == 0:
    return None
  if D == 64:
    if H % 2 or Hkv % 2:
      return (f"head dim 64 needs an even number of query and kv heads (two heads per 128-lane "
              f"tile), got H={H}, Hkv={Hkv}")
    return None
  return f"head dim D={D} must be 64 or a multiple of 128 (TPU lane tiling)"


@dataclasses.dataclass(frozen=True)
class TPULaunch:
  """Launch parameters of the TPU kernels (tunable per TPU generation: `LAUNCH_TABLE`).

  heads_per_block: query heads per block (None: all H). With Hb < H every grid gets a head-group
    axis of H / Hb (parallel), blocks are (S, Hb·D) for queries and (T, Hb/R·D) for memory (R =
    H / Hkv), and VMEM per block shrinks by H / Hb; dw is summed over the groups. Needs Hb | H,
    R | Hb, Hb % 8 == 0 (the lse block's sublanes), and at D == 64 Hb and Hb / R even.
  vmem_limit_bytes: Mosaic's scoped-VMEM limit for all three kernels (None: its default).
  """

  heads_per_block: int | None = None
  vmem_limit_bytes: int | None = None

  def reason(self, H: int, Hkv: int, D: int) -> str | None:
    """None if these parameters fit heads H / Hkv of dim D, else why not."""
    hb = self.heads_per_block
    if self.vmem_limit_bytes is not None and (not isinstance(self.vmem_limit_bytes, int)
                                              or self.vmem_limit_bytes <= 0):
      return f"vmem_limit_bytes={self.vmem_limit_bytes!r} must be a positive int or None"
    if hb is None or hb == H:
      return None
    R = H // Hkv
    if not isinstance(hb, int) or hb <= 0 or H % hb:
      return f"heads_per_block={hb!r} must divide H={H}"
    if hb % R:
      return f"heads_per_block={hb} must be a multiple of H/Hkv={R} (whole kv heads per block)"
    if hb % 8:
      return f"heads_per_block={hb} must be a multiple of 8 (or H={H}): the lse block's sublanes"
    if D == 64 and (hb % 2 or (hb // R) % 2):
      return (f"heads_per_block={hb} at head dim 64 needs an even number of query and kv heads "
              f"per block (got {hb} and {hb // R})")
    return None


# Per TPU generation (`jax.devices()[0].device_kind` prefix, longest match; "default" otherwise).
# The defaults are the kernels as validated (whole chunk, all heads, the compiler's VMEM limit):
# no TPU has been reachable to tune them, so every entry is that default until measured. Tune with
# `set_launch("TPU v5 lite", TPULaunch(heads_per_block=8))` or per call (`gca_tpu(..., launch=)`).
LAUNCH_TABLE: dict[str, TPULaunch] = {
    "default": TPULaunch(),
    "TPU v4": TPULaunch(),
    "TPU v5 lite": TPULaunch(),
    "TPU v5p": TPULaunch(),
    "TPU v6 lite": TPULaunch(),
}


def set_launch(device_kind: str, launch: TPULaunch) -> None:
  """Sets the table entry of a TPU generation (a `device_kind` prefix, or "default")."""
  if not isinstance(launch, TPULaunch):
    raise TypeError(f"launch must be a TPULaunch, got {type(launch).__name__}")
  LAUNCH_TABLE[device_kind] = launch


def launch_for(device_kind: str | None = None) -> TPULaunch:
  """The table entry for `device_kind` (default: the first device's) by longest prefix."""
  if device_kind is None:
    device_kind = jax.devices()[0].device_kind
  best = max((k for k in LAUNCH_TABLE if k != "default" and device_kind.startswith(k)),
             key=len, default="default")
  return LAUNCH_TABLE[best]


class _Lanes:
  """Static lane bookkeeping: where head h's D columns sit inside its 128-lane tile."""

  def __init__(self, D):
    self.D = D
    self.tw = D if D % 128 == 0 else 128
    self.packed = D % 128 != 0        # D == 64: two heads per tile

  def tile(self, h):
    start = (h * self.D) // self.tw * self.tw
    half = (h % 2) if self.packed else None
    return pl.ds(start, self.tw), half

  @staticmethod
  def _select_half(x, keep, move):
    # The mask and the lane rotation run in f32 (exact for bf16 inputs), the most widely
    # supported vector layout on every TPU generation; the result goes back to x's dtype.
    dtype = x.dtype
    x = x.astype(jnp.float32)
    lane = lax.broadcasted_iota(jnp.int32, x.shape, 1)
    x = jnp.where((lane >= 64) == bool(keep), x, 0.0)
    if move:
      x = pltpu.roll(x, 64, 1)
    return x.astype(dtype)

  def to_half(self, x, a, b):
    """Keep head columns of half a of the tile x [rows, 128] (zero the rest), moved to half b."""
    return x if a is None else self._select_half(x, a, a != b)

  def from_half(self, x, a, b):
    """Keep half b of a matmul result x [rows, 128], moved to half a (the query head's half)."""
    return x if a is None else self._select_half(x, b, a != b)


def _dot(a, b, dims, prec):
  return lax.dot_general(a, b, dims, precision=prec, preferred_element_type=jnp.float32)


def _col_to_row(col, n):
  """[n, 1] -> [1, n] with a diagonal mask and a sublane sum (no transpose)."""
  eye = lax.broadcasted_iota(jnp.int32, (n, n), 0) == lax.broadcasted_iota(jnp.int32, (n, n), 1)
  return jnp.sum(jnp.where(eye, col, 0.0), axis=0, keepdims=True)


def _row_to_col(row, n):
  eye = lax.broadcasted_iota(jnp.int32, (n, n), 0) == lax.broadcasted_iota(jnp.int32, (n, n), 1)
  return jnp.sum(jnp.where(eye, row, 0.0), axis=1, keepdims=True)


# ----------------------------------------------------------------------------------- kernels

def _fwd_kernel(idx_ref, w_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, acc_ref, *,
                C, K, H, R, lanes, scale, prec):
  # grid (B, C, head groups, K); H here = the heads of one block
  b, c, i = pl.program_id(0), pl.program_id(1), pl.program_id(3)
  S = q_ref.shape[0]

  @pl.when(i == 0)
  def _():
    acc_ref[...] = jnp.zeros(acc_ref.shape, acc_ref.dtype)

  w = w_ref[(b * C + c) * K + i]
  for h in range(H):
    qsl, a = lanes.tile(h)
    ksl, bb = lanes.tile(h // R)
    qh = lanes.to_half(q_ref[:, qsl], a, bb)
    kt = k_ref[:, ksl]
    vt = v_ref[:, ksl]
    s = _dot(qh, kt, _NT, prec) * scale                                   # [S, T]
    m = jnp.max(s, axis=1, keepdims=True)
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=1, keepdims=True)
    o = lanes.from_half(_dot(p.astype(vt.dtype), vt, _NN, prec), a, bb)   # [S, tw]
    acc_ref[:, qsl] += o * (w / l)
    lse_ref[pl.ds(h, 1), :] = _col_to_row(m + jnp.log(l), S)

  @pl.when(i == K - 1)
  def _():
    o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def _dq_kernel(idx_ref, w_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dq_ref, dw_ref, acc_ref, *,
               C, K, H, R, lanes, scale, prec):
  b, c, i = pl.program_id(0), pl.program_id(1), pl.program_id(3)
  S = q_ref.shape[0]

  @pl.when(i == 0)
  def _():
    acc_ref[...] = jnp.zeros(acc_ref.shape, acc_ref.dtype)
    dw_ref[...] = jnp.zeros(dw_ref.shape, dw_ref.dtype)

  w = w_ref[(b * C + c) * K + i]
  dsum = jnp.zeros((1, 1), jnp.float32)
  for h in range(H):
    qsl, a = lanes.tile(h)
    ksl, bb = lanes.tile(h // R)
    qh = lanes.to_half(q_ref[:, qsl], a, bb)
    doh = lanes.to_half(do_ref[:, qsl], a, bb)
    kt = k_ref[:, ksl]
    vt = v_ref[:, ksl]
    lse_col = _row_to_col(lse_ref[pl.ds(h, 1), :], S)                    # [S, 1]
    p = jnp.exp(_dot(qh, kt, _NT, prec) * scale - lse_col)               # [S, T]
    dp = _dot(doh, vt, _NT, prec)                                        # [S, T]
    dcol = jnp.sum(p * dp, axis=1, keepdims=True)                        # rowsum(dO ⊙ O_i)
    ds = p * (dp - dcol) * w
    dq = lanes.from_half(_dot(ds.astype(kt.dtype), kt, _NN, prec), a, bb)
    acc_ref[:, qsl] += dq * scale
    dsum = dsum + jnp.sum(dcol, axis=0, keepdims=True)
  slot = lax.broadcasted_iota(jnp.int32, dw_ref.shape, 1)
  dw_ref[...] = jnp.where(slot == i, dsum, dw_ref[...])

  @pl.when(i == K - 1)
  def _():
    dq_ref[...] = acc_ref[...].astype(dq_ref.dtype)


def _dkv_kernel(jt_ref, et_ref, w_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dk_ref, dv_ref,
                dk_acc, dv_acc, *, C, K, N, H, R, lanes, scale, prec):
  b, n = pl.program_id(0), pl.program_id(2)      # grid (B, head groups, N)
  packed = et_ref[b * N + n]
  flags = packed & 7

  @pl.when((flags & 1) != 0)
  def _():
    dk_acc[...] = jnp.zeros(dk_acc.shape, dk_acc.dtype)
    dv_acc[...] = jnp.zeros(dv_acc.shape, dv_acc.dtype)

  @pl.when((flags & 2) != 0)
  def _():
    w = w_ref[b * (C * K) + (packed >> 3)]
    for h in range(H):
      qsl, a = lanes.tile(h)
      ksl, bb = lanes.tile(h // R)
      qh = lanes.to_half(q_ref[:, qsl], a, bb)
      doh = lanes.to_half(do_ref[:, qsl], a, bb)
      kt = k_ref[:, ksl]
      vt = v_ref[:, ksl]
      pt = jnp.exp(_dot(kt, qh, _NT, prec) * scale - lse_ref[pl.ds(h, 1), :])   # [T, S]
      dpt = _dot(vt, doh, _NT, prec)                                            # [T, S]
      drow = jnp.sum(pt * dpt, axis=0, keepdims=True)                           # [1, S]
      wpt = pt * w
      dv_acc[:, ksl] += _dot(wpt.astype(doh.dtype), doh, _NN, prec)   # zero outside kv half
      dst = wpt * (dpt - drow)
      dk_acc[:, ksl] += _dot(dst.astype(qh.dtype), qh, _NN, prec) * scale

  @pl.when((flags & 4) != 0)
  def _():
    dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


# ---------------------------------------------------------------------------------- launchers

def _prec(dtype):
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _params(cfg, semantics):
  limit = cfg.get("vmem_limit_bytes")
  kw = {} if limit is None else {"vmem_limit_bytes": limit}
  return pltpu.CompilerParams(dimension_semantics=semantics, **kw)


def _groups(cfg, H, Hkv):
  """(Hb, Hkvb, G): query / kv heads per block and the number of head groups."""
  hb = cfg.get("heads_per_block") or H
  return hb, hb // (H // Hkv), H // hb


def _fwd(q, k, v, idx, w, cfg):
  B, C, S, H, D = q.shape
  M, T, Hkv = k.shape[1], k.shape[2], k.shape[3]
  K = idx.shape[2]
  Hb, Hkvb, G = _groups(cfg, H, Hkv)
  q2 = q.reshape(B, C, S, H * D)
  k2 = k.reshape(B, M, T, Hkv * D)
  v2 = v.reshape(B, M, T, Hkv * D)
  qspec = pl.BlockSpec((None, None, S, Hb * D), lambda b, c, g, i, ix, wt: (b, c, 0, g))
  kvspec = pl.BlockSpec((None, None, T, Hkvb * D),
                        lambda b, c, g, i, ix, wt: (b, ix[(b * C + c) * K + i], 0, g))
  lsespec = pl.BlockSpec((None, None, None, Hb, S), lambda b, c, g, i, ix, wt: (b, c, i, g, 0))
  kern = functools.partial(_fwd_kernel, C=C, K=K, H=Hb, R=H // Hkv, lanes=_Lanes(D),
                           scale=1.0 / math.sqrt(D), prec=_prec(q.dtype))
  o2, lse = pl.pallas_call(
      kern,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(B, C, G, K), in_specs=[qspec, kvspec, kvspec],
          out_specs=[qspec, lsespec], scratch_shapes=[pltpu.VMEM((S, Hb * D), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(q2.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, C, K, H, S), jnp.float32)],
      compiler_params=_params(cfg, ("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg["interpret"], name="gca_fwd_tpu",
  )(idx.reshape(-1), w.reshape(-1), q2, k2, v2)
  return o2.reshape(q.shape), lse


def _bwd(q, k, v, idx, w, lse, do, cfg):
  B, C, S, H, D = q.shape
  M, T, Hkv = k.shape[1], k.shape[2], k.shape[3]
  K = idx.shape[2]
  R = H // Hkv
  Hb, Hkvb, G = _groups(cfg, H, Hkv)
  lanes = _Lanes(D)
  scale = 1.0 / math.sqrt(D)
  prec = _prec(q.dtype)
  q2 = q.reshape(B, C, S, H * D)
  do2 = do.reshape(B, C, S, H * D)
  k2 = k.reshape(B, M, T, Hkv * D)
  v2 = v.reshape(B, M, T, Hkv * D)

  # dQ / dw: grid (B, C, G, K) like the forward; dw per head group, summed after.
  qspec = pl.BlockSpec((None, None, S, Hb * D), lambda b, c, g, i, ix, wt: (b, c, 0, g))
  kvspec = pl.BlockSpec((None, None, T, Hkvb * D),
                        lambda b, c, g, i, ix, wt: (b, ix[(b * C + c) * K + i], 0, g))
  lsespec = pl.BlockSpec((None, None, None, Hb, S), lambda b, c, g, i, ix, wt: (b, c, i, g, 0))
  dwspec = pl.BlockSpec((None, None, None, 1, K), lambda b, c, g, i, ix, wt: (b, c, g, 0, 0))
  dq2, dw = pl.pallas_call(
      functools.partial(_dq_kernel, C=C, K=K, H=Hb, R=R, lanes=lanes, scale=scale, prec=prec),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(B, C, G, K),
          in_specs=[qspec, kvspec, kvspec, qspec, lsespec],
          out_specs=[qspec, dwspec], scratch_shapes=[pltpu.VMEM((S, Hb * D), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(q2.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, C, G, 1, K), jnp.float32)],
      compiler_params=_params(cfg, ("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg["interpret"], name="gca_bwd_dq_tpu",
  )(idx.reshape(-1), w.reshape(-1), q2, k2, v2, do2, lse)

  # dK / dV: grid (B, G, N) over the reader schedule.
  sch = common.reader_schedule(idx, w, M)
  N = C * K + M
  jt = sch["j"].reshape(-1)
  et = ((sch["c"] * K + sch["i"]) << 3 | sch["flags"]).reshape(-1)

  def ent_c(b, n, jt, et):
    return lax.div(et[b * N + n] >> 3, K)

  def ent_i(b, n, jt, et):
    return lax.rem(et[b * N + n] >> 3, K)

  qspec2 = pl.BlockSpec((None, None, S, Hb * D),
                        lambda b, g, n, jt, et, wt: (b, ent_c(b, n, jt, et), 0, g))
  kvspec2 = pl.BlockSpec((None, None, T, Hkvb * D),
                         lambda b, g, n, jt, et, wt: (b, jt[b * N + n], 0, g))
  lsespec2 = pl.BlockSpec((None, None, None, Hb, S),
                          lambda b, g, n, jt, et, wt: (b, ent_c(b, n, jt, et),
                                                       ent_i(b, n, jt, et), g, 0))
  dk2, dv2 = pl.pallas_call(
      functools.partial(_dkv_kernel, C=C, K=K, N=N, H=Hb, R=R, lanes=lanes, scale=scale,
                        prec=prec),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3, grid=(B, G, N),
          in_specs=[qspec2, kvspec2, kvspec2, qspec2, lsespec2], out_specs=[kvspec2, kvspec2],
          scratch_shapes=[pltpu.VMEM((T, Hkvb * D), jnp.float32),
                          pltpu.VMEM((T, Hkvb * D), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(k2.shape, k.dtype), jax.ShapeDtypeStruct(v2.shape, v.dtype)],
      compiler_params=_params(cfg, ("parallel", "parallel", "arbitrary")),
      interpret=cfg["interpret"], name="gca_bwd_dkv_tpu",
  )(jt, et, w.reshape(-1), q2, k2, v2, do2, lse)
  return (dq2.reshape(q.shape), dk2.reshape(k.shape), dv2.reshape(v.shape),
          dw.sum(axis=(2, 3)))


# ------------------------------------------------------------------------------- custom_vjp

_gca = common.lse_custom_vjp(_fwd, _bwd)


def _cfg(interpret, launch: TPULaunch | None = None):
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  launch = launch or TPULaunch()
  return (("interpret", interpret), ("heads_per_block", launch.heads_per_block),
          ("vmem_limit_bytes", launch.vmem_limit_bytes))


def _launch(launch, q, k):
  if launch is None:
    launch = launch_for() if jax.default_backend() == "tpu" else TPULaunch()
  reason = launch.reason(q.shape[3], k.shape[3], q.shape[4])
  if reason is not None:
    raise UnsupportedGCAInput(f"pallas_tpu: {reason}")
  return launch


def gca_tpu(q, k, v, indices, weights, *, interpret=None, launch: TPULaunch | None = None):
  """GCA with the Mosaic TPU kernels; differentiable in q, k, v, weights (custom VJP).

  interpret: None = interpret mode iff the default backend is CPU; True, or a
  `pltpu.InterpretParams` for the TPU-faithful interpreter. launch: `TPULaunch` (None: the
  `LAUNCH_TABLE` entry of this TPU generation; the all-heads default off TPU).
  """
  reason = supports(q, k, v, indices, weights)
  if reason is not None:
    raise UnsupportedGCAInput(f"pallas_tpu: {reason}")
  launch = _launch(launch, q, k)
  idx = common.clip_indices(indices, k.shape[1])
  return _gca(q, k, v, idx, weights.astype(jnp.float32), _cfg(interpret, launch))


def forward_with_lse(q, k, v, indices, weights, *, interpret=None, launch=None):
  """(o, lse [B,C,K,H,S] f32): the forward kernel's outputs (tests / debugging)."""
  launch = _launch(launch, q, k)
  return _fwd(q, k, v, common.clip_indices(indices, k.shape[1]), weights.astype(jnp.float32),
              dict(_cfg(interpret, launch)))
