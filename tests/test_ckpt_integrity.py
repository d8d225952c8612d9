"""Checkpoint integrity: per-leaf fingerprints saved with each step and verified on restore; a
damaged step (flipped bytes, truncated file, no _METADATA, no fingerprints) falls back to the
newest intact step with one warning line, or is one CheckpointError line when none is intact;
a failed restore prints one line (no Orbax/asyncio traceback spam)."""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

from _train_helpers import ROOT, SMALL_MODEL
from gca_jax import DRT, DRTConfig
from gca_jax.sharding import make_mesh
from gca_jax.train import Checkpointer, CheckpointError, init_state, make_optimizer, state_shardings
from gca_jax.train import fingerprint as fp
from gca_jax.train.checkpoint import CheckpointDamagedError
from gca_jax.train.run_config import base_config

ONE = jax.devices()[:1]


def _abstract(mesh):
  model = DRT(DRTConfig(**SMALL_MODEL))
  tx, _ = make_optimizer(base_config().train)
  return model, tx, state_shardings(model, tx, mesh, 0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Steps 2 (seed 1) and 4 (seed 0) of the small DRT's train state, saved synchronously."""
  mesh = make_mesh(devices=ONE)
  model, tx, (abstract, sh) = _abstract(mesh)
  states = {2: init_state(model, tx, mesh, 1, sh), 4: init_state(model, tx, mesh, 0, sh)}
  base = str(tmp_path_factory.mktemp("ck") / "run")
  ck = Checkpointer(base, async_save=False)
  for s, st in states.items():
    assert ck.save(s, st, None, {"model": {}})
  ck.close()
  return base, abstract, states


@pytest.fixture
def run(saved, tmp_path):
  base, abstract, states = saved
  run_dir = str(tmp_path / "run")
  shutil.copytree(base, run_dir)
  return run_dir, abstract, states


def _step_dir(run_dir, step):
  return os.path.join(run_dir, "checkpoints", str(step))


def _biggest_data_file(run_dir, step):
  files = glob.glob(os.path.join(_step_dir(run_dir, step), "state", "ocdbt.process_0", "d", "*"))
  return max(files, key=os.path.getsize)


def _flip(path):
  """Inverts the byte in the middle of `path` (inside the largest parameter's stored data)."""
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _same(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


def _differing(a, b):
  return [fp.leaf_path(p) for (p, x), y in zip(jax.tree_util.tree_leaves_with_path(a),
                                                jax.tree.leaves(b))
          if not np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)]


def _restore_latest(run_dir, abstract, read_only=True):
  lines = []
  ck = Checkpointer(run_dir, read_only=read_only, warn=lines.append)
  try:
    step, state, _ = ck.restore(None, abstract)
  finally:
    ck.close()
  return step, state, lines


# -- the fingerprint record --------------------------------------------------------------------

def _wsum32_np(a) -> str:
  """The wsum32 checksum in plain numpy (uint64 arithmetic, reduced mod 2^32)."""
  a = np.ascontiguousarray(a)
  b = a.reshape(-1).view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize])
  b = b.astype(np.uint64)
  i = np.arange(b.size, dtype=np.uint64)
  m = np.uint64(0xFFFFFFFF)
  w1 = ((i * 0x9E3779B1 + 0x7F4A7C15) & m) | 1
  w2 = ((i * 0x85EBCA77 + (i >> 7)) & m) | 1
  s1 = int(np.sum((b * w1) & m, dtype=np.uint64) & m)
  s2 = int(np.sum(((b ^ (b >> 16)) * w2) & m, dtype=np.uint64) & m)
  return "%08x%08x" % (s1, s2)


