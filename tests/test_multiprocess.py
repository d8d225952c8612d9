"""Multi-process training on CPU: two train.py processes (gloo collectives) joined by
--coordinator_address / --num_processes / --process_id, against one process with the same global
batch and the same global device count (2).

  (a) 2 processes x 1 device, from scratch, give the per-step losses of 1 process x 2 devices
      (metrics.jsonl); only process 0 writes metrics / logs.
  (c) SIGTERM to one of them after step 4: both save step 4 and exit 0.
  (b) that checkpoint resumes in 1 process, and one of 1 process in 2, with the losses (and the
      final eval) of the uninterrupted run (the data-iterator state is re-sliced,
      gca_jax/train/distributed.py).
Four launches in all (two of one process, two of two processes), through one compilation cache.
Plus the flag validation (exit 2 naming the flag) and the data order / re-slicing units.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from _train_helpers import ROOT, TOKENIZER, cli_overrides
from gca_jax.train import distributed
from gca_jax.train.checkpoint import CheckpointError

STEPS = 6
TOL = 1e-4
TIMEOUT = 300   # seconds per launch (all its processes)
PREEMPT = 4     # SIGTERM after this step
NO_EVAL = {"train.eval_every": -1}   # the final eval is compared once (1 -> 2 processes)


def _env(devices: int, extra: dict | None = None) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra or {})
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class Launch:
  """`processes` copies of `script` (train.py flags), one device each or `devices`; stdout and
  stderr of each in files under `log_dir`."""

  def __init__(self, log_dir, flags, *, processes: int, devices: int,
               script: str = "train.py", env: dict | None = None):
    port = _free_port()
    os.makedirs(log_dir, exist_ok=True)
    self.procs, self.logs = [], []
    for i in range(processes):
      dist = ([f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
               f"--process_id={i}"] if processes > 1 else [])
      out, err = (os.path.join(log_dir, f"p{i}.{k}") for k in ("out", "err"))
      self.logs.append((out, err))
      with open(out, "w") as fo, open(err, "w") as fe:
        self.procs.append(subprocess.Popen(
            [sys.executable, script, *flags, *dist], cwd=ROOT, env=_env(devices, env),
            stdout=fo, stderr=fe, start_new_session=True))

  def text(self, i: int, which: int = 0) -> str:
    with open(self.logs[i][which]) as f:
      return f.read()

  def output(self, i: int) -> str:
    """stdout + stderr of process i."""
    return self.text(i) + self.text(i, 1)

  def report(self) -> str:
    parts = []
    for i, p in enumerate(self.procs):
      parts.append(f"--- process {i} rc={p.poll()}\nstdout:\n{self.text(i)[-3000:]}\n"
                   f"stderr:\n{self.text(i, 1)[-6000:]}")
    return "\n".join(parts)

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
    for p in self.procs:
      p.wait(timeout=30)

  def wait(self, timeout: float = TIMEOUT) -> list[int]:
    """Return codes; a process failing or the timeout kills them all and fails the test."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      rcs = [p.poll() for p in self.procs]
      if all(rc is not None for rc in rcs):
        if any(rcs):
          pytest.fail(f"a process failed (rcs {rcs})\n{self.report()}")
        return rcs
      if any(rc not in (None, 0) for rc in rcs):
        time.sleep(5)   # let the others report, then stop them
        self.kill()
        pytest.fail(f"a process failed (rcs {[p.poll() for p in self.procs]})\n"
                    f"{self.report()}")
      time.sleep(0.1)
    self.kill()
    pytest.fail(f"timeout after {timeout}s\n{self.report()}")


def _flags(run_dir: str, cache: str, compile_cache: str, **extra) -> list[str]:
  over = cli_overrides(run_dir, cache, **{"train.steps": STEPS, "checkpoint.every": 3,
                                          "checkpoint.keep": 5, "mesh.fsdp": -1, **extra})
  return ["--config", "configs/tiny.py", *over, f"--compilation_cache={compile_cache}"]


