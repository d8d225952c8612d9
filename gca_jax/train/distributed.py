"""Multi-process launch and the process-count-invariant data order (docs/method.md §4.1).

Launch: `define_flags()` adds --distributed (auto-detection: `jax.distributed.initialize()` with no
arguments, for TPU pods / SLURM / the JAX_COORDINATOR_* variables) and the explicit
--coordinator_address / --num_processes / --process_id / --local_device_ids (any cluster, e.g.
several GPUs of one host, one process each); `initialize_from_flags()` validates them (exit 2
naming the flag) and calls `jax.distributed.initialize` before anything touches jax devices.

Data: `train_dataset` reads the windows in one global order that does not depend on the process
count: row r of global batch s is element s * global_batch + r of the shuffled window stream
(the stream of `gca_jax.data.pipeline.make_train_dataset` with one process), and process p of P
reads rows [p * b, (p + 1) * b) of every global batch, b = global_batch / P. One process gives
exactly `make_train_dataset`'s batches. So a run gives the same batches on any process count, and
a data-iterator state saved by P processes ({"next_index": k * global_batch / P} after k steps)
is re-sliced for P' processes by `reslice_state`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import NamedTuple

import numpy as np

from gca_jax.train import fs

FLAG_NAMES = ("coordinator_address", "num_processes", "process_id")


class DistributedError(ValueError):
  """Invalid multi-process launch flags; the message names the flag."""


class DistributedFlags(NamedTuple):
  distributed: object
  coordinator_address: object
  num_processes: object
  process_id: object
  local_device_ids: object


def define_flags(flag_values=None) -> DistributedFlags:
  """Defines --distributed, --coordinator_address, --num_processes, --process_id and
  --local_device_ids (absl) and returns their holders."""
  from absl import flags
  fv = flag_values if flag_values is not None else flags.FLAGS
  return DistributedFlags(
      flags.DEFINE_bool(
          "distributed", False, "Call jax.distributed.initialize() with no arguments: the "
          "cluster is auto-detected (SLURM, TPU pods, the JAX_COORDINATOR_* variables).",
          flag_values=fv),
      flags.DEFINE_string(
          "coordinator_address", None, "host:port of process 0's coordinator service (with "
          "--num_processes and --process_id; the same on every process).", flag_values=fv),
      flags.DEFINE_integer("num_processes", None, "Number of processes of the run.",
                           flag_values=fv),
      flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).",
                           flag_values=fv),
      flags.DEFINE_list("local_device_ids", None, "Comma list of the local device ids this "
                        "process uses (e.g. 0,1; default: all visible).", flag_values=fv))


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
  """What to pass to `jax.distributed.initialize` (all None: auto-detection)."""

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None

  def kwargs(self) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items() if v is not None}


def _device_ids(value) -> tuple[int, ...] | None:
  if value is None:
    return None
  items = value.split(",") if isinstance(value, str) else list(value)
  items = [str(x).strip() for x in items if str(x).strip()]
  text = ",".join(items)
  try:
    ids = tuple(int(x) for x in items)
  except ValueError:
    raise DistributedError(f"--local_device_ids={text}: a comma list of integers expected "
                           f"(e.g. 0,1)") from None
  if not ids:
    raise DistributedError("--local_device_ids: empty; give device ids like 0,1 or leave it out")
  if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
    raise DistributedError(f"--local_device_ids={text}: ids must be distinct and >= 0")
  return ids


def launch_spec(distributed: bool = False, coordinator_address: str | None = None,
                num_processes: int | None = None, process_id: int | None = None,
                local_device_ids=None) -> LaunchSpec | None:
  """The validated launch (None: single process, no initialize).

  coordinator_address, num_processes and process_id come together (explicit launch, implies
  --distributed); without them --distributed auto-detects; local_device_ids goes with either.
  """
  values = {"coordinator_address": coordinator_address or None, "num_processes": num_processes,
            "process_id": process_id}
  given = [k for k, v in values.items() if v is not None]
  ids = _device_ids(local_device_ids)
  if not given:
    if ids is not None and not distributed:
      raise DistributedError("--local_device_ids needs --distributed or --coordinator_address/"
                             "--num_processes/--process_id")
    return LaunchSpec(local_device_ids=ids) if distributed else None
  missing = [k for k in FLAG_NAMES if values[k] is None]
  if missing:
    raise DistributedError(
        f"--{missing[0]} is missing: --{' --'.join(given)} given, but --coordinator_address, "
        f"--num_processes and --process_id must come together (or use --distributed alone "
        f"to auto-detect the cluster)")
  addr = str(coordinator_address)
  host, sep, port = addr.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedError(f"--coordinator_address={addr}: host:port expected (e.g. "
                           f"10.0.0.1:1234)")
  if num_processes < 1:
    raise DistributedError(f"--num_processes={num_processes}: must be >= 1")
  if not 0 <= process_id < num_processes:
    raise DistributedError(f"--process_id={process_id}: must lie in [0, --num_processes="
                           f"{num_processes})")
  return LaunchSpec(addr, int(num_processes), int(process_id), ids)


def initialize(spec: LaunchSpec | None) -> None:
  """`jax.distributed.initialize(**spec)` (nothing for None); CPU collectives use gloo."""
  if spec is None:
    return
  import jax
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**spec.kwargs())


def initialize_from_flags(holders: DistributedFlags) -> LaunchSpec | None:
  """Validates the flags of `define_flags` and initializes; invalid flags exit 2 with one line."""
  try:
    spec = launch_spec(holders.distributed.value, holders.coordinator_address.value,
                       holders.num_processes.value, holders.process_id.value,
                       holders.local_device_ids.value)
  except DistributedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  initialize(spec)
  return spec


# -- data order --------------------------------------------------------------------------------

class _GlobalRow:
  """Per-process element i -> element s * global_batch + p * b + r of the global stream,
  s, r = divmod(i, b)."""

  def __init__(self, stream, process_index: int, rows: int, global_batch: int):
    self.stream, self.p, self.b, self.gbs = stream, process_index, rows, global_batch

  def __call__(self, i: int):
    s, r = divmod(int(i), self.b)
    return self.stream[s * self.gbs + self.p * self.b + r]


def train_dataset(tokens: np.ndarray, *, seq_len: int, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, passkey=None, tokenizer=None,
                  num_epochs: int | None = None):
  """This process's training batches (dicts of [global_batch / process_count, seq_len] arrays)
  in the process-count-invariant order of the module docstring; one process:
  `make_train_dataset` itself."""
  import grain

  from gca_jax.data import pipeline
  kw = dict(seq_len=seq_len, global_batch_size=global_batch_size, seed=seed, passkey=passkey,
            tokenizer=tokenizer, num_epochs=num_epochs)
  one = pipeline.make_train_dataset(tokens, **kw)   # validates; the order of one process
  if not isinstance(process_count, (int, np.integer)) or process_count < 1:
    raise ValueError(f"process_count={process_count!r} must be a positive integer")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, {process_count})")
  if process_count == 1:
    return one
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"process_count={process_count}")
  shuffle_seed, map_seed = (int(x) for x in np.random.SeedSequence([seed, 0]).generate_state(2))
  n = pipeline.num_windows(len(tokens), seq_len)
  stream = grain.MapDataset.range(0, n).shuffle(seed=shuffle_seed).repeat(num_epochs)
  stream = stream.map(pipeline._Window(tokens, seq_len, answer_mask=passkey is not None))
  if passkey is not None:
    stream = stream.random_map(pipeline._MixPasskey(passkey, tokenizer), seed=map_seed)
  b = global_batch_size // process_count
  rows = grain.MapDataset.range(0, len(stream) // global_batch_size * b)
  rows = rows.map(_GlobalRow(stream, process_index, b, global_batch_size))
  return rows.to_iter_dataset().batch(b, drop_remainder=True)


# -- re-slicing a saved iterator state -----------------------------------------------------------

_STATE_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")


def saved_process_count(checkpoint_dir: str, step: int) -> int | None:
  """The process count that wrote the data-iterator state of `step` (None: no such state)."""
  d = fs.join(checkpoint_dir, str(step), "data_iter")
  counts = {int(m.group(2)) for m in map(_STATE_FILE.match, fs.listdir(d) if
                                          fs.isdir(d) else []) if m}
  return counts.pop() if len(counts) == 1 else None


def saved_states(checkpoint_dir: str, step: int) -> tuple[int, list[dict]]:
  """(process count, [state of process 0, 1, ...]) of the data-iterator state of `step`."""
  from gca_jax.train.checkpoint import CheckpointError
  d = fs.join(checkpoint_dir, str(step), "data_iter")
  n = saved_process_count(checkpoint_dir, step)
  if n is None:
    raise CheckpointError(f"checkpoint step {step}: no data-iterator state of one process count "
                          f"in {d}")
  out = []
  for i in range(n):
    path = fs.join(d, f"process_{i}-of-{n}.json")
    try:
      out.append(json.loads(fs.read_text(path)))
    except (OSError, ValueError) as e:
      raise CheckpointError(f"checkpoint step {step} is damaged: its data-iterator state {path} "
                            f"cannot be read ({e})") from e
  return n, out


def reslice_state(states: list[dict], count: int) -> dict:
  """The iterator state for every one of `count` processes, from the states saved by
  len(states) processes: {"next_index"} (LM windows) is scaled to the new per-process batch;
  a state with a global "step" (the recall iterator) is taken as it is."""
  from gca_jax.train.checkpoint import CheckpointError
  first = states[0]
  if any(s != first for s in states[1:]):
    raise CheckpointError(f"the saved per-process data-iterator states differ ({first} vs "
                          f"{next(s for s in states if s != first)}); they cannot be re-sliced "
                          f"for {count} process(es)")
  if set(first) == {"next_index"}:
    total = int(first["next_index"]) * len(states)   # windows consumed by all processes
    if total % count:
      raise CheckpointError(f"data-iterator state {first} of {len(states)} process(es) covers "
                            f"{total} windows, not divisible by {count} process(es)")
    return {"next_index": total // count}
  if "step" in first:
    return first
  raise CheckpointError(f"data-iterator state {first} of {len(states)} process(es): unknown "
                        f"format, cannot be re-sliced for {count} process(es)")


def restore_resliced(checkpoint_dir: str, step: int, iterator, count: int) -> int:
  """Sets `iterator` to the state of `step` re-sliced for `count` processes; returns the saved
  process count."""
  n, states = saved_states(checkpoint_dir, step)
  state = reslice_state(states, count)
  iterator.set_state(state)
  return n


def put_global(tree, shardings):
  """Values that are the same on every process (numpy or local jax arrays) -> global arrays of
  `shardings` (a matching tree); one process: `jax.device_put`."""
  import jax
  if jax.process_count() == 1:
    return jax.tree.map(jax.device_put, tree, shardings)

  def put(a, s):
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

  return jax.tree.map(put, tree, shardings)
