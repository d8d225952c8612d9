"""Learning curves of recall-recipe runs of train.py side by side, from their metrics.jsonl:
training answer accuracy (first answer token, argmax), held-out official passkey accuracy at the
training length (eval_answer_accuracy), training LM loss and curriculum stage vs step.

  python scripts/recipe/plot_curves.py OUT.png drt=runs/recall_tiny swa=runs/recall_tiny_swa ...
"""

from __future__ import annotations

import json
import os
import sys


def read(run_dir: str) -> tuple[list[dict], list[dict]]:
  """(train records, eval records) of `<run_dir>/metrics.jsonl` (the last run's history)."""
  train, evals = [], []
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        continue
      if "loss" in r:
        train.append(r)
      elif "eval_loss" in r:
        evals.append(r)
  return train, evals


def main(argv: list[str]) -> None:
  if len(argv) < 2:
    raise SystemExit(__doc__)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  out, runs = argv[0], [a.split("=", 1) for a in argv[1:]]
  fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
  panels = [("answer_accuracy", "train answer accuracy", 0), ("eval_answer_accuracy",
            "held-out passkey accuracy", 1), ("loss", "train loss", 0), ("stage", "stage", 0)]
  for name, run_dir in runs:
    train, evals = read(run_dir)
    for ax, (key, title, from_eval) in zip(axes, panels):
      recs = [r for r in (evals if from_eval else train) if key in r]
      ax.plot([r["step"] for r in recs], [r[key] for r in recs], label=name,
              marker="o" if from_eval else None, ms=3)
      ax.set_title(title)
      ax.set_xlabel("step")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  print(f"wrote {out}")


if __name__ == "__main__":
  main(sys.argv[1:])
