"""Fused GCA kernels for GPU: Pallas on the Triton backend (forward, dQ/dw, dK/dV).

Operator (docs/method.md §3): q [B,C,S,H,D], k/v [B,M,T,Hkv,D], indices int32 [B,C,K], weights [B,C,K]
  o[b,c,s,h] = Σ_i w[b,c,i] · softmax_t(q[b,c,s,h]·k[b,j,t,h']/sqrt(D)) · v[b,j,t,h'],
  j = indices[b,c,i], h' = h // R, R = H/Hkv.

No gathered [B,C,K,T,Hkv,D] copy exists anywhere: every kernel gets the *whole* k/v (and q/dO)
arrays as refs (Triton pointers) and reads the index as a scalar inside the kernel, then loads the
[T, D] tile of memory chunk j for one kv head (`k_ref[b, j, :, g, :]`).

Kernels (f32 accumulation everywhere; the exp is done as exp2 with log2(e) folded into the scale):

* forward, one program per (query chunk c, kv head g, head block, batch b) — grid axis 0 is c, the
  fastest-launched axis, so programs running together share (b, g) and their K/V tiles hit L2.
  The program holds the RB query heads of a head block of kv head g (RB = R up to a register
  budget, see `_heads_per_program`; at R == 1 one head) and loops over the K slots: load j and w,
  load K_j, V_j once for the RB heads, then per head s = QKᵀ·scale, one softmax over the T rows
  (a whole chunk fits one tile: no online softmax), o += w · (P V) / l. Writes o and the per-slot
  log-sum-exp lse [B,C,K,H,S] f32 (natural log), the only residual besides the inputs.
* dQ/dw, same grid: recomputes P_i = exp(s − lse_i), dP = dO Vᵀ, and the per-row
  D_i = rowsum(dO ⊙ O_i) = rowsum(P_i ⊙ dP) (so the unweighted per-slot outputs O_i are never
  stored), dS = w_i P_i (dP − D_i), dQ += dS K / sqrt(D), dw_i = Σ_{s,h} D_i (summed over the heads
  of the program; the per-program partials [B,C,NP,Kp] are summed over programs with XLA).
  A weight-0 slot gets dS = 0 but its dw = Σ dO·O_i is computed all the same.
* dK/dV, one program per (batch b, memory chunk j, kv head g): loops over the readers of j given
  by the inverted index (see `common.inverted_index`: XLA sort of the flattened (b,c,i) -> j
  keys + CSR offsets per memory chunk, weight-0 readers dropped since they contribute exactly 0),
  and for each reader (c, i) and each of the R query heads of g (one (reader, head) pair per loop
  iteration, so only one head's q/dO tiles are in flight in shared memory) recomputes
  Pᵀ = exp(K Qᵀ − lse), dPᵀ = V dOᵀ, D, and accumulates dV += w Pᵀ dO, dK += dSᵀ Q / sqrt(D) in
  registers; K_j/V_j are loaded once. Every (b, j, g) tile of dK/dV is written by exactly one
  program in a fixed order: no atomics, deterministic, and duplicate indices in one row (two
  readers (c, i1), (c, i2)) just add up. The programs are launched longest reader list first
  over the whole batch (a 1-D grid over (b, j) ranked by `common.longest_first`, the Hkv heads of
  one chunk adjacent): under causal retrieval the first chunks have ~ K·ln(C/j) readers, and a
  per-(b, g) order would start the long programs of the last (b, g) rows at the end of the launch.

Shared memory: every pass is planned to stay ≤ SMEM_BUDGET = 200 KiB (H100/H200: 227 KiB per
block) by `smem_estimate`, an upper bound calibrated on Triton's allocation for these kernels;
`plan` picks per pass the heads per program and 2 pipeline stages where they fit, else fewer
(f32 at D = 128: dQ with 1 stage, one head per program); dK/dV runs with 1 stage (its reader
loop has data-dependent bounds and few iterations, where the software pipeliner cost more than it
hid).
A shape that cannot fit at 1 stage (e.g. f32 at D = 256) is refused by `supports` (so
impl="auto" uses XLA), never a launch failure.

Shapes: T and S must be powers of two ≥ 16 (Triton tile sizes; S = 64 in the model), D a power
of two in [16, 256]; K, M, C, H, Hkv arbitrary (K not a power of two, M < K fine).
f32 dots use 3-pass TF32 by default (about f32 accuracy; `precision="tf32"` for one pass,
"highest" for IEEE f32); bf16/f16 dots take their inputs as is with f32 accumulation; P and dS
are rounded to the input dtype before their matmuls, as in flash attention. Out-of-range indices
are clipped into [0, M) (as in `gca_reference`). On a CPU backend the kernels run in Pallas
interpret mode.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gca_jax.kernels import common
from gca_jax.ops.errors import UnsupportedGCAInput

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def supports(q, k, v, indices, weights) -> str | None:
  """None if the Triton kernels can run these inputs, else the reason."""
  r = common.common_reason(q, k, v, indices, weights, dtypes=_DTYPES)
  if r is not None:
    return r
  backend = jax.default_backend()
  if backend not in ("gpu", "cuda", "rocm", "cpu"):
    return f"pallas_triton runs on a GPU (or interpreted on CPU), not on {backend!r}"
  S, D, T = q.shape[2], q.shape[4], k.shape[2]
  if not (common.is_pow2(S) and 16 <= S <= 256):
    return f"query chunk length S={S} must be a power of two in [16, 256]"
  if not (common.is_pow2(T) and 16 <= T <= 256):
    return f"memory chunk length {T} must be a power of two in [16, 256]"
  if not (common.is_pow2(D) and 16 <= D <= 256):
    return f"head dim D={D} must be a power of two in [16, 256]"
  return smem_reason(S, T, D, q.shape[3] // max(k.shape[3], 1), q.dtype)


# ------------------------------------------------------------------------- shared-memory plan

# Shared memory a block may use (H100/H200 allow 227 KiB per block, 232448 B): we keep every pass
# at or under 200 KiB by the estimate below, which leaves room for Triton-version differences.
SMEM_BUDGET = 200 * 1024

# `smem_estimate` coefficients, in units of (tile elements x element size), per pass and class
# ("f32": float32 inputs, any precision, the 3-pass TF32 split keeps a hi and a lo copy of every
# dot operand; "half": bf16/f16). Tiles: "head" = S·D per query head held by the program (fwd: q;
# dq: q and dO; dkv: the q/dO tile of the one (reader, head) pair of an iteration), "kv" = T·D
# (k/v tiles), "st" = S·T (P / dS tiles). dq "extra" = per query head beyond the first
# (f32 only: the split q/dO tiles of every head stay live across the loop). `pipe` = T·D tiles
# (fwd, dq: k and v) or S·D tiles (dkv: q and dO) loaded inside the slot/reader loop, which the
# software pipeliner keeps num_stages copies of. Calibrated as upper bounds on the shared memory
# that Triton 3.9 allocates for these kernels on sm_90 (tests/test_kernels.py holds the measured
# table; the one H100 failure measured by XLA's Triton, 262404 B for the f32 D=128 dQ pass at
# 2 stages, is reproduced there to the byte).
_SMEM_COEF = {
    ("fwd", "f32"): dict(head=2.0, extra=5.75, kv=2.0, st=0.25, pipe=2),
    ("fwd", "half"): dict(head=2.0, extra=1.0, kv=1.25, st=0.25, pipe=2),
    ("dq", "f32"): dict(head=4.0, extra=11.75, kv=2.0, st=0.25, pipe=2),
    ("dq", "half"): dict(head=2.25, extra=2.0, kv=2.0, st=0.25, pipe=2),
    ("dkv", "f32"): dict(head=2.0, extra=0.0, kv=4.0, st=0.25, pipe=2),
    ("dkv", "half"): dict(head=3.0, extra=0.0, kv=2.0, st=0.25, pipe=2),
}
_SMEM_FIXED = 1024       # barriers, reduction scratch


def smem_estimate(which: str, S: int, T: int, D: int, RB: int, dtype, num_stages: int) -> int:
  """Upper estimate (bytes) of the shared memory of pass `which` in ("fwd", "dq", "dkv") with RB
  query heads per program (dkv: 1, one (reader, head) pair per iteration) and `num_stages`."""
  e = jnp.dtype(dtype).itemsize
  c = _SMEM_COEF[(which, "f32" if e == 4 else "half")]
  head = S * D
  loop = S * D if which == "dkv" else T * D      # per loaded tile inside the loop
  base = c["head"] * head + c["extra"] * (RB - 1) * head + c["kv"] * T * D + c["st"] * S * T
  return int(e * (base + c["pipe"] * loop * (max(int(num_stages), 1) - 1)) + _SMEM_FIXED)


def _heads_per_program(R: int, S: int, D: int, max_rows: int | None) -> int:
  """Query heads of one kv head handled (and K/V loaded once for) per program: the largest divisor
  of R with RB·S·D ≤ max_rows·64 (f32 accumulators in registers; default 128 rows at D ≤ 64, i.e.
  two heads of 64 rows, one head at D = 128)."""
  budget = (max_rows or 128) * 64
  best = 1
  for rb in range(1, R + 1):
    if R % rb == 0 and rb * S * D <= max(budget, S * D):
      best = rb
  return best


def plan(which: str, S: int, T: int, D: int, R: int, dtype, *, num_stages: int | None = None,
         max_rows: int | None = None):
  """(RB, num_stages, smem bytes) of pass `which`: the most heads per program (fwd/dq, within the
  register budget of `_heads_per_program`) and then the most pipeline stages (fwd/dq: 2, else 1;
  dK/dV: 1, measured faster on H100 and H200, see docs/benchmarks.md §3) whose `smem_estimate`
  is ≤ SMEM_BUDGET; num_stages given: that many. Returns the estimate even when it is over the
  budget (the caller reports it)."""
  ns_min = num_stages or 1
  rb_max = 1 if which == "dkv" else _heads_per_program(R, S, D, max_rows)
  RB = 1
  for rb in range(rb_max, 0, -1):
    if R % rb == 0 and smem_estimate(which, S, T, D, rb, dtype, ns_min) <= SMEM_BUDGET:
      RB = rb
      break
  if num_stages is None:
    num_stages = 1
    for ns in ((1,) if which == "dkv" else (2, 1)):
      if smem_estimate(which, S, T, D, RB, dtype, ns) <= SMEM_BUDGET:
        num_stages = ns
        break
  return RB, num_stages, smem_estimate(which, S, T, D, RB, dtype, num_stages)


def smem_reason(S: int, T: int, D: int, R: int, dtype, *, num_stages=None, max_rows=None):
  """None if every pass fits SMEM_BUDGET under `plan`, else the reason."""
  for pos, which in enumerate(("fwd", "dq", "dkv")):
    ns = num_stages[pos] if isinstance(num_stages, (tuple, list)) else num_stages
    RB, ns, est = plan(which, S, T, D, R, dtype, num_stages=ns, max_rows=max_rows)
    if est > SMEM_BUDGET:
      return (f"{which} pass needs ~{est} B of shared memory (S={S}, T={T}, D={D}, "
              f"{jnp.dtype(dtype).name}, {RB} head(s)/program, {ns} stage(s)) > budget "
              f"{SMEM_BUDGET} B")
  return None


def _dot(a, b, *, trans_a=False, trans_b=False, precision=None):
  """2-D matmul with f32 accumulation (a: [m,k], or [k,m] if trans_a; b: [k,n], or [n,k] if
  trans_b)."""
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _prec(dtype, precision, interpret):
  """Dot precision for the kernels' f32 matmuls (bf16/f16: inputs as is, f32 accumulation)."""
  if jnp.dtype(dtype) != jnp.float32:
    return None
  if interpret:                   # CPU: plain f32 dots (the TF32 algorithms do not exist there)
    return lax.Precision.HIGHEST
  if precision == "tf32":
    return lax.Precision.DEFAULT  # Triton: one TF32 pass
  if precision == "highest":
    return lax.Precision.HIGHEST  # Triton: IEEE f32
  return lax.DotAlgorithmPreset.TF32_TF32_F32_X3