def _records(run_dir: str) -> list[dict]:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _losses(run_dir: str, since_resume_at: int | None = None) -> dict[int, dict]:
  """{step: train record}; with `since_resume_at`, only the records after the last resume
  event, which must be at that step."""
  recs = _records(run_dir)
  if since_resume_at is not None:
    idx = [i for i, r in enumerate(recs) if r.get("event") == "resume"]
    assert idx, f"no resume event in {run_dir}/metrics.jsonl"
    assert recs[idx[-1]]["step"] == since_resume_at, recs[idx[-1]]
    recs = recs[idx[-1] + 1:]
  out = {}
  for r in recs:
    if "loss" in r and "event" not in r:
      assert r["step"] not in out, f"step {r['step']} logged twice: {r} / {out[r['step']]}"
      out[r["step"]] = r
  return out


def _assert_same(got: dict, ref: dict, steps) -> None:
  assert sorted(got) == list(steps), sorted(got)
  for s in steps:
    for k in ("loss", "grad_norm"):
      assert abs(got[s][k] - ref[s][k]) <= TOL * max(1.0, abs(ref[s][k])), (s, k, got[s], ref[s])


def _ckpt_steps(run_dir: str) -> list[int]:
  d = os.path.join(run_dir, "checkpoints")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit())


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  base = tmp_path_factory.mktemp("mp")
  return {"base": str(base), "cache": str(base / "tokens"), "cc": str(base / "jax_cc")}


@pytest.fixture(scope="module")
def one_process(dirs):
  """The reference: 1 process x 2 devices, STEPS uninterrupted steps, checkpoints at 3 and 6,
  an eval at 6."""
  run = os.path.join(dirs["base"], "one")
  la = Launch(run + ".logs", _flags(run, dirs["cache"], dirs["cc"]), processes=1, devices=2)
  la.wait()
  return run, _losses(run)


@pytest.fixture(scope="module")
def two_processes(dirs):
  """2 processes x 1 device from scratch; SIGTERM to process 1 (only) after step PREEMPT
  (tests/_mp_worker.py holds that process there until the signal has arrived)."""
  run = os.path.join(dirs["base"], "two")
  marker = os.path.join(dirs["base"], "process_1_at_step")
  la = Launch(run + ".logs", _flags(run, dirs["cache"], dirs["cc"], **NO_EVAL), processes=2,
              devices=1, script="tests/_mp_worker.py",
              env={"MP_WAIT_STEP": str(PREEMPT), "MP_WAIT_PROCESS": "1", "MP_MARKER": marker})
  deadline = time.time() + TIMEOUT
  while not os.path.exists(marker):
    if time.time() > deadline or any(p.poll() is not None for p in la.procs):
      la.kill()
      pytest.fail(f"process 1 never reached step {PREEMPT}\n{la.report()}")
    time.sleep(0.05)
  os.kill(la.procs[1].pid, signal.SIGTERM)
  la.wait()
  return run, la


def _iter_files(run_dir: str, step: int) -> list[str]:
  return sorted(os.listdir(os.path.join(run_dir, "checkpoints", str(step), "data_iter")))


