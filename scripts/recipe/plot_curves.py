"""Learning curves of train_recall.py runs side by side: held-out answer accuracy, training
answer NLL and LM loss vs step (one line per run), to a PNG.

  python scripts/recipe/plot_curves.py OUT.png name=curve.json [name=curve.json ...]
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main(argv):
  from gca_jax.inference.plots import _plt, _save
  out, runs = argv[0], [a.split("=", 1) for a in argv[1:]]
  plt = _plt()
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  for name, path in runs:
    curve = json.load(open(path))
    ev = [r for r in curve if "eval_acc" in r]
    axes[0].plot([r["step"] for r in ev], [r["eval_acc"] for r in ev], marker=".", label=name)
    axes[1].plot([r["step"] for r in curve], [r["ans_nll"] for r in curve], label=name)
    axes[2].plot([r["step"] for r in curve], [r["loss"] for r in curve], label=name)
  for ax, t in zip(axes, ("held-out passkey accuracy at 1008 tokens", "training answer NLL",
                          "training loss")):
    ax.set_title(t)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
  axes[0].legend()
  _save(fig, out)
  plt.close(fig)
  print(out)


if __name__ == "__main__":
  main(sys.argv[1:])
