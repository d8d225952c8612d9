"""Tokenize a corpus once into ArrayRecord shards that training reads (gca_jax/data/shards.py).

    python scripts/pretokenize.py --input /data/pg19/train --tokenizer /data/pg19_32k.model \\
        --out /data/pg19_train_shards --workers 16

--input: a directory (searched recursively for *.txt, *.md, *.jsonl), a file, or a glob
('/data/books/part-*.jsonl'). The stream written is the one the text path builds (documents in
the same order, `<eot>` after each), so training on `--config.data.train_path=OUT` gives the
same samples as on the text corpus. Writes OUT/manifest.json (shards, token and document counts,
tokenizer sha256, vocab size, dtype, source files, what was skipped and why) and
OUT/shard-NNNNN.array_record, into a temp dir renamed to OUT at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gca_jax.data.shards import WRITER_OPTIONS, pretokenize  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--input", required=True, help="corpus dir, file or glob")
  p.add_argument("--tokenizer", required=True, help="SentencePiece .model")
  p.add_argument("--out", required=True, help="output shard dir (must not exist)")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="tokenizing processes (0: in this process)")
  p.add_argument("--shard_tokens", type=int, default=1 << 26,
                 help="tokens per shard file (rounded down to a multiple of --block_tokens)")
  p.add_argument("--block_tokens", type=int, default=4096, help="tokens per record")
  p.add_argument("--text_field", default="text", help="JSONL field holding the text")
  p.add_argument("--writer_options", default=WRITER_OPTIONS, help="ArrayRecordWriter options")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  a = p.parse_args(argv)
  t0 = time.perf_counter()
  m = pretokenize(a.input, a.tokenizer, a.out, workers=a.workers, shard_tokens=a.shard_tokens,
                  block_tokens=a.block_tokens, text_field=a.text_field, overwrite=a.overwrite,
                  writer_options=a.writer_options, say=lambda s: print(s, flush=True))
  dt = time.perf_counter() - t0
  st = m["source"]["stats"]
  if st["skipped"] or st["ignored_files"]:
    print(f"warning: skipped {st['skipped']} inputs, ignored {st['ignored_files']} files: see "
          f"source.stats in {os.path.join(a.out, 'manifest.json')}")
  print(f"{m['num_tokens']} tokens ({m['dtype']}), {m['num_documents']} documents, "
        f"{len(m['shards'])} shards in {dt:.1f} s ({m['num_tokens'] / dt:,.0f} tokens/s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
