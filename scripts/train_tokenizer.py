"""Train a SentencePiece BPE tokenizer (byte fallback, `<eot>` piece) on your own corpus.

    python scripts/train_tokenizer.py --input /data/pg19/train --model_prefix /data/pg19_32k \
        --vocab_size 32000

`--input` is a text file, a directory (recursively *.txt / *.md / *.jsonl) or a JSONL file, read
by `gca_jax.data.read_documents` (empty / non-UTF-8 / malformed inputs are skipped and reported).
Long lines are split before training (SentencePiece silently drops lines longer than
--max_sentence_length). Writes <model_prefix>.model and .vocab; point `data.tokenizer` at the
.model and set `model.vocab_size` to the printed size.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gca_jax.data import CorpusError, Tokenizer  # noqa: E402
from gca_jax.data.tokenizer import train_tokenizer  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--input", required=True)
  ap.add_argument("--model_prefix", required=True)
  ap.add_argument("--vocab_size", type=int, default=32000)
  ap.add_argument("--max_sentence_length", type=int, default=4192)
  ap.add_argument("--num_threads", type=int, default=os.cpu_count() or 1)
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  try:
    path = train_tokenizer(a.input, a.model_prefix, a.vocab_size,
                           max_sentence_length=a.max_sentence_length, seed=a.seed,
                           num_threads=a.num_threads)
  except CorpusError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  tok = Tokenizer.load(path)
  print(f"wrote {path}: vocab_size {tok.vocab_size}, eot id {tok.eot_id}")


if __name__ == "__main__":
  main()
