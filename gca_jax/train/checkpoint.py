"""Checkpoints: one Orbax `CheckpointManager` under `<run_dir>/checkpoints`, one composite item per step.

Items of step N (taken after N optimizer updates):
  state        - the `TrainState` (params, opt_state, step, base rng), sharded arrays
                 (`StandardSave`; restored straight into the target shardings).
  data_iter    - the Grain iterator state after the N batches consumed by updates 1..N, written by
                 Grain's own Orbax handler (`grain.checkpoint.CheckpointSave`): one JSON file per
                 process, `process_<i>-of-<n>.json`, so every host restores its own shard.
  config       - the full run config as JSON (eval.py rebuilds the model from it).
  meta         - JSON: step, wall time, tokens seen, jax/process info, "fingerprints": 1.
  fingerprints - JSON (written by process 0): sha256 + shape + dtype of every state leaf, keyed by
                 its tree path (`gca_jax.train.fingerprint`), and a sharding-independent
                 checksum ("wsum32") of every leaf, which also verifies leaves sharded across
                 processes and restores onto another process count.

Atomicity: Orbax writes a step into `<N>.orbax-checkpoint-tmp-*` and renames it to `<N>` only
when every item is complete (and, on object stores, writes a commit marker). A step directory
without that rename is never listed by `all_steps()`, so a run killed mid-save resumes from the
previous complete step; leftover temporary directories are deleted when a manager opens.

Integrity: `restore` / `restore_params` hash what they read and compare it with the step's
fingerprints. A damaged step (bytes changed, a truncated or missing file, no state/_METADATA, no
fingerprints where its meta says it has them) raises `CheckpointDamagedError` when that step was
asked for; with step=None the newest intact step is restored instead, with one warning line per
damaged step skipped (a writable Checkpointer moves it to `<run_dir>/damaged_checkpoints/`, so the
run can save that step again); no intact step is one `CheckpointError` line naming each cause.
Steps written before fingerprints existed (no "fingerprints" in meta) are restored unverified.

Async: with `async_save=True` the arrays are copied to host memory inside `save()` and written
by a background thread while training continues; `wait()` blocks until the last save is
committed (the trainer calls it before exiting). The fingerprints are computed inside `save()`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from gca_jax.train import fingerprint as fp, fs

CHECKPOINT_SUBDIR = "checkpoints"
DAMAGED_SUBDIR = "damaged_checkpoints"
FINGERPRINTS = "fingerprints"
ITEMS = ("state", "data_iter", "config", "meta", FINGERPRINTS)


class CheckpointError(RuntimeError):
  """A checkpoint cannot be found or does not fit what is asked of it."""


class CheckpointDamagedError(CheckpointError):
  """A checkpoint step exists but its files are damaged (`step`, `cause`)."""

  def __init__(self, step: int, cause: str, path: str = ""):
    self.step, self.cause = int(step), cause
    super().__init__(f"checkpoint step {step} is damaged: {cause}" + (f" ({path})" if path else ""))


# -- Orbax / asyncio noise of a failed read ------------------------------------------------------
# A read error makes Orbax close its event loop while TensorStore reads are still in flight:
# their completion callbacks fail with "Event loop is closed" (sys.unraisablehook, a traceback
# each), abandoned read coroutines raise when finalised (unraisable) or are reported as never
# awaited (RuntimeWarning), and their tasks / futures are logged as "... exception was never
# retrieved". All of it is dropped; the error itself is raised once, as a CheckpointError.

class _DropRecords(logging.Filter):
  """Drops records whose message contains `needle` and (if given) one of `any_of`."""

  def __init__(self, needle: str, any_of: tuple[str, ...] = ()):
    super().__init__()
    self.needle, self.any_of = needle, any_of

  def filter(self, record: logging.LogRecord) -> bool:
    try:
      msg = record.getMessage()
    except Exception:  # noqa: BLE001 - a record that cannot format is left alone
      return True
    return not (self.needle in msg and (not self.any_of or any(n in msg for n in self.any_of)))


_QUIET = {"installed": False}


def _orbax_read_noise(unraisable) -> bool:
  """An "Event loop is closed" callback error, or an error left in an abandoned Orbax read
  coroutine when it is finalised."""
  exc = unraisable.exc_value
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return True
  code = getattr(unraisable.object, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def quiet_orbax() -> None:
  """Installs (once per process) the filters for the noise above and for Orbax's read-only
  warning ("Given directory is read only", logged on every read-only open)."""
  if _QUIET["installed"]:
    return
  _QUIET["installed"] = True
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _orbax_read_noise(unraisable):
      previous(unraisable)
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_DropRecords(
      "exception was never retrieved", ("orbax", "OCDBT", "TensorStore", "tensorstore")))
  logging.getLogger("absl").addFilter(_DropRecords("Given directory is read only"))
  warnings.filterwarnings("ignore", category=RuntimeWarning, message=(
      r"coroutine '(_read_array_index_and_device_put|_read_shard|_read_and_create_array|"
      r"async_deserialize|_async_deserialize|_deserialize_arrays)' was never awaited"))


def _cause(e: BaseException) -> str:
  """The innermost error of `e`'s chain, as one line (TensorStore specs cut off)."""
  seen = []
  while e is not None and e not in seen:
    seen.append(e)
    e = e.__cause__ or e.__context__
  for err in reversed(seen):
    line = (str(err).strip().splitlines() or [""])[0]
    if line:
      line = line.split(" See full TensorStore details")[0]
      return f"{type(err).__name__}: {line[:300]}"
  return type(seen[0]).__name__


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
  return fs.join(fs.abspath(run_dir), CHECKPOINT_SUBDIR)


