#!/usr/bin/env python3
"""Summarise sweep runs: table of last/best eval per run; tar curves+logs; pack the best model."""
import json, os, subprocess, sys

runs, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
rows = []
for name in sorted(os.listdir(runs)):
  c = os.path.join(runs, name, "curve.json")
  if not os.path.isfile(c):
    continue
  curve = json.load(open(c))
  ev = [r for r in curve if "eval_acc" in r]
  last = curve[-1] if curve else {}
  best = max(ev, key=lambda r: (r["eval_acc"], r["step"])) if ev else {}
  rows.append((name, last.get("step"), last.get("stage"), last.get("seq_len"),
               round(last.get("ans_acc", 0), 3), round(last.get("tokens_per_s", 0)),
               ev[-1]["eval_acc"] if ev else None, ev[-1].get("eval_retr") if ev else None,
               best.get("eval_acc"), best.get("step")))
hdr = "name step stage seq_len train_ans_acc tok/s eval_acc(last) eval_retr(last) best_eval best_step"
txt = hdr + "\n" + "\n".join(" ".join(str(x) for x in r) for r in rows)
print(txt)
open(os.path.join(out, "summary.txt"), "w").write(txt + "\n")
subprocess.run(f"cd {runs} && tar czf {out}/curves.tar.gz */curve.json */ckpt.json *.log",
               shell=True)
best = sorted(rows, key=lambda r: -(r[6] or 0))[:2]
for r in best if os.environ.get("KEEP_MODELS", "1") == "1" else []:
  d = os.path.join(runs, r[0])
  if os.path.isdir(os.path.join(d, "final")):
    subprocess.run(f"cd {d} && tar cf {out}/model_{r[0]}.tar final", shell=True)
if best and os.environ.get("KEEP_CKPT", "1") == "1":
  d = os.path.join(runs, best[0][0])
  subprocess.run(f"cd {d} && split -b 15M ckpt.msgpack {out}/ckpt_{best[0][0]}.part-", shell=True)
