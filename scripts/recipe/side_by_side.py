"""Length generalization side by side (issue 5 part 3): DRT vs Landmark vs SWA-only on the same
passkey grid and perplexity-vs-length, in one script.

Every model is a `save_model` directory (`gca_jax.data.recall`, e.g. `checkpoints/recall_drt`)
and runs through the same code: `gca_jax.inference.tasks.passkey_grid` (official SPEC §4 format,
held-out text filler, random-token keys; first-token and whole-key accuracy; kinds "single" and
"2hop") and `ppl_vs_length` on the held-out text, both on the streaming engines (DRT:
`inference.stream`; SWA / Landmark: `inference.baseline_stream`, Landmark with its top-k block
retrieval). Each model is evaluated up to its own `--max_length` (the baselines collapse long
before, so their longest lengths are skipped to save time); `--long_lengths` (single needle
only) extend the DRT row.

  python scripts/recipe/side_by_side.py --out_dir docs/results/side_by_side \\
    --model drt=checkpoints/recall_drt --model swa=runs/recall/swa/final \\
    --model landmark=runs/recall/landmark/final \\
    --lengths 1008,4032,16128,64512 --long_lengths 1008000 --max_length swa=64512 \\
    --max_length landmark=64512 --trials 4

`--merge a.json,b.json` only renders the table and plots from earlier result files (models
evaluated in separate processes). Outputs in --out_dir: `<model>.json` per model, `table.md`,
heatmaps `<model>_passkey_<kind>_official.png`, `ppl_vs_length.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402


def _pairs(items: list[str], what: str) -> dict[str, str]:
  out = {}
  for it in items or []:
    if "=" not in it:
      raise SystemExit(f"--{what} {it!r}: expected name=value")
    k, v = it.split("=", 1)
    out[k] = v
  return out


def evaluate_model(name: str, path: str, args) -> dict:
  import jax
  import jax.numpy as jnp

  from gca_jax.data import recall as R
  from gca_jax.data.pipeline import tokenize_corpus
  from gca_jax.data.tokenizer import Tokenizer
  from gca_jax.inference.tasks import passkey_grid, ppl_vs_length

  params, cfg, meta = R.load_model(path)
  if args.dtype:
    cfg = cfg.replace(dtype=args.dtype)
  if args.impl:
    cfg = cfg.replace(swa_impl=args.impl, gca_impl=args.impl)
  params = jax.tree.map(jnp.asarray, params)
  tok = Tokenizer.load(args.tokenizer)
  filler = np.asarray(tokenize_corpus(args.filler, tok).tokens)
  max_len = int(_pairs(args.max_length, "max_length").get(name, 1 << 62))
  lengths = [L for L in (int(x) for x in args.lengths.split(",") if x) if L <= max_len]
  longs = [L for L in (int(x) for x in args.long_lengths.split(",") if x) if L <= max_len]
  depths = [float(x) for x in args.depths.split(",")]
  log = lambda s: print(f"[{name}] {s}", file=sys.stderr, flush=True)  # noqa: E731
  out = {"model": name, "path": path, "config": cfg.to_dict(), "train_meta": meta,
         "device": str(jax.devices()[0]), "jax": jax.__version__,
         "date": time.strftime("%Y-%m-%d"), "trials": args.trials, "depths": depths}
  t0 = time.time()
  if lengths:
    out["passkey"] = passkey_grid(params, cfg, tok, filler, lengths=lengths, depths=depths,
                                  trials=args.trials, kinds=args.kinds.split(","),
                                  formats=("official",), seed=args.seed,
                                  segment_len=args.segment_len, batch_size=args.batch,
                                  progress=False, log=log)
    _save(out, args.out_dir, name)
  for L in longs:  # one length at a time: each is checked (memory) and saved on its own
    g = passkey_grid(params, cfg, tok, filler, lengths=[L], depths=args.long_depths.split(","),
                     trials=args.long_trials, kinds=("single",), formats=("official",),
                     seed=args.seed, segment_len=args.long_segment_len,
                     batch_size=args.long_batch, progress=False, log=log)
    if "passkey_long" not in out:
      out["passkey_long"] = g
    else:
      out["passkey_long"]["cells"] += g["cells"]
      out["passkey_long"]["lengths"] += g["lengths"]
      out["passkey_long"]["seconds"].update(g["seconds"])
    _save(out, args.out_dir, name)
  ppl_lengths = [int(x) for x in args.ppl_lengths.split(",") if x]
  if ppl_lengths:
    out["ppl"] = ppl_vs_length(params, cfg, filler, ppl_lengths, windows=args.ppl_windows,
                               segment_len=args.segment_len, progress=False, log=log)
  out["seconds"] = round(time.time() - t0, 1)
  _save(out, args.out_dir, name)
  return out


def _save(obj, out_dir, name):
  from gca_jax.inference.plots import write_json
  write_json(obj, os.path.join(out_dir, f"{name}.json"))


def _acc(grid: dict | None, kind: str, metric: str) -> dict[int, tuple[int, int]]:
  """{length: (hits, trials summed over depths)} for one kind."""
  out: dict[int, list[int]] = {}
  if not grid:
    return {}
  hk = "first_token_hits" if metric == "first" else "whole_key_hits"
  for c in grid["cells"]:
    if c["kind"] == kind:
      h = out.setdefault(int(c["length"]), [0, 0])
      h[0] += c[hk]
      h[1] += c["trials"]
  return {k: tuple(v) for k, v in out.items()}


def render(results: list[dict], out_dir: str) -> str:
  from gca_jax.inference.plots import plot_passkey_grid, plot_ppl_vs_length
  lengths = sorted({int(c["length"]) for r in results for g in ("passkey", "passkey_long")
                    if r.get(g) for c in r[g]["cells"]})
  lines = []
  for kind, metric, title in (("single", "first", "single needle, first-token accuracy"),
                              ("single", "whole", "single needle, whole-key accuracy"),
                              ("2hop", "first", "2-hop, first-token accuracy"),
                              ("2hop", "whole", "2-hop, whole-key accuracy")):
    lines += [f"**{title}** (% (hits/trials); `–` not run)", "",
              "| model | " + " | ".join(f"{L:,}" for L in lengths) + " |",
              "|---|" + "---|" * len(lengths)]
    for r in results:
      acc = _acc(r.get("passkey"), kind, metric)
      acc.update(_acc(r.get("passkey_long"), kind, metric))
      cells = [f"{100 * acc[L][0] / acc[L][1]:.0f} ({acc[L][0]}/{acc[L][1]})" if L in acc
               else "–" for L in lengths]
      lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    lines.append("")
  ppl = {r["model"]: r["ppl"] for r in results if r.get("ppl")}
  if ppl:
    pl = sorted({int(k) for v in ppl.values() for k in v})
    lines += ["**held-out perplexity vs length**", "",
              "| model | " + " | ".join(f"{L:,}" for L in pl) + " |", "|---|" + "---|" * len(pl)]
    for m, v in ppl.items():
      lines.append(f"| {m} | " + " | ".join(f"{v[str(L)]['ppl']:.2f}" if str(L) in v else "–"
                                           for L in pl) + " |")
    plot_ppl_vs_length(ppl, os.path.join(out_dir, "ppl_vs_length.png"))
  for r in results:
    for g in ("passkey", "passkey_long"):
      if r.get(g):
        plot_passkey_grid(r[g], out_dir, prefix=f"{r['model']}_{g}")
  text = "\n".join(lines) + "\n"
  tmp = os.path.join(out_dir, "table.md.tmp")
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, os.path.join(out_dir, "table.md"))
  return text


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out_dir", required=True)
  p.add_argument("--model", action="append", default=[], help="name=save_model dir (repeat)")
  p.add_argument("--merge", default="", help="comma list of result JSONs: only render")
  p.add_argument("--lengths", default="1008,4032,16128,64512")
  p.add_argument("--long_lengths", default="", help="single-needle only lengths (e.g. 1008000)")
  p.add_argument("--max_length", action="append", default=[], help="name=max length (repeat)")
  p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
  p.add_argument("--long_depths", default="0,0.33,0.67,1")
  p.add_argument("--trials", type=int, default=4)
  p.add_argument("--long_trials", type=int, default=4)
  p.add_argument("--kinds", default="single,2hop")
  p.add_argument("--batch", type=int, default=10)
  p.add_argument("--long_batch", type=int, default=8)
  p.add_argument("--segment_len", type=int, default=4032)
  p.add_argument("--long_segment_len", type=int, default=16128)
  p.add_argument("--ppl_lengths", default="1008,4032,16128")
  p.add_argument("--ppl_windows", type=int, default=2, help="held-out windows per length")
  p.add_argument("--tokenizer", default="data/tokenizer/gca_tiny.model")
  p.add_argument("--filler", default="data/corpus/valid", help="held-out text")
  p.add_argument("--dtype", default="", help="override the compute dtype (float32 on CPU)")
  p.add_argument("--impl", default="", help="override swa_impl / gca_impl")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  if args.merge:
    results = []
    for f in args.merge.split(","):
      if not os.path.isfile(f):
        print(f"--merge: {f} missing (that model's run did not get as far), skipped",
              file=sys.stderr)
        continue
      with open(f) as fh:
        results.append(json.load(fh))
  else:
    results = [evaluate_model(n, path, args) for n, path in _pairs(args.model, "model").items()]
  print(render(results, args.out_dir))


if __name__ == "__main__":
  main()
