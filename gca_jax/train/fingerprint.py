"""Per-array fingerprints of a checkpointed pytree: sha256 of each leaf's bytes plus its shape and
dtype, keyed by the leaf's tree path ("params/embedding", "opt_state/0/mu/embedding", "step").

    record = fingerprint_tree(state)          # JSON-able {"version", "algorithm", "leaves"}
    bad = mismatches(record, restored)        # [(path, cause)], empty when every leaf matches

Leaves a process cannot see whole (sharded across processes: not fully addressable, not fully
replicated) get {"skipped": reason} instead of a digest and are not verified; every leaf of a
single-process run is hashed. A restored leaf whose dtype differs from the saved one (a restore
that casts) is not compared.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
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


def _leaf_entries(tree) -> dict[str, dict]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  views = [_host_view(x) for _, x in leaves]
  hosts = jax.device_get([v for v in views if v is not None])   # one batched transfer
  out, i = {}, 0
  for (path, x), v in zip(leaves, views):
    entry: dict[str, Any] = {"shape": [int(d) for d in np.shape(x)],
                             "dtype": str(np.dtype(x.dtype))}
    if v is None:
      entry["skipped"] = _NOT_ADDRESSABLE
    else:
      entry[ALGORITHM] = digest(np.asarray(hosts[i]))
      i += 1
    out[leaf_path(path)] = entry
  return out


def fingerprint_tree(tree) -> dict:
  """{"version", "algorithm", "leaves": {path: {"shape", "dtype", "sha256" | "skipped"}}}."""
  return {"version": VERSION, "algorithm": ALGORITHM, "leaves": _leaf_entries(tree)}


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
    elif "skipped" in want or "skipped" in got or want.get("dtype") != got["dtype"]:
      continue
    elif want.get(ALGORITHM) != got[ALGORITHM]:
      bad.append((path, "bytes differ from the saved sha256"))
  return bad
