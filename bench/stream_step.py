"""Per-segment time of the streaming step, with a device-kernel profile (docs/benchmarks.md §8).

Builds a `drt_128m` stream (random init, bf16 inference copy, batch 1, random tokens) with room
for `--capacity` text tokens, feeds `--warmup` segments of `--segment_len` tokens, then times
`--steps` segments one by one (block_until_ready each), then profiles `--profile_steps` more and
sums the device kernels' time by kernel name (jax.profiler trace, parsed with
`jax._src.profiler.ProfileData`). Also counts the optimized HLO's ops of the step by opcode and
the custom-call targets. Runs with the engine importable from the current directory, so the
same file measures an older checkout: `cd OLD && PYTHONPATH=$PWD python /path/bench/stream_step.py`.

Usage: PYTHONPATH=. python bench/stream_step.py --out step.json [--capacity 4194304]
         [--segment_len 8064] [--steps 30] [--profile_steps 5] [--config drt_128m]
"""

import argparse
import collections
import glob
import importlib
import json
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.getcwd())


def _make_stream(cfg, params, segment_len, capacity, mem_block):
  import gca_jax.inference as inf
  if hasattr(inf, "Stream"):  # the modules' cache mode (session 5 on)
    from gca_jax.models.drt import DRT
    s = inf.Stream(DRT(cfg), params, 1, segment_len=segment_len, capacity_tokens=capacity,
                   mem_block=mem_block, memory="device")
    return s, lambda: s.cache
  s = inf.DRTStream(params, cfg, 1, segment_len=segment_len,
                    capacity=capacity // cfg.text_per_chunk + -(-segment_len // cfg.text_per_chunk),
                    mem_block=mem_block, memory="device")
  return s, lambda: s.state


def _hlo_stats(s, cfg, tokens):
  """Opcode counts and custom-call targets of the compiled step (best effort)."""
  import jax
  import jax.numpy as jnp
  sel = jnp.zeros((0,), jnp.int32)
  try:
    import gca_jax.inference.engine as eng
    lowered = eng._step.lower(s.params, s.cache, tokens, tokens, sel, model=s.model, spec=s.spec,
                              n_select=0)
  except (ImportError, AttributeError):
    import gca_jax.inference.stream as st
    lowered = st.segment_step.lower(s.params, s.state, tokens, tokens, sel, config=cfg,
                                    mem_block=s.mem_block, n_select=0, swa_block=s.swa_block)
  text = lowered.compile().as_text()
  ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", text))
  targets = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text))
  copies = [m for m in re.findall(r"= (\S+) copy\(", text)]
  return dict(opcodes=dict(ops.most_common(40)), custom_calls=dict(targets),
              copy_shapes=copies[:40]), text


def _kernel_profile(trace_dir, steps):
  from jax._src.profiler import ProfileData
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not files:
    return {}
  pd = ProfileData.from_file(files[0])
  by = collections.defaultdict(float)
  n = collections.Counter()
  for plane in pd.planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      if not line.name.startswith("Stream"):
        continue
      for ev in line.events:
        by[ev.name] += ev.duration_ns / 1e6
        n[ev.name] += 1
  total = sum(by.values())
  top = sorted(by.items(), key=lambda kv: -kv[1])[:60]
  return dict(device_ms_per_step=round(total / steps, 3),
              kernels=[dict(name=k[:160], ms_per_step=round(v / steps, 4),
                            calls_per_step=n[k] / steps) for k, v in top])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True)
  ap.add_argument("--config", default="drt_128m")
  ap.add_argument("--capacity", type=int, default=4194304)
  ap.add_argument("--segment_len", type=int, default=8064)
  ap.add_argument("--mem_block", type=int, default=16384)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--steps", type=int, default=30)
  ap.add_argument("--profile_steps", type=int, default=5)
  ap.add_argument("--hlo_out", default=None, help="write the optimized HLO text here")
  args = ap.parse_args()

  import flax
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gca_jax.models.drt import DRT
  from gca_jax.train import run_config as rc

  cfg = rc.model_config(importlib.import_module(f"configs.{args.config}").get_config())
  toks = jnp.zeros((1, 2 * cfg.text_per_chunk), jnp.int32)
  with jax.default_device(jax.devices("cpu")[0]):
    params = flax.core.meta.unbox(
        jax.jit(lambda k: DRT(cfg).init({"params": k}, toks)["params"])(jax.random.key(0)))
  params = jax.device_put(jax.tree.map(lambda p: p.astype(jnp.bfloat16), params),
                          jax.devices()[0])
  P = args.segment_len
  n_feed = args.warmup + args.steps + args.profile_steps
  rng = np.random.default_rng(0)
  data = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, n_feed * P + 1), dtype=np.int32))
  s, _ = _make_stream(cfg, params, P, max(args.capacity, n_feed * P), args.mem_block)
  seg = [(data[:, i * P:(i + 1) * P], data[:, i * P + 1:(i + 1) * P + 1]) for i in range(n_feed)]
  nlls = []
  t0 = time.perf_counter()
  for i in range(args.warmup):
    nlls.append(jnp.sum(s.feed(*seg[i])))
  jax.block_until_ready(nlls)
  warm_s = time.perf_counter() - t0
  times = []
  for i in range(args.warmup, args.warmup + args.steps):
    t = time.perf_counter()
    nll = s.feed(*seg[i])
    jax.block_until_ready(nll)
    times.append(time.perf_counter() - t)
    nlls.append(jnp.sum(nll))
  tdir = tempfile.mkdtemp()
  with jax.profiler.trace(tdir):
    for i in range(args.warmup + args.steps, n_feed):
      nll = s.feed(*seg[i])
      jax.block_until_ready(nll)
      nlls.append(jnp.sum(nll))
  prof = _kernel_profile(tdir, args.profile_steps)
  try:
    hlo, text = _hlo_stats(s, cfg, seg[0][0])
    if args.hlo_out:
      with open(args.hlo_out, "w") as f:
        f.write(text)
  except Exception as e:  # noqa: BLE001
    hlo = {"error": repr(e)[:500]}
  res = dict(cwd=os.getcwd(), config=args.config, capacity=args.capacity, segment_len=P,
             warmup_s=round(warm_s, 3), step_ms_median=round(1e3 * statistics.median(times), 3),
             step_ms_min=round(1e3 * min(times), 3),
             tokens_per_s=round(P / statistics.median(times), 1),
             mean_nll=float(jnp.sum(jnp.stack(nlls))) / (n_feed * P),
             device=jax.devices()[0].device_kind, jax=jax.__version__, profile=prof, hlo=hlo)
  with open(args.out, "w") as f:
    json.dump(res, f, indent=1)
  print(json.dumps({k: v for k, v in res.items() if k not in ("profile", "hlo")}))


if __name__ == "__main__":
  main()
