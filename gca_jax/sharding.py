"""Device mesh and the one table mapping logical axis names to mesh axes (MaxText style).

Mesh axes are `("data", "fsdp", "tensor")`. Parameters carry logical names through
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

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("norm", None),
    # activations
    ("batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


class MeshError(ValueError):
  """The requested mesh shape does not fit the available devices."""


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """Resolves one `-1` entry to "all remaining devices" and checks the product."""
  dims = [data, fsdp, tensor]
  if sum(d == -1 for d in dims) > 1:
    raise MeshError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one axis may be -1")
  for name, d in zip(MESH_AXES, dims):
    if d == 0 or d < -1:
      raise MeshError(f"mesh axis {name}={d}: must be a positive size or -1")
  known = math.prod(d for d in dims if d != -1)
  if -1 in dims:
    if num_devices % known:
      raise MeshError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): {num_devices} devices "
                      f"are not divisible by {known}")
    dims[dims.index(-1)] = num_devices // known
  if math.prod(dims) != num_devices:
    raise MeshError(f"mesh (data={dims[0]}, fsdp={dims[1]}, tensor={dims[2]}) needs "
                    f"{math.prod(dims)} devices, {num_devices} are available")
  return tuple(dims)  # type: ignore[return-value]


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a `("data", "fsdp", "tensor")` mesh over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(data, fsdp, tensor, len(devices))
  try:
    from jax.experimental import mesh_utils
    arr = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # CPU / irregular topologies: plain reshape is fine.
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, MESH_AXES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a batch-leading array: dim 0 over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_size_divisor(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def per_device_call(fn, args, arg_dims, out_dims):
  """Runs a per-device kernel `fn(*args)` under the current mesh (`jax.set_mesh`) via shard_map.

  `arg_dims` / `out_dims` name each array dimension: "batch" (split over data x fsdp), "heads"
  (split over tensor) or None (whole on every device). Without a mesh, or on a mesh of one
  device, `fn` is called directly. Library and Pallas kernels are opaque to XLA's partitioner,
  which would otherwise gather their inputs onto every device.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or all(s == 1 for s in mesh.shape.values()):
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
  """NamedSharding of each batch array: dim 0 over ("data", "fsdp"), the rest replicated."""
  return {k: NamedSharding(mesh, P(BATCH_AXES, *([None] * (np.ndim(v) - 1))))
          for k, v in batch_like.items()}


def place_batch(batch: dict, mesh: Mesh, shardings: dict | None = None) -> dict:
  """Process-local numpy batch -> global jax arrays sharded over the batch axes.

  Each process passes its own `global_batch / process_count` rows
  (`jax.make_array_from_process_local_data`), so the same code runs on one host or many.
  """
  shardings = shardings or batch_shardings(mesh, batch)
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
          for k, v in batch.items()}
