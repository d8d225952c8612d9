"""Compiled memory per device of one drt_128m train step vs context-parallel degree.

The real training step (`gca_jax.train.make_train_step`: AdamW + clipping, bf16 compute, f32
params, remat as in gca_jax/configs/drt_128m.py) on one sample of `--seq_lens` text tokens,
mesh data=1 fsdp=1 tensor=1 context=k, is lowered for abstract inputs and compiled (never run);
`compiled.memory_analysis()` gives the per-device sizes (docs/method.md §10). Each (length,
context) pair compiles in its own process, so a failure or an OOM at compile time is reported
per row.

Devices: `--platform cpu` (default) makes max(--contexts) fake host devices
(`--xla_force_host_platform_device_count`), so it runs on any machine (one GPU host included);
XLA:CPU memory analysis (its fusion and buffer assignment, not the GPU's; the SWA / GCA kernels
are the XLA paths). `--platform gpu_mock` asks jax for a mocked single-host GPU topology of
max(--contexts) devices (`jax_mock_gpu_topology`, mock NCCL) to compile for the GPU backend on
one GPU: the forms 1xNx1, Nx1x1 and 1x1xN are probed in that order and the first under which
`jax.devices()` lists N devices is used (recorded as "mock_topology"; an error row names the
device counts seen when none does). Not exercised by the tests. `--platform gpu` compiles on the
real GPUs (contexts up to their count; one GPU: context 1 only).

Usage: PYTHONPATH=. python bench/context_memory.py [--seq_lens 65520,262080]
       [--contexts 1,2,4,8] [--platform cpu|gpu_mock] [--out results.json]
Prints one JSON object: {"rows": [{seq_len, context, argument_gib, output_gib, temp_gib,
alias_gib, peak_gib (argument + output + temp - alias), compile_s} | {..., error}], ...}.
seq_len must be a multiple of 63 * context (whole chunks per shard): 65520 = 1040 chunks ("64K"),
262080 = 4160 chunks ("256K").
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024 ** 3


def one(seq_len: int, context: int, platform: str, n_dev: int) -> dict:
  """Compile one step in this process (flags already set by `main`'s child invocation)."""
  import jax
  import numpy as np
  from gca_jax import DRT
  from gca_jax.configs.drt_128m import get_config
  from gca_jax.sharding import make_mesh
  from gca_jax.train import make_optimizer, make_train_step, state_shardings
  from gca_jax.train.run_config import model_config
  from gca_jax.train.state import batch_shardings

  config = get_config()
  config.data.seq_len = seq_len
  cfg = model_config(config)
  model = DRT(cfg)
  mesh = make_mesh(1, 1, 1, devices=jax.devices()[:context], context=context)
  tx, schedule = make_optimizer(config.train)
  abstract, shard = state_shardings(model, tx, mesh, 0)
  host = {"inputs": np.zeros((1, seq_len), np.int32), "targets": np.zeros((1, seq_len), np.int32),
          "loss_weights": np.zeros((1, seq_len), np.float32)}
  bsh = batch_shardings(mesh, host)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh[k]) for k, v in host.items()}
  step = make_train_step(model, tx, schedule, mesh, shard, bsh, 1)
  from gca_jax.train.state import mesh_context
  t0 = time.perf_counter()
  with mesh_context(mesh):
    compiled = step.jitted.lower(abstract, batch).compile()
  m = compiled.memory_analysis()
  row = {"seq_len": seq_len, "context": context, "chunks_per_shard": seq_len // 63 // context,
         "compile_s": round(time.perf_counter() - t0, 1)}
  for k in ("argument", "output", "temp", "alias"):
    row[f"{k}_gib"] = round(getattr(m, f"{k}_size_in_bytes") / GIB, 3)
  row["peak_gib"] = round(row["argument_gib"] + row["output_gib"] + row["temp_gib"]
                          - row["alias_gib"], 3)
  row["device"] = f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind} ({platform})"
  return row


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seq_lens", default="65520,262080")
  ap.add_argument("--contexts", default="1,2,4,8")
  ap.add_argument("--platform", default="cpu", choices=("cpu", "gpu", "gpu_mock"))
  ap.add_argument("--out", default="")
  ap.add_argument("--timeout", type=int, default=1800, help="seconds per compile")
  ap.add_argument("--_one", default="", help=argparse.SUPPRESS)
  a = ap.parse_args()
  contexts = [int(x) for x in a.contexts.split(",")]
  n_dev = max(contexts)
  if a._one:
    s, c = (int(x) for x in a._one.split(":"))
    print("ROW " + json.dumps(one(s, c, a.platform, n_dev)))
    return
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  if a.platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={n_dev}").strip()
  elif a.platform == "gpu":
    pass
  else:
    seen = {}
    for topo in (f"1x{n_dev}x1", f"{n_dev}x1x1", f"1x1x{n_dev}"):
      probe = subprocess.run(
          [sys.executable, "-c", "import jax; print('NDEV', len(jax.devices()))"],
          env=dict(env, JAX_MOCK_GPU_TOPOLOGY=topo), capture_output=True, text=True, timeout=300)
      got = [x for x in probe.stdout.splitlines() if x.startswith("NDEV ")]
      seen[topo] = int(got[-1].split()[1]) if got else (probe.stderr or "no output")[-300:]
      print(f"mock topology {topo}: {seen[topo]}", file=sys.stderr, flush=True)
      if seen[topo] == n_dev:
        env["JAX_MOCK_GPU_TOPOLOGY"] = topo
        break
    else:
      print(json.dumps({"bench": "context_memory", "platform": a.platform,
                        "error": f"no mocked topology gives {n_dev} devices", "seen": seen}))
      return
  rows = []
  for s in (int(x) for x in a.seq_lens.split(",")):
    for c in contexts:
      cmd = [sys.executable, os.path.abspath(__file__), "--_one", f"{s}:{c}",
             "--contexts", a.contexts, "--platform", a.platform]
      try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        line = [x for x in p.stdout.splitlines() if x.startswith("ROW ")]
        rows.append(json.loads(line[-1][4:]) if line else
                    {"seq_len": s, "context": c, "error": (p.stderr or p.stdout)[-600:]})
      except subprocess.TimeoutExpired:
        rows.append({"seq_len": s, "context": c, "error": f"compile > {a.timeout}s"})
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  import jax
  out = {"bench": "context_memory", "model": "drt_128m", "batch": 1, "platform": a.platform,
         "mock_topology": env.get("JAX_MOCK_GPU_TOPOLOGY"),
         "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
  text = json.dumps(out, indent=1)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text)
  print(text)


if __name__ == "__main__":
  main()
