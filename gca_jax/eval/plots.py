"""Plots of the long-context evaluation (matplotlib, Agg backend; no display needed).

  plot_ppl_vs_length(ppl, path, ...)   perplexity vs evaluation length, log-x, one line per model
  plot_passkey_grid(grid, out_dir, ...) one heatmap per (kind, format): rows = needle depth,
                                        columns = length, cell text = accuracy in %
  write_json(obj, path)                 JSON, written atomically

Every file is written to `path + ".tmp"` and then moved into place with `os.replace`, so a
reader never sees a half-written PNG or JSON.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from gca_jax.eval.passkey import grid_table


def _plt():
  import matplotlib
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  tmp = path + ".tmp"
  fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
  os.replace(tmp, path)
  return path


def write_json(obj, path: str) -> str:
  """`json.dump(obj)` to `path` atomically (tmp file, then os.replace)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)
  return path


def _fmt_len(n: int) -> str:
  """64K for 65536 (binary multiples), else 3 significant digits: 4.03K for 4032."""
  for unit, s in ((2**20, "M"), (2**10, "K")):
    if n >= unit and n % unit == 0 and (s == "M" or n < 2**20):
      return f"{n // unit}{s}"
  for unit, s in ((10**6, "M"), (10**3, "K")):
    if n >= unit:
      return f"{n / unit:.3g}{s}"
  return str(n)


def plot_ppl_vs_length(ppl: Mapping, path: str, *, train_length: int | None = None,
                       title: str = "Perplexity vs evaluation length") -> str:
  """Line plot of perplexity against length (log-x) from `ppl_vs_length` results.

  `ppl`: {str(length): {"ppl": ...}} for one model, or {label: that dict} for several.
  `train_length` draws a dotted vertical line at the training length. Returns `path`."""
  plt = _plt()
  first = next(iter(ppl.values()))
  series = {"": ppl} if "ppl" in first else dict(ppl)
  fig, ax = plt.subplots(figsize=(6, 4))
  try:
    for label, r in series.items():
      xs = sorted(int(k) for k in r)
      ax.plot(xs, [r[str(x)]["ppl"] for x in xs], marker="o", label=label or None)
    ax.set_xscale("log", base=2)
    xs_all = sorted({int(k) for r in series.values() for k in r})
    ax.set_xticks(xs_all, [_fmt_len(x) for x in xs_all])
    ax.minorticks_off()
    if train_length:
      ax.axvline(train_length, color="gray", linestyle=":", label="training length")
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if len(series) > 1 or train_length:
      ax.legend()
    return _save(fig, path)
  finally:
    plt.close(fig)


def plot_passkey_heatmap(depths, lengths, acc: np.ndarray, path: str, *, title: str = "") -> str:
  """Heatmap acc [len(depths), len(lengths)] in [0, 1] (NaN = not evaluated): rows = depth,
  columns = length, red (0%) to green (100%), each cell labelled with its accuracy in %."""
  plt = _plt()
  acc = np.asarray(acc, float)
  fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(lengths), 1.0 + 0.45 * len(depths)))
  try:
    im = ax.imshow(np.ma.masked_invalid(acc) * 100, cmap="RdYlGn", vmin=0, vmax=100,
                   aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(lengths)), [_fmt_len(int(x)) for x in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * float(d):g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i in range(acc.shape[0]):
      for j in range(acc.shape[1]):
        v = acc[i, j]
        ax.text(j, i, "–" if np.isnan(v) else f"{100 * v:.0f}", ha="center", va="center",
                fontsize=8, color="black")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    ax.set_title(title)
    return _save(fig, path)
  finally:
    plt.close(fig)


def plot_passkey_grid(grid: Mapping, out_dir: str, *, metric: str = "first_token_accuracy",
                      prefix: str = "passkey") -> list[str]:
  """One heatmap per (kind, format) of a `passkey_grid` result, written to
  `out_dir/{prefix}_{kind}_{format}.png`; returns the paths."""
  paths = []
  for kind in grid["kinds"]:
    for fmt in grid["formats"]:
      depths, lengths, acc = grid_table(grid, kind, fmt, metric)
      name = "first-token" if metric == "first_token_accuracy" else "whole-key"
      ts = sorted({int(c["trials"]) for c in grid["cells"] if c["kind"] == kind
                   and c["format"] == fmt}) or [grid["trials"]]
      n_trials = str(ts[0]) if len(ts) == 1 else f"{ts[0]}–{ts[-1]}"
      paths.append(plot_passkey_heatmap(
          depths, lengths, acc, os.path.join(out_dir, f"{prefix}_{kind}_{fmt}.png"),
          title=f"{kind} passkey, {fmt} format ({name}, {n_trials} trials per cell)"))
  return paths


__all__ = ["plot_passkey_grid", "plot_passkey_heatmap", "plot_ppl_vs_length", "write_json"]


def plot_ppl_by_position(results: Mapping[str, Mapping], path: str, *,
                         title: str = "NLL by position on one held-out stream") -> str:
  """Step plot of each model's bucket NLL (`gca_jax.eval.long.ppl_by_position` results,
  {label: result}) against position (log-x, bucket edges as multiples of the training length
  where the result knows it). Returns `path`."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 4))
  try:
    for label, r in results.items():
      bs = r["buckets"]
      xs = [max(b["start"], 1) for b in bs] + [bs[-1]["end"]]
      ys = [b["nll"] for b in bs]
      ax.stairs(ys, xs, baseline=None, label=label, linewidth=1.5)
    ax.set_xscale("log")
    train = next(iter(results.values())).get("train_length")
    if train:
      ax.axvline(train, color="gray", linestyle=":", label="training length")
    ax.set_xlabel("position in the stream (tokens)")
    ax.set_ylabel("mean NLL per token (nat)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)
  finally:
    plt.close(fig)