# ----------------------------------------------------------------------------------- kernels

def _fwd_kernel(idx_ref, w_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, K, R, RB, scale2, prec):
  c, gh, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  g = lax.div(gh, R // RB)
  h0 = g * R + lax.rem(gh, R // RB) * RB
  S, D = q_ref.shape[2], q_ref.shape[4]
  qs = [q_ref[b, c, :, h0 + r, :] for r in range(RB)]

  def body(i, accs):
    j = idx_ref[b, c, i]
    w = w_ref[b, c, i]
    kk = k_ref[b, j, :, g, :]
    vv = v_ref[b, j, :, g, :]
    out = []
    for r in range(RB):
      s2 = _dot(qs[r], kk, trans_b=True, precision=prec) * scale2      # [S, T], base-2 logits
      m2 = jnp.max(s2, axis=1)
      p = jnp.exp2(s2 - m2[:, None])
      l = jnp.sum(p, axis=1)
      o = _dot(p.astype(vv.dtype), vv, precision=prec)                 # [S, D]
      out.append(accs[r] + o * (w / l)[:, None])
      lse_ref[b, c, i, h0 + r, :] = (m2 + jnp.log2(l)) * LN2
    return tuple(out)

  accs = lax.fori_loop(0, K, body, tuple(jnp.zeros((S, D), jnp.float32) for _ in range(RB)))
  for r in range(RB):
    o_ref[b, c, :, h0 + r, :] = accs[r].astype(o_ref.dtype)


def _dq_kernel(idx_ref, w_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dq_ref, dw_ref, *,
               K, Kp, R, RB, scale, prec):
  c, gh, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  g = lax.div(gh, R // RB)
  h0 = g * R + lax.rem(gh, R // RB) * RB
  S, D = q_ref.shape[2], q_ref.shape[4]
  scale2 = scale * LOG2E
  qs = [q_ref[b, c, :, h0 + r, :] for r in range(RB)]
  dos = [do_ref[b, c, :, h0 + r, :] for r in range(RB)]
  slot = jnp.arange(Kp, dtype=jnp.int32)

  def body(i, carry):
    dqs, dwv = carry
    j = idx_ref[b, c, i]
    w = w_ref[b, c, i]
    kk = k_ref[b, j, :, g, :]
    vv = v_ref[b, j, :, g, :]
    out = []
    dsum = jnp.float32(0.0)
    for r in range(RB):
      lse2 = lse_ref[b, c, i, h0 + r, :] * LOG2E
      s2 = _dot(qs[r], kk, trans_b=True, precision=prec) * scale2
      p = jnp.exp2(s2 - lse2[:, None])                                  # [S, T]
      dp = _dot(dos[r], vv, trans_b=True, precision=prec)               # [S, T]
      d_row = jnp.sum(p * dp, axis=1)                                   # rowsum(dO ⊙ O_i)
      ds = p * (dp - d_row[:, None]) * w
      out.append(dqs[r] + _dot(ds.astype(kk.dtype), kk, precision=prec))
      dsum = dsum + jnp.sum(d_row)
    return tuple(out), jnp.where(slot == i, dsum, dwv)

  init = (tuple(jnp.zeros((S, D), jnp.float32) for _ in range(RB)), jnp.zeros((Kp,), jnp.float32))
  dqs, dwv = lax.fori_loop(0, K, body, init)
  for r in range(RB):
    dq_ref[b, c, :, h0 + r, :] = (dqs[r] * scale).astype(dq_ref.dtype)
  dw_ref[b, c, gh, :] = dwv


def _dkv_kernel(off_ref, ord_ref, sched_ref, ws_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                dk_ref, dv_ref, *, K, R, scale, prec):
  pid = pl.program_id(0)
  M, T, Hkv, D = k_ref.shape[1], k_ref.shape[2], k_ref.shape[3], k_ref.shape[4]
  rank = lax.div(pid, Hkv)
  g = pid - rank * Hkv
  f = sched_ref[rank]
  b = lax.div(f, M)
  j = f - b * M
  scale2 = scale * LOG2E
  kk = k_ref[b, j, :, g, :]
  vv = v_ref[b, j, :, g, :]
  start = off_ref[b, j]
  end = off_ref[b, j + 1]
  last = ord_ref.shape[1] - 1

  def body(m, carry):
    # One (reader, head) pair per iteration, m = n·R + r: only one head's q/dO/lse tiles are live,
    # whatever R. Same accumulation order as a reader loop with an inner head loop: reader n,
    # then heads r = 0..R-1. The reader entry and weight of iteration m + 1 are loaded here and
    # carried, so the q/dO tile loads of an iteration do not wait for its scalar loads.
    dk, dv, e, w = carry
    n = lax.div(m, R)
    h = g * R + (m - n * R)
    n_next = jnp.minimum(lax.div(m + 1, R), jnp.minimum(end - 1, last))
    e_next = ord_ref[b, n_next]
    w_next = ws_ref[b, n_next]        # weights in inverted-index order (no dependent load)
    c = lax.div(e, K)
    i = e - c * K
    qh = q_ref[b, c, :, h, :]
    doh = do_ref[b, c, :, h, :]
    lse2 = lse_ref[b, c, i, h, :] * LOG2E
    st2 = _dot(kk, qh, trans_b=True, precision=prec) * scale2          # [T, S]
    pt = jnp.exp2(st2 - lse2[None, :])
    dpt = _dot(vv, doh, trans_b=True, precision=prec)                   # [T, S]
    d_row = jnp.sum(pt * dpt, axis=0)                                   # [S]
    wpt = pt * w
    dv = dv + _dot(wpt.astype(doh.dtype), doh, precision=prec)
    dst = wpt * (dpt - d_row[None, :])
    dk = dk + _dot(dst.astype(qh.dtype), qh, precision=prec)
    return dk, dv, e_next, w_next

  zeros = jnp.zeros((T, D), jnp.float32)
  first = jnp.minimum(start, last)
  dk, dv, _, _ = lax.fori_loop(start * R, end * R, body,
                               (zeros, zeros, ord_ref[b, first], ws_ref[b, first]))
  dk_ref[b, j, :, g, :] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[b, j, :, g, :] = dv.astype(dv_ref.dtype)


# ---------------------------------------------------------------------------------- launchers

def _call(kernel, args, out_shapes, grid, *, interpret, num_warps, num_stages, name, poison):
  """pallas_call with whole-array refs. poison: outputs start as NaN (aliased NaN inputs), to check
  that every element is written (interpret mode already starts outputs as NaN)."""
  n_in = len(args)
  aliases = {}
  if poison:
    fills = [jnp.full(s.shape, jnp.nan if jnp.issubdtype(s.dtype, jnp.floating) else -1, s.dtype)
             for s in out_shapes]
    aliases = {n_in + o: o for o in range(len(out_shapes))}
    args = (*args, *fills)
    inner = kernel

    def kernel(*refs):  # noqa: F811  (drop the aliased input refs)
      return inner(*refs[:n_in], *refs[n_in + len(out_shapes):])
  return pl.pallas_call(
      kernel, grid=grid, out_shape=out_shapes, input_output_aliases=aliases,
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret, name=name)(*args)


def _launch(cfg, which, q, k):
  """(RB, Triton launch parameters) of kernel `which` in ("fwd", "dq", "dkv"), see `plan`."""
  pos = ("fwd", "dq", "dkv").index(which)
  S, D, T, R = q.shape[2], q.shape[4], k.shape[2], q.shape[3] // k.shape[3]
  RB, ns, est = plan(which, S, T, D, R, q.dtype, num_stages=cfg["num_stages"][pos],
                     max_rows=cfg["max_rows"])
  if est > SMEM_BUDGET and not cfg["interpret"]:
    raise UnsupportedGCAInput(f"pallas_triton: {which} pass needs ~{est} B of shared memory "
                              f"({ns} stages) > budget {SMEM_BUDGET} B")
  return RB, dict(interpret=cfg["interpret"], num_warps=cfg["num_warps"][pos], num_stages=ns,
                  poison=cfg["poison"])


def _fwd(q, k, v, idx, w, cfg):
  B, C, S, H, D = q.shape
  Hkv = k.shape[3]
  K = idx.shape[2]
  R = H // Hkv
  RB, launch = _launch(cfg, "fwd", q, k)
  kern = functools.partial(_fwd_kernel, K=K, R=R, RB=RB, scale2=LOG2E / math.sqrt(D),
                           prec=_prec(q.dtype, cfg["precision"], cfg["interpret"]))
  o, lse = _call(kern, (idx, w, q, k, v),
                 (jax.ShapeDtypeStruct(q.shape, q.dtype),
                  jax.ShapeDtypeStruct((B, C, K, H, S), jnp.float32)),
                 (C, Hkv * (R // RB), B), name="gca_fwd", **launch)
  return o, lse


def _bwd_dq(q, k, v, idx, w, lse, do, cfg):
  """dQ and dw (one program per query chunk, kv head, head block)."""
  B, C, S, H, D = q.shape
  Hkv = k.shape[3]
  K = idx.shape[2]
  R = H // Hkv
  RB, launch = _launch(cfg, "dq", q, k)
  NP = Hkv * (R // RB)
  Kp = common.next_pow2(K)
  kern = functools.partial(_dq_kernel, K=K, Kp=Kp, R=R, RB=RB, scale=1.0 / math.sqrt(D),
                           prec=_prec(q.dtype, cfg["precision"], cfg["interpret"]))
  dq, dw_part = _call(
      kern, (idx, w, q, k, v, do, lse),
      (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, C, NP, Kp), jnp.float32)),
      (C, NP, B), name="gca_bwd_dq", **launch)
  return dq, jnp.sum(dw_part[..., :K], axis=2)


def _bwd_dkv(q, k, v, idx, w, lse, do, cfg):
  """dK and dV (one program per memory chunk, kv head; readers from the inverted index)."""
  D = q.shape[4]
  B, M, T, Hkv, _ = k.shape
  K = idx.shape[2]
  R = q.shape[3] // Hkv
  _, launch = _launch(cfg, "dkv", q, k)
  order, offsets = common.inverted_index(idx, w, M)
  sched = common.longest_first(offsets, idx.shape[1] * K)
  w_sorted = jnp.take_along_axis(w.reshape(B, -1), order, axis=1)
  kern = functools.partial(_dkv_kernel, K=K, R=R, scale=1.0 / math.sqrt(D),
                           prec=_prec(q.dtype, cfg["precision"], cfg["interpret"]))
  return _call(
      kern, (offsets, order, sched, w_sorted, q, k, v, do, lse),
      (jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
      (B * M * Hkv,), name="gca_bwd_dkv", **launch)


def _bwd(q, k, v, idx, w, lse, do, cfg):
  dq, dw = _bwd_dq(q, k, v, idx, w, lse, do, cfg)
  dk, dv = _bwd_dkv(q, k, v, idx, w, lse, do, cfg)
  return dq, dk, dv, dw


# ------------------------------------------------------------------------------- custom_vjp

_gca = common.lse_custom_vjp(_fwd, _bwd)


def _per_kernel(x, default):
  x = default if x is None else x
  return tuple(x) if isinstance(x, (tuple, list)) else (x, x, x)


def _config(D, interpret, precision, num_warps, num_stages, max_rows, poison_outputs):
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  if precision not in (None, "tf32", "tf32x3", "highest"):
    raise ValueError(f"precision must be None, 'tf32', 'tf32x3' or 'highest', got {precision!r}")
  return (("interpret", bool(interpret)), ("precision", precision),
          ("num_warps", _per_kernel(num_warps, 4 if D <= 64 else 8)),
          ("num_stages", _per_kernel(num_stages, None)),
          ("max_rows", max_rows), ("poison", bool(poison_outputs)))


def gca_triton(q, k, v, indices, weights, *, interpret: bool | None = None,
               precision: str | None = None, num_warps: int | None = None,
               num_stages: int | None = None, max_rows: int | None = None,
               poison_outputs: bool = False):
  """GCA on the Pallas Triton backend; differentiable in q, k, v, weights (custom VJP).

  interpret: None = interpret mode iff the default backend is CPU.
  precision (f32 inputs only): None/"tf32x3" (default: 3-pass TF32, about f32 accuracy),
    "tf32" (1 pass, ~1e-3 relative error, fastest), "highest" (IEEE f32 FMA, slowest).
  num_warps/num_stages: Triton launch parameters, an int or a (fwd, dq, dkv) triple (default 4
    warps at D <= 64 else 8; stages: 2 where the pass fits SMEM_BUDGET by `smem_estimate`, else 1,
    see `plan`; an explicit value that does not fit raises UnsupportedGCAInput).
  max_rows: register budget of the forward/dQ programs in 64-wide rows (`_heads_per_program`).
  poison_outputs: every kernel output starts as NaN (debug: checks full coverage on GPU).
  """
  reason = supports(q, k, v, indices, weights)
  if reason is not None:
    raise UnsupportedGCAInput(f"pallas_triton: {reason}")
  cfg = _config(q.shape[-1], interpret, precision, num_warps, num_stages, max_rows, poison_outputs)
  if num_stages is not None or max_rows is not None:     # explicit launch overrides must fit too
    reason = smem_reason(q.shape[2], k.shape[2], q.shape[4], q.shape[3] // k.shape[3], q.dtype,
                         num_stages=num_stages, max_rows=max_rows)
    if reason is not None and not dict(cfg)["interpret"]:
      raise UnsupportedGCAInput(f"pallas_triton: {reason}")
  idx = common.clip_indices(indices, k.shape[1])
  return _gca(q, k, v, idx, weights.astype(jnp.float32), cfg)


def forward_with_lse(q, k, v, indices, weights, *, interpret=None, precision=None, num_warps=None,
                     num_stages=None, max_rows=None, poison_outputs=False):
  """(o, lse [B,C,K,H,S] f32): the forward kernel's outputs, no VJP (tests / benchmarks)."""
  cfg = _config(q.shape[-1], interpret, precision, num_warps, num_stages, max_rows, poison_outputs)
  return _fwd(q, k, v, common.clip_indices(indices, k.shape[1]), weights.astype(jnp.float32),
              dict(cfg))
