"""train.py / eval.py as a user runs them (subprocesses): smoke runs, SIGTERM, config errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _train_helpers import ROOT, cli_overrides


def _env():
  env = dict(os.environ)
  # one CPU device in the subprocess (conftest gives this process 8 fake ones)
  flags = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                   if "xla_force_host_platform_device_count" not in f)
  env["XLA_FLAGS"] = flags
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run(args, timeout=240):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("token_cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
  run_dir = str(tmp_path_factory.mktemp("cli") / "run")
  p = _run(["train.py", "--config", "configs/tiny.py",
            *cli_overrides(run_dir, cache, **{"train.steps": 3, "train.eval_every": 2})])
  assert p.returncode == 0, p.stderr[-3000:]
  return run_dir, p


def test_train_smoke(trained):
  run_dir, p = trained
  assert "completed at step 3" in p.stdout
  assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["2", "3"]
  recs = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
  assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3]
  assert [r["step"] for r in recs if "eval_loss" in r] == [2, 3]
  assert os.listdir(os.path.join(run_dir, "tensorboard"))
  cfg = json.load(open(os.path.join(run_dir, "config.json")))
  assert cfg["model"]["d_model"] == 32 and cfg["model"]["upper_groups"] == [1]


def test_eval_smoke(trained, tmp_path):
  """--run_dir --task all: perplexity and the full-forward passkey (one scorer, grid layout)."""
  run_dir, _ = trained
  out = str(tmp_path / "result.json")
  p = _run(["eval.py", "--run_dir", run_dir, "--task", "all", "--lengths", "90,120",
            "--trials", "2", "--depths", "0,1", "--ppl_windows", "3", "--out", out])
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.load(open(out))
  assert r["step"] == 3 and r["seq_len"] == 60 and r["run_dir"] == os.path.abspath(run_dir)
  assert r["ppl"]["windows"] == 3 and r["ppl"]["length"] == 60 and r["ppl"]["ppl"] > 1
  g = r["passkey"]
  assert g["engine"] == "full_forward" and g["kinds"] == ["single"]
  assert {(c["length"], c["depth"]) for c in g["cells"]} == {(90, 0.0), (90, 1.0), (120, 0.0),
                                                            (120, 1.0)}
  for c in g["cells"]:
    assert c["trials"] == 2 and 0 <= c["whole_key_hits"] <= c["first_token_hits"] <= 2
  assert set(g["summary"]["single"]["official"]) == {"90", "120"}


def test_eval_rejects_mismatched_config(trained):
  run_dir, _ = trained
  p = _run(["eval.py", "--run_dir", run_dir, "--task", "ppl", "--config", "configs/tiny.py"])
  assert p.returncode == 2
  assert "--config does not match the model of --run_dir" in p.stderr
  assert "model.d_model: 32 != 128" in p.stderr


def test_eval_missing_step(trained):
  run_dir, _ = trained
  p = _run(["eval.py", "--run_dir", run_dir, "--step", "7", "--task", "ppl"])
  assert p.returncode == 2 and "no checkpoint for step 7" in p.stderr


def test_bad_config_exit_code_and_message(tmp_path, cache):
  p = _run(["train.py", "--config", "configs/tiny.py",
            *cli_overrides(str(tmp_path / "run"), cache, **{"train.global_batch_size": 6,
                                                            "train.grad_accum": 4})])
  assert p.returncode == 2
  assert "config.train.global_batch_size=6: must be divisible" in p.stderr
  p = _run(["train.py", "--config", "configs/tiny.py", "--config.train.nonexistent=1"])
  assert p.returncode != 0 and "nonexistent" in p.stderr


def test_sigterm_saves_and_exits_zero(tmp_path, cache):
  run_dir = str(tmp_path / "run")
  proc = subprocess.Popen(
      [sys.executable, "train.py", "--config", "configs/tiny.py",
       *cli_overrides(run_dir, cache, **{"train.steps": 100000, "checkpoint.every": 0,
                                         "train.eval_every": -1, "model.upper_groups": "1,1"})],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(run_dir, "metrics.jsonl")
  deadline = time.time() + 180
  try:
    while time.time() < deadline:
      if os.path.exists(metrics) and any('"loss"' in l for l in open(metrics)):
        break
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      time.sleep(0.2)
    else:
      pytest.fail("training never logged a step")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  assert "preempted at step" in out
  step = int(out.split("preempted at step")[1].split()[0])
  assert step >= 1
  assert os.listdir(os.path.join(run_dir, "checkpoints")) == [str(step)]
  recs = [json.loads(l) for l in open(metrics)]
  assert any(r.get("event") == "preempted" and r["step"] == step for r in recs)
  cfg = json.load(open(os.path.join(run_dir, "config.json")))
  assert cfg["model"]["upper_groups"] == [1, 1]  # tuple override from the command line


def test_eval_long_context_tasks(trained, tmp_path):
  """--task long: perplexity at 2x/3x the training length and a passkey grid, streamed; JSON and
  PNGs in --out_dir; an impossible length is refused before running (exit 2)."""
  run_dir, _ = trained
  out_dir = str(tmp_path / "long")
  p = _run(["eval.py", "--run_dir", run_dir, "--task", "long", "--lengths", "150,3x",
            "--kinds", "single,2hop", "--depths", "0,1", "--trials", "2", "--ppl_windows", "2",
            "--segment_len", "45", "--out_dir", out_dir, "--progress=false"])
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(p.stdout)
  assert set(r["ppl_length"]["lengths"]) == {"150", "180"}
  assert all(v["windows"] == 2 and v["ppl"] > 1 for v in r["ppl_length"]["lengths"].values())
  cells = r["passkey_grid"]["cells"]
  assert len(cells) == 2 * 2 * 2 * 2 and r["passkey_grid"]["engine"] == "stream"
  assert all(0 <= c["whole_key_accuracy"] <= c["first_token_accuracy"] <= 1 for c in cells)
  files = set(os.listdir(out_dir))
  assert {"ppl_length.json", "passkey_grid.json", "ppl_vs_length.png",
          "passkey_single_official.png", "passkey_2hop_landmark.png",
          "passkey_whole_single_landmark.png"} <= files
  assert json.load(open(os.path.join(out_dir, "passkey_grid.json")))["cells"] == cells
  p = _run(["eval.py", "--run_dir", run_dir, "--task", "passkey_grid", "--lengths", "100000000000",
            "--kinds", "single", "--formats", "official", "--progress=false"])
  assert p.returncode == 2 and "length 100000000000 does not fit" in p.stderr, p.stderr[-2000:]


SHIPPED = "checkpoints/sotu_drt"
VALID = "data/corpus/valid"


def test_eval_model_dir_export(tmp_path):
  """--model_dir on the shipped DRT export: the streaming passkey grid at 4x its training length
  and the full-forward cross-check at 1x find the keys; a directory that is no export: exit 2."""
  out = tmp_path / "grid.json"
  p = _run(["eval.py", f"--model_dir={SHIPPED}", "--task=passkey_grid", "--lengths=4x",
            "--depths=0.5,1", "--trials=2", "--kinds=single", "--formats=official",
            f"--eval_path={VALID}", "--progress=false", f"--out={out}"])
  assert p.returncode == 0, p.stderr[-2000:]
  r = json.loads(out.read_text())
  assert r["seq_len"] == 1008 and r["step"] == 4000
  assert r["passkey_grid"]["summary"]["single"]["official"]["4032"] >= 0.75
  p = _run(["eval.py", f"--model_dir={SHIPPED}", "--task=passkey", "--lengths=1x",
            "--depths=1", "--trials=2", f"--eval_path={VALID}"])
  assert p.returncode == 0, p.stderr[-2000:]
  g = json.loads(p.stdout)["passkey"]
  assert g["engine"] == "full_forward" and g["cells"][0]["first_token_hits"] >= 1
  p = _run(["eval.py", f"--model_dir={tmp_path}", "--task=passkey_grid"])
  assert p.returncode == 2 and "--model_dir=" in p.stderr and "config.json" in p.stderr, p.stderr


def test_eval_bad_arguments_exit_2_naming_the_flag():
  for args, msg in ((["--task=bogus"], "--task=bogus"),
                    (["--task=ppl"], "give exactly one of --run_dir"),
                    ([f"--model_dir={SHIPPED}", "--step=3"], "--step applies to --run_dir"),
                    ([f"--model_dir={SHIPPED}", "--task=generate"], "needs --prompt"),
                    ([f"--model_dir={SHIPPED}", "--task=generate", "--prompt=a",
                      "--temperature=-1"], "--temperature=-1.0: must be >= 0"),
                    ([f"--model_dir={SHIPPED}", "--task=passkey_grid", "--kinds=3hop",
                      f"--eval_path={VALID}"], "--kinds=3hop: expected some of"),
                    ([f"--model_dir={SHIPPED}", "--task=ppl_length", "--lengths=4y",
                      f"--eval_path={VALID}"], "--lengths=4y"),
                    ([f"--model_dir={SHIPPED}", "--task=ppl", "--eval_path=/nonexistent"],
                     "--eval_path='/nonexistent' does not exist")):
    p = _run(["eval.py", *args])
    assert p.returncode == 2 and msg in p.stderr, (args, p.stderr[-1500:])


_FAKE_GENERATE = """
import json, os, runpy, sys
import numpy as np
import gca_jax.inference as inference

