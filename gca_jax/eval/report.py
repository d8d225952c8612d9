"""Side-by-side markdown tables of several models' `eval.py` results (passkey and perplexity).

    python -m gca_jax.eval.report drt=runs/drt/grid.json swa=runs/swa/grid.json [--out table.md]

Each file is an `eval.py` JSON result (or a `passkey_grid.json` from --out_dir) holding a
"passkey_grid" or "passkey" grid and optionally "ppl_length" / "ppl_position" (NLL by position
on one stream: "NLL (change vs the model's first bucket; vs --ppl_ref)"). Passkey cells read
"accuracy% (samples)", hits and samples summed over depths; lengths are also written as
multiples of the training length where the result knows it. `–` = not evaluated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Mapping

_METRICS = {"first": ("first_token_hits", "first-token accuracy"),
            "whole": ("whole_key_hits", "whole-key accuracy")}


def _grid(result: Mapping) -> Mapping | None:
  if "cells" in result:
    return result
  return result.get("passkey_grid") or result.get("passkey")


def _hits(grid: Mapping | None, kind: str, fmt: str, metric: str) -> dict[int, tuple[int, int]]:
  """{length: (hits, samples) summed over depths} of one kind/format."""
  out: dict[int, list[int]] = {}
  key = _METRICS[metric][0]
  for c in (grid or {}).get("cells", []):
    if c["kind"] == kind and c["format"] == fmt:
      h = out.setdefault(int(c["length"]), [0, 0])
      h[0] += int(c[key])
      h[1] += int(c["trials"])
  return {k: (v[0], v[1]) for k, v in out.items()}


def _len_label(n: int, train: int | None) -> str:
  return f"{n:,}" + (f" ({n / train:g}×)" if train else "")


def position_table(results: Mapping[str, Mapping], ref: str | None = None) -> list[str]:
  """Markdown lines of the "ppl_position" results (same stream and buckets for every model):
  per bucket the NLL, its change vs the model's first bucket and, with `ref`, vs model `ref`."""
  pos = {n: r["ppl_position"] for n, r in results.items() if "ppl_position" in r}
  if not pos:
    return []
  edges = {tuple((b["start"], b["end"]) for b in p["buckets"]) for p in pos.values()}
  if len(edges) != 1:
    raise ValueError(f"ppl_position results of {sorted(pos)} have different buckets")
  if ref is not None and ref not in pos:
    raise ValueError(f"--ppl_ref={ref!r}: no ppl_position result of that name")
  train = next(iter(pos.values())).get("train_length")
  lab = lambda n: f"{n / train:g}×" if train else f"{n:,}"  # noqa: E731
  cols = [f"[{lab(a)}, {lab(b)})" for a, b in next(iter(edges))]
  lines = ["**NLL by position on one held-out stream** (nat/token; change vs the model's first "
           "bucket" + (f"; vs {ref}" if ref else "") + ")", "",
           "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  for n, p in pos.items():
    cells = []
    for i, b in enumerate(p["buckets"]):
      c = f"{b['nll']:.4f} ({100 * b['rel_to_first']:+.1f}%"
      if ref:
        c += f"; {100 * (b['nll'] / pos[ref]['buckets'][i]['nll'] - 1):+.2f}%"
      cells.append(c + ")")
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return lines + [""]


def markdown(results: Mapping[str, Mapping], *, kinds=("single", "2hop"), fmt: str = "official",
             metrics=("first", "whole"), ppl_ref: str | None = None) -> str:
  """Markdown tables (one per kind x metric, then held-out perplexity) of {name: result}."""
  grids = {n: _grid(r) for n, r in results.items()}
  train = next((r.get("seq_len") or (g or {}).get("train_length")
                for n, r in results.items() for g in [grids[n]]
                if r.get("seq_len") or (g or {}).get("train_length")), None)
  lines = []
  for kind in kinds:
    lengths = sorted({int(c["length"]) for g in grids.values() if g for c in g["cells"]
                      if c["kind"] == kind and c["format"] == fmt})
    if not lengths:
      continue
    for metric in metrics:
      lines += [f"**{kind} passkey ({fmt} format), {_METRICS[metric][1]}** (% (samples))", "",
                "| model | " + " | ".join(_len_label(L, train) for L in lengths) + " |",
                "|---|" + "---|" * len(lengths)]
      for name, g in grids.items():
        acc = _hits(g, kind, fmt, metric)
        cells = [f"{100 * acc[L][0] / acc[L][1]:.0f}% ({acc[L][1]})" if L in acc else "–"
                 for L in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
      lines.append("")
  ppl = {n: (r.get("ppl_length") or {}).get("lengths") or {} for n, r in results.items()}
  if any(ppl.values()):
    pl = sorted({int(k) for v in ppl.values() for k in v})
    lines += ["**held-out perplexity vs length**", "",
              "| model | " + " | ".join(_len_label(L, train) for L in pl) + " |",
              "|---|" + "---|" * len(pl)]
    for n, v in ppl.items():
      lines.append(f"| {n} | " + " | ".join(f"{v[str(L)]['ppl']:.2f}" if str(L) in v else "–"
                                           for L in pl) + " |")
    lines.append("")
  lines += position_table(results, ppl_ref)
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("results", nargs="+", help="name=path of an eval.py JSON result")
  p.add_argument("--kinds", default="single,2hop")
  p.add_argument("--format", default="official")
  p.add_argument("--out", default="")
  p.add_argument("--ppl_ref", default=None, help="name of the ppl_position reference model")
  a = p.parse_args(argv)
  results = {}
  for item in a.results:
    name, sep, path = item.partition("=")
    if not sep or not name:
      p.error(f"results: {item!r} is not name=path")
    if not os.path.isfile(path):
      p.error(f"results: {path!r} does not exist")
    with open(path) as f:
      results[name] = json.load(f)
  text = markdown(results, kinds=a.kinds.split(","), fmt=a.format, ppl_ref=a.ppl_ref)
  if a.out:
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, a.out)
  sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
