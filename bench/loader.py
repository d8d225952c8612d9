"""Training-loader throughput, ArrayRecord shards vs the text path, at drt_128m's batch shape.

Builds a corpus of `--repeat` copies of the shipped Moby Dick training documents (131 per copy,
one file each), then for each path:
  - text:        `tokenize_corpus` (no cache) -> int32 stream in memory -> `make_train_dataset`
  - arrayrecord: `pretokenize` (`--workers` processes) -> shard dir -> `tokenize_corpus` (a lazy
                 `ShardTokens`) -> `make_train_dataset`
and times `--batches` batches of configs/drt_128m.py's global_batch_size x seq_len (32 x 16128)
drawn with next() as the trainer draws them (Grain's iterator reads ahead on its own threads),
after one warm-up batch; `--rounds` rounds alternate the two paths and the median round counts
(the machine is shared). The files are in the page cache. tokens/s counts seq_len tokens per
row, as the train step's tokens/s does.

The consumption of one H200 is `--step_tokens` / `--step_ms`: by default the drt_128m train
step of docs/benchmarks.md §4 ("Session 4" table, H200, 216419b: 175.0 ms for 4 x 16128
tokens, the fastest H200 step there, so the largest demand). headroom = loader / consumption.

Usage: PYTHONPATH=. python bench/loader.py --out loader.json [--repeat 40] [--batches 20]
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from gca_jax.data import Tokenizer, make_train_dataset, tokenize_corpus  # noqa: E402
from gca_jax.data.shards import pretokenize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "data", "corpus", "train")
TOKENIZER = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")


def build_corpus(out: str, repeat: int) -> int:
  """`repeat` copies of the training documents under out/copy_NNN/; returns the file count."""
  if os.path.isdir(out):
    shutil.rmtree(out)
  names = sorted(os.listdir(TRAIN))
  for k in range(repeat):
    d = os.path.join(out, f"copy_{k:03d}")
    os.makedirs(d)
    for n in names:
      shutil.copyfile(os.path.join(TRAIN, n), os.path.join(d, n))
  return repeat * len(names)


def time_loader(tokens, seq_len: int, batch: int, batches: int, seed: int) -> dict:
  """Seconds for `batches` batches after one warm-up; their checksum."""
  it = iter(make_train_dataset(tokens, seq_len=seq_len, global_batch_size=batch, seed=seed))
  next(it)
  t0 = time.perf_counter()
  check = 0
  for _ in range(batches):
    b = next(it)
    check = (check * 31 + int(b["inputs"][:, :8].sum())) % (1 << 61)
  dt = time.perf_counter() - t0
  return {"seconds": dt, "batches": batches, "tokens_per_s": batches * batch * seq_len / dt,
          "batch_ms": 1e3 * dt / batches, "checksum": check}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None, help="write the JSON here too")
  ap.add_argument("--workdir", default="/tmp/gca_loader_bench")
  ap.add_argument("--repeat", type=int, default=40, help="copies of the training corpus")
  ap.add_argument("--batches", type=int, default=20)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  ap.add_argument("--block_tokens", type=int, default=4096)
  ap.add_argument("--step_ms", type=float, default=175.0)
  ap.add_argument("--step_tokens", type=int, default=4 * 16128)
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()

  import jax
  sys.path.insert(0, ROOT)
  from configs.drt_128m import get_config
  c = get_config()
  seq_len, batch = int(c.data.seq_len), int(c.train.global_batch_size)
  tok = Tokenizer.load(TOKENIZER)
  corpus, shards = os.path.join(a.workdir, "corpus"), os.path.join(a.workdir, "shards")
  files = build_corpus(corpus, a.repeat)

  t0 = time.perf_counter()
  text = tokenize_corpus(corpus, tok)
  tokenize_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  m = pretokenize(corpus, TOKENIZER, shards, workers=a.workers, block_tokens=a.block_tokens,
                  overwrite=True)
  pretokenize_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  sharded = tokenize_corpus(shards, tok)
  open_s = time.perf_counter() - t0
  assert len(sharded.tokens) == len(text.tokens) == m["num_tokens"]

  rounds = {"text": [], "arrayrecord": []}
  for _ in range(a.rounds):
    for name, toks in (("text", text.tokens), ("arrayrecord", sharded.tokens)):
      rounds[name].append(time_loader(toks, seq_len, batch, a.batches, a.seed))
  res = {}
  for name, rs in rounds.items():
    med = sorted(rs, key=lambda r: r["tokens_per_s"])[len(rs) // 2]
    res[name] = {**med, "rounds_tokens_per_s": [r["tokens_per_s"] for r in rs]}
  same = res["text"]["checksum"] == res["arrayrecord"]["checksum"]
  need = a.step_tokens / (a.step_ms / 1e3)
  out = {
      "bench": "loader",
      "command": "PYTHONPATH=. python " + " ".join(sys.argv),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "jax_version": jax.__version__,
      "device": f"host CPU: {os.cpu_count()} cores ({platform.processor() or platform.machine()}"
                f"), shared with other jobs; files in the page cache",
      "corpus": {"files": files, "documents": m["num_documents"], "tokens": m["num_tokens"],
                 "shards": len(m["shards"]), "block_tokens": a.block_tokens,
                 "shard_bytes": sum(os.path.getsize(os.path.join(shards, s["name"]))
                                    for s in m["shards"])},
      "shape": {"global_batch_size": batch, "seq_len": seq_len},
      "build_s": {"text_tokenize": tokenize_s, "pretokenize": pretokenize_s,
                  "pretokenize_workers": a.workers, "open_shards": open_s},
      "loader": res,
      "same_batches": same,
      "h200_consumption": {"tokens_per_s": need, "step_ms": a.step_ms,
                           "step_tokens": a.step_tokens,
                           "source": "docs/benchmarks.md §4, Session 4 table, H200 216419b"},
      "headroom": {k: v["tokens_per_s"] / need for k, v in res.items()},
  }
  s = json.dumps(out, indent=1)
  print(s)
  if a.out:
    with open(a.out, "w") as f:
      f.write(s + "\n")


if __name__ == "__main__":
  main()
