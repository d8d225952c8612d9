"""Optimizer (docs/method.md §4): AdamW, linear warmup + cosine decay, global-norm gradient clipping.

Choices, written down:
- The schedule is optax's `warmup_cosine_decay_schedule`: lr rises linearly from 0 at step 0 to
  `lr` at step `warmup_steps = round(warmup_frac * steps)`, then follows a cosine to
  `lr * lr_end_frac` at step `steps` (0 by default, as a plain "cosine decay" reads). The
  schedule is evaluated at the optimizer's own update count, which equals `TrainState.step`
  before the update.
- Weight decay is decoupled (AdamW, `p -= lr * wd * p`, as in PyTorch's AdamW that the official
  code uses). By default it applies to **every** parameter, norms, the landmark embedding and the
  tied token embedding included, because the official code decays everything (docs/method.md §9 follows it).
  `weight_decay_mask="matrices"` restricts decay to parameters with ndim >= 2 that are not the
  token embedding (the common modern recipe); it is an option, not the default.
- Clipping happens before Adam, on the global norm of the full (accumulated) gradient;
  `clip <= 0` disables it. Adam moments are kept in float32 like the parameters.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

WEIGHT_DECAY_MASKS = ("all", "matrices")


def warmup_steps(steps: int, warmup_frac: float) -> int:
  return int(round(float(warmup_frac) * int(steps)))


def make_schedule(train_cfg) -> optax.Schedule:
  """Warmup + cosine learning-rate schedule from the `train` config section."""
  steps = int(train_cfg.steps)
  peak = float(train_cfg.lr)
  end = peak * float(train_cfg.get("lr_end_frac", 0.0))
  w = warmup_steps(steps, train_cfg.warmup_frac)
  if w >= steps:
    return optax.linear_schedule(0.0, peak, max(w, 1))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=w, decay_steps=steps, end_value=end)


def _path_names(path) -> list[str]:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
  return out


def weight_decay_mask(kind: str) -> Callable[[Any], Any] | None:
  """None (decay all) or a function params -> pytree of bools (True = decayed)."""
  if kind == "all":
    return None
  if kind == "matrices":
    def mask(params):
      def keep(path, p):
        names = _path_names(path)
        return p.ndim >= 2 and "embedding" not in names
      return jax.tree_util.tree_map_with_path(keep, params)
    return mask
  raise ValueError(f"weight_decay_mask={kind!r}: must be one of {WEIGHT_DECAY_MASKS}")


def make_optimizer(train_cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(tx, schedule) for the `train` config section: clip -> AdamW(schedule)."""
  schedule = make_schedule(train_cfg)
  parts = []
  if float(train_cfg.clip) > 0:
    parts.append(optax.clip_by_global_norm(float(train_cfg.clip)))
  parts.append(optax.adamw(
      learning_rate=schedule, b1=float(train_cfg.b1), b2=float(train_cfg.b2),
      eps=float(train_cfg.get("eps", 1e-8)), weight_decay=float(train_cfg.weight_decay),
      mask=weight_decay_mask(train_cfg.get("weight_decay_mask", "all"))))
  return optax.chain(*parts), schedule
