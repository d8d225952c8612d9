"""Model-agnostic streaming engine (docs/method.md §8): drives any Linen module whose layers stream
through the "cache" collection (`stream=StreamSpec`), segment by segment.

The engine holds no model math. A stream's cache is `jax.eval_shape` of
`model.init(..., stream=spec)` filled with zeros; one jit-compiled step (`TRACE_COUNTS["step"]`
counts its traces) applies the model to a segment with the cache donated and computes the NLL
and the selected log-probs on device (never [T, V] on the host). When a segment would overflow
`spec.capacity_tokens`, the cache grows: shapes re-derived at twice the capacity, every leaf
zero-padded (one recompilation per doubling). memory="host": cache leaves named `host_key` get
the id of a `HostStore` (`gca_jax.ops.host_store`) holding the layers' host buffers.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.config import DRTConfig
from gca_jax.ops.host_store import HostStore
from gca_jax.layers.stream import StreamSpec

# Python side-effect counter: incremented each time the segment step is traced (tests use it).
TRACE_COUNTS: dict[str, int] = {"step": 0}

_SPEC_KW = ("mem_block", "swa_block", "query_block", "landmark_top_k", "landmark_local_blocks")
_ALIASES = {"top_k": "landmark_top_k", "local_blocks": "landmark_local_blocks"}


def _check_memory(memory: str) -> None:
  if memory not in ("auto", "device", "host"):
    raise ValueError(f"memory={memory!r}: expected 'auto', 'device' or 'host'")


def _check_segment(segment_len) -> int:
  if isinstance(segment_len, bool) or not isinstance(segment_len, (int, np.integer)) \
      or segment_len <= 0:
    raise ValueError(f"segment_len={segment_len!r} must be a positive int "
                     "(text tokens per segment)")
  return int(segment_len)


def spec_kwargs(kw: dict) -> dict:
  """StreamSpec keyword arguments from `kw` (aliases top_k / local_blocks for the landmark
  options); an unknown keyword raises TypeError naming it."""
  out = {}
  for k, v in kw.items():
    k = _ALIASES.get(k, k)
    if k not in _SPEC_KW:
      raise TypeError(f"streaming: unexpected keyword {k!r}; accepted: {list(_SPEC_KW)}")
    out[k] = v
  return out


_SHAPES: dict = {}


def cache_shapes(model: nn.Module, batch: int, segment_len: int, spec: StreamSpec):
  """The cache pytree of ShapeDtypeStructs of `model` for `spec` (cached per arguments)."""
  key = (model, batch, segment_len, spec)
  if key not in _SHAPES:
    toks = jax.ShapeDtypeStruct((batch, segment_len), jnp.int32)
    out = jax.eval_shape(lambda t: model.init({"params": jax.random.key(0)}, t, stream=spec), toks)
    if "cache" not in out:
      raise ValueError(f"{type(model).__name__}.init(..., stream=spec) created no 'cache' "
                       "variables: its layers must be called with stream=")
    _SHAPES[key] = flax.core.unfreeze(out["cache"])
  return _SHAPES[key]


def _nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _is_host_key(path) -> bool:
  last = path[-1]
  return getattr(last, "key", getattr(last, "name", None)) == "host_key"


def _set_host_key(cache, key: int):
  return jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.full(x.shape, key, x.dtype) if _is_host_key(p) else x, cache)


def _grow(cache, shapes):
  """Zero-pads every leaf of `cache` at the end of each axis to the shape in `shapes`."""
  def pad(x, s):
    if x.shape == s.shape:
      return x
    return jnp.pad(x, [(0, n - o) for o, n in zip(x.shape, s.shape)])
  return jax.tree.map(pad, cache, shapes)


@functools.partial(jax.jit, static_argnames=("model", "spec", "n_select"),
                   donate_argnames=("cache",))
def _step(params, cache, tokens_BxP, targets_BxP, select_Q, *, model, spec, n_select):
  """One segment -> (cache, nll [B, P] f32, log-probs [B, n_select, V] or None)."""
  TRACE_COUNTS["step"] += 1
  logits, upd = model.apply({"params": params, "cache": cache}, tokens_BxP, stream=spec,
                            mutable=["cache"])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets_BxP[..., None], axis=-1)[..., 0]
  sel = jnp.take(logp, select_Q, axis=1) if n_select else None
  return upd["cache"], nll, sel


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


def host_available_bytes() -> int | None:
  """MemAvailable of /proc/meminfo in bytes, or None where unknown."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def available_bytes() -> dict:
  """{"device": free bytes of the first device or None (CPU), "host": MemAvailable or None,
  "device_name": "platform:id"} (what `check_stream_fits` compares against)."""
  dev = jax.devices()[0]
  return {"device": device_free_bytes(dev), "host": host_available_bytes(),
          "device_name": f"{dev.platform}:{dev.id}"}


class StreamMemoryError(ValueError):
  """A stream's chunk memory does not fit in the memory available (raised before allocating)."""


