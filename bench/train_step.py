"""Train-step throughput of the 128M models at 16K tokens on one GPU: DRT vs its baselines.

Runs the real training step (`gca_jax.train.make_train_step`: AdamW + clipping, bf16 compute,
f32 params, remat as in the config) on random tokens, each model in its own process, and reports
step time, tokens/s and MFU. Models (configs/*.py, seq_len 16128 = 256 chunks of 63):
  drt        configs/drt_128m.py (gca_impl auto: the Pallas kernel on GPU)
  drt_xla    the same with gca_impl="xla" (gathered-copy reference)
  drt_remat_full  the same with remat="full" (the GCA forward kernel recomputed in the backward)
  swa        configs/swa_128m.py with baseline_extra_layers=0 (same depth as DRT's decoder: 12)
  swa_p2     configs/swa_128m.py as shipped (+2 layers, the paper's base LM)
  full       configs/full_128m.py with baseline_extra_layers=0 (cuDNN causal attention)
Model FLOPs per token (fwd; x3 for fwd+bwd, remat recompute not counted): 2 x matmul params
(+ LM head) + attention: 4*d*keys per layer (keys = W for SWA, T/2 for full, 64 in the encoder,
K*64 for GCA), DRT matmuls on T*64/63 positions. MFU = model FLOP/s / the bf16 dense peak given.

--loss_impl logits,fused: each model once per loss (config.model.loss_impl, docs/method.md §2.6),
results keyed "model@loss_impl"; ratios are against the SWA models run with the same loss.
Without it the config's loss_impl (fused) and plain model keys. --loss_block_tokens sets the
fused loss's token block (`gca_jax.models.loss.FUSED_BLOCKS`).

Usage: PYTHONPATH=. python bench/train_step.py --out results.json [--batch 4] [--steps 5]
  [--models drt,swa,swa_p2 --loss_impl logits,fused]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = ("drt", "drt_xla", "drt_remat_full", "swa", "swa_p2", "full")
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}


def model_flops_per_token(cfg, T: int) -> float:
  d, m, V, L = cfg.d_model, cfg.mlp_dim, cfg.vocab_size, cfg.num_layers
  layer = 2 * (4 * d * d + 3 * d * m)
  head = 2 * d * V
  if cfg.model_kind == "drt":
    aug = 64 / 63
    upper = sum(cfg.upper_groups)
    enc = cfg.encoder_layers * (layer + 4 * d * 64)
    swa = L * (layer + 4 * d * cfg.window)
    gca = upper * (2 * 2 * d * d + 4 * d * cfg.top_k * 64)
    mem = 2 * 2 * d * d
    return aug * (swa + enc + gca + mem) + head
  keys = cfg.window if cfg.model_kind == "swa" else T / 2
  return L * (layer + 4 * d * min(keys, T)) + head


_CATEGORIES = (  # (category, substrings of GPU kernel names), first match wins
    ("gca_kernel", ("gca_fwd", "gca_bwd")),
    ("attention_cudnn", ("cudnn", "fmha", "sdpa", "flash")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "dot")),
    ("copy_memset", ("memcpy", "memset", "copy")),
    ("reduce", ("reduce",)),
)


_HLO_LINE = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name="([^"]+)"')
_HLO_CALLS = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?calls=%?([\w.\-]+)')
_COMP_HEAD = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_LAYER = re.compile(r"^(lower|upper|layer|encoder)(?:_\d+)?$")
_SUBLAYERS = ("attn", "gca", "mlp")


def hlo_op_names(dump_dir: str) -> dict:
  """{(hlo module, instruction): op_name} from the optimized HLO text XLA dumped under
  `dump_dir` (--xla_dump_to ... --xla_dump_hlo_as_text): the jax source path of every kernel.
  An instruction without metadata (some fusions) takes the first op_name of the computation it
  calls."""
  import glob
  out = {}
  for fn in glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")):
    with open(fn) as f:
      lines = f.read().splitlines()
    mod = lines[0].split()[1].rstrip(",") if lines and lines[0].startswith("HloModule") else ""
    comp_op, comp, pending = {}, None, []
    for line in lines:
      head = _COMP_HEAD.match(line)
      if head:
        comp = head.group(1)
        continue
      m = _HLO_LINE.match(line)
      if m:
        out[(mod, m.group(1))] = m.group(2)
        comp_op.setdefault(comp, m.group(2))
        continue
      m = _HLO_CALLS.match(line)
      if m:
        pending.append((m.group(1), m.group(2)))
    for inst, callee in pending:
      if callee in comp_op:
        out[(mod, inst)] = comp_op[callee]
  return out


def scope_of(op_name: str) -> str:
  """Model part of a jax op path: "<fwd|bwd> <layer kind>/<attn|gca|mlp|other>", "<fwd|bwd>
  <top-level module>" (embed, mem_k, retriever_0, final_norm, ...) or "optimizer/other" for ops
  outside the model (AdamW, clipping). "bwd" = under transpose(...), the backward pass."""
  path = op_name.split(";")[0].split("/")
  root = next((i for i, c in enumerate(path) if c.startswith(("jvp(", "transpose("))), None)
  if root is None:
    return "optimizer/other"
  phase = "bwd" if any(c.startswith("transpose(") for c in path) else "fwd"
  rest = [c for c in path[root + 1:] if not c.startswith(("jvp(", "transpose(", "remat",
                                                          "checkpoint", "jit(", "pjit("))]
  if not rest:
    return f"{phase} model/other"
  m = _LAYER.match(rest[0])
  if m:
    kind = m.group(1)
    sub = next((c for c in rest[1:3] if c in _SUBLAYERS), "other")
    return f"{phase} {kind}/{sub}"
  return f"{phase} {re.sub(r'_\d+$', '', rest[0])}"


def kernel_breakdown(trace_dir: str, steps: int, dump_dir: str | None = None) -> dict:
  """GPU kernel time per step by category, from the perfetto trace `jax.profiler.trace` wrote
  under `trace_dir`; with the HLO dump of the run, also by model part (`scope_of`). Returns
  {category: ms per step, ..., "by_scope": {...}, "top": [[name, ms per step], ...]}."""
  import glob
  import gzip
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
  if not files:
    return {"error": f"no *.trace.json.gz under {trace_dir}"}
  with gzip.open(files[-1], "rt") as f:
    ev = json.load(f)
  ev = ev["traceEvents"] if isinstance(ev, dict) else ev
  pname = {e["pid"]: e.get("args", {}).get("name", "") for e in ev
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  gpu = {p for p, n in pname.items() if "gpu" in n.lower() or "/device:" in n.lower()}
  ops = hlo_op_names(dump_dir) if dump_dir else {}
  by_inst = {}  # instruction name alone (and with "_" for ".") when the module name differs
  for (mod, inst), op in ops.items():
    by_inst.setdefault(inst, op)
    by_inst.setdefault(inst.replace(".", "_"), op)
  by_cat, by_name, by_scope, unmapped = {}, {}, {}, []
  for e in ev:
    if e.get("ph") != "X" or e.get("pid") not in gpu:
      continue
    name, dur = e.get("name", ""), float(e.get("dur", 0.0)) / 1e3 / steps
    low = name.lower()
    cat = next((c for c, keys in _CATEGORIES if any(k in low for k in keys)), "other_fusions")
    by_cat[cat] = by_cat.get(cat, 0.0) + dur
    by_name[name] = by_name.get(name, 0.0) + dur
    if ops:
      a = e.get("args", {})
      op = (ops.get((a.get("hlo_module", ""), a.get("hlo_op", ""))) or by_inst.get(a.get("hlo_op"))
            or by_inst.get(name))
      sc = scope_of(op) if op else "unmapped"
      if not op and len(unmapped) < 5:
        unmapped.append({"name": name, "args": a})
      by_scope[sc] = by_scope.get(sc, 0.0) + dur
  out = {k: round(v, 3) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])}
  out["total_kernel_ms"] = round(sum(by_cat.values()), 3)
  if ops:
    out["by_scope"] = {k: round(v, 3) for k, v in sorted(by_scope.items(), key=lambda kv: -kv[1])}
    out["hlo_modules"] = sorted({m for m, _ in ops})
    out["unmapped_sample"] = unmapped
  out["top"] = [[n, round(v, 3)] for n, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:15]]
  out["gpu_processes"] = sorted(pname[p] for p in gpu)
  return out


def worker(name: str, batch: int, steps: int, seq_len: int, profile: str | None = None,
           loss_impl: str | None = None, loss_block_tokens: int | None = None) -> dict:
  dump = None
  if profile:
    # the optimized HLO text maps each kernel of the trace to its jax source path; CUDA graphs
    # (command buffers) are off so that every kernel event names its own HLO instruction
    dump = os.path.join(profile, name + "_hlo")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump}"
                               " --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*step.*"
                               " --xla_gpu_enable_command_buffer=")
  import jax
  import numpy as np
  from gca_jax import DRT
  from gca_jax.models import resolved_impls
  from gca_jax.sharding import make_mesh
  from gca_jax.train import make_optimizer, make_train_step, state_shardings, init_state, place_batch
  from gca_jax.train.run_config import model_config
  from gca_jax.train.state import batch_shardings, param_count
  import importlib
  cfg_name = {"drt": "drt_128m", "drt_xla": "drt_128m", "drt_remat_full": "drt_128m",
              "swa": "swa_128m", "swa_p2": "swa_128m",
              "full": "full_128m"}[name]
  config = importlib.import_module(f"configs.{cfg_name}").get_config()
  if name == "drt_xla":
    config.model.gca_impl = "xla"
  if name == "drt_remat_full":
    config.model.remat = "full"
  if name in ("swa", "full"):
    config.model.baseline_extra_layers = 0
  if loss_impl:
    config.model.loss_impl = loss_impl
  from gca_jax.models import loss as loss_mod
  if loss_block_tokens:
    import dataclasses
    loss_mod.FUSED_BLOCKS = dataclasses.replace(loss_mod.FUSED_BLOCKS,
                                                block_tokens=loss_block_tokens)
  cfg = model_config(config)
  model = DRT(cfg)
  mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
  tx, schedule = make_optimizer(config.train)
  _, shard = state_shardings(model, tx, mesh, 0)
  state = init_state(model, tx, mesh, 0, shard)
  rng = np.random.default_rng(0)
  toks = rng.integers(0, cfg.vocab_size, (batch, seq_len + 1)).astype(np.int32)
  host = {"inputs": toks[:, :-1], "targets": toks[:, 1:],
          "loss_weights": np.ones((batch, seq_len), np.float32)}
  bsh = batch_shardings(mesh, host)
  step = make_train_step(model, tx, schedule, mesh, shard, bsh, 1)
  b = place_batch(host, mesh, bsh)
  t0 = time.perf_counter()
  state, met = step(state, b)
  jax.block_until_ready(met["loss"])
  compile_s = time.perf_counter() - t0
  state, met = step(state, b)
  jax.block_until_ready(met["loss"])
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, met = step(state, b)
    jax.block_until_ready(met["loss"])
    times.append(time.perf_counter() - t0)
  times.sort()
  med = times[len(times) // 2]
  prof = None
  if profile:
    tdir = os.path.join(profile, name)
    with jax.profiler.trace(tdir, create_perfetto_trace=True):
      for _ in range(3):
        state, met = step(state, b)
      jax.block_until_ready(met["loss"])
    prof = kernel_breakdown(tdir, 3, dump)
  dev = jax.devices()[0]
  kind = next((k for k in PEAK_BF16 if k in dev.device_kind), None)
  tok = batch * seq_len
  flops = 3 * model_flops_per_token(cfg, seq_len) * tok
  stats = dev.memory_stats() or {}
  return dict(model=name, config=cfg_name, kind=cfg.model_kind, layers=cfg.num_layers,
              params_M=param_count(state.params) / 1e6, impls=resolved_impls(cfg, batch, seq_len),
              batch=batch, seq_len=seq_len, step_ms_median=med * 1e3, step_ms_min=times[0] * 1e3,
              tokens_per_s=tok / med, model_TFLOPs=flops / med / 1e12,
              mfu=(flops / med / PEAK_BF16[kind]) if kind else None, peak_flops=PEAK_BF16.get(kind),
              first_step_s=compile_s, profile=prof, loss=float(met["loss"]), device=dev.device_kind,
              jax=jax.__version__, peak_GiB=stats.get("peak_bytes_in_use", 0) / 2**30,
              remat=cfg.remat, loss_impl=cfg.loss_impl,
              loss_block_tokens=loss_mod.FUSED_BLOCKS.block_tokens)


def summarize(results: dict) -> dict:
  """{key: step_ms, tokens_per_s, mfu, peak_GiB, ratio_vs_swa_same_depth, ratio_vs_swa_p2}; a
  key "model@impl" is compared with "swa@impl" / "swa_p2@impl" (the same loss_impl)."""
  out = {}
  for key, r in results.items():
    suffix = key[key.index("@"):] if "@" in key else ""
    ms = r.get("step_ms_median")
    row = {"step_ms": ms, "tokens_per_s": r.get("tokens_per_s"), "mfu": r.get("mfu"),
           "peak_GiB": r.get("peak_GiB")}
    for col, base in (("ratio_vs_swa_same_depth", "swa"), ("ratio_vs_swa_p2", "swa_p2")):
      b = results.get(base + suffix, {}).get("step_ms_median")
      row[col] = ms / b if ms and b else None
    out[key] = row
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  ap.add_argument("--models", default=",".join(MODELS))
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--seq_len", type=int, default=16128)
  ap.add_argument("--worker", default=None)
  ap.add_argument("--loss_impl", default="",
                  help="comma list of config.model.loss_impl values (logits,fused); each model "
                       "runs once per value, keys model@value; empty: the config's")
  ap.add_argument("--loss_block_tokens", type=int, default=0,
                  help="token block of the fused loss (0: gca_jax.models.loss.FUSED_BLOCKS)")
  ap.add_argument("--profile", default=None,
                  help="directory: also trace 3 steps (in a second process per model, CUDA "
                       "graphs off) and report GPU kernel time by category and model part")
  args = ap.parse_args()
  if args.worker:
    print("RESULT " + json.dumps(worker(args.worker, args.batch, args.steps, args.seq_len,
                                        args.profile, args.loss_impl or None,
                                        args.loss_block_tokens or None)))
    return
  results = {}
  impls = [i for i in args.loss_impl.split(",") if i] or [""]
  for name, impl in [(n, i) for n in args.models.split(",") for i in impls]:
    cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch), "--steps",
           str(args.steps), "--seq_len", str(args.seq_len), "--loss_impl", impl,
           "--loss_block_tokens", str(args.loss_block_tokens)]
    name = f"{name}@{impl}" if impl else name
    p = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    results[name] = json.loads(line[-1][7:]) if line else {"error": p.stderr[-2000:]}
    if args.profile:  # a second process: the profile's flags must not touch the timed run
      p = subprocess.run(cmd + ["--profile", args.profile, "--steps", "1"], capture_output=True,
                         text=True)
      line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
      prof = json.loads(line[-1][7:]) if line else {"error": p.stderr[-2000:]}
      results[name]["profile"] = prof.get("profile", prof)
      results[name]["profile_step_ms_no_command_buffers"] = prof.get("step_ms_median")
    print(json.dumps({name: results[name]}), flush=True)
    if args.out:
      with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
  summary = summarize(results)
  results["summary"] = summary
  print(json.dumps({"summary": summary}, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
