"""eval.py --task ppl_position as a user runs it (subprocess), on the shipped sotu_drt export:
the buckets and NLLs equal gca_jax.eval.long.ppl_by_position on the same stream in-process;
bad --length / --bucket_factor exit 2 naming the flag."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "checkpoints", "sotu_drt")
VALID = os.path.join(ROOT, "data", "corpus", "valid")


def _run(args):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  return subprocess.run([sys.executable, "eval.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_ppl_position_cli(tmp_path):
  out = tmp_path / "pos.json"
  p = _run([f"--model_dir={MODEL}", "--task=ppl_position", f"--eval_path={VALID}",
            "--length=4100", "--bucket_unit=1008", "--segment_len=1008", "--progress=false",
            f"--out={out}"])
  assert p.returncode == 0, p.stderr[-2000:]
  r = json.loads(out.read_text())["ppl_position"]
  assert [(b["start"], b["end"]) for b in r["buckets"]] == [(0, 1008), (1008, 4032), (4032, 4100)]
  assert r["train_length"] == 1008 and r["length"] == 4100 and r["engine"] == "stream"
  # in-process: the same export, stream and buckets
  from gca_jax import export
  from gca_jax.data import Tokenizer, tokenize_corpus
  from gca_jax.eval import long
  m = export.load_model(MODEL)
  tok = Tokenizer.load(os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model"))
  stream = np.asarray(tokenize_corpus(VALID, tok, str(tmp_path)).tokens)
  assert r["stream_tokens"] == len(stream)
  ref = long.ppl_by_position(m.params, m.config, stream, length=4100, unit=1008,
                             segment_len=1008, progress=False)
  for a, b in zip(r["buckets"], ref["buckets"]):
    np.testing.assert_allclose(a["nll"], b["nll"], rtol=1e-5)
  assert 2.0 < r["buckets"][1]["nll"] < 7.6   # SOTU model on Moby Dick (7.2); uniform: 8.32
  w = np.array([b["tokens"] for b in r["buckets"]])
  np.testing.assert_allclose(r["loss"], np.dot(w, [b["nll"] for b in r["buckets"]]) / w.sum(),
                             rtol=1e-6)


def test_ppl_position_bad_flags():
  p = _run([f"--model_dir={MODEL}", "--task=ppl_position", f"--eval_path={VALID}",
            "--length=100000000"])
  assert p.returncode == 2 and "--length=100000000: the held-out stream has" in p.stderr, \
      p.stderr[-1500:]
  p = _run([f"--model_dir={MODEL}", "--task=ppl_position", f"--eval_path={VALID}",
            "--bucket_factor=1"])
  assert p.returncode == 2 and "--bucket_factor=1 >= 2" in p.stderr, p.stderr[-1500:]
