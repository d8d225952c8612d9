"""Device mesh and the one table mapping logical axis names to mesh axes (MaxText style).

Mesh axes are `("data", "fsdp", "context", "tensor")`; "context" (size 1 unless
`config.mesh.context` > 1) splits each sample's sequence by whole chunks (docs/method.md §10,
`gca_jax.models.context_parallel`). Parameters carry logical names through
`nn.with_logical_partitioning`; activations through `nn.with_logical_constraint`.
Parameter names: "vocab", "embed", "mlp", "heads", "norm".
Activation names: "batch", "act_length", "act_embed", "act_heads", "act_mlp", "act_vocab".
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "context", "tensor")
BATCH_AXES = ("data", "fsdp")
CONTEXT_AXIS = "context"

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("norm", None),
    # activations
    ("batch", BATCH_AXES),
    ("act_length", CONTEXT_AXIS),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


class MeshError(ValueError):
  """The requested mesh shape does not fit the available devices."""


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int,
               context: int = 1) -> tuple[int, int, int]:
  """Resolves one `-1` entry of (data, fsdp, tensor) to "all remaining devices" and checks the
  product data*fsdp*context*tensor; `context` >= 1 (never -1). Returns (data, fsdp, tensor)."""
  dims = [data, fsdp, tensor]
  if sum(d == -1 for d in dims) > 1:
    raise MeshError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one axis may be -1")
  for name, d in zip(("data", "fsdp", "tensor"), dims):
    if d == 0 or d < -1:
      raise MeshError(f"mesh axis {name}={d}: must be a positive size or -1")
  if not isinstance(context, int) or context < 1:
    raise MeshError(f"mesh axis context={context}: must be a positive size (-1 is not allowed)")
  known = math.prod(d for d in dims if d != -1) * context
  ctx = f", context={context}" if context != 1 else ""
  if -1 in dims:
    if num_devices % known:
      raise MeshError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}{ctx}): {num_devices} "
                      f"devices are not divisible by {known}")
    dims[dims.index(-1)] = num_devices // known
  if math.prod(dims) * context != num_devices:
    raise MeshError(f"mesh (data={dims[0]}, fsdp={dims[1]}, tensor={dims[2]}{ctx}) needs "
                    f"{math.prod(dims) * context} devices, {num_devices} are available")
  return tuple(dims)  # type: ignore[return-value]


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None, context: int = 1) -> Mesh:
  """Builds a `("data", "fsdp", "context", "tensor")` mesh over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  d, f, t = mesh_shape(data, fsdp, tensor, len(devices), context)
  shape = (d, f, context, t)
  try:
    from jax.experimental import mesh_utils
    arr = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # CPU / irregular topologies: plain reshape is fine.
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, MESH_AXES)


def context_degree(mesh=None) -> int:
  """Size of the "context" axis of `mesh` (default: the current abstract mesh); 1 if absent."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if getattr(mesh, "empty", False) or CONTEXT_AXIS not in mesh.axis_names:
    return 1
  return int(mesh.shape[CONTEXT_AXIS])


def context_shard():
  """(shard index int32 [], number of shards) inside the context-parallel body (a shard_map
  with "context" manual and > 1), else None (docs/method.md §10)."""
  mesh = jax.sharding.get_abstract_mesh()
  if context_degree(mesh) == 1 or CONTEXT_AXIS not in mesh.manual_axes:
    return None
  return jax.lax.axis_index(CONTEXT_AXIS), int(mesh.shape[CONTEXT_AXIS])


def from_previous_shard(x, n: int, axis: int = 1):
  """Inside the context body: the last `n` rows (along `axis`) of the previous context shard's
  `x`; zeros on shard 0. The transpose (gradient) is the reverse permutation."""
  size = context_degree()
  tail = jax.lax.slice_in_dim(x, x.shape[axis] - n, x.shape[axis], axis=axis)
  return jax.lax.ppermute(tail, CONTEXT_AXIS, [(i, i + 1) for i in range(size - 1)])


def _batch_spec(mesh: Mesh, ndim: int) -> P:
  """dim 0 over data x fsdp; dim 1 (the sequence) over "context" when it is > 1."""
  rest = [None] * (ndim - 1)
  if rest and context_degree(mesh) > 1:
    rest[0] = CONTEXT_AXIS
  return P(BATCH_AXES, *rest)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a batch-leading array: dim 0 over data x fsdp, dim 1 over context (if > 1),
  the rest replicated."""
  return NamedSharding(mesh, _batch_spec(mesh, ndim))


def batch_size_divisor(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def per_device_call(fn, args, arg_dims, out_dims):
  """Runs a per-device kernel `fn(*args)` under the current mesh (`jax.set_mesh`) via shard_map.

  `arg_dims` / `out_dims` name each array dimension: "batch" (split over data x fsdp), "heads"
  (split over tensor) or None (whole on every device). Without a mesh, on a mesh of one
  device, or inside a shard_map manual over every axis > 1 (the context-parallel body), `fn` is
  called directly. Library and Pallas kernels are opaque to XLA's partitioner,
  which would otherwise gather their inputs onto every device.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or all(s == 1 or a in mesh.manual_axes for a, s in mesh.shape.items()):
    return fn(*args)
  names = set(mesh.axis_names)
  batch = tuple(a for a in BATCH_AXES if a in names) or None
  heads = "tensor" if "tensor" in names else None
  to_spec = lambda dims: P(*[batch if d == "batch" else heads if d == "heads" else None
                             for d in dims])
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(to_spec(d) for d in arg_dims),
                       out_specs=to_spec(out_dims), check_vma=False)(*args)


@contextlib.contextmanager
def mesh_context(mesh: Mesh):
  """Mesh + logical-axis rules in scope: for tracing the model, jit and sharding constraints.

  `jax.set_mesh` makes the mesh visible to `jax.sharding.get_abstract_mesh()` (used by Flax's
  logical constraints and by the kernels' `shard_map`); the legacy `with mesh` is kept for code
  that still reads the physical mesh from the thread resources.
  """
  with contextlib.ExitStack() as stack:
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(LOGICAL_AXIS_RULES))
    yield mesh


def batch_shardings(mesh: Mesh, batch_like: dict) -> dict:
  """NamedSharding of each batch array: dim 0 over ("data", "fsdp"), dim 1 over "context" when
  it is > 1 (`batch_sharding`), the rest replicated."""
  return {k: batch_sharding(mesh, np.ndim(v)) for k, v in batch_like.items()}


def place_batch(batch: dict, mesh: Mesh, shardings: dict | None = None) -> dict:
  """Process-local numpy batch -> global jax arrays sharded over the batch axes.

  Each process passes its own `global_batch / process_count` rows
  (`jax.make_array_from_process_local_data`), so the same code runs on one host or many.
  """
  shardings = shardings or batch_shardings(mesh, batch)
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
          for k, v in batch.items()}