TWO_FILES = ["commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]


def test_two_processes_match_one_process(two_processes, one_process):
  run, la = two_processes
  ref = one_process[1]
  assert sorted(ref) == list(range(1, STEPS + 1))
  _assert_same(_losses(run), ref, range(1, PREEMPT + 1))   # also: every step logged once
  starts = [r for r in _records(run) if r.get("event") == "start"]
  assert len(starts) == 1, starts   # process 1 writes no metrics
  assert f"step {PREEMPT}/{STEPS}: loss" in la.output(0)
  assert "step 1/" not in la.output(1) and "model drt" not in la.output(1)   # logs: process 0


def test_sigterm_to_one_process_saves_the_same_step_on_both(two_processes):
  run, la = two_processes
  for i in range(2):
    assert f"preempted at step {PREEMPT}" in la.output(i), la.report()
  assert _ckpt_steps(run) == [3, PREEMPT]   # periodic at 3, the preemption save
  assert _iter_files(run, PREEMPT) == TWO_FILES
  events = [(r["step"], r["event"], r.get("reason")) for r in _records(run) if "event" in r]
  assert (PREEMPT, "checkpoint", "preemption") in events, events
  assert (PREEMPT, "preempted", None) in events, events


def test_resume_two_process_checkpoint_in_one_process(dirs, two_processes, one_process):
  run = os.path.join(dirs["base"], "two_to_one")
  shutil.copytree(two_processes[0], run)
  la = Launch(run + ".logs", _flags(run, dirs["cache"], dirs["cc"], **NO_EVAL), processes=1,
              devices=2)
  la.wait()
  assert "data-iterator state of 2 process(es) re-sliced for 1" in la.output(0), la.report()
  _assert_same(_losses(run, since_resume_at=PREEMPT), one_process[1],
               range(PREEMPT + 1, STEPS + 1))
  assert _iter_files(run, STEPS) == ["commit_success.txt", "process_0-of-1.json"]


def test_resume_one_process_checkpoint_in_two_processes(dirs, one_process):
  ref_dir, ref = one_process
  run = os.path.join(dirs["base"], "one_to_two")
  shutil.copytree(ref_dir, run)
  shutil.rmtree(os.path.join(run, "checkpoints", str(STEPS)))   # the run as if stopped at 3
  la = Launch(run + ".logs", _flags(run, dirs["cache"], dirs["cc"]), processes=2, devices=1)
  la.wait()
  assert "data-iterator state of 1 process(es) re-sliced for 2" in la.output(0), la.report()
  _assert_same(_losses(run, since_resume_at=3), ref, range(4, STEPS + 1))
  assert _iter_files(run, STEPS) == TWO_FILES
  evals = [[r for r in _records(d) if "eval_loss" in r][-1] for d in (run, ref_dir)]
  assert evals[0]["step"] == evals[1]["step"] == STEPS, evals   # the eval of 2 processes
  assert abs(evals[0]["eval_loss"] - evals[1]["eval_loss"]) <= TOL, evals


def test_two_process_checkpoint_verifies_the_leaves_no_process_sees_whole(dirs, two_processes,
                                                                         one_process):
  """Leaves sharded across the two processes cannot be hashed by one process: their wsum32
  checksum (computed collectively) verifies them; bytes flipped in process 0's part of step 4 are
  found on the 2-process resume, which falls back to step 3 and reproduces the reference."""
  run = os.path.join(dirs["base"], "two_flipped")
  shutil.copytree(two_processes[0], run)
  with open(os.path.join(run, "checkpoints", str(PREEMPT), "fingerprints", "metadata")) as f:
    leaves = json.load(f)["leaves"]
  skipped = [k for k, v in leaves.items() if "skipped" in v]
  assert "params/embedding" in skipped, skipped   # fsdp over the 2 processes
  assert all(len(v.get("wsum32", "")) == 16 for v in leaves.values()), leaves
  files = [os.path.join(root, f) for root, _, fs in
           os.walk(os.path.join(run, "checkpoints", str(PREEMPT), "state")) for f in fs
           if "ocdbt.process_0" in root and os.sep + "d" in root]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    f.seek(os.path.getsize(target) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))
  la = Launch(run + ".logs", _flags(run, dirs["cache"], dirs["cc"], **NO_EVAL), processes=2,
              devices=1)
  la.wait()
  out = la.output(0)
  assert f"checkpoint step {PREEMPT} is damaged" in out and "wsum32" in out, la.report()
  _assert_same(_losses(run, since_resume_at=3), one_process[1], range(4, STEPS + 1))


# -- flags ----------------------------------------------------------------------------------------

def test_launch_spec_validation():
  assert distributed.launch_spec() is None
  assert distributed.launch_spec(True) == distributed.LaunchSpec()
  s = distributed.launch_spec(False, "10.0.0.1:1234", 4, 3, "0,1")
  assert s.kwargs() == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                        "process_id": 3, "local_device_ids": [0, 1]}
  assert distributed.launch_spec(True, local_device_ids=["2"]).kwargs() == {
      "local_device_ids": [2]}
  bad = [
      (dict(coordinator_address="h:1", num_processes=2), "--process_id is missing"),
      (dict(num_processes=2, process_id=0), "--coordinator_address is missing"),
      (dict(coordinator_address="h:1", process_id=0), "--num_processes is missing"),
      (dict(coordinator_address="h:1", num_processes=2, process_id=2),
       "--process_id=2: must lie in [0, --num_processes=2)"),
      (dict(coordinator_address="h:1", num_processes=2, process_id=-1), "--process_id=-1"),
      (dict(coordinator_address="h:1", num_processes=0, process_id=0), "--num_processes=0"),
      (dict(coordinator_address="host", num_processes=2, process_id=0), "host:port expected"),
      (dict(coordinator_address="h:x", num_processes=2, process_id=0), "host:port expected"),
      (dict(distributed=True, local_device_ids="0,a"), "--local_device_ids=0,a"),
      (dict(distributed=True, local_device_ids="1,1"), "distinct"),
      (dict(local_device_ids="0"), "--local_device_ids needs --distributed"),
  ]
  for kw, msg in bad:
    with pytest.raises(distributed.DistributedError) as e:
      distributed.launch_spec(**kw)
    assert msg in str(e.value), (kw, str(e.value))


