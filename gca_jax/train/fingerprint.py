"""Per-array fingerprints of a checkpointed pytree: sha256 of each leaf's bytes plus its shape and
dtype, keyed by the leaf's tree path ("params/embedding", "opt_state/0/mu/embedding", "step").

    record = fingerprint_tree(state)          # JSON-able {"version", "algorithm", "leaves"}
    bad = mismatches(record, restored)        # [(path, cause)], empty when every leaf matches

Every leaf also gets "wsum32": a position-weighted sum of its bit patterns modulo 2^32 (two
32-bit words), computed on the devices by one jitted reduction. Integer addition is associative,
so the value does not depend on how the leaf is sharded or over how many processes: it verifies
leaves sharded across processes (which no process can hash whole) and restores onto another
process count. Any change of a single element changes it. The sha256 is taken of the leaves a
process sees whole (every leaf of a single-process run). Computing a record is collective in a
multi-process run: every process calls `fingerprint_tree` / `mismatches` (with `hash_host=False`
on the processes that write nothing). A restored leaf whose dtype differs from the saved one (a
restore that casts) is not compared.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

VERSION = 1
ALGORITHM = "sha256"
_NOT_ADDRESSABLE = "sharded across processes (not fully addressable from one process)"


def _key_str(k) -> str:
  for attr in ("name", "key", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def leaf_path(path) -> str:
  """"a/b/c" of a jax tree path (attribute, dict and sequence keys alike)."""
  return "/".join(_key_str(k) for k in path)


def _host_view(x):
  """The whole value of leaf `x` as something `np.asarray` takes, or None (not visible whole)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return x.addressable_shards[0].data if x.is_fully_replicated else None
  return x


def digest(a: np.ndarray) -> str:
  """sha256 hex digest of the C-order bytes of numpy array `a`."""
  a = np.ascontiguousarray(a)
  return hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()


_MUL1, _MUL2, _ADD = np.uint32(0x9E3779B1), np.uint32(0x85EBCA77), np.uint32(0x7F4A7C15)


def _bits_u32(x: jax.Array) -> jax.Array:
  """The bit pattern of every element of `x` as uint32 [N] (8-byte elements: two words each)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.reshape(-1).astype(jnp.uint32)
  size = np.dtype(x.dtype).itemsize
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  u = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
  return jax.lax.bitcast_convert_type(x, u).reshape(-1).astype(jnp.uint32)


def _wsum32(x: jax.Array) -> jax.Array:
  """uint32 [2]: sum_i b_i * w1_i and sum_i (b_i ^ (b_i >> 16)) * w2_i (mod 2^32), w odd."""
  b = _bits_u32(jnp.asarray(x))
  i = jnp.arange(b.shape[0], dtype=jnp.uint32)
  w1 = (i * _MUL1 + _ADD) | np.uint32(1)
  w2 = (i * _MUL2 + (i >> 7)) | np.uint32(1)
  return jnp.stack([jnp.sum(b * w1, dtype=jnp.uint32),
                    jnp.sum((b ^ (b >> 16)) * w2, dtype=jnp.uint32)])


_wsum_tree = jax.jit(lambda leaves: [_wsum32(x) for x in leaves])


def _local(x) -> np.ndarray:
  """A (replicated) result as numpy, also when it spans processes."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_shards[0].data
  return np.asarray(x)


def _leaf_entries(tree, hash_host: bool = True) -> dict[str, dict]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  sums = _wsum_tree([x for _, x in leaves]) if leaves else []
  views = [_host_view(x) if hash_host else None for _, x in leaves]
  hosts = jax.device_get([v for v in views if v is not None])   # one batched transfer
  out, i = {}, 0
  for (path, x), v, ws in zip(leaves, views, sums):
    entry: dict[str, Any] = {"shape": [int(d) for d in np.shape(x)],
                             "dtype": str(np.dtype(x.dtype)),
                             "wsum32": "%08x%08x" % tuple(int(w) for w in _local(ws))}
    if v is not None:
      entry[ALGORITHM] = digest(np.asarray(hosts[i]))
      i += 1
    elif hash_host:
      entry["skipped"] = _NOT_ADDRESSABLE
    out[leaf_path(path)] = entry
  return out


def fingerprint_tree(tree, hash_host: bool = True) -> dict:
  """{"version", "algorithm", "leaves": {path: {"shape", "dtype", "wsum32", "sha256" |
  "skipped"}}}. Collective across processes (see the module docstring)."""
  return {"version": VERSION, "algorithm": ALGORITHM, "leaves": _leaf_entries(tree, hash_host)}


def mismatches(record: dict, tree, prefix: str = "") -> list[tuple[str, str]]:
  """[(path, cause)] of the leaves of `tree` (paths prefixed by `prefix`) that differ from
  `record`: no entry, another shape, or another digest. Skipped/cast leaves are not compared."""
  if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM \
      or not isinstance(record.get("leaves"), dict):
    return [("", f"fingerprint record is malformed (algorithm "
                 f"{record.get('algorithm') if isinstance(record, dict) else None!r})")]
  saved = record["leaves"]
  bad = []
  for path, got in _leaf_entries(tree).items():
    path = prefix + path
    want = saved.get(path)
    if not isinstance(want, dict):
      bad.append((path, "has no saved fingerprint"))
    elif list(want.get("shape", [])) != got["shape"]:
      bad.append((path, f"shape {got['shape']} != saved {want.get('shape')}"))
    elif want.get("dtype") != got["dtype"]:
      continue
    elif ALGORITHM in want and ALGORITHM in got and want[ALGORITHM] != got[ALGORITHM]:
      bad.append((path, "bytes differ from the saved sha256"))
    elif "wsum32" in want and want["wsum32"] != got["wsum32"]:
      bad.append((path, "bytes differ from the saved wsum32 checksum"))
  return bad
