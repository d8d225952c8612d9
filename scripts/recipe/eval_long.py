#!/usr/bin/env python3
"""Passkey accuracy of a recipe model far beyond its training length (streaming engine).

    python scripts/recipe/eval_long.py --model checkpoints/recall_drt \
        --lengths 1008,64512,1008000 --samples 8 --batch 4 --segment_len 8192 --out result.json

Samples are the official SPEC §4 format (`gca_jax.data.recall.make_recall_sample`, single
needle, key of 5 random token ids, answer at offset 4 of the last chunk), with Moby Dick
validation text as filler (wrapping around the 24K-token stream at long lengths) and the needle
at evenly spaced depths.  A hit = argmax of the log-probs at the position predicting the first
key token equals it (SPEC §4); `key_acc` = all 5 key tokens right (teacher forcing).
DRT models run through `gca_jax.inference.stream_logprobs_at` (one compiled segment step,
any length); `--full` (or a non-DRT model) uses a full forward pass instead (short lengths).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import numpy as np  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--model", required=True, help="a save_model directory (…/final)")
  p.add_argument("--lengths", required=True, help="comma list of lengths in tokens")
  p.add_argument("--samples", type=int, default=8)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--segment_len", type=int, default=4096)
  p.add_argument("--memory", default="auto")
  p.add_argument("--dtype", default="", help="override compute dtype (float32 on CPU)")
  p.add_argument("--impl", default="", help="override swa_impl/gca_impl (xla on CPU)")
  p.add_argument("--full", action="store_true", help="full forward instead of streaming")
  p.add_argument("--tokenizer", default="data/tokenizer/gca_tiny.model")
  p.add_argument("--filler", default="data/corpus/valid")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  return evaluate(args)


def evaluate(args):
  import jax
  import jax.numpy as jnp

  from gca_jax.data import recall as R
  from gca_jax.data.pipeline import tokenize_corpus
  from gca_jax.data.tokenizer import Tokenizer
  from gca_jax.models.drt import DRT

  params, cfg, meta = R.load_model(args.model)
  over = {}
  if args.dtype:
    over["dtype"] = args.dtype
  if args.impl:
    over.update(swa_impl=args.impl, gca_impl=args.impl)
  cfg = cfg.replace(**over)
  params = jax.tree.map(jnp.asarray, params)
  tok = Tokenizer.load(args.tokenizer)
  ids = R.prompt_ids(tok)
  filler = R.TextFiller(np.asarray(tokenize_corpus(args.filler, tok).tokens))
  out = {"model": args.model, "config": cfg.to_dict(), "train_meta": meta.get("step"),
         "train_chunks": meta.get("train_chunks"), "segment_len": args.segment_len,
         "device": str(jax.devices()[0]), "lengths": {}}
  for L in [int(x) for x in args.lengths.split(",")]:
    rng = np.random.default_rng([args.seed, L])
    depths = np.linspace(0, 1, args.samples) if args.samples > 1 else [0.5]
    ss = [R.make_recall_sample(rng, ids, filler, L - 1, key_len=5, depth=float(d))
          for d in depths]
    hits, keys_ok, t0 = [], [], time.time()
    for i in range(0, len(ss), args.batch):
      grp = ss[i:i + args.batch]
      toks = np.stack([s.tokens for s in grp])             # [b, L]
      pos = grp[0].answer_targets[0]                        # same layout for every sample
      assert all((s.answer_targets[0] == pos).all() for s in grp)
      if cfg.model_kind == "drt" and not args.full:
        from gca_jax.inference import stream_logprobs_at
        lp, _ = stream_logprobs_at(params, cfg, toks, pos, segment_len=args.segment_len,
                                   memory=args.memory)
        lp = np.asarray(lp)
      else:
        logits = DRT(cfg).apply({"params": params}, jnp.asarray(toks[:, :-1]))
        lp = np.asarray(jax.nn.log_softmax(logits[:, pos].astype(jnp.float32), -1))
      for j, s in enumerate(grp):
        pred = lp[j].argmax(-1)
        hits.append(bool(pred[0] == s.keys[0, 0]))
        keys_ok.append(bool(np.all(pred == s.keys[0])))
    r = {"acc": float(np.mean(hits)), "key_acc": float(np.mean(keys_ok)), "n": len(hits),
         "seconds": round(time.time() - t0, 1), "hits": hits}
    if meta.get("train_chunks"):
      r["x_train"] = round(L / (63 * meta["train_chunks"]), 1)
    out["lengths"][str(L)] = r
    print(json.dumps({"length": L, **{k: v for k, v in r.items() if k != "hits"}}), flush=True)
    if args.out:
      with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
  return out


if __name__ == "__main__":
  main()