def _mib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_stream_fits(model, batch: int, segment_len: int, spec: StreamSpec) -> dict:
  """Raises StreamMemoryError when the cache of a stream of `model` for `spec` (chunk memory at
  `spec.capacity_tokens`, placed by `spec.memory`) plus one segment's f32 logits (x3: logits,
  log-softmax, gather; when the model has `config.vocab_size`) exceeds the free device memory,
  or its host part exceeds MemAvailable; on CPU (no device stats) device + host parts are
  compared with MemAvailable. Unknown availability passes. Returns {"device", "host", "cache"}.
  """
  kw = {k: getattr(spec, k) for k in _SPEC_KW}
  cache = _nbytes(cache_shapes(model, batch, segment_len, spec))
  vocab = getattr(getattr(model, "config", None), "vocab_size", None)
  logits = 3 * batch * segment_len * int(vocab) * 4 if vocab else 0
  host = 0
  if spec.memory == "host":
    host = model_cache_bytes(model, batch, spec.capacity_tokens, segment_len=segment_len,
                             memory="host", **kw)["host"]
  need = {"device": cache + logits, "host": host, "cache": cache}
  av = available_bytes()
  checks = []
  if av.get("device") is not None:
    checks.append((f"device memory of {av.get('device_name', 'the device')}", cache + logits,
                   cache + host, av["device"]))
    if av.get("host") is not None and host:
      checks.append(("host memory (MemAvailable)", host, host, av["host"]))
  elif av.get("host") is not None:
    checks.append(("host memory (MemAvailable; the CPU backend's arrays live there)",
                   cache + logits + host, cache + host, av["host"]))
  for where, n, chunk, have in checks:
    if n <= have:
      continue
    hints = []
    if spec.memory != "host" and av.get("device") is not None and where.startswith("device"):
      moved = model_cache_bytes(model, batch, spec.capacity_tokens, segment_len=segment_len,
                                memory="host", **kw)["host"]
      if moved:
        hints.append(f'memory="host" (moves {_mib(moved)} of chunk memory to host RAM)')
    if batch > 1:
      hints.append(f"a smaller batch (batch {batch} -> {max(1, batch * have // max(n, 1))})")
    hints.append("a shorter stream")
    raise StreamMemoryError(
        f"streaming: a stream of batch {batch} x {spec.capacity_tokens} tokens "
        f"(segment_len {segment_len}, memory={spec.memory!r}) needs about {_mib(n)} of {where} "
        f"(chunk memory {_mib(chunk)}, one segment's logits {_mib(logits)}), {_mib(have)} "
        "available; use " + ", or ".join(hints))
  return need


def model_cache_bytes(model, batch: int, n_text: int, *, segment_len: int, memory: str,
                      **spec_kw) -> dict[str, int]:
  """{"device": bytes, "host": bytes} of `model`'s stream cache for `n_text` text tokens
  (memory "device" or "host"; host bytes = what the host placement moves off the device)."""
  if memory not in ("device", "host"):
    raise ValueError(f"memory={memory!r}: expected 'device' or 'host'")
  kw = spec_kwargs(spec_kw)
  if memory == "device":
    return {"device": _nbytes(cache_shapes(model, batch, segment_len,
                                           StreamSpec(max(n_text, segment_len), "device", **kw))),
            "host": 0}
  host_tree = cache_shapes(model, batch, segment_len,
                           StreamSpec(max(n_text, segment_len), "host", **kw))
  flat = lambda t: {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(t)}
  dev_leaves, host_leaves = flat(cache_shapes(model, batch, segment_len,
                                              StreamSpec(max(n_text, segment_len), "device",
                                                         **kw))), flat(host_tree)
  moved = [x for k, x in dev_leaves.items() if k not in host_leaves]
  return {"device": _nbytes(host_tree), "host": _nbytes(moved)}


def cache_bytes(config: DRTConfig, batch: int, n_text: int, *, segment_len: int,
                memory: str = "device", **spec_kw) -> dict[str, int]:
  """{"device": int, "host": int} bytes of a `DRT(config)` stream of `n_text` text tokens with
  chunk memory placed by `memory` ("device" | "host"), from the cache shapes."""
  from gca_jax.models.drt import DRT  # noqa: PLC0415
  return model_cache_bytes(DRT(config), batch, n_text, segment_len=segment_len, memory=memory,
                           **spec_kw)


def _resolve(model, batch, n_text, segment_len, memory, auto_fraction, spec_kw) -> str:
  _check_memory(memory)
  if memory != "auto":
    return memory
  free = device_free_bytes()
  if n_text is None or free is None:
    return "device"
  b = model_cache_bytes(model, batch, n_text, segment_len=segment_len, memory="device",
                        **spec_kw)["device"]
  if b <= auto_fraction * free:
    return "device"
  hb = model_cache_bytes(model, batch, n_text, segment_len=segment_len, memory="host", **spec_kw)
  return "host" if hb["host"] > 0 else "device"