def test_wsum32_is_the_same_for_every_sharding_and_sees_one_bit():
  """The checksum that verifies leaves sharded across processes: one value for any sharding of
  the same array (8 fake devices here), equal to the numpy definition; one flipped bit anywhere
  changes it."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  rng = np.random.default_rng(0)
  a = rng.standard_normal((16, 24)).astype(np.float32)
  mesh = make_mesh(data=2, fsdp=4, tensor=1)
  want = _wsum32_np(a)
  for spec in (P(), P("fsdp"), P(None, "fsdp"), P("data", "fsdp"), P(("data", "fsdp"))):
    x = jax.device_put(a, NamedSharding(mesh, spec))
    assert fp.fingerprint_tree({"a": x}, hash_host=False)["leaves"]["a"]["wsum32"] == want, spec
  bf = rng.standard_normal(37).astype(ml_dtypes.bfloat16)
  assert fp.fingerprint_tree({"b": bf})["leaves"]["b"]["wsum32"] == _wsum32_np(bf)
  bits = a.view(np.uint32)
  for idx in [(0, 0), (7, 13), (15, 23)]:
    for bit in (0, 17, 31):
      b2 = bits.copy()
      b2[idx] ^= np.uint32(1 << bit)
      got = fp.fingerprint_tree({"a": b2.view(np.float32)}, hash_host=False)["leaves"]["a"]
      assert got["wsum32"] != want, (idx, bit)

def test_fingerprint_record():
  tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
          "b": [np.ones(4, ml_dtypes.bfloat16), np.int32(7)]}
  rec = fp.fingerprint_tree(tree)
  assert rec["version"] == 1 and rec["algorithm"] == "sha256"
  assert sorted(rec["leaves"]) == ["a", "b/0", "b/1"]
  assert rec["leaves"]["a"] == {"shape": [2, 3], "dtype": "float32",
                                "sha256": hashlib.sha256(tree["a"].tobytes()).hexdigest(),
                                "wsum32": _wsum32_np(tree["a"])}
  assert rec["leaves"]["b/0"]["dtype"] == "bfloat16"
  assert rec["leaves"]["b/0"]["sha256"] == hashlib.sha256(b"\x80\x3f" * 4).hexdigest()
  assert fp.mismatches(rec, tree) == []
  changed = {"a": tree["a"].copy(), "b": tree["b"]}
  changed["a"][1, 2] = np.nextafter(np.float32(5), np.float32(6))   # one ulp
  assert fp.mismatches(rec, changed) == [("a", "bytes differ from the saved sha256")]
  no_sha = {k: {f: v for f, v in e.items() if f != "sha256"} for k, e in rec["leaves"].items()}
  assert fp.mismatches({**rec, "leaves": no_sha}, changed) == [
      ("a", "bytes differ from the saved wsum32 checksum")]   # as a sharded leaf is verified
  assert fp.mismatches(rec, {"a": np.zeros((3, 2), np.float32), "b": tree["b"]}) == [
      ("a", "shape [3, 2] != saved [2, 3]")]
  assert fp.mismatches(rec, {"c": np.zeros(1)}) == [("c", "has no saved fingerprint")]
  assert fp.mismatches(rec, tree["a"], prefix="a") == []     # a subtree under its prefix
  cast = {"a": tree["a"].astype(np.float64), "b": tree["b"]}
  assert fp.mismatches(rec, cast) == []                      # another dtype: not compared


def test_saved_fingerprints_match_the_state(saved):
  base, _, states = saved
  with open(os.path.join(_step_dir(base, 4), "fingerprints", "metadata")) as f:
    rec = json.load(f)
  emb = np.asarray(states[4].params["embedding"])
  assert rec["leaves"]["params/embedding"] == {
      "shape": list(emb.shape), "dtype": "float32",
      "sha256": hashlib.sha256(emb.tobytes()).hexdigest(), "wsum32": _wsum32_np(emb)}
  assert len(rec["leaves"]) == len(jax.tree.leaves(states[4]))
  with open(os.path.join(_step_dir(base, 4), "meta", "metadata")) as f:
    assert json.load(f)["fingerprints"] == 1


def test_intact_restore_is_bit_identical_and_silent(run):
  run_dir, abstract, states = run
  step, state, lines = _restore_latest(run_dir, abstract)
  assert step == 4 and lines == [] and _same(state, states[4])


def test_sharded_save_is_verified_after_reshard(tmp_path):
  """Saved from an 8-device fsdp mesh (every shard addressable here), restored on one device."""
  mesh8 = make_mesh(data=1, fsdp=8, tensor=1)
  model, tx, (_, sh8) = _abstract(mesh8)
  state = init_state(model, tx, mesh8, 0, sh8)
  ck = Checkpointer(str(tmp_path), async_save=True)
  ck.save(3, state, None, {})
  ck.close()
  rec = json.load(open(os.path.join(_step_dir(str(tmp_path), 3), "fingerprints", "metadata")))
  assert not [k for k, v in rec["leaves"].items() if "skipped" in v]
  _, _, (abstract1, _) = _abstract(make_mesh(devices=ONE))
  step, restored, lines = _restore_latest(str(tmp_path), abstract1)
  assert step == 3 and lines == [] and _same(restored, state)


# -- damaged steps -----------------------------------------------------------------------------

def test_flipped_bytes_detected_and_older_step_used(run, monkeypatch):
  run_dir, abstract, states = run
  _flip(_biggest_data_file(run_dir, 4))
  # without the fingerprint check the damaged step restores silently with other values
  with monkeypatch.context() as m:
    m.setattr(fp, "mismatches", lambda *a, **k: [])
    step, silent, lines = _restore_latest(run_dir, abstract)
  assert step == 4 and lines == []
  wrong = _differing(states[4], silent)
  assert len(wrong) == 1 and wrong[0].startswith("params/")
  # with it: an explicit request for the step is refused, the default falls back to step 2
  ck = Checkpointer(run_dir, read_only=True)
  with pytest.raises(CheckpointDamagedError) as e:
    ck.restore(4, abstract)
  ck.close()
  assert str(e.value).startswith(f"checkpoint step 4 is damaged: {wrong[0]}: bytes differ")
  step, state, lines = _restore_latest(run_dir, abstract)
  assert step == 2 and _same(state, states[2])
  assert lines == [f"warning: checkpoint step 4 is damaged ({wrong[0]}: bytes differ from the "
                   f"saved sha256); using step 2"]


def test_flipped_bytes_detected_by_restore_params(run):
  run_dir, abstract, states = run
  _flip(_biggest_data_file(run_dir, 4))
  lines = []
  ck = Checkpointer(run_dir, read_only=True, warn=lines.append)
  with pytest.raises(CheckpointDamagedError, match=r"step 4 is damaged: params/\S+: bytes differ"):
    ck.restore_params(4, abstract.params)
  step, params = ck.restore_params(None, abstract.params)
  ck.close()
  assert step == 2 and _same(params, states[2].params) and len(lines) == 1


@pytest.mark.parametrize("damage, cause", [
    ("truncate", r"its state cannot be read \(\w+: .*\)"),
    ("no_metadata", r"state/_METADATA is missing"),
    ("no_fingerprints", r"its fingerprints item is missing"),
])
def test_damaged_latest_falls_back_with_one_line(run, damage, cause):
  run_dir, abstract, states = run
  sd = _step_dir(run_dir, 4)
  if damage == "truncate":
    _truncate(_biggest_data_file(run_dir, 4))
  elif damage == "no_metadata":
    os.remove(os.path.join(sd, "state", "_METADATA"))
  else:
    shutil.rmtree(os.path.join(sd, "fingerprints"))
  step, state, lines = _restore_latest(run_dir, abstract)
  assert step == 2 and _same(state, states[2])
  assert len(lines) == 1 and "\n" not in lines[0]
  assert lines[0].startswith("warning: checkpoint step 4 is damaged (")
  assert lines[0].endswith("); using step 2")
  import re
  assert re.search(cause, lines[0]), lines[0]


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_metadata"])
def test_only_step_damaged_is_one_error_line(run, damage):
  run_dir, abstract, _ = run
  shutil.rmtree(_step_dir(run_dir, 2))
  if damage == "flip":
    _flip(_biggest_data_file(run_dir, 4))
  elif damage == "truncate":
    _truncate(_biggest_data_file(run_dir, 4))
  else:
    os.remove(os.path.join(_step_dir(run_dir, 4), "state", "_METADATA"))
  lines = []
  ck = Checkpointer(run_dir, read_only=True, warn=lines.append)
  with pytest.raises(CheckpointError) as e:
    ck.restore(None, abstract)
  ck.close()
  msg = str(e.value)
  assert lines == [] and "\n" not in msg
  assert msg.startswith(f"no intact checkpoint in {os.path.join(run_dir, 'checkpoints')!r}: "
                        "step 4: ")
  assert {"flip": "bytes differ", "truncate": "cannot be read",
          "no_metadata": "_METADATA is missing"}[damage] in msg


def test_writable_fallback_moves_the_damaged_step_aside(run):
  """The trainer's Checkpointer can then save the same step number again."""
  run_dir, abstract, states = run
  _flip(_biggest_data_file(run_dir, 4))
  step, _, lines = _restore_latest(run_dir, abstract, read_only=False)
  assert step == 2 and len(lines) == 1
  moved = glob.glob(os.path.join(run_dir, "damaged_checkpoints", "4.*"))
  assert len(moved) == 1 and f"moved to {moved[0]}; using step 2" in lines[0]
  ck = Checkpointer(run_dir, async_save=False)
  assert ck.all_steps() == [2]
  assert ck.save(4, states[4], None, {})
  ck.close()
  step, state, lines = _restore_latest(run_dir, abstract)
  assert step == 4 and lines == [] and _same(state, states[4])


