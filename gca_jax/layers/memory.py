"""The DRT chunk memory of a stream (docs/method.md §2.2-2.3, §6 streaming): landmark keys on device,
encoder outputs on device or in a host store."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gca_jax.layers.common import Dtype
from gca_jax.layers.stream import StreamSpec, memory_rows


class ChunkMemory(nn.Module):
  """Growable chunk memory, a cache-only module (no params).

  Cache: "lmk" [B, M, d] landmark keys (encoder output row S-1), always on device; "enc"
  [B, M, S, d] the chunk-encoder outputs (spec.memory == "device"), or "host_key" int32 [] the id
  of a `gca_jax.ops.host_store.HostStore` holding them (spec.memory == "host"); "count" int32 []
  chunks written. M = `memory_rows(spec, text_per_chunk)`.

  `__call__(enc_BxNxSxd, n_complete, stream=spec)` writes the N encoded chunk slots at `count`
  (those past the first n_complete are scratch, overwritten later), advances count by
  n_complete and returns (landmark keys [B, M, d] including the new rows, count before the
  write, fetch) where `fetch(idx_BxN)` -> encoder outputs [B, N, S, d] of the chunks idx.
  """
  text_per_chunk: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, enc_BxNxSxd, n_complete, *, stream: StreamSpec):
    B, N, S, d = enc_BxNxSxd.shape
    M = memory_rows(stream, self.text_per_chunk)
    host = stream.memory == "host"
    lmk = self.variable("cache", "lmk", jnp.zeros, (B, M, d), self.dtype)
    count = self.variable("cache", "count", jnp.zeros, (), jnp.int32)
    if host:
      key = self.variable("cache", "host_key", jnp.zeros, (), jnp.int32)
    else:
      enc = self.variable("cache", "enc", jnp.zeros, (B, M, S, d), self.dtype)
    c0 = count.value
    M = lmk.value.shape[1]
    enc_new = enc_BxNxSxd.astype(self.dtype)
    lmk_buf = jax.lax.dynamic_update_slice_in_dim(lmk.value, enc_new[:, :, S - 1], c0, 1)
    name = "/".join(str(p) for p in self.scope.path) or "memory"
    if host:
      from gca_jax.ops import host_store as store  # noqa: PLC0415
      store.host_write(key.value, name, c0, enc_new, M)

      def fetch(idx_BxN):
        return store.host_gather(key.value, name, idx_BxN, (S, d), self.dtype, M)
    else:
      enc_buf = jax.lax.dynamic_update_slice_in_dim(enc.value, enc_new, c0, 1)

      def fetch(idx_BxN):
        return jax.vmap(lambda e, i: jnp.take(e, i, axis=0))(enc_buf, idx_BxN)
    if not self.is_initializing():
      lmk.value = lmk_buf
      count.value = c0 + n_complete
      if not host:
        enc.value = enc_buf
    return lmk_buf, c0, fetch