@pytest.mark.parametrize("script,args,msg", [
    ("train.py", ["--config", "configs/tiny.py", "--coordinator_address=localhost:1",
                  "--num_processes=2"], "error: --process_id is missing"),
    ("train.py", ["--config", "configs/tiny.py", "--coordinator_address=localhost:1",
                  "--num_processes=2", "--process_id=2"],
     "error: --process_id=2: must lie in [0, --num_processes=2)"),
    ("eval.py", ["--run_dir=/nonexistent", "--num_processes=2", "--process_id=0"],
     "error: --coordinator_address is missing"),
])
def test_cli_rejects_incomplete_launch_flags(script, args, msg):
  p = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=_env(1),
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-4000:])
  assert msg in p.stderr, p.stderr[-4000:]


# -- data order and re-slicing ----------------------------------------------------------------------

@pytest.mark.parametrize("passkey", [False, True])
def test_process_slices_make_the_one_process_batches(passkey):
  from gca_jax.data import PasskeyConfig, Tokenizer, make_train_dataset
  tok = Tokenizer.load(TOKENIZER)
  tokens = np.random.default_rng(0).integers(0, 4000, 60 * 25 + 1).astype(np.int32)
  kw = dict(seq_len=60, global_batch_size=4, seed=7)
  if passkey:
    kw.update(passkey=PasskeyConfig(fraction=0.5, key_len_train=3, answer_offset=1,
                                    chunk_text=15), tokenizer=tok)
  for count in (2, 4):
    parts = [iter(distributed.train_dataset(tokens, **kw, process_index=p, process_count=count))
             for p in range(count)]
    one = iter(make_train_dataset(tokens, **kw))
    for step in range(15):   # 60 windows: 2+ epochs of 25
      ref = next(one)
      got = [next(it) for it in parts]
      for k in ref:
        np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), ref[k],
                                      err_msg=f"{count} processes, step {step}, {k}")
    assert parts[1].get_state() == {"next_index": 15 * 4 // count}
  assert distributed.train_dataset(tokens, **kw).__class__ is make_train_dataset(
      tokens, **kw).__class__
  with pytest.raises(ValueError, match="global_batch_size=4 is not divisible by process_count=3"):
    distributed.train_dataset(tokens, **kw, process_index=0, process_count=3)
  with pytest.raises(ValueError, match=r"process_index=2 must lie in \[0, 2\)"):
    distributed.train_dataset(tokens, **kw, process_index=2, process_count=2)


def test_reslice_state():
  assert distributed.reslice_state([{"next_index": 6}] * 2, 1) == {"next_index": 12}
  assert distributed.reslice_state([{"next_index": 12}], 4) == {"next_index": 3}
  assert distributed.reslice_state([{"next_index": 6}] * 2, 2) == {"next_index": 6}
  recall = {"step": 5, "stage": 1, "stage_start": 4, "window": [0.5], "num_stages": 2}
  assert distributed.reslice_state([recall, recall], 1) == recall
  with pytest.raises(CheckpointError, match="not divisible by 4"):
    distributed.reslice_state([{"next_index": 3}] * 2, 4)
  with pytest.raises(CheckpointError, match="states differ"):
    distributed.reslice_state([{"next_index": 3}, {"next_index": 4}], 1)
  with pytest.raises(CheckpointError, match="unknown format"):
    distributed.reslice_state([{"pos": 3}], 2)


def test_saved_states_reads_the_process_files(tmp_path):
  d = tmp_path / "7" / "data_iter"
  d.mkdir(parents=True)
  assert distributed.saved_process_count(str(tmp_path), 7) is None
  for i in range(2):
    (d / f"process_{i}-of-2.json").write_text(json.dumps({"next_index": 8}))
  assert distributed.saved_process_count(str(tmp_path), 7) == 2
  assert distributed.saved_states(str(tmp_path), 7) == (2, [{"next_index": 8}] * 2)
  (d / "process_1-of-2.json").write_text("{")
  with pytest.raises(CheckpointError, match="process_1-of-2.json cannot be read"):
    distributed.saved_states(str(tmp_path), 7)
