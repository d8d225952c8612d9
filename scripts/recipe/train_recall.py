#!/usr/bin/env python3
"""Train a small DRT (or the SWA-only / Landmark baseline) to retrieve: issue 5, part 2.

    python scripts/recipe/train_recall.py --out_dir runs/recall/drt --steps 3000 \
        --length_schedule 0:5,400:8,800:16 --repeat_schedule 0:4,300:2,600:1 \
        --p_single 0.5 --p_named 0.4 --n_queries 4 --max_seconds 540

Data (`gca_jax.data.recall`): every step draws a fresh batch, seeded by (seed, step), so a run is
reproducible and resumes exactly.  A batch mixes official passkey samples (SPEC §4 format, real
text filler), named multi-query samples (dense associative recall: several needles, one question
per chunk in the last chunks) and plain LM windows of the same text; loss = weighted next-token
cross-entropy over all text (answer tokens weighted `--answer_weight`).  No other training
signal: the retrieval the model uses is the GCA top-k over landmark scores, learned end to end.

Curricula (`step:value,step:value`, the value of the last entry with step <= current step):
  --length_schedule  sequence length in chunks of 63 tokens (start where top_k covers every past
                     chunk, grow so that selection must be learned);
  --repeat_schedule  needle repetitions (a dense needle makes uniform GCA attention useful at init).
Tokens per step stay about constant (`--tokens_per_step`), the batch shrinking as length grows.

Init knobs (parameter surgery after init, no library change): `--retr_scale` multiplies the
retrievers' query-norm scale (retrieval temperature), `--gca_qk_scale` the GCA q_proj and mem_k
kernels (GCA attention temperature).  `--retr_lr_mult` scales the updates of retrieval/GCA-q/k
params.

Outputs in --out_dir: `curve.json` (one record per log step: step, seq_len, batch, loss,
ans_nll / ans_acc on the training batch (first answer token), grad norms of the retrieval and
copy paths, tokens/s; eval records add held-out official-format passkey answer NLL, first-token
and whole-key accuracy and the rate at which the answer chunk's retrieval selects the needle
chunk), `ckpt.msgpack` (+ `ckpt.json`: full train state every --ckpt_every steps and at exit;
a rerun with the same --out_dir resumes from it, bit-exactly), and at the end `final/`
(bf16 params + config, see `gca_jax.data.recall.save_model` / `load_model`).
`--max_seconds` stops cleanly (checkpoint) so several <= 10-minute GPU calls form one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import flax  # noqa: E402
import flax.linen  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from gca_jax.config import DRTConfig  # noqa: E402
from gca_jax.data import recall as R  # noqa: E402
from gca_jax.data.pipeline import tokenize_corpus  # noqa: E402
from gca_jax.data.tokenizer import Tokenizer  # noqa: E402
from gca_jax.models.drt import DRT  # noqa: E402
from gca_jax.models.loss import cross_entropy_loss  # noqa: E402

RETRIEVAL_KEYS = ("retriever", "mem_k", "q_proj")  # params on the selection / GCA q-k path


def parse_schedule(s: str) -> list[tuple[int, float]]:
  out = []
  for part in s.split(","):
    k, v = part.split(":")
    out.append((int(k), float(v)))
  out.sort()
  if out[0][0] != 0:
    raise ValueError(f"schedule {s!r} must start at step 0")
  return out


def at(schedule, step: int) -> float:
  v = schedule[0][1]
  for k, x in schedule:
    if k <= step:
      v = x
  return v


def get_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  a = p.add_argument
  a("--out_dir", required=True)
  a("--model_kind", default="drt", choices=["drt", "swa", "landmark"])
  a("--d_model", type=int, default=128)
  a("--num_heads", type=int, default=4)
  a("--mlp_dim", type=int, default=384)
  a("--lower_layers", type=int, default=2)
  a("--upper_layers", type=int, default=2)
  a("--encoder_layers", type=int, default=2)
  a("--window", type=int, default=128)
  a("--top_k", type=int, default=4)
  a("--residual", default="official", choices=["official", "standard"])
  a("--baseline_extra_layers", type=int, default=-1, help="-1: = encoder_layers (same depth)")
  a("--swa_impl", default="auto")
  a("--gca_impl", default="auto")
  a("--dtype", default="bfloat16")
  a("--tokenizer", default="data/tokenizer/gca_tiny.model")
  a("--train_text", default="data/corpus/train")
  a("--eval_text", default="data/corpus/valid")
  a("--steps", type=int, default=3000)
  a("--tokens_per_step", type=int, default=32768)
  a("--length_schedule", default="0:16", help="step:chunks,...")
  a("--repeat_schedule", default="0:1", help="step:needle repetitions,...")
  a("--stages", default="", help="adaptive curriculum 'chunks:repeat,...': move to the next "
    "stage when the training answer accuracy of a log window >= --advance_acc (overrides the "
    "length/repeat schedules)")
  a("--advance_acc", type=float, default=0.8)
  a("--advance_min_steps", type=int, default=50)
  a("--named_schedule", default="", help="optional step:p_named,... (overrides --p_named)")
  a("--p_single", type=float, default=1.0)
  a("--p_named", type=float, default=0.0)
  a("--n_queries", type=int, default=4)
  a("--p_landmark_filler", type=float, default=0.0)
  a("--key_len", type=int, default=5)
  a("--answer_weight", type=float, default=1.0)
  a("--lr", type=float, default=2e-3)
  a("--warmup", type=int, default=100)
  a("--lr_end_frac", type=float, default=0.1)
  a("--b2", type=float, default=0.95)
  a("--weight_decay", type=float, default=1e-3)
  a("--clip", type=float, default=1.0)
  a("--retr_lr_mult", type=float, default=1.0)
  a("--retr_scale", type=float, default=1.0)
  a("--gca_qk_scale", type=float, default=1.0)
  a("--seed", type=int, default=0)
  a("--log_every", type=int, default=25)
  a("--eval_every", type=int, default=200)
  a("--eval_samples", type=int, default=64)
  a("--eval_lengths", default="", help="comma list of chunks (default: current and final)")
  a("--ckpt_every", type=int, default=500)
  a("--max_seconds", type=float, default=0, help="stop (and checkpoint) after this wall time")
  a("--stop_after", type=int, default=0, help="stop (and checkpoint) after N steps this call")
  a("--stop_at_acc", type=float, default=0, help="stop when held-out acc at final length >= x")
  return p.parse_args(argv)


def model_config(args) -> DRTConfig:
  extra = args.encoder_layers if args.baseline_extra_layers < 0 else args.baseline_extra_layers
  return DRTConfig(
      vocab_size=4096, d_model=args.d_model, num_heads=args.num_heads, mlp_dim=args.mlp_dim,
      lower_layers=args.lower_layers, upper_groups=(args.upper_layers,),
      encoder_layers=args.encoder_layers, window=args.window, top_k=args.top_k,
      model_kind=args.model_kind, baseline_extra_layers=extra if args.model_kind != "drt" else 0,
      gca_residual=args.residual, swa_impl=args.swa_impl, gca_impl=args.gca_impl,
      dtype=args.dtype, param_dtype="float32")


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def init_params(cfg: DRTConfig, args):
  model = DRT(cfg)
  k = jax.random.key(args.seed)
  params = model.init({"params": k, "gumbel": k}, jnp.zeros((1, 8), jnp.int32))["params"]
  params = flax.linen.unbox(params)

  def surgery(path, x):
    s = _path_str(path)
    if "retriever" in s and "query_norm" in s:
      return x * args.retr_scale
    if ("gca/q_proj" in s or s.startswith("mem_k")) and s.endswith("kernel"):
      return x * args.gca_qk_scale
    return x
  return model, jax.tree_util.tree_map_with_path(surgery, params)


def make_tx(args, params):
  warm = max(1, args.warmup)
  sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, warm, max(args.steps, warm + 1),
                                             args.lr * args.lr_end_frac)
  mult = jax.tree_util.tree_map_with_path(
      lambda p, x: args.retr_lr_mult if any(k in _path_str(p) for k in RETRIEVAL_KEYS) else 1.0,
      params)

  def scale_update(u, state, params=None):
    del params
    return jax.tree.map(lambda a, m: a * m, u, mult), state
  scale = optax.GradientTransformation(lambda p: optax.EmptyState(), scale_update)
  parts = [optax.clip_by_global_norm(args.clip)] if args.clip > 0 else []
  parts += [optax.adamw(sched, b1=0.9, b2=args.b2, weight_decay=args.weight_decay), scale]
  return optax.chain(*parts), sched


GROUPS = {"g_retr_q": ("retriever",), "g_gca_q": ("gca/q_proj",), "g_mem_k": ("mem_k",),
          "g_mem_v": ("mem_v",), "g_gca_o": ("gca/o_proj",), "g_encoder": ("encoder",)}


def group_norms(grads) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  out = {}
  for name, keys in GROUPS.items():
    sq = [jnp.sum(jnp.square(g.astype(jnp.float32))) for p, g in flat
          if any(k in _path_str(p) for k in keys)]
    if sq:
      out[name] = jnp.sqrt(sum(sq))
  return out


def make_step(model, tx, cfg):
  def loss_fn(params, batch, key):
    logits = model.apply({"params": params}, batch["inputs"], train=True, rngs={"gumbel": key})
    loss, m = cross_entropy_loss(logits, batch["targets"], batch["loss_weights"])
    logz = jax.nn.logsumexp(logits, -1)
    tgt = jnp.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
    nll = logz - tgt
    hit = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    am = batch["answer_mask"]
    na = jnp.maximum(am.sum(), 1.0)
    aux = {"loss": loss, "ans_nll": (nll * am).sum() / na, "ans_acc": (hit * am).sum() / na,
           "n_ans": am.sum()}
    return loss, aux

  @jax.jit
  def step(params, opt_state, batch, rng_data, step_i):
    key = jax.random.fold_in(jax.random.wrap_key_data(rng_data), step_i)
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
    aux.update(group_norms(grads))
    aux["grad_norm"] = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, aux
  return step


def make_eval(model, cfg, ids, valid_filler, args):
  """Held-out official-format passkey samples (seeded, fixed): first-token NLL / accuracy,
  whole-key accuracy, and (DRT) whether the answer chunk's retrieval holds the key's chunk."""
  cache = {}

  @jax.jit
  def fwd(params, x):
    if cfg.model_kind == "drt":
      logits, inter = model.apply({"params": params}, x, mutable=["intermediates"])
      idx, w = inter["intermediates"]["retrieval_g0"][0]
      return logits, idx, w
    logits = model.apply({"params": params}, x)
    return logits, None, None

  def run(params, chunks: int):
    length = 63 * chunks
    if chunks not in cache:
      rng = np.random.default_rng([12345, chunks])
      ss = [R.make_recall_sample(rng, ids, valid_filler, length, key_len=5)
            for _ in range(args.eval_samples)]
      cache[chunks] = ss
    ss = cache[chunks]
    x = np.stack([s.tokens[:-1] for s in ss])
    res = {"nll": [], "hit": [], "key": [], "retr": []}
    bs = max(1, min(len(ss), args.tokens_per_step // length))
    for i in range(0, len(ss), bs):
      logits, idx, w = fwd(params, jnp.asarray(x[i:i + bs]))
      logits = np.asarray(logits, np.float32)
      for j, s in enumerate(ss[i:i + bs]):
        at_ = s.answer_targets[0]
        lp = logits[j, at_] - np.logaddexp.reduce(logits[j, at_], axis=-1, keepdims=True)
        keys = s.keys[0]
        res["nll"].append(-lp[0, keys[0]])
        pred = lp.argmax(-1)
        res["hit"].append(pred[0] == keys[0])
        res["key"].append(bool(np.all(pred == keys)))
        if idx is not None:
          c_ans = (at_[0]) // 63                       # chunk of the position predicting key[0]
          key_chunk = (s.needle_starts[0] + len(ids.needle_head)) // 63
          sel = np.asarray(idx[j, c_ans])
          wt = np.asarray(w[j, c_ans])
          res["retr"].append(bool(np.any((sel == key_chunk) & (wt > 0))))
    out = {"eval_len": length, "eval_nll": float(np.mean(res["nll"])),
           "eval_acc": float(np.mean(res["hit"])), "eval_key_acc": float(np.mean(res["key"]))}
    if res["retr"]:
      out["eval_retr"] = float(np.mean(res["retr"]))
    return out
  return run


def save_ckpt(out_dir, params, opt_state, step, rng_data, curve, args, stage=0, stage_start=0):
  blob = flax.serialization.to_bytes({"params": params, "opt_state": opt_state,
                                      "rng": np.asarray(rng_data)})
  tmp = os.path.join(out_dir, "ckpt.msgpack.tmp")
  with open(tmp, "wb") as f:
    f.write(blob)
  os.replace(tmp, os.path.join(out_dir, "ckpt.msgpack"))
  meta = {"step": int(step), "stage": stage, "stage_start": stage_start, "args": vars(args)}
  with open(os.path.join(out_dir, "ckpt.json.tmp"), "w") as f:
    json.dump(meta, f)
  os.replace(os.path.join(out_dir, "ckpt.json.tmp"), os.path.join(out_dir, "ckpt.json"))
  write_curve(out_dir, curve)


def write_curve(out_dir, curve):
  with open(os.path.join(out_dir, "curve.json.tmp"), "w") as f:
    json.dump(curve, f)
  os.replace(os.path.join(out_dir, "curve.json.tmp"), os.path.join(out_dir, "curve.json"))


def main(argv=None):
  args = get_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  t_start = time.time()
  cfg = model_config(args)
  tok = Tokenizer.load(args.tokenizer)
  ids = R.prompt_ids(tok)
  train_text = R.TextFiller(np.asarray(tokenize_corpus(args.train_text, tok).tokens))
  valid_text = R.TextFiller(np.asarray(tokenize_corpus(args.eval_text, tok).tokens))
  model, params = init_params(cfg, args)
  tx, sched = make_tx(args, params)
  opt_state = tx.init(params)
  rng_data = jax.random.key_data(jax.random.key(args.seed + 1))
  start, curve, stage, stage_start = 0, [], 0, 0
  ck = os.path.join(args.out_dir, "ckpt.msgpack")
  if os.path.exists(ck):
    with open(ck, "rb") as f:
      st = flax.serialization.from_bytes({"params": params, "opt_state": opt_state,
                                          "rng": np.asarray(rng_data)}, f.read())
    params, opt_state, rng_data = st["params"], st["opt_state"], jnp.asarray(st["rng"])
    with open(os.path.join(args.out_dir, "ckpt.json")) as f:
      cj = json.load(f)
    start, stage, stage_start = cj["step"], cj.get("stage", 0), cj.get("stage_start", 0)
    cpath = os.path.join(args.out_dir, "curve.json")
    if os.path.exists(cpath):
      with open(cpath) as f:
        curve = [r for r in json.load(f) if r["step"] <= start]
    print(f"resumed from step {start}", flush=True)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f"{cfg.model_kind} params={n_params} cfg={cfg.to_dict()} devices={jax.devices()}",
        flush=True)
  step_fn = make_step(model, tx, cfg)
  evaluate = make_eval(model, cfg, ids, valid_text, args)
  len_s, rep_s = parse_schedule(args.length_schedule), parse_schedule(args.repeat_schedule)
  named_s = parse_schedule(args.named_schedule) if args.named_schedule else None
  stages = [tuple(int(v) for v in x.split(":")) for x in args.stages.split(",")] \
      if args.stages else None
  final_chunks = stages[-1][0] if stages else int(len_s[-1][1])
  acc, t_log, tok_log, step = {}, time.time(), 0, start
  stop_reason = "steps"
  while step < args.steps:
    chunks = stages[stage][0] if stages else int(at(len_s, step))
    repeat = stages[stage][1] if stages else int(at(rep_s, step))
    length = 63 * chunks
    batch_n = max(1, args.tokens_per_step // length)
    p_named = at(named_s, step) if named_s else args.p_named
    mix = R.MixSpec(p_single=args.p_single, p_named=p_named, n_queries=args.n_queries,
                    p_landmark_filler=args.p_landmark_filler, key_len=args.key_len,
                    repeat=repeat, answer_weight=args.answer_weight)
    rng = np.random.default_rng([args.seed, step])
    batch = R.make_batch(rng, ids, train_text, batch_n, length, mix)
    batch.pop("answer_all")
    params, opt_state, aux = step_fn(params, opt_state, {k: jnp.asarray(v) for k, v in
                                                         batch.items()}, rng_data,
                                         jnp.asarray(step, jnp.int32))
    step += 1
    tok_log += batch_n * length
    for k, v in aux.items():
      acc.setdefault(k, []).append(v)
    if step % args.log_every == 0 or step == args.steps:
      vals = {k: float(np.mean([float(x) for x in v])) for k, v in acc.items()}
      dt = time.time() - t_log
      rec = {"step": step, "stage": stage, "seq_len": length, "batch": batch_n, "repeat": mix.repeat,
             "p_named": p_named, "lr": float(sched(step - 1)), **vals,
             "tokens_per_s": tok_log / max(dt, 1e-9), "wall": time.time() - t_start}
      acc, t_log, tok_log = {}, time.time(), 0
      if step % args.eval_every == 0 or step == args.steps:
        lens = ([int(x) for x in args.eval_lengths.split(",")] if args.eval_lengths
                else sorted({chunks, final_chunks}))
        for c in lens:
          e = evaluate(params, c)
          sfx = "" if c == final_chunks else f"@{c}"
          rec.update({k + sfx: v for k, v in e.items()})
        t_log = time.time()
      curve.append(rec)
      print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}),
            flush=True)
      write_curve(args.out_dir, curve)
      if (stages and stage + 1 < len(stages) and step - stage_start >= args.advance_min_steps
          and vals.get("ans_acc", 0) >= args.advance_acc):
        stage, stage_start = stage + 1, step
        print(f"step {step}: stage {stage} {stages[stage]}", flush=True)
      if args.stop_at_acc and rec.get("eval_acc", 0) >= args.stop_at_acc \
          and chunks == final_chunks:
        stop_reason = "stop_at_acc"
        break
    if step % args.ckpt_every == 0:
      save_ckpt(args.out_dir, params, opt_state, step, rng_data, curve, args, stage, stage_start)
    if args.stop_after and step - start >= args.stop_after:
      stop_reason = "stop_after"
      break
    if args.max_seconds and time.time() - t_start > args.max_seconds:
      stop_reason = "max_seconds"
      break
  save_ckpt(args.out_dir, params, opt_state, step, rng_data, curve, args, stage, stage_start)
  # the latest params, also when stopped by time (a rerun resumes from the checkpoint)
  R.save_model(os.path.join(args.out_dir, "final"), params, cfg,
               {"step": step, "train_chunks": final_chunks, "args": vars(args),
                "last": curve[-1] if curve else None})
  print(f"done: step {step} ({stop_reason}) in {time.time() - t_start:.0f}s", flush=True)
  return step, stop_reason


if __name__ == "__main__":
  main()