def _all_processes_ok(ok: bool) -> bool:
  """True when `ok` holds on every process (a collective when there are several)."""
  if jax.process_count() == 1:
    return ok
  import numpy as np  # noqa: PLC0415
  from jax.experimental import multihost_utils  # noqa: PLC0415
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _default_warn(line: str) -> None:
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


class Checkpointer:
  """Save/restore of train state + data iterator + run config, keep-N, async, verified.

  warn: receives the one-line warnings of a fallback (default: stderr of process 0).
  """

  def __init__(self, run_dir: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False, warn: Callable[[str], None] | None = None):
    quiet_orbax()
    self.directory = checkpoint_dir(run_dir)
    self.read_only = read_only
    self.warn = warn or _default_warn
    if read_only and not fs.isdir(self.directory):
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

  def step_dir(self, step: int) -> str:
    return fs.join(self.directory, str(step))

  # -- save ----------------------------------------------------------------------------------
  def save(self, step: int, state, iterator_state: dict | None, config: dict,
           meta: dict | None = None) -> bool:
    """Starts saving step `step` (async if enabled). Returns False if it already exists."""
    if step in self.all_steps():
      return False
    m = {"step": int(step), "time": time.time(), "jax_version": jax.__version__,
         "process_count": jax.process_count(), **(meta or {}), FINGERPRINTS: fp.VERSION}
    items = {
        "state": ocp.args.StandardSave(state),
        "config": ocp.args.JsonSave(config),
        "meta": ocp.args.JsonSave(m),
        # collective (the wsum32 checksums); written by process 0 only (JsonSave)
        FINGERPRINTS: ocp.args.JsonSave(fp.fingerprint_tree(
            state, hash_host=jax.process_index() == 0)),
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

  def _fingerprints(self, step: int) -> dict | None:
    """The step's fingerprint record; None for a step saved without one (older gca_jax)."""
    sd = self.step_dir(step)
    if not fs.isfile(fs.join(sd, "state", "_METADATA")):
      raise CheckpointDamagedError(step, "state/_METADATA is missing", sd)
    try:
      meta = self.restore_meta(step)
    except Exception as e:  # noqa: BLE001 - one line naming the step and the cause
      raise CheckpointDamagedError(step, f"its meta item cannot be read ({_cause(e)})", sd) from e
    has_item = fs.isdir(fs.join(sd, FINGERPRINTS))
    if not has_item and FINGERPRINTS not in meta:
      return None
    if not has_item:
      raise CheckpointDamagedError(step, f"its {FINGERPRINTS} item is missing", sd)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          **{FINGERPRINTS: ocp.args.JsonRestore()}))
    except Exception as e:  # noqa: BLE001
      raise CheckpointDamagedError(step, f"its {FINGERPRINTS} item cannot be read "
                                         f"({_cause(e)})", sd) from e
    return dict(out[FINGERPRINTS])

  def _verify(self, step: int, record: dict | None, tree, prefix: str = "") -> None:
    bad = [] if record is None else fp.mismatches(record, tree, prefix)
    if bad:
      more = f" (and {len(bad) - 1} more leaves)" if len(bad) > 1 else ""
      raise CheckpointDamagedError(step, f"{bad[0][0] or 'fingerprints'}: {bad[0][1]}{more}",
                                   self.step_dir(step))

  def _read(self, step: int, what: str, fn):
    """fn() -> restored; any Orbax/TensorStore error -> CheckpointDamagedError (one line)."""
    try:
      return fn()
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - one line naming the step and the cause
      raise CheckpointDamagedError(step, f"its {what} cannot be read ({_cause(e)})",
                                   self.step_dir(step)) from e

  def _agreed(self, step: int, attempt):
    """(attempt(step), None), or (None, the CheckpointDamagedError) when it is damaged on any
    process (all processes take the same decision)."""
    try:
      out, err = attempt(step), None
    except CheckpointDamagedError as e:
      out, err = None, e
    if not _all_processes_ok(err is None) and err is None:
      err = CheckpointDamagedError(step, "another process found it damaged", self.step_dir(step))
    return out, err

  def _fallback(self, step: int | None, attempt):
    """attempt(step) for `step`; for None, for the newest step on which it raises no
    CheckpointDamagedError (the damaged ones named by one warning line each, and moved aside
    when writable). No intact step: one CheckpointError line."""
    if step is not None:
      out, err = self._agreed(self._require(step), attempt)
      if err is not None:
        raise err
      return out
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f"no complete checkpoint in {self.directory!r}")
    bad: list[CheckpointDamagedError] = []
    for s in reversed(steps):
      out, err = self._agreed(s, attempt)
      if err is not None:
        bad.append(err)
        continue
      for e in bad:
        moved = self._move_aside(e.step)
        self.warn(f"warning: checkpoint step {e.step} is damaged ({e.cause}); "
                  + (f"moved to {moved}; " if moved else "") + f"using step {s}")
      return out
    raise CheckpointError(f"no intact checkpoint in {self.directory!r}: "
                          + "; ".join(f"step {e.step}: {e.cause}" for e in bad))

  def _move_aside(self, step: int) -> str | None:
    """Moves a damaged step out of the manager's directory (writable Checkpointer only), so
    that the same step can be saved again. Returns the new path, or None."""
    if self.read_only:
      return None
    dest = None
    if jax.process_index() == 0:
      root = fs.join(fs.dirname(self.directory), DAMAGED_SUBDIR)
      fs.makedirs(root)
      dest = fs.join(root, f"{step}.{int(time.time())}")
      fs.move(self.step_dir(step), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # noqa: PLC0415
      multihost_utils.sync_global_devices(f"gca_jax_move_damaged_{step}")
    self.manager.reload()
    return dest

  def restore(self, step: int | None, abstract_state, iterator=None):
    """(step, state, iterator) of `step` (default: the newest intact step), verified against the
    step's fingerprints; the iterator's state is set in place.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with shardings (see
    `state.state_shardings`); arrays are read straight into those shardings.
    """
    return self._fallback(step, lambda s: self._restore_one(s, abstract_state, iterator))

  def _restore_one(self, step: int, abstract_state, iterator):
    record = self._fingerprints(step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    step_dir = self.step_dir(step)
    if iterator is not None:
      iter_dir = fs.join(step_dir, "data_iter")
      if not fs.isdir(iter_dir):
        raise CheckpointError(f"checkpoint step {step} has no data iterator state")
      n, i = jax.process_count(), jax.process_index()
      mine = fs.join(iter_dir, f"process_{i}-of-{n}.json")
      if not fs.isfile(mine):
        others = sorted(f for f in fs.listdir(iter_dir)
                        if f.startswith("process_") and not f.endswith(f"-of-{n}.json"))
        if others:
          raise CheckpointError(
              f"checkpoint step {step} has no data-iterator state for process {i} of {n}: it "
              f"was written by a run with a different number of processes ({others[0]})")
        raise CheckpointDamagedError(step, f"its data-iterator state {mine} is missing")
      items["data_iter"] = grain.checkpoint.CheckpointRestore(iterator)
    out = self._read(step, "state", lambda: self.manager.restore(
        step, args=ocp.args.Composite(**items)))
    self._verify(step, record, out["state"])
    return step, out["state"], (out["data_iter"] if iterator is not None else None)

  def restore_params(self, step: int | None, abstract_params):
    """(step, params) only, without reading the optimizer state (partial restore), verified
    against the step's fingerprints; step None: the newest intact step."""
    return self._fallback(step, lambda s: self._restore_params_one(s, abstract_params))

  def _restore_params_one(self, step: int, abstract_params):
    record = self._fingerprints(step)
    args = ocp.args.PyTreeRestore(
        item={"params": abstract_params},
        restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract_params}),
        partial_restore=True)
    path = epath.Path(self.step_dir(step)) / "state"

    def read():
      with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        return ckptr.restore(path, args=args)
    out = self._read(step, "state", read)
    self._verify(step, record, out["params"], prefix="params/")
    return step, out["params"]
