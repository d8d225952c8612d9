"""Streaming inference at millions of tokens (issue 4): wall time, tokens/s, peak device memory,
host memory, chunk memory on device vs on host, and the ratio to a per-chunk loop.

Model: `configs/drt_128m.py` (d 768, 6 + 6 layers, W 512, K 8, bf16 compute), random init
(timing only; retrieval runs its full top-k over every chunk so far, the selected chunks are
whatever the random model picks). Tokens: uniform random ids, batch 1. Each case runs in its own
process (clean peak-memory counters): the stream is built with its final capacity, the first
segment (compilation + first run) is timed apart, then the rest of the stream.
  - `total_s`  wall time of the whole stream, compilation included (the number the target is on)
  - `steady_tokens_per_s`  tokens after the first segment / their time
  - `steady_tokens_per_s_by_position`  (stream position, tokens/s over the previous 1/16 of it)
(`--loop_tokens` should be a multiple of both 63 and `--segment_len`, e.g. 32 x 8064.)
The per-chunk loop is the same engine fed one chunk (63 text tokens) per step from Python, as
the official code loops over chunks; `loop_ratio` = its time per token / ours, same length.

Usage: PYTHONPATH=. python bench/long_context.py --out long.json [--config drt_128m] \\
         [--lengths 1048576,4194304,16777216] [--memories device,host] [--segment_len 8064] \\
         [--loop_tokens 258048] [--host_lengths 1048576,4194304]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker(length: int, memory: str, segment_len: int, mem_block: int, config: str) -> dict:
  import importlib
  t_w0 = time.perf_counter()

  import flax
  import jax
  import jax.numpy as jnp
  import numpy as np

  from gca_jax.inference import Stream, device_free_bytes
  from gca_jax.models.drt import DRT
  from gca_jax.train import run_config as rc

  cfg = rc.model_config(importlib.import_module(f"configs.{config}").get_config())
  toks = jnp.zeros((1, 2 * cfg.text_per_chunk), jnp.int32)
  with jax.default_device(jax.devices("cpu")[0]):  # init on the host: no GPU compile for init
    params = flax.core.meta.unbox(
        jax.jit(lambda k: DRT(cfg).init({"params": k}, toks)["params"])(jax.random.key(0)))
  params = jax.device_put(jax.tree.map(lambda p: p.astype(jnp.bfloat16), params),
                          jax.devices()[0])  # bf16 inference copy
  nseg = -(-length // segment_len)
  rng = np.random.default_rng(0)
  data = rng.integers(0, cfg.vocab_size, (1, nseg * segment_len + 1), dtype=np.int32)
  free0 = device_free_bytes()
  t_start = time.perf_counter()
  s = Stream(DRT(cfg), params, 1, segment_len=segment_len, capacity_tokens=nseg * segment_len,
             mem_block=mem_block, memory=memory)
  sums = []

  def feed(i):
    sl = slice(i * segment_len, (i + 1) * segment_len)
    nll = s.feed(data[:, sl], data[:, sl.start + 1:sl.stop + 1])
    sums.append(jnp.sum(nll))

  feed(0)
  jax.block_until_ready(sums[-1])
  t_first = time.perf_counter() - t_start
  t1 = time.perf_counter()
  marks = []  # (segments done, seconds since t1): throughput by stream position
  every = max(1, (nseg - 1) // 16)
  for i in range(1, nseg):
    feed(i)
    if i % every == 0:
      jax.block_until_ready(sums[-1])
      marks.append((i, round(time.perf_counter() - t1, 3)))
  total_nll = float(jnp.sum(jnp.stack(sums)))
  t_rest = time.perf_counter() - t1
  total = time.perf_counter() - t_start
  setup_s = t_start - t_w0
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  mb = s.memory_bytes()
  host = {}
  if s.store is not None:
    st = s.store.stats
    host = dict(host_threads=s.store.threads, host_pinned_buffers=st.get("pinned_buffers", 0),
                host_gather_s=round(st["gather_s"], 2),
                host_gather_GBps=round(st["gather_bytes"] / max(st["gather_s"], 1e-9) / 1e9, 2),
                host_write_s=round(st["write_s"], 2),
                host_write_GBps=round(st["write_bytes"] / max(st["write_s"], 1e-9) / 1e9, 2))
  s.close()
  n_tok = nseg * segment_len
  return dict(length=n_tok, memory=s.memory, segment_len=segment_len, mem_block=mem_block,
              total_s=round(total, 3), setup_s=round(setup_s, 2), first_segment_s=round(t_first, 3),
              steady_s=round(t_rest, 3),
              tokens_per_s=round(n_tok / total, 1),
              steady_tokens_per_s=round((n_tok - segment_len) / max(t_rest, 1e-9), 1),
              mean_nll=total_nll / n_tok, chunks=n_tok // cfg.text_per_chunk,
              peak_device_GiB=round(stats.get("peak_bytes_in_use", 0) / 2**30, 3),
              device_free_at_start_GiB=None if free0 is None else round(free0 / 2**30, 2),
              state_device_GiB=round(mb["device"] / 2**30, 3),
              state_host_GiB=round(mb["host"] / 2**30, 3),
              host_maxrss_GiB=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
              device=dev.device_kind, jax=jax.__version__, **host,
              steady_tokens_per_s_by_position=[
                  (i * segment_len, round(segment_len * (i - j) / max(t - u, 1e-9), 1))
                  for (j, u), (i, t) in zip([(0, 0.0)] + marks[:-1], marks)])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  ap.add_argument("--lengths", default="1048576,4194304,16777216")
  ap.add_argument("--memories", default="device")
  ap.add_argument("--host_lengths", default="1048576,4194304",
                  help="lengths also run with memory=host")
  ap.add_argument("--segment_len", type=int, default=8064)
  ap.add_argument("--mem_block", type=int, default=16384)
  ap.add_argument("--loop_tokens", type=int, default=258048,
                  help="length of the per-chunk-loop comparison (0: skip)")
  ap.add_argument("--config", default="drt_128m", help="a module of configs/ (tiny: smoke test)")
  ap.add_argument("--worker", default=None, help="internal: length,memory,segment_len")
  ap.add_argument("--timeout", type=int, default=560)
  args = ap.parse_args()
  if args.worker:
    L, mem, seg = args.worker.split(",")
    print("RESULT " + json.dumps(worker(int(L), mem, int(seg), args.mem_block, args.config)),
          flush=True)
    return
  cases = [(int(L), m, args.segment_len) for m in args.memories.split(",")
           for L in args.lengths.split(",") if L]
  cases += [(int(L), "host", args.segment_len) for L in args.host_lengths.split(",") if L]
  if args.loop_tokens:
    cases += [(args.loop_tokens, "device", args.segment_len), (args.loop_tokens, "device", 63)]
  results = []
  for L, mem, seg in cases:
    cmd = [sys.executable, __file__, "--worker", f"{L},{mem},{seg}", "--mem_block",
           str(args.mem_block), "--config", args.config]
    t0 = time.time()
    try:
      p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
      line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
      r = json.loads(line[-1][7:]) if line else {"length": L, "memory": mem, "segment_len": seg,
                                                 "error": p.stderr[-3000:]}
    except subprocess.TimeoutExpired:
      r = {"length": L, "memory": mem, "segment_len": seg,
           "error": f"timeout after {time.time() - t0:.0f} s"}
    r["process_s"] = round(time.time() - t0, 1)
    results.append(r)
    print(json.dumps(r), flush=True)
    if args.out:
      with open(args.out + ".tmp", "w") as f:
        json.dump({"cases": results}, f, indent=1)
      os.replace(args.out + ".tmp", args.out)
  loop = [r for r in results if r.get("segment_len") == 63 and "total_s" in r]
  ours = [r for r in results if r.get("length") == args.loop_tokens and r.get("segment_len") ==
          args.segment_len and r.get("memory") == "device" and "total_s" in r]
  summary = {}
  if loop and ours:
    summary["loop_ratio_steady"] = ours[0]["steady_tokens_per_s"] / loop[0]["steady_tokens_per_s"]
    summary["loop_ratio_total"] = loop[0]["total_s"] / ours[0]["total_s"]
  done = [r for r in results if "mean_nll" in r and r.get("segment_len") == args.segment_len]
  for h in [r for r in done if r["memory"] == "host"]:
    for d in [r for r in done if r["memory"] == "device" and r["length"] == h["length"]]:
      summary[f"host_vs_device_mean_nll_diff_{h['length']}"] = abs(h["mean_nll"] - d["mean_nll"])
  print(json.dumps({"summary": summary}), flush=True)
  if args.out:
    with open(args.out + ".tmp", "w") as f:
      json.dump({"cases": results, "summary": summary}, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
  main()
