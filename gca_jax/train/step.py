"""Jitted train and eval steps.

Train step = forward + backward over `grad_accum` microbatches (a `lax.scan`), one clipped AdamW
update. The loss is the weighted mean over the *whole* global batch: each microbatch contributes
its NLL **sum** and its weight count, and the gradient sum is divided by the total count at the
end, so accumulation gives the big-batch gradient up to float rounding, whatever the number of
scored tokens in each microbatch.

Microbatch i takes rows {i, i + A, i + 2A, ...} of the global batch (A = grad_accum), which keeps
every microbatch spread over all batch shards: no data moves between devices to form it.

Randomness: the Gumbel key of update `s` (0-based, = `state.step` before it) is
`fold_in(base, s)`, and microbatch i uses `fold_in(that, i)`; a resumed run therefore replays
exactly the same noise. With grad_accum > 1 the noise differs from that of a single big-batch
draw (same distribution), so DRT's Gumbel top-k is the one thing that is not bit-comparable
between accumulation settings.

Metrics: loss, grad_norm, lr, num_tokens, accuracy (weighted next-token argmax accuracy), finite;
with an "answer_mask" in the batch also answer_accuracy (argmax of the answers' first tokens,
the curriculum gate's input), answer_nll and answer_count; with an "answer_kind" also
answer_accuracy_<kind> / answer_count_<kind> per sample kind (single, named, multikey, 2hop).
The answer loss weight is part of "loss_weights" (the normal loss path).

Non-finite guard: if the loss or the gradient norm is NaN/Inf, the returned state is the input
state unchanged (step not incremented) and `metrics["finite"]` is False; the trainer stops.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gca_jax.models.loss import ANSWER_KINDS, answer_sum_keys, loss_sums
from gca_jax.sharding import batch_sharding
from gca_jax.train.state import TrainState, mesh_context, step_key


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _answer_metrics(sums: dict) -> dict:
  """answer_accuracy / answer_nll (means over the answers; 0 without any) + answer_count."""
  if "answer_count" not in sums:
    return {}
  c = sums["answer_count"]
  d = jnp.maximum(c, 1.0)
  out = {"answer_accuracy": sums["answer_correct"] / d, "answer_nll": sums["answer_nll"] / d,
         "answer_count": c}
  for name, _ in ANSWER_KINDS:
    if f"answer_count_{name}" in sums:
      ck = sums[f"answer_count_{name}"]
      out[f"answer_accuracy_{name}"] = sums[f"answer_correct_{name}"] / jnp.maximum(ck, 1.0)
      out[f"answer_count_{name}"] = ck
  return out


def _split_microbatches(batch: dict, accum: int, mesh: Mesh | None) -> dict:
  """[B, ...] -> [A, B/A, ...], microbatch i = rows i::A (stays evenly sharded)."""
  out = {}
  for k, v in batch.items():
    b = v.shape[0]
    x = v.reshape(b // accum, accum, *v.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      spec = P(None, *batch_sharding(mesh, v.ndim).spec)
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    out[k] = x
  return out


def train_step_fn(model: nn.Module, tx: optax.GradientTransformation,
                  schedule: optax.Schedule, grad_accum: int = 1,
                  mesh: Mesh | None = None, param_shardings=None) -> Callable:
  """The pure (un-jitted) step: (state, batch) -> (state, metrics)."""
  vg = jax.value_and_grad(lambda p, b, k: loss_sums(model, p, b, k), has_aux=True)

  def step(state: TrainState, batch: dict):
    key = step_key(state.rng, state.step)
    if grad_accum == 1:
      (nll, sums), grads = vg(state.params, batch, jax.random.fold_in(key, 0))
    else:
      micro = _split_microbatches(batch, grad_accum, mesh)
      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      if param_shardings is not None:
        zeros = jax.lax.with_sharding_constraint(zeros, param_shardings)

      def body(carry, xs):
        i, mb = xs
        g_acc, nll_acc, s_acc = carry
        (nll, s), g = vg(state.params, mb, jax.random.fold_in(key, i))
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        return (g_acc, nll_acc + nll, jax.tree.map(jnp.add, s_acc, s)), None

      z = jnp.zeros((), jnp.float32)
      keys = ("num_tokens", "num_correct") + answer_sum_keys(batch)
      s0 = {k: z for k in keys}
      (grads, nll, sums), _ = jax.lax.scan(
          body, (zeros, z, s0), (jnp.arange(grad_accum), micro))
    n, correct = sums["num_tokens"], sums["num_correct"]
    denom = jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
    loss = nll / denom
    grad_norm = _global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "num_tokens": n, "accuracy": correct / denom, "finite": finite,
               **_answer_metrics(sums)}
    return new, metrics

  return step


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, state_shardings: TrainState,
                    batch_shardings: dict, grad_accum: int = 1) -> Callable:
  """Jitted `(state, batch) -> (state, metrics)`; the input state is donated."""
  step = train_step_fn(model, tx, schedule, grad_accum, mesh, state_shardings.params)
  jitted = jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))

  def run(state, batch):
    with mesh_context(mesh):
      return jitted(state, batch)

  run.jitted = jitted  # type: ignore[attr-defined]
  return run
