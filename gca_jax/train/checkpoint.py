"""Checkpoints: one Orbax `CheckpointManager` under `<run_dir>/checkpoints`, one composite item per step.

Items of step N (taken after N optimizer updates):
  state     - the `TrainState` (params, opt_state, step, base rng), sharded arrays
              (`StandardSave`; restored straight into the target shardings).
  data_iter - the Grain iterator state after the N batches consumed by updates 1..N, written by
              Grain's own Orbax handler (`grain.checkpoint.CheckpointSave`): one JSON file per
              process, `process_<i>-of-<n>.json`, so every host restores its own shard.
  config    - the full run config as JSON (eval.py rebuilds the model from it).
  meta      - JSON: step, wall time, tokens seen, jax/process info.

Atomicity: Orbax writes a step into `<N>.orbax-checkpoint-tmp-*` and renames it to `<N>` only
when every item is complete (and, on object stores, writes a commit marker). A step directory
without that rename is never listed by `all_steps()`, so a run killed mid-save resumes from the
previous complete step; leftover temporary directories are deleted when a manager opens.

Async: with `async_save=True` the arrays are copied to host memory inside `save()` and written
by a background thread while training continues; `wait()` blocks until the last save is
committed (the trainer calls it before exiting).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_SUBDIR = "checkpoints"
ITEMS = ("state", "data_iter", "config", "meta")


class CheckpointError(RuntimeError):
  """A checkpoint cannot be found or does not fit what is asked of it."""


class _IteratorSnapshot:
  """A frozen iterator state for Grain's checkpoint handler.

  The trainer fetches the next batch before the current step's metrics are back (host work
  overlaps device work), so the live iterator is one batch ahead when a step is saved. The
  trainer snapshots `get_state()` after each consumed batch; this object hands that snapshot to
  `grain.checkpoint.CheckpointHandler`, which writes `get_state().decode()` for non-Grain
  iterators (the same bytes it writes for a Grain `DatasetIterator`: its JSON state).
  """

  def __init__(self, state: dict):
    self._state = state

  def get_state(self) -> bytes:
    return json.dumps(state_to_jsonable(self._state), indent=4).encode()


def state_to_jsonable(state: Any) -> Any:
  """Grain iterator states are JSON-able dicts already; numpy scalars are made plain."""
  return json.loads(json.dumps(state, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def checkpoint_dir(run_dir: str) -> str:
  return os.path.join(os.path.abspath(run_dir), CHECKPOINT_SUBDIR)


class Checkpointer:
  """Save/restore of train state + data iterator + run config, keep-N, async."""

  def __init__(self, run_dir: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = checkpoint_dir(run_dir)
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f"no checkpoint directory {self.directory!r} (is --run_dir right?)")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=async_save,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
    )
    self.manager = ocp.CheckpointManager(epath.Path(self.directory), options=options)

  # -- queries -------------------------------------------------------------------------------
  def all_steps(self) -> list[int]:
    return sorted(int(s) for s in self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def _require(self, step: int | None) -> int:
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f"no complete checkpoint in {self.directory!r}")
    if step is None:
      return steps[-1]
    if step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory!r}; "
                            f"available: {steps}")
    return step

  # -- save ----------------------------------------------------------------------------------
  def save(self, step: int, state, iterator_state: dict | None, config: dict,
           meta: dict | None = None) -> bool:
    """Starts saving step `step` (async if enabled). Returns False if it already exists."""
    if step in self.all_steps():
      return False
    m = {"step": int(step), "time": time.time(), "jax_version": jax.__version__,
         "process_count": jax.process_count(), **(meta or {})}
    items = {
        "state": ocp.args.StandardSave(state),
        "config": ocp.args.JsonSave(config),
        "meta": ocp.args.JsonSave(m),
    }
    if iterator_state is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator_state))
    return bool(self.manager.save(step, args=ocp.args.Composite(**items), force=True))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  # -- restore -------------------------------------------------------------------------------
  def restore_config(self, step: int | None = None) -> tuple[int, dict]:
    step = self._require(step)
    out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return step, dict(out["config"])

  def restore_meta(self, step: int | None = None) -> dict:
    step = self._require(step)
    out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def restore(self, step: int | None, abstract_state, iterator=None):
    """(step, state, iterator) of `step` (default latest); the iterator's state is set in place.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with shardings (see
    `state.state_shardings`); arrays are read straight into those shardings.
    """
    step = self._require(step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    step_dir = os.path.join(self.directory, str(step))
    if not os.path.isfile(os.path.join(step_dir, "state", "_METADATA")):
      raise CheckpointError(f"checkpoint step {step} is damaged: {step_dir}/state/_METADATA is "
                            f"missing")
    if iterator is not None:
      iter_dir = os.path.join(step_dir, "data_iter")
      if not os.path.isdir(iter_dir):
        raise CheckpointError(f"checkpoint step {step} has no data iterator state")
      n, i = jax.process_count(), jax.process_index()
      mine = os.path.join(iter_dir, f"process_{i}-of-{n}.json")
      if not os.path.isfile(mine):
        others = sorted(f for f in os.listdir(iter_dir)
                        if f.startswith("process_") and not f.endswith(f"-of-{n}.json"))
        if others:
          raise CheckpointError(
              f"checkpoint step {step} has no data-iterator state for process {i} of {n}: it "
              f"was written by a run with a different number of processes ({others[0]})")
        raise CheckpointError(f"checkpoint step {step} is damaged: its data-iterator state "
                              f"{mine} is missing")
      items["data_iter"] = grain.checkpoint.CheckpointRestore(iterator)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - one line naming the step and the cause
      first = (str(e).strip().splitlines() or [""])[0][:300]
      raise CheckpointError(f"checkpoint step {step} cannot be read ({type(e).__name__}: "
                            f"{first}); {step_dir} is damaged") from e
    return step, out["state"], (out["data_iter"] if iterator is not None else None)

  def restore_params(self, step: int | None, abstract_params):
    """(step, params) only, without reading the optimizer state (partial restore)."""
    step = self._require(step)
    args = ocp.args.PyTreeRestore(
        item={"params": abstract_params},
        restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract_params}),
        partial_restore=True)
    path = epath.Path(self.directory) / str(step) / "state"
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
      out = ckptr.restore(path, args=args)
    return step, out["params"]
