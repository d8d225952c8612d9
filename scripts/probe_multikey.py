"""Where multi-key retrieval goes wrong: the retrieval scores of a DRT export on multi-key samples.

    python scripts/probe_multikey.py --model_dir checkpoints/twohop_drt_x2 --num_keys 8 \
        [--samples 64] [--length 1008] [--eval_path data/sotu/valid] [--out probe.json]

For each sample (`make_multikey_passkey_sample`, the question for needle 0, every needle at a
random depth) and each retrieval group, the scores of the retrieval that serves the chunk of the
answer's first prediction (made at the chunk before it, docs/method.md §2.3) are read from the
model's full forward pass. Reported per group: how often the asked needle's chunk (the chunk of
its value Y) is among the top-k, how often any needle chunk fills each slot, the asked chunk's
rank among the needle chunks (1 = best; a retrieval blind to the name gives the mean
(n + 1) / 2 over n needle chunks), and the mean score margin of needle chunks over text chunks
and of the asked chunk over the other needle chunks. CPU is enough (f32, XLA kernels).
"""

import argparse
import json

import flax
import jax
import numpy as np

from gca_jax import DRT, export
from gca_jax.data import Tokenizer, tokenize_corpus
from gca_jax.data.passkey import make_multikey_passkey_sample
from gca_jax.layers.retrieval import ChunkRetriever


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model_dir", required=True)
  ap.add_argument("--num_keys", type=int, default=8)
  ap.add_argument("--samples", type=int, default=64)
  ap.add_argument("--length", type=int, default=1008)
  ap.add_argument("--eval_path", default="data/sotu/valid")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="")
  a = ap.parse_args()
  m = export.load_model(a.model_dir)
  cfg = m.config.replace(dtype="float32", swa_impl="xla", gca_impl="xla")
  if cfg.model_kind != "drt":
    raise SystemExit(f"error: {a.model_dir} is a {cfg.model_kind!r} model, not a DRT")
  tok = Tokenizer.load(f"{a.model_dir}/tokenizer.model")
  filler = np.asarray(tokenize_corpus(a.eval_path, tok, ".cache/tokens").tokens)
  L, K = cfg.text_per_chunk, cfg.top_k
  rng = np.random.default_rng(a.seed)
  samples = [make_multikey_passkey_sample(filler, a.length, rng.uniform(size=a.num_keys).tolist(),
                                          tok, rng, query=0, chunk_text=L)
             for _ in range(a.samples)]
  model = DRT(cfg)
  apply = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, capture_intermediates=lambda mdl, _: isinstance(mdl, ChunkRetriever)))
  groups = len(cfg.upper_groups)
  rows = {g: [] for g in range(groups)}
  for b0 in range(0, len(samples), a.batch):
    part = samples[b0:b0 + a.batch]
    x = np.stack([s.tokens for s in part]).astype(np.int32)
    logits, state = apply(m.params, x)
    inter = flax.core.unfreeze(state["intermediates"])
    logits = np.asarray(logits)
    for g in range(groups):
      _, _, scores = inter[f"retriever_{g}"]["__call__"][0]
      scores = np.asarray(scores)                                  # [B, C, C]
      for i, s in enumerate(part):
        row = s.answer_index // L - 1                              # serves the answer's chunk
        past = np.arange(row)                                      # j < row
        sc = scores[i, row, :row]
        needle_chunks = sorted({v // L for v in s.value_starts})
        asked = s.value_starts[0] // L
        top = set(past[np.argsort(-sc)[:K]].tolist())
        others = [c for c in needle_chunks if c != asked]
        text_chunks = [c for c in past if c not in needle_chunks]
        order = sorted(needle_chunks, key=lambda c: -sc[c])
        rows[g].append({
            "asked_in_topk": asked in top,
            "needle_slots": sum(c in top for c in needle_chunks),
            "asked_rank": order.index(asked) + 1, "needle_chunks": len(needle_chunks),
            "margin_needle_vs_text": float(np.mean(sc[needle_chunks]) - np.mean(sc[text_chunks]))
            if text_chunks else None,
            "margin_asked_vs_other_needles": float(sc[asked] - np.mean(sc[others]))
            if others else None,
            "first_token_right": bool(logits[i, s.answer_index].argmax() == s.key[0]),
        })
  out = {"model_dir": a.model_dir, "num_keys": a.num_keys, "length": a.length,
         "samples": a.samples, "top_k": K, "groups": {}}
  for g, r in rows.items():
    n = np.array([x["needle_chunks"] for x in r], float)
    mean = lambda k: float(np.mean([x[k] for x in r if x[k] is not None]))
    out["groups"][g] = {
        "asked_in_topk": mean("asked_in_topk"),
        "random_among_needles_in_topk": float(np.mean(np.minimum(K, n) / n)),
        "needle_slots_of_topk": mean("needle_slots"),
        "asked_rank_mean": mean("asked_rank"), "random_rank_mean": float(np.mean((n + 1) / 2)),
        "margin_needle_vs_text": mean("margin_needle_vs_text"),
        "margin_asked_vs_other_needles": mean("margin_asked_vs_other_needles"),
        "first_token_accuracy": mean("first_token_right")}
  text = json.dumps(out, indent=1)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text)
  print(text)


if __name__ == "__main__":
  main()
