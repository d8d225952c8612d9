"""Bad command lines: one line naming the flag / field, exit 2, checked before any work."""

import os
import subprocess
import sys

import pytest

from _train_helpers import ROOT


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run(args, timeout=240):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.parametrize("field,suggest", [("model.mlp_dimm", "model.mlp_dim"),
                                           ("modle.foo", "model")])
def test_unknown_config_field_is_one_line_exit_2(field, suggest):
  p = _run(["train.py", "--config", "configs/tiny.py", f"--config.{field}=1"])
  assert p.returncode == 2, p.stderr[-2000:]
  lines = [x for x in p.stderr.splitlines() if x.strip()]
  assert len(lines) == 1, p.stderr
  assert "is not a config field" in lines[0] and f"did you mean config.{suggest}?" in lines[0]
  assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args,flag", [
    (["--batch_size", "0"], "--batch_size=0"),
    (["--ppl_windows", "0"], "--ppl_windows=0"),
    (["--out", "/proc/no_such_dir/x.json"], "--out="),
    (["--out_dir", "/proc/no_such_dir/x"], "--out_dir="),
])
def test_eval_bad_arguments_found_before_loading(tmp_path, args, flag):
  # the run dir does not even exist: the argument is checked before anything is loaded
  p = _run(["eval.py", "--run_dir", str(tmp_path / "none"), "--task", "ppl", *args])
  assert p.returncode == 2, p.stderr[-2000:]
  assert p.stderr.strip().startswith(f"error: {flag}"), p.stderr
  assert "Traceback" not in p.stderr
