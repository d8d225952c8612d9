"""Streaming long-context inference for DRT (SPEC §2, §7): one jit-compiled segment step.

The token stream is cut into segments of `segment_len` text tokens, any positive number: segments
need NOT be aligned to chunks (63 text tokens + 1 landmark) nor to the SWA window W. Text token t
sits at landmark-augmented position t + t // 63, and a landmark follows every 63rd text token, so
a segment of P text tokens starting after n_text tokens covers P + ((n_text % 63) + P) // 63
augmented positions. The step lays them out in a fixed window of P + ceil(P/63) rows (a valid
prefix, the rest padding that is neither cached nor used as a key), so ONE compiled step serves
every segment whatever its offset within a chunk. Chunks may span segments: the lower-layer
outputs of the unfinished chunk are carried in "partial"; a chunk is encoded and written to
memory in the segment that holds its landmark; the retrieval made at a chunk's landmark serves
the next chunk, in this segment or the next (the "ret_*" carry). The window cache carries the
last W-1 positions of every SWA layer across segments.

State carried across segments (a dict pytree, every leaf of fixed shape, so ONE compiled step
serves every segment of a stream):

  "pos"     int32 []                    augmented positions (landmarks included) processed so
                                        far, plus start_position; bookkeeping only, it never
                                        enters RoPE.
  "n_text"  int32 []                    text tokens processed so far (sets the landmark offsets).
  "count"   int32 []                    chunks in memory (= n_text // 63, valid rows of the
                                        buffers below; rows beyond it are scratch).
  "cache_n" int32 []                    valid rows of the window cache (min(pos, W-1)).
  "swa_k"   [Lswa, B, W-1, H, Dh] dt    PRE-RoPE keys of the last W-1 positions, every SWA layer
                                        (lower_0.., then upper_0..); "swa_v" the values.
  "partial" [B, 64, d] dt               lower-layer outputs of the unfinished chunk (its first
                                        n_text % 63 rows are valid), for the chunk encoder.
  "lmk"     [B, M, d] dt                landmark keys of the chunk memory (encoder output row 63),
                                        always on device (1/64 of the chunk memory).
  "enc"     [B, M, S, d] dt             the chunk memory: chunk-encoder outputs, capacity M
                                        chunks, `count` of them valid (memory="device" only).
                                        Kmem/Vmem are NOT stored: the selected chunks are
                                        gathered and projected by mem_k / mem_v per segment,
                                        which halves the memory (d = H*Dh per row instead of
                                        2*H*Dh) for one [n_sel, S, d] x [d, 2*H*Dh] matmul per
                                        retrieval group and segment.
  "host_key" int32 []                   (memory="host" only, replaces "enc") the id of the
                                        host-resident chunk memory (a numpy buffer, see
                                        `HostMemory`).
  "ret_idx" int32 [G, B, K], "ret_w" f32 [G, B, K]
                                        per retrieval group, the retrieval made at the last
                                        landmark seen; it serves the chunk after it (the c -> c+1
                                        shift across segment boundaries).

RoPE (SPEC §7): SWA only depends on relative positions, so each segment rotates queries and keys
with positions *relative to the start of the cache* (0 .. W-1+A-1, A the window rows), built in float64 on the host
(`rope_tables` with static numpy positions). Cached keys are stored un-rotated and re-rotated per
segment; the absolute position never enters a phase, so 16M+ positions are as exact as position 0.
The chunk encoder uses positions 0..63 as in the model.

Retrieval: for the (at most ceil(P/63)) chunks completed in the segment, scores against the memory are computed in blocks of
`mem_block` chunks with a running top-k merge (no [C, C] or [n, M] score matrix beyond one block),
visiting only the blocks that hold valid chunks (a `while_loop` with a traced trip count).
Selection and fusion weights follow `masked_topk_weights` (deterministic, train=False).

Memory capacity: `init_state(..., capacity)` preallocates M chunks (rounded up to a multiple of
`mem_block`); a step writes ceil(P/63) rows at `count`, so M >= count + ceil(P/63) is needed;
`stream_nll` sizes it for the whole stream; `DRTStream.feed` doubles it (power-of-two
capacities, one recompilation per doubling) when it would overflow.

Memory placement (`memory=`): "device" keeps "enc" in device memory (doubling, donated: a step
updates it in place). "host" keeps it in a numpy buffer in host RAM: the step writes the new
chunks there and fetches only the selected ones (at most (NC+1)*top_k chunks per retrieval group
and segment) through ordered `io_callback`s, so device memory does not grow with the stream
(except the landmark keys). "auto" picks "device" when the whole stream's memory fits in
`auto_fraction` of the device's free memory, else "host" (a `DRTStream` without a known length
uses "device").
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import itertools
import math
import mmap
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from gca_jax.config import DRTConfig
from gca_jax.layers.blocks import ChunkEncoder
from gca_jax.layers.common import MLP, Dense, RMSNorm, apply_rope, dtype_of, rope_tables
from gca_jax.layers.gca import GroupedCrossAttention

_NEG = -1e30
# Python side-effect counter: incremented each time a segment step is traced (tests use it).
TRACE_COUNTS: dict[str, int] = {"segment_step": 0}

State = dict[str, Any]


def _check_config(cfg: DRTConfig) -> None:
  if cfg.model_kind != "drt":
    raise ValueError(f"streaming inference supports model_kind='drt' only, got {cfg.model_kind!r}")


def _swa_layer_names(cfg: DRTConfig) -> list[str]:
  return [f"lower_{i}" for i in range(cfg.lower_layers)] + [
      f"upper_{i}" for i in range(sum(cfg.upper_groups))]


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def init_state(config: DRTConfig, batch: int, capacity: int, *, mem_block: int = 4096,
               start_position: int = 0, host_key: int | None = None) -> State:
  """Empty stream state with room for `capacity` chunks (rounded up to a multiple of the
  effective memory block, see `effective_mem_block`). `start_position` (a multiple of chunk_size)
  only sets the bookkeeping counter "pos": results do not depend on it (relative RoPE).
  `host_key`: id of a `HostMemory` holding the chunk memory on the host (no "enc" on device)."""
  cfg = config
  _check_config(cfg)
  if start_position % cfg.chunk_size:
    raise ValueError(f"start_position={start_position} must be a multiple of chunk_size={cfg.chunk_size}")
  dt = dtype_of(cfg.dtype)
  H, Dh, d, S, K = cfg.num_heads, cfg.head_dim, cfg.d_model, cfg.chunk_size, cfg.top_k
  blk = effective_mem_block(capacity, mem_block)
  M = _round_up(max(capacity, 1), blk)
  Wc = cfg.window - 1
  nl = len(_swa_layer_names(cfg))
  G = len(cfg.upper_groups)
  state = {
      "pos": jnp.asarray(start_position, jnp.int32),
      "n_text": jnp.zeros((), jnp.int32),
      "count": jnp.zeros((), jnp.int32),
      "cache_n": jnp.zeros((), jnp.int32),
      "swa_k": jnp.zeros((nl, batch, Wc, H, Dh), dt),
      "swa_v": jnp.zeros((nl, batch, Wc, H, Dh), dt),
      "partial": jnp.zeros((batch, S, d), dt),
      "lmk": jnp.zeros((batch, M, d), dt),
      "ret_idx": jnp.zeros((G, batch, K), jnp.int32),
      "ret_w": jnp.zeros((G, batch, K), jnp.float32),
  }
  if host_key is None:
    state["enc"] = jnp.zeros((batch, M, S, d), dt)
  else:
    state["host_key"] = jnp.asarray(host_key, jnp.int32)
  return state


def effective_mem_block(capacity: int, mem_block: int) -> int:
  """Block size of the blocked top-k: `mem_block`, or the capacity rounded up to a power of two
  when that is smaller (so small memories are one block)."""
  return max(1, min(mem_block, 1 << max(0, math.ceil(math.log2(max(capacity, 1))))))


def grow_state(state: State, capacity: int, *, mem_block: int = 4096) -> State:
  """Returns `state` with memory buffers padded to hold `capacity` chunks (never shrinks)."""
  M = state["lmk"].shape[1]
  blk = effective_mem_block(capacity, mem_block)
  newM = _round_up(max(capacity, M), blk)
  if newM == M:
    return state
  out = dict(state)
  for name in ("lmk", "enc"):
    if name not in state:
      continue
    x = state[name]
    out[name] = jnp.pad(x, [(0, 0), (0, newM - M)] + [(0, 0)] * (x.ndim - 2))
  return out


# ----------------------------------------------------------------------------- host memory


_HOST: dict[int, "HostMemory"] = {}
_HOST_IDS = itertools.count(1)


def _host_zeros(shape, dtype) -> np.ndarray:
  """A zeroed array in anonymous memory advised for transparent huge pages where the OS offers
  them (fewer page faults and TLB misses for a buffer of tens of GiB read at random rows)."""
  nbytes = math.prod(shape) * np.dtype(dtype).itemsize
  if nbytes < (64 << 20) or not hasattr(mmap, "MADV_HUGEPAGE"):
    return np.zeros(shape, dtype)
  m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
  try:
    m.madvise(mmap.MADV_HUGEPAGE)
  except OSError:
    pass
  return np.frombuffer(m, dtype).reshape(shape)


_CUDART: list = []


def _cudart():
  """The CUDA runtime library jax loaded (ctypes), or None (no GPU backend or not found)."""
  if not _CUDART:
    lib = None
    if jax.default_backend() == "gpu":
      names = ["libcudart.so.12", "libcudart.so.13", "libcudart.so"]
      try:
        import nvidia.cuda_runtime as m  # the pip CUDA runtime jax's plugin uses
        names += [os.path.join(d, "lib", n) for d in m.__path__ for n in list(names)]
      except ImportError:
        pass
      for n in names:
        try:
          lib = ctypes.CDLL(n)
          break
        except OSError:
          continue
    _CUDART.append(lib)
  return _CUDART[0]


def cuda_host_register(a: np.ndarray) -> bool:
  """Page-locks the memory of the C-contiguous array `a` for every CUDA device
  (cudaHostRegister, portable), so host <-> device copies of it run as DMA instead of through
  staging buffers. Returns False (and does nothing) without a CUDA runtime; the caller must
  `cuda_host_unregister(a)` before `a`'s memory is freed."""
  lib = _cudart()
  if lib is None or a.nbytes == 0 or not a.flags.c_contiguous:
    return False
  rc = lib.cudaHostRegister(ctypes.c_void_p(a.ctypes.data), ctypes.c_size_t(a.nbytes),
                            ctypes.c_uint(1))
  return rc == 0


