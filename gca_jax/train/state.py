"""Train state, its shardings from the logical-axis rules, and sharded initialisation.

The state is a pytree of plain arrays (no `nn.Partitioned` boxes): `step`, `params`, the optax
`opt_state` and `rng` (the raw uint32 key data of the base PRNG key; per-step keys are derived
from it with `fold_in(base, step)`, so a resumed run draws exactly the same Gumbel noise).

Shardings come from the logical axis names the model puts on its parameters
(`gca_jax.sharding.LOGICAL_AXIS_RULES`): the optimizer is initialised on the *boxed* parameters,
so Adam's moments carry the same names and are sharded like their parameters (ZeRO-3 style over
`fsdp`); scalars (step, counts, rng) are replicated. Initialisation runs under `jax.jit` with
these `out_shardings`, so every device only ever materialises its own shard.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gca_jax.sharding import (BATCH_AXES, LOGICAL_AXIS_RULES, batch_shardings, mesh_context,  # noqa: F401
                              place_batch)

INIT_TOKENS = 8  # length of the dummy input used to create parameters (shape-independent)


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: number of optimizer updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array         # uint32[2] (or impl-dependent) raw key data of the base key


def key_data(key: jax.Array) -> jax.Array:
  """Raw uint32 data of a (new-style or legacy) PRNG key."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return key


def wrap_key(data: jax.Array) -> jax.Array:
  return jax.random.wrap_key_data(data)


def step_key(rng_data: jax.Array, step) -> jax.Array:
  """Key for the Gumbel noise of optimizer step `step` (before the update)."""
  return jax.random.fold_in(wrap_key(rng_data), step)


def _init_variables(model: nn.Module, key: jax.Array):
  k_params, k_gumbel = jax.random.split(key)
  tokens = jnp.zeros((1, INIT_TOKENS), jnp.int32)
  return model.init({"params": k_params, "gumbel": k_gumbel}, tokens, train=False)


def _boxed_state(model: nn.Module, tx: optax.GradientTransformation, seed: int):
  root = jax.random.key(seed)
  k_init, k_train = jax.random.split(root)
  params = _init_variables(model, k_init)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=key_data(k_train))


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                    seed: int = 0) -> tuple[TrainState, TrainState]:
  """(abstract unboxed state with shardings, tree of NamedShardings), without allocating."""
  with mesh_context(mesh):
    boxed = jax.eval_shape(lambda: _boxed_state(model, tx, seed))
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)
  abstract = nn.unbox(boxed)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings


def abstract_params(model: nn.Module, mesh: Mesh) -> tuple[Any, Any]:
  """(abstract unboxed params with shardings, tree of NamedShardings); no optimizer, no memory."""
  with mesh_context(mesh):
    boxed = jax.eval_shape(lambda: _init_variables(model, jax.random.key(0))["params"])
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh,
                                            LOGICAL_AXIS_RULES)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
  return abstract, shardings


def init_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, seed: int,
               shardings: TrainState | None = None) -> TrainState:
  """A freshly initialised, sharded train state (params from `seed`, base rng from `seed`)."""
  if shardings is None:
    _, shardings = state_shardings(model, tx, mesh, seed)
  with mesh_context(mesh):
    init = jax.jit(lambda: nn.unbox(_boxed_state(model, tx, seed)), out_shardings=shardings)
    return init()


def check_divisible(abstract: TrainState, mesh: Mesh) -> None:
  """Raises ValueError naming the first parameter whose sharded dim the mesh does not divide."""
  def check(path, leaf):
    sh = getattr(leaf, "sharding", None)
    if not isinstance(sh, NamedSharding):
      return
    for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(sh.spec) + (None,) * leaf.ndim)):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      n = math.prod(mesh.shape[a] for a in axes)
      if size % n:
        name = jax.tree_util.keystr(path)
        raise ValueError(f"parameter {name} dim {dim} of size {size} is sharded over mesh axes "
                         f"{axes} of total size {n}, which does not divide it; change the mesh "
                         f"(config.mesh) or the model size")
  jax.tree_util.tree_map_with_path(check, abstract.params)


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