def test_step_without_fingerprints_from_older_versions_is_restored(run):
  run_dir, abstract, states = run
  sd = _step_dir(run_dir, 4)
  shutil.rmtree(os.path.join(sd, "fingerprints"))
  meta_file = os.path.join(sd, "meta", "metadata")
  meta = json.load(open(meta_file))
  del meta["fingerprints"]
  json.dump(meta, open(meta_file, "w"))
  step, state, lines = _restore_latest(run_dir, abstract)
  assert step == 4 and lines == [] and _same(state, states[4])


# -- a failed restore prints one line ----------------------------------------------------------

_SCRIPT = r"""
import gc, os, sys, time
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from _train_helpers import SMALL_MODEL
import jax
from gca_jax import DRT, DRTConfig
from gca_jax.sharding import make_mesh
from gca_jax.train import Checkpointer, CheckpointError, make_optimizer, state_shardings
from gca_jax.train.run_config import base_config
model = DRT(DRTConfig(**SMALL_MODEL))
abstract, _ = state_shardings(model, make_optimizer(base_config().train)[0],
                              make_mesh(devices=jax.devices()[:1]), 0)
errors = set()
for _ in range(int(sys.argv[2])):
  ck = Checkpointer(sys.argv[1], read_only=True)
  try:
    ck.restore(None, abstract)
  except CheckpointError as e:
    errors.add(str(e))
  ck.close()
  gc.collect()
time.sleep(1.0)
gc.collect()
print("error: " + " | ".join(sorted(errors)), file=sys.stderr)
"""


def test_failed_restore_prints_one_line(run):
  """Every data file of the only step truncated: TensorStore reads fail concurrently (the case
  that made Orbax's closed event loop print a traceback per pending read). Six attempts."""
  run_dir, _, _ = run
  shutil.rmtree(_step_dir(run_dir, 2))
  for f in glob.glob(os.path.join(_step_dir(run_dir, 4), "state", "ocdbt.process_0", "d", "*")):
    _truncate(f)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-c", _SCRIPT, run_dir, "6"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stderr.splitlines()
  assert len(lines) == 1, r.stderr[-3000:]
  assert lines[0].startswith("error: no intact checkpoint in ") and "step 4: its state cannot be " \
      "read" in lines[0]
  assert "Event loop is closed" not in r.stderr and "Traceback" not in r.stderr