def cuda_host_unregister(a: np.ndarray) -> None:
  lib = _cudart()
  if lib is not None:
    lib.cudaHostUnregister(ctypes.c_void_p(a.ctypes.data))


class HostMemory:
  """Chunk memory (encoder outputs [B, M, S, d]) in host RAM, grown by doubling on write.

  The jitted step reaches it through `io_callback`s keyed by `key` (registered in a module-level
  table, so the compiled step does not depend on which stream it serves). `close()` frees it.
  Gathers are split over a thread pool (`threads`, default min(8, cores)): numpy's `take`
  releases the GIL, so the copy runs at memory bandwidth rather than one core's. `stats` counts
  the seconds and bytes spent in writes and gathers (the host path's overhead, see
  bench/long_context.py)."""

  def __init__(self, batch: int, chunk_size: int, d_model: int, dtype, capacity: int = 64,
               threads: int | None = None):
    self.shape = (batch, chunk_size, d_model)
    self.dtype = np.dtype(dtype)
    self.buf = _host_zeros((batch, max(capacity, 1), chunk_size, d_model), self.dtype)
    self.key = next(_HOST_IDS)
    self.threads = max(1, threads or min(8, os.cpu_count() or 1))
    self._pool = (concurrent.futures.ThreadPoolExecutor(self.threads, "gca-host")
                  if self.threads > 1 else None)
    self.stats = {"write_s": 0.0, "write_bytes": 0, "gather_s": 0.0, "gather_bytes": 0,
                  "gathers": 0}
    self._ring: dict = {}
    self._pinned: list = []
    _HOST[self.key] = self

  @property
  def nbytes(self) -> int:
    return self.buf.nbytes

  def write(self, c0, enc_BxNxSxd) -> None:
    t0 = time.perf_counter()
    c0 = int(c0)
    n = enc_BxNxSxd.shape[1]
    if c0 + n > self.buf.shape[1]:
      cap = 1 << math.ceil(math.log2(c0 + n))
      new = _host_zeros((self.buf.shape[0], cap) + self.buf.shape[2:], self.dtype)
      new[:, :self.buf.shape[1]] = self.buf
      self.buf = new
    src = np.asarray(enc_BxNxSxd, self.dtype)
    self._raw(self.buf)[:, c0:c0 + n] = self._raw(src)
    self.stats["write_s"] += time.perf_counter() - t0
    self.stats["write_bytes"] += src.nbytes

  def gather(self, idx_BxN):
    """Rows idx [B, N] -> [B, N, S, d]. Copies through an unsigned-int view (numpy's fancy
    indexing of ml_dtypes' bfloat16 is ~8x slower than of uint16), in `threads` pieces."""
    t0 = time.perf_counter()
    idx = np.asarray(idx_BxN)
    raw = self._raw(self.buf)
    B, N = idx.shape
    out = self._out_buffer((B, N) + raw.shape[2:], raw.dtype)
    step = -(-N // self.threads)
    pieces = [(b, i, min(i + step, N)) for b in range(B) for i in range(0, N, step)]

    def take(piece):
      b, i, j = piece
      np.take(raw[b], idx[b, i:j], axis=0, out=out[b, i:j], mode="clip")  # unbuffered

    if self._pool is None or len(pieces) == 1:
      for piece in pieces:
        take(piece)
    else:
      list(self._pool.map(take, pieces))
    self.stats["gather_s"] += time.perf_counter() - t0
    self.stats["gather_bytes"] += out.nbytes
    self.stats["gathers"] += 1
    return out.view(self.dtype)

  def _out_buffer(self, shape, dtype):
    """One of two preallocated gather outputs per shape, used in turn, page-locked on a CUDA
    backend (`cuda_host_register`, so the callback's host -> device copy is a DMA). A fresh
    100 MB array per gather costs as much in page faults as the copy itself. Two are enough:
    the callback's result is copied to the device before the next callback of the step
    sequence runs (a GPU host callback first synchronises its stream to read its inputs), so
    the buffer handed out two gathers ago is no longer read."""
    key = (tuple(shape), np.dtype(dtype))
    ring = self._ring.get(key)
    if ring is None:
      ring = self._ring[key] = [_host_zeros(shape, dtype), _host_zeros(shape, dtype), 0]
      for a in ring[:2]:
        if cuda_host_register(a):
          self._pinned.append(a)
      self.stats["pinned_buffers"] = len(self._pinned)
    ring[2] ^= 1
    return ring[ring[2]]

  @staticmethod
  def _raw(x):
    return x.view(np.dtype(f"u{x.dtype.itemsize}")) if x.dtype.kind not in "iub" else x

  def close(self) -> None:
    _HOST.pop(self.key, None)
    self.buf = np.zeros((0,) + self.buf.shape[1:], self.dtype)
    for a in self._pinned:
      cuda_host_unregister(a)
    self._pinned, self._ring = [], {}
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None


def _host_write(key, c0, enc):
  _HOST[int(key)].write(c0, enc)


def _host_gather(key, idx):
  return _HOST[int(key)].gather(idx)


def device_free_bytes(device=None) -> int | None:
  """Free memory of `device` (default: the first) in bytes, or None where unknown (CPU)."""
  device = device or jax.devices()[0]
  try:
    st = device.memory_stats()
  except Exception:  # noqa: BLE001  (backends without memory stats)
    return None
  if not st or "bytes_limit" not in st:
    return None
  return int(st["bytes_limit"]) - int(st.get("bytes_in_use", 0))


def memory_bytes(config: DRTConfig, batch: int, n_text: int, extra_chunks: int = 1
                 ) -> dict[str, int]:
  """Bytes of the chunk memory ("enc") and landmark keys for a stream of `n_text` text tokens:
  ceil(n_text / 63) chunks plus `extra_chunks` (the scratch rows of the last segment)."""
  chunks = -(-n_text // config.text_per_chunk) + extra_chunks
  b = jnp.dtype(dtype_of(config.dtype)).itemsize
  return {"enc": batch * chunks * config.chunk_size * config.d_model * b,
          "lmk": batch * chunks * config.d_model * b}


def resolve_memory(memory: str, config: DRTConfig, batch: int, n_text: int | None,
                   auto_fraction: float = 0.5) -> str:
  """"device" or "host" for `memory` in auto|device|host (see the module docstring)."""
  _check_memory(memory)
  if memory != "auto":
    return memory
  free = device_free_bytes()
  if n_text is None or free is None:
    return "device"
  return "device" if memory_bytes(config, batch, n_text)["enc"] <= auto_fraction * free else "host"


# ----------------------------------------------------------------------------- functional pieces


def _dense(p, x, dt):
  """Same math as layers.common.Dense: einsum in the compute dtype."""
  return jnp.einsum("...d,df->...f", x.astype(dt), p["kernel"].astype(dt))


def _norm(p, x, cfg, dt):
  return RMSNorm(cfg.norm_eps, dtype=dt, param_dtype=dtype_of(cfg.param_dtype)).apply(
      {"params": p}, x)


def _mlp(p, x, cfg, dt):
  return MLP(cfg.mlp_dim, cfg.init_std, dtype=dt, param_dtype=dtype_of(cfg.param_dtype)).apply(
      {"params": p}, x)


def _swa_cached(p_attn, x_BxPxd, k_cache, v_cache, cache_n, cfg, dt, qblock=256, n_valid=None):
  """Sliding-window attention of P new positions over [cache (W-1 rows, `cache_n` valid), new].

  `n_valid` (traced int, default P): only the first n_valid new positions are real (the rest is
  right padding: it never serves as a key of a real query, causality); the returned cache holds
  the last W-1 rows of [cache, first n_valid new rows].

  Queries/keys are rotated with positions relative to the cache start (float64 tables).
  Queries are processed in blocks of max(qblock, W) rows against their own key window.
  Returns (out [B,P,d], new pre-RoPE k cache, new v cache).
  """
  B, P, _ = x_BxPxd.shape
  H, Dh, W = cfg.num_heads, cfg.head_dim, cfg.window
  Wc = k_cache.shape[1]
  q = _dense(p_attn["q_proj"], x_BxPxd, dt).reshape(B, P, H, Dh)
  k = _dense(p_attn["k_proj"], x_BxPxd, dt).reshape(B, P, H, Dh)
  v = _dense(p_attn["v_proj"], x_BxPxd, dt).reshape(B, P, H, Dh)
  k_all = jnp.concatenate([k_cache.astype(dt), k], axis=1)
  v_all = jnp.concatenate([v_cache.astype(dt), v], axis=1)
  N = Wc + P
  cos, sin = rope_tables(np.arange(N), Dh, cfg.rope_theta)  # static -> float64 host tables
  qr = apply_rope(q, cos[Wc:], sin[Wc:])
  kr = apply_rope(k_all, cos, sin)
  # queries in blocks of bq rows; block i sees keys [i*bq, i*bq + bq + Wc) (its window), so the
  # score tensor is [P, bq + Wc] instead of [P, Wc + P]. Masked keys contribute exactly 0.
  bq = min(P, max(qblock, Wc + 1))
  nb = -(-P // bq)
  padq = nb * bq - P
  if padq:
    qr = jnp.pad(qr, ((0, 0), (0, padq), (0, 0), (0, 0)))
    kr = jnp.pad(kr, ((0, 0), (0, padq), (0, 0), (0, 0)))
    v_all_p = jnp.pad(v_all, ((0, 0), (0, padq), (0, 0), (0, 0)))
  else:
    v_all_p = v_all
  kidx = np.arange(nb)[:, None] * bq + np.arange(bq + Wc)[None, :]  # [nb, bq+Wc] key rows
  qpos = Wc + np.arange(nb)[:, None] * bq + np.arange(bq)[None, :]  # [nb, bq] query rows
  rel = qpos[:, :, None] - kidx[:, None, :]
  band = jnp.asarray((rel >= 0) & (rel < W) & (qpos[:, :, None] < N))
  valid = jnp.asarray(kidx) >= (Wc - cache_n)  # cache rows before the stream start are empty
  mask = band & valid[:, None, :]  # [nb, bq, bq+Wc]
  qb = qr.reshape(B, nb, bq, H, Dh)
  kb = jnp.take(kr, jnp.asarray(kidx), axis=1)  # [B, nb, bq+Wc, H, Dh]
  vb = jnp.take(v_all_p, jnp.asarray(kidx), axis=1)
  s = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, kb, preferred_element_type=jnp.float32)
  s = s / jnp.sqrt(jnp.float32(Dh))
  s = jnp.where(mask[None, :, None], s, _NEG)
  pr = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bnhqk,bnkhd->bnqhd", pr.astype(vb.dtype), vb,
                 preferred_element_type=jnp.float32).astype(qr.dtype)
  o = o.reshape(B, nb * bq, H, Dh)[:, :P]
  out = _dense(p_attn["o_proj"], o.reshape(B, P, H * Dh), dt)
  if n_valid is None:
    return out, k_all[:, N - Wc:], v_all[:, N - Wc:]
  return (out, jax.lax.dynamic_slice_in_dim(k_all, n_valid, Wc, axis=1),
          jax.lax.dynamic_slice_in_dim(v_all, n_valid, Wc, axis=1))


def blocked_topk_retrieval(q_Bxnxd, lmk_BxMxd, chunk_ids_n, top_k: int, block: int):
  """Deterministic retrieval (SPEC §2.3) for query chunks with global ids `chunk_ids_n` [n]
  against memory landmarks [B, M, d] (M a multiple of `block`): score = q . lmk[j] / sqrt(d),
  allowed for j < chunk id; top-k over M computed block by block with a running merge, visiting
  only blocks below max(chunk_ids). `q` must already be normed (float32).
  Returns (indices int32 [B,n,K], weights f32 [B,n,K]) as `masked_topk_weights` (unshifted)."""
  B, n, d = q_Bxnxd.shape
  M = lmk_BxMxd.shape[1]
  assert M % block == 0, (M, block)
  scale = jnp.sqrt(jnp.float32(d))
  q = q_Bxnxd.astype(jnp.float32)
  vals0 = jnp.full((B, n, top_k), -jnp.inf, jnp.float32)
  idx0 = jnp.full((B, n, top_k), M, jnp.int32)  # M = "no entry" (sorts after every real index)
  n_valid = jnp.max(chunk_ids_n)  # entries j < max id can be valid for some query
  n_blocks = jnp.minimum((n_valid + block - 1) // block, M // block)

  def body(carry):
    b, vals, idx = carry
    lb = jax.lax.dynamic_slice_in_dim(lmk_BxMxd, b * block, block, axis=1).astype(jnp.float32)
    s = jnp.einsum("bcd,bmd->bcm", q, lb) / scale
    j = b * block + jnp.arange(block, dtype=jnp.int32)
    ok = j[None, :] < chunk_ids_n[:, None]
    s = jnp.where(ok[None], s, -jnp.inf)
    allv = jnp.concatenate([vals, s], axis=-1)
    alli = jnp.concatenate([idx, jnp.broadcast_to(j, (B, n, block))], axis=-1)
    v, pos = jax.lax.top_k(allv, top_k)
    return b + 1, v, jnp.take_along_axis(alli, pos, axis=-1)

  _, vals, idx = jax.lax.while_loop(lambda c: c[0] < n_blocks, body,
                                    (jnp.zeros((), jnp.int32), vals0, idx0))
  sel_valid = vals > -jnp.inf
  sel = jnp.where(sel_valid, vals, 0.0)
  m = jnp.max(jnp.where(sel_valid, sel, -1e30), axis=-1, keepdims=True)
  m = jnp.where(jnp.any(sel_valid, -1, keepdims=True), m, 0.0)
  e = jnp.where(sel_valid, jnp.exp(sel - m), 0.0)
  den = jnp.sum(e, axis=-1, keepdims=True)
  w = e / jnp.where(den > 0, den, 1.0)
  return jnp.where(sel_valid, idx, 0).astype(jnp.int32), w


# ----------------------------------------------------------------------------- the segment step


def _segment_step(params, state: State, tokens_BxP, targets_BxP, select_Q, *, config: DRTConfig,
                  mem_block: int, n_select: int, swa_block: int = 256):
  """One segment of P text tokens (any P >= 1, not necessarily chunk-aligned):
  tokens [B, P] -> (new state, nll [B, P] f32, log-probs [B, n_select, V] at local text indices
  `select_Q` (or None)).

  With r = n_text % 63 text tokens of the current chunk already processed, the segment covers
  nv = P + nl landmark-augmented positions (nl = (r + P) // 63 landmarks, i.e. completed chunks),
  laid out in a fixed window of A = P + ceil(P/63) positions whose first nv rows are valid.
  Text token j sits at window row j + (r + j) // 63; the m-th landmark (m = 1..nl) at 64m - r - 1.
  For the chunk encoder and GCA the window is also viewed as NC+1 chunk slots of 64 rows
  (NC = ceil(P/63)): slot row s holds window row s - r, and rows s < r of slot 0 come from the
  carried `partial` buffer (lower-layer outputs of the unfinished chunk)."""
  TRACE_COUNTS["segment_step"] += 1
  cfg = config
  dt = dtype_of(cfg.dtype)
  S, L, d = cfg.chunk_size, cfg.text_per_chunk, cfg.d_model
  H, Dh = cfg.num_heads, cfg.head_dim
  B, P = tokens_BxP.shape
  NC = -(-P // L)  # most chunks that can complete inside one segment
  A = P + NC  # fixed window of augmented positions
  NS = (NC + 1) * S  # chunk-slot rows (>= 62 + A)
  M = state["lmk"].shape[1]
  block = effective_mem_block(M, mem_block)
  if M % block:
    block = math.gcd(M, block)
  emb = params["embedding"]

  n_text = state["n_text"]
  r = n_text % L  # text tokens of the current chunk already seen (its slot rows 0..r-1)
  nl = (r + P) // L  # chunks completed in this segment
  nv = P + nl  # valid window rows (a prefix)
  c0 = state["count"]  # chunk id of the current chunk (= n_text // 63)

  # window rows: landmark iff (r + i) % 64 == 63, else text token i - (r + i) // 64
  i_win = jnp.arange(A, dtype=jnp.int32)
  q_win = r + i_win
  is_lmk = (q_win % S) == S - 1
  j_src = jnp.clip(i_win - q_win // S, 0, P - 1)
  x = jnp.take(emb, tokens_BxP, axis=0).astype(dt)  # [B, P, d]
  h = jnp.where(is_lmk[None, :, None], params["landmark"].astype(dt)[None, None, :],
                jnp.take(x, j_src, axis=1))
  j_txt = jnp.arange(P, dtype=jnp.int32)
  a_txt = j_txt + (r + j_txt) // L  # window row of each text token
  s_rows = jnp.arange(NS, dtype=jnp.int32)
  s_src = jnp.clip(s_rows - r, 0, A - 1)  # window row held by each slot row

  def to_slots(y_BxAxd):
    return jnp.take(y_BxAxd, s_src, axis=1)  # [B, NS, d]

  cache_n = state["cache_n"]
  new_k, new_v = [], []

  def swa(li, p_attn, xin):
    out, kc, vc = _swa_cached(p_attn, xin, state["swa_k"][li], state["swa_v"][li], cache_n, cfg, dt,
                               swa_block, n_valid=nv)
    new_k.append(kc)
    new_v.append(vc)
    return out

  # lower layers
  for i in range(cfg.lower_layers):
    p = params[f"lower_{i}"]
    h = h + swa(i, p["attn"], _norm(p["norm1"], h, cfg, dt))
    h = h + _mlp(p["mlp"], _norm(p["norm2"], h, cfg, dt), cfg, dt)

  # chunk slots of lower-layer outputs; slot 0 rows < r come from the carried partial chunk
  z = jnp.where((s_rows < r)[None, :, None],
                jnp.pad(state["partial"].astype(dt), ((0, 0), (0, NS - S), (0, 0))), to_slots(h))
  new_partial = jax.lax.dynamic_slice_in_dim(z, nl * S, S, axis=1)

  # chunk encoder on the NC first slots (the first nl are complete), written into memory at
  # `count`; rows beyond count + nl are scratch (never retrieved, overwritten later)
  pdt = dtype_of(cfg.param_dtype)
  enc = ChunkEncoder(cfg.encoder_layers, H, Dh, cfg.mlp_dim, cfg.rope_theta, cfg.norm_eps,
                     cfg.init_std, dtype=dt, param_dtype=pdt, impl=cfg.swa_impl).apply(
                         {"params": params["encoder"]}, z[:, :NC * S].reshape(B, NC, S, d))
  host = "host_key" in state
  enc = enc.astype(dt)
  lmk_buf = jax.lax.dynamic_update_slice_in_dim(state["lmk"], enc[:, :, S - 1], c0, 1)
  if host:
    io_callback(_host_write, None, state["host_key"], c0, enc, ordered=True)
  else:
    enc_buf = jax.lax.dynamic_update_slice_in_dim(state["enc"], enc, c0, 1)
  sink = (jnp.arange(S) < S - 1)[None, None, :, None, None]
  K = cfg.top_k
  n_sel = (NC + 1) * K
  sel_idx = jnp.broadcast_to(jnp.arange(n_sel, dtype=jnp.int32).reshape(NC + 1, K),
                             (B, NC + 1, K))

  def fetch(sidx_BxNxK):
    """The selected chunks' memory K/V [B, (NC+1)*K, S, H, Dh] (gathered, then projected)."""
    flat = sidx_BxNxK.reshape(B, n_sel)
    if host:
      g = io_callback(_host_gather, jax.ShapeDtypeStruct((B, n_sel, S, d), dt),
                      state["host_key"], flat, ordered=True)
    else:
      g = jax.vmap(lambda e, i: jnp.take(e, i, axis=0))(enc_buf, flat)
    km = jnp.where(sink, _dense(params["mem_k"], g, dt).reshape(B, n_sel, S, H, Dh), 0)
    vm = jnp.where(sink, _dense(params["mem_v"], g, dt).reshape(B, n_sel, S, H, Dh), 0)
    return km.astype(dt), vm.astype(dt)

  chunk_ids = c0 + jnp.arange(NC, dtype=jnp.int32)
  lmk_rows = jnp.clip(S * jnp.arange(1, NC + 1, dtype=jnp.int32) - r - 1, 0, A - 1)

  # upper groups
  layer = cfg.lower_layers
  ui = 0
  ret_idx, ret_w = [], []
  for g, nlay in enumerate(cfg.upper_groups):
    query = jnp.take(h, lmk_rows, axis=1)  # [B, NC, d] landmark hidden states at group entry
    qn = RMSNorm(cfg.norm_eps, jnp.float32, pdt).apply(
        {"params": params[f"retriever_{g}"]["query_norm"]}, query)
    idx, w = blocked_topk_retrieval(qn, lmk_buf, chunk_ids, cfg.top_k, block)
    # c -> c+1 shift: slot 0 (the current chunk) is served by the carried retrieval, slot k by
    # the retrieval of the k-th chunk completed in this segment
    sidx = jnp.concatenate([state["ret_idx"][g][:, None], idx], axis=1)  # [B, NC+1, K]
    sw = jnp.concatenate([state["ret_w"][g][:, None], w], axis=1)
    ret_idx.append(jax.lax.dynamic_index_in_dim(sidx, nl, axis=1, keepdims=False))
    ret_w.append(jax.lax.dynamic_index_in_dim(sw, nl, axis=1, keepdims=False))
    kmem, vmem = fetch(sidx)
    for _ in range(nlay):
      p = params[f"upper_{ui}"]
      h1 = h + swa(layer, p["attn"], _norm(p["norm1"], h, cfg, dt))
      gs = GroupedCrossAttention(H, Dh, cfg.gca_impl, True, cfg.norm_eps, cfg.init_std,
                                 dtype=dt, param_dtype=pdt).apply(
                                     {"params": p["gca"]}, to_slots(h1).reshape(B, NC + 1, S, d),
                                     kmem, vmem, sel_idx, sw).reshape(B, NS, d)
      gout = jnp.take(gs, r + i_win, axis=1)  # back to window rows
      if cfg.gca_residual == "official":
        h = h1 + _mlp(p["mlp"], _norm(p["norm2"], h1 + gout, cfg, dt), cfg, dt)
      else:
        h2 = h1 + gout
        h = h2 + _mlp(p["mlp"], _norm(p["norm2"], h2, cfg, dt), cfg, dt)
      layer += 1
      ui += 1

  h = _norm(params["final_norm"], h, cfg, dt)
  ht = jnp.take(h, a_txt, axis=1)  # [B, P, d] text rows
  logits = jnp.einsum("btd,vd->btv", ht, emb.astype(ht.dtype), preferred_element_type=jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets_BxP[..., None].astype(jnp.int32), axis=-1)[..., 0]
  sel = jnp.take(logp, select_Q, axis=1) if n_select else None

  new_state = {
      "pos": state["pos"] + nv,
      "n_text": n_text + P,
      "count": c0 + nl,
      "cache_n": jnp.minimum(cache_n + nv, cfg.window - 1),
      "swa_k": jnp.stack(new_k).astype(state["swa_k"].dtype),
      "swa_v": jnp.stack(new_v).astype(state["swa_v"].dtype),
      "partial": new_partial.astype(state["partial"].dtype),
      "lmk": lmk_buf,
      "ret_idx": jnp.stack(ret_idx).astype(jnp.int32),
      "ret_w": jnp.stack(ret_w).astype(jnp.float32),
  }
  if host:
    new_state["host_key"] = state["host_key"]
  else:
    new_state["enc"] = enc_buf
  return new_state, nll, sel


segment_step = jax.jit(_segment_step,
                       static_argnames=("config", "mem_block", "n_select", "swa_block"),
                       donate_argnames=("state",))


# ----------------------------------------------------------------------------- drivers


def _check_segment(cfg: DRTConfig, segment_len: int) -> int:
  """Validates `segment_len` (any positive int); returns the most chunks that can complete
  inside one segment, ceil(segment_len / 63) (= chunk rows a step writes into memory)."""
  if isinstance(segment_len, bool) or not isinstance(segment_len, (int, np.integer)) \
      or segment_len <= 0:
    raise ValueError(f"segment_len={segment_len!r} must be a positive int (text tokens per segment)")
  return -(-int(segment_len) // cfg.text_per_chunk)


def _check_memory(memory: str) -> None:
  if memory not in ("auto", "device", "host"):
    raise ValueError(f"memory={memory!r}: expected 'auto', 'device' or 'host'")


class DRTStream:
  """Incremental stream: `feed(tokens [B, segment_len], targets)` -> nll [B, segment_len].

  `segment_len` is any positive number of text tokens (chunk-aligned or not); every `feed` uses
  the same compiled step.

  The memory starts at `capacity` chunks and doubles (power-of-two capacities; one recompilation
  per doubling) when a segment would overflow it. `memory`: "device", "host" (chunk memory in
  host RAM, only selected chunks fetched; see the module docstring) or "auto" (decided from
  `expected_tokens` when given, else "device"). `close()` frees a host memory.
  """

  def __init__(self, params, config: DRTConfig, batch: int, *, segment_len: int,
               capacity: int = 64, mem_block: int = 4096, memory: str = "auto",
               start_position: int = 0, swa_block: int = 256, expected_tokens: int | None = None):
    _check_config(config)
    self.memory = resolve_memory(memory, config, batch, expected_tokens)
    self.params = flax.core.meta.unbox(params)
    self.config = config
    self.n = _check_segment(config, segment_len)  # max chunks completed per segment
    self.segment_len = int(segment_len)
    self.mem_block = mem_block
    self.swa_block = swa_block
    self.host = None
    if self.memory == "host":
      self.host = HostMemory(batch, config.chunk_size, config.d_model,
                             jnp.dtype(dtype_of(config.dtype)), capacity)
    self.state = init_state(config, batch, capacity, mem_block=mem_block,
                            start_position=start_position,
                            host_key=None if self.host is None else self.host.key)
    self.n_text = 0  # host mirror of state["n_text"]

  def close(self) -> None:
    """Frees the host memory (if any); the stream cannot be fed afterwards."""
    if self.host is not None:
      self.host.close()

  def memory_bytes(self) -> dict[str, int]:
    """Bytes held by the stream state: on device, and on the host (chunk memory if "host")."""
    dev = sum(int(x.nbytes) for x in jax.tree.leaves(self.state))
    return {"device": dev, "host": 0 if self.host is None else self.host.nbytes}

  def feed(self, tokens_BxL, targets_BxL=None, select=None):
    """Processes one segment. `select`: local text indices whose log-probs to return.
    Returns nll [B, segment_len] (and log-probs [B, len(select), V] if `select` is given)."""
    tokens = jnp.asarray(tokens_BxL, jnp.int32)
    if tokens.shape[1] != self.segment_len:
      raise ValueError(f"feed: expected {self.segment_len} tokens per segment, got {tokens.shape[1]}")
    targets = jnp.zeros_like(tokens) if targets_BxL is None else jnp.asarray(targets_BxL, jnp.int32)
    # the step writes ceil(P/63) memory rows at `count` (those beyond the completed chunks are
    # scratch), so the buffers must hold count + ceil(P/63) rows
    need = self.n_text // self.config.text_per_chunk + self.n
    M = self.state["lmk"].shape[1]
    if need > M:
      self.state = grow_state(self.state, 1 << math.ceil(math.log2(need)), mem_block=self.mem_block)
    sel = jnp.zeros((0,), jnp.int32) if select is None else jnp.asarray(select, jnp.int32)
    self.state, nll, lp = segment_step(self.params, self.state, tokens, targets, sel,
                                       config=self.config, mem_block=self.mem_block,
                                       n_select=int(sel.shape[0]), swa_block=self.swa_block)
    self.n_text += self.segment_len
    return nll if select is None else (nll, lp)


def num_segments(T: int, segment_len: int) -> int:
  """Segments of `segment_len` needed for the T-1 inputs of a [B, T] token array."""
  return -(-(T - 1) // segment_len)


def run_segments(stream, tokens_BxT: np.ndarray, segment_len: int, positions=None):
  """Feeds tokens [:, :-1] (targets tokens [:, 1:]) to `stream` (anything with this module's
  `DRTStream.feed(tokens, targets, select)` / `close()`) segment by segment, the last one
  right-padded, then closes it. Returns (nll [B, T-1], log-probs [B, Q, V] numpy at the text
  `positions` [Q], or None without positions). The selection passed to every `feed` has the
  same size Q (rows outside the segment point at 0), so each stream compiles its step once."""
  B, T = tokens_BxT.shape
  Tin = T - 1
  nseg = num_segments(T, segment_len)
  pad = nseg * segment_len - Tin
  inp = np.pad(tokens_BxT[:, :-1], ((0, 0), (0, pad)))
  tgt = np.pad(tokens_BxT[:, 1:], ((0, 0), (0, pad)))
  if positions is not None:
    positions = np.asarray(positions, np.int64)
    if positions.ndim != 1 or np.any(positions < 0) or np.any(positions >= T):
      raise ValueError(f"positions must be a 1-D array of text positions in [0, {T}), got {positions}")
  nlls, picked = [], []
  for s in range(nseg):
    sl = slice(s * segment_len, (s + 1) * segment_len)
    if positions is None:
      nlls.append(stream.feed(inp[:, sl], tgt[:, sl]))
      continue
    local = positions - s * segment_len
    inside = (local >= 0) & (local < segment_len)
    nll, lp = stream.feed(inp[:, sl], tgt[:, sl], select=np.where(inside, local, 0).astype(np.int32))
    nlls.append(nll)
    picked.append((inside, lp))
  nll = jnp.concatenate(nlls, axis=1)[:, :Tin].block_until_ready()
  stream.close()
  if positions is None:
    return nll, None
  out = None
  for inside, lp in picked:
    if inside.any():
      lp = np.asarray(lp)
      out = np.zeros(lp.shape, np.float32) if out is None else out
      out[:, inside] = lp[:, inside]
  return nll, out


def _check_tokens(tokens) -> np.ndarray:
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[1] < 2:
    raise ValueError(f"tokens must be [B, T] with T >= 2, got {tokens.shape}")
  return tokens


def _run_stream(params, config, tokens, segment_len, memory, mem_block, positions=None,
                swa_block=256):
  tokens = _check_tokens(tokens)
  n = _check_segment(config, segment_len)
  B, T = tokens.shape
  nseg = num_segments(T, segment_len)
  stream = DRTStream(params, config, B, segment_len=segment_len,
                     capacity=(nseg * segment_len) // config.text_per_chunk + n,
                     mem_block=mem_block, memory=memory, swa_block=swa_block,
                     expected_tokens=nseg * segment_len)
  return run_segments(stream, tokens, segment_len, positions)


def stream_nll(params, config: DRTConfig, tokens, *, segment_len: int, memory: str = "auto",
               mem_block: int = 4096, swa_block: int = 256):
  """Per-token NLL [B, T-1] float32 of token t+1 given tokens <= t, streamed segment by segment.

  Equals the full forward pass `DRT(config).apply({"params": params}, tokens[:, :-1])` (train=False)
  NLL wherever that fits, for any `segment_len` >= 1 (segments need not be aligned to the
  63-token chunks), any window size W and any T >= 2. The step is compiled once per stream.
  Memory is preallocated for the whole stream; `memory` = "device" | "host" | "auto" places the
  chunk memory (see the module docstring); results are identical.
  """
  _check_config(config)
  _check_memory(memory)
  nll, _ = _run_stream(params, config, tokens, segment_len, memory, mem_block,
                       swa_block=swa_block)
  return nll


def stream_logprobs_at(params, config: DRTConfig, tokens, positions, *, segment_len: int,
                       memory: str = "auto", mem_block: int = 4096):
  """Log-probabilities [B, Q, V] (f32) of the token following each text position in `positions`
  (int [Q], each < T-1), given tokens <= that position, without materialising [T, V]
  (one [B, segment_len, V] block on device at a time). Also returns the full NLL [B, T-1].

  Returns (logprobs [B, Q, V] numpy, nll [B, T-1]). Argmax of the log-probs gives passkey guesses.
  """
  _check_config(config)
  _check_memory(memory)
  positions = np.asarray(positions, np.int64)
  T = np.asarray(tokens).shape[1]
  if positions.ndim != 1 or np.any(positions >= T - 1) or np.any(positions < 0):
    raise ValueError(f"positions must be 1-D text positions in [0, {T - 1}), got {positions}")
  nll, lp = _run_stream(params, config, tokens, segment_len, memory, mem_block, positions)
  return lp, nll


stream_logits_at = stream_logprobs_at