def resolve_memory(memory: str, config: DRTConfig, batch: int, n_text: int | None, *,
                   segment_len: int = 1024, auto_fraction: float = 0.5, **spec_kw) -> str:
  """"device" or "host" for `memory` in auto|device|host: "auto" picks "device" when the whole
  stream's cache fits in `auto_fraction` of the device's free memory (or either is unknown),
  else "host" (where the model has host-placeable buffers)."""
  from gca_jax.models.drt import DRT  # noqa: PLC0415
  return _resolve(DRT(config), batch, n_text, segment_len, memory, auto_fraction, spec_kw)


class Stream:
  """An incremental stream of `model` (any Linen module that forwards `stream=` to layers of
  `gca_jax.layers`; called as `model.apply(vars, tokens [B, P], stream=spec)` -> logits).

  `feed(tokens [B, P], targets=None, select=None)` advances the stream by P text tokens (P =
  `segment_len` normally; any other P >= 1 compiles its own step once) and returns nll [B, P]
  (of `targets`, zeros if None), plus log-probs [B, Q, V] at the local indices `select` [Q] when
  given. The cache holds `capacity_tokens` (default `expected_tokens`, else 64 segments) and
  doubles when a segment would overflow it. memory: "device" | "host" | "auto" (decided from
  `expected_tokens`; "device" when unknown). `close()` frees the host store.
  """

  def __init__(self, model: nn.Module, params, batch: int, *, segment_len: int,
               memory: str = "auto", expected_tokens: int | None = None,
               capacity_tokens: int | None = None, auto_fraction: float = 0.5, **spec_kw):
    self.model = model
    self.segment_len = _check_segment(segment_len)
    self.batch = int(batch)
    self._kw = spec_kwargs(spec_kw)
    self.memory = _resolve(model, batch, expected_tokens, self.segment_len, memory,
                           auto_fraction, self._kw)
    cap = capacity_tokens or expected_tokens or 64 * self.segment_len
    self.capacity_tokens = max(int(cap), self.segment_len)
    self.spec = StreamSpec(self.capacity_tokens, self.memory, **self._kw)
    self.params = flax.core.meta.unbox(params)
    check_stream_fits(model, self.batch, self.segment_len, self.spec)
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         cache_shapes(model, self.batch, self.segment_len, self.spec))
    self.store = None
    if any(_is_host_key(p) for p, _ in jax.tree_util.tree_leaves_with_path(cache)):
      self.store = HostStore()
      cache = _set_host_key(cache, self.store.key)
    self.cache: Any = cache
    self.n_text = 0

  @property
  def host(self):
    return self.store

  def close(self) -> None:
    """Frees the host store (if any); the stream cannot be fed afterwards."""
    if self.store is not None:
      self.store.close()

  def memory_bytes(self) -> dict[str, int]:
    """Bytes held by the stream: cache on device, host store on the host."""
    dev = sum(int(x.nbytes) for x in jax.tree.leaves(self.cache))
    return {"device": dev, "host": 0 if self.store is None else self.store.nbytes}

  def _ensure_capacity(self, P: int) -> None:
    """Grows the cache (capacity doubled until it holds the stream after P more tokens). When the
    cache shapes do not depend on the capacity (e.g. SWA only), the compiled step is kept."""
    need = self.n_text + P
    if need <= self.capacity_tokens:
      return
    cap = self.capacity_tokens
    while cap < need:
      cap *= 2
    self.capacity_tokens = cap
    spec = StreamSpec(cap, self.memory, **self._kw)
    shapes = cache_shapes(self.model, self.batch, self.segment_len, spec)
    old = jax.tree.map(lambda x: (x.shape, x.dtype), self.cache)
    if jax.tree.map(lambda x: (x.shape, x.dtype), shapes) != old:
      check_stream_fits(self.model, self.batch, self.segment_len, spec)
      self.spec = spec
      self.cache = _grow(self.cache, shapes)

  def feed(self, tokens_BxP, targets_BxP=None, select=None):
    tokens = jnp.asarray(tokens_BxP, jnp.int32)
    if tokens.ndim != 2 or tokens.shape[0] != self.batch or tokens.shape[1] < 1:
      raise ValueError(f"feed: tokens must be [{self.batch}, P >= 1], got {tokens.shape}")
    P = tokens.shape[1]
    targets = jnp.zeros_like(tokens) if targets_BxP is None else jnp.asarray(targets_BxP,
                                                                            jnp.int32)
    self._ensure_capacity(P)
    sel = jnp.zeros((0,), jnp.int32) if select is None else jnp.asarray(select, jnp.int32)
    self.cache, nll, lp = _step(self.params, self.cache, tokens, targets, sel, model=self.model,
                                spec=self.spec, n_select=int(sel.shape[0]))
    self.n_text += P
    return nll if select is None else (nll, lp)