def generate(params, config, prompt_tokens, max_new_tokens, temperature=0.0, top_k=None, seed=0,
             *, segment_len=None):
  p = np.asarray(prompt_tokens)
  json.dump({"prompt": p.tolist(), "max_new_tokens": max_new_tokens, "temperature": temperature,
             "top_k": top_k, "seed": seed, "d_model": config.d_model,
             "n_params": len(params)}, open(os.environ["FAKE_GENERATE_LOG"], "w"))
  return np.concatenate([p, np.resize(p[:, ::-1], (p.shape[0], max_new_tokens))], 1)

inference.generate = generate
sys.argv = ["eval.py"] + sys.argv[1:]
runpy.run_path("eval.py", run_name="__main__")
"""


@pytest.mark.parametrize("source", ["run_dir", "model_dir"])
def test_eval_generate(source, trained, tmp_path):
  """--task generate encodes the prompt with the model's tokenizer, calls
  gca_jax.inference.generate (here a stand-in that echoes the prompt reversed) with the flags,
  and prints only the decoded continuation."""
  from gca_jax.data import Tokenizer
  src = trained[0] if source == "run_dir" else SHIPPED
  log = tmp_path / "gen.json"
  env = _env()
  env["FAKE_GENERATE_LOG"] = str(log)
  prompt = "The state of the Union is"
  p = subprocess.run([sys.executable, "-c", _FAKE_GENERATE, f"--{source}={src}",
                      "--task=generate", f"--prompt={prompt}", "--max_new_tokens=7",
                      "--temperature=0.5", "--top_k=3", "--seed=9", f"--out={tmp_path}/g.json"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
  assert p.returncode == 0, p.stderr[-3000:]
  call = json.loads(log.read_text())
  tok = Tokenizer.load(os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model"))
  ids = tok.encode(prompt)
  assert call["prompt"] == [ids]
  assert {k: call[k] for k in ("max_new_tokens", "temperature", "top_k", "seed")} == \
      {"max_new_tokens": 7, "temperature": 0.5, "top_k": 3, "seed": 9}
  assert call["d_model"] == (32 if source == "run_dir" else 128) and call["n_params"] > 3
  new = list(np.resize(np.asarray(ids[::-1]), 7))
  assert p.stdout == tok.decode([int(t) for t in new]) + "\n"
  r = json.load(open(tmp_path / "g.json"))
  assert r["tokens"] == [int(t) for t in new] and r["prompt_tokens"] == len(ids)
