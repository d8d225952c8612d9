"""Host-resident stream buffers (docs/method.md §8): a generic store of row buffers in host RAM.

A `HostStore` holds named numpy buffers [B, M, *row] that grow (doubling) on write. Jitted code
reaches it through `io_callback`s keyed by the store's integer id (a `host_key` cache leaf), via
`host_write` / `host_gather`, so a compiled step does not depend on which store it serves.
Layers (e.g. `gca_jax.layers.memory.ChunkMemory`) name their buffer; the engine creates the
store and writes its id into every `host_key` leaf of a cache.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import itertools
import math
import mmap
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

_STORES: dict[int, "HostStore"] = {}
_IDS = itertools.count(1)


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


def _raw(x):
  """An unsigned-int view of x (numpy's fancy indexing of ml_dtypes' bfloat16 is ~8x slower
  than of uint16)."""
  return x.view(np.dtype(f"u{x.dtype.itemsize}")) if x.dtype.kind not in "iub" else x


class HostStore:
  """Named row buffers [B, M, *row] in host RAM, grown by doubling on write.

  A buffer is created at its first write or gather with the rows the caller asks. Gathers are
  split over a thread pool (`threads`, default min(8, cores)): numpy's `take` releases the GIL,
  so the copy runs at memory bandwidth rather than one core's. Gather outputs come from two
  preallocated buffers per shape used in turn, page-locked on a CUDA backend. `stats` counts
  the seconds and bytes spent in writes and gathers. `close()` frees everything."""

  def __init__(self, threads: int | None = None):
    self.key = next(_IDS)
    self.buffers: dict[str, np.ndarray] = {}
    self.threads = max(1, threads or min(8, os.cpu_count() or 1))
    self._pool = (concurrent.futures.ThreadPoolExecutor(self.threads, "gca-host")
                  if self.threads > 1 else None)
    self.stats = {"write_s": 0.0, "write_bytes": 0, "gather_s": 0.0, "gather_bytes": 0,
                  "gathers": 0}
    self._ring: dict = {}
    self._pinned: list = []
    _STORES[self.key] = self

  @property
  def nbytes(self) -> int:
    return sum(b.nbytes for b in self.buffers.values())

  def _buffer(self, name: str, batch: int, row_shape, dtype, rows: int,
              capacity: int = 0) -> np.ndarray:
    """Buffer `name` with at least `rows` rows (created with max(rows, capacity) rows; grown to
    max(capacity, the next power of two of rows))."""
    buf = self.buffers.get(name)
    if buf is None:
      buf = _host_zeros((batch, max(rows, capacity, 1)) + tuple(row_shape), dtype)
    elif rows > buf.shape[1]:
      new_rows = max(capacity, 1 << math.ceil(math.log2(rows)))
      new = _host_zeros((buf.shape[0], new_rows) + buf.shape[2:], buf.dtype)
      new[:, :buf.shape[1]] = buf
      buf = new
    self.buffers[name] = buf
    return buf

  def write(self, name: str, c0, x_BxNxR, capacity: int = 0) -> None:
    """Rows x [B, N, *row] written at rows c0 .. c0+N-1 of buffer `name` (`capacity`: rows to
    allocate when the buffer is created or grown)."""
    t0 = time.perf_counter()
    c0 = int(c0)
    x = np.asarray(x_BxNxR)
    n = x.shape[1]
    buf = self._buffer(name, x.shape[0], x.shape[2:], x.dtype, c0 + n, capacity)
    _raw(buf)[:, c0:c0 + n] = _raw(x.astype(buf.dtype, copy=False))
    self.stats["write_s"] += time.perf_counter() - t0
    self.stats["write_bytes"] += x.nbytes

  def gather(self, name: str, idx_BxN, row_shape, dtype, capacity: int = 0) -> np.ndarray:
    """Rows idx [B, N] of buffer `name` -> [B, N, *row] (in `threads` pieces)."""
    t0 = time.perf_counter()
    idx = np.asarray(idx_BxN)
    B, N = idx.shape
    raw = _raw(self._buffer(name, B, row_shape, np.dtype(dtype), 0, capacity))
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
    return out.view(np.dtype(dtype))

  def _out_buffer(self, shape, dtype):
    """One of two preallocated gather outputs per shape, used in turn, page-locked on a CUDA
    backend (`cuda_host_register`, so the callback's host -> device copy is a DMA). Two are
    enough: the callback's result is copied to the device before the next callback of the
    ordered sequence runs, so the buffer handed out two gathers ago is no longer read."""
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

  def close(self) -> None:
    _STORES.pop(self.key, None)
    self.buffers = {}
    for a in self._pinned:
      cuda_host_unregister(a)
    self._pinned, self._ring = [], {}
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None


def get_store(key) -> HostStore:
  try:
    return _STORES[int(key)]
  except KeyError:
    raise KeyError(f"host store id {int(key)} is not open (a cache leaf `host_key` must hold the "
                   "id of a live HostStore; the engine sets it)") from None


def host_write(host_key, name: str, c0, x_BxNxR, capacity: int = 0) -> None:
  """Inside jit: writes rows x [B, N, *row] at c0 of buffer `name` of store `host_key`
  (`capacity`: rows of the buffer, static)."""
  io_callback(lambda k, c, x: get_store(k).write(name, c, x, capacity), None, host_key, c0,
              x_BxNxR, ordered=True)


def host_gather(host_key, name: str, idx_BxN, row_shape, dtype, capacity: int = 0):
  """Inside jit: rows idx [B, N] of buffer `name` of store `host_key` -> [B, N, *row_shape]."""
  B, N = idx_BxN.shape
  dtype = jnp.dtype(dtype)
  out = jax.ShapeDtypeStruct((B, N) + tuple(row_shape), dtype)
  return io_callback(lambda k, i: get_store(k).gather(name, i, row_shape, dtype, capacity), out,
                     host_key, idx_BxN, ordered=True)
