"""SentencePiece BPE tokenizer with byte fallback and an end-of-text piece (docs/method.md §4 data).

Trained with identity normalisation, no dummy prefix and no whitespace collapsing, so that
`decode(encode(s)) == s` for any text without the meta symbol U+2581 ("▁", which sentencepiece
uses for the space and decodes as one). Characters outside the vocabulary (newlines included:
training sees one line at a time) are encoded as UTF-8 byte pieces. Ids: 0 `<unk>`, 1 `<eot>`
(a control piece: `encode` never produces it from text), then 256 byte pieces, then merges.
No bos/eos/pad is added by `encode`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from etils import epath

from gca_jax.data.corpus import CorpusError, read_documents

EOT_PIECE = "<eot>"


def split_long_line(line: str, max_bytes: int) -> list[str]:
  """Split `line` into pieces of fewer than `max_bytes` UTF-8 bytes, joining back to `line`.

  Cuts just before a space where possible (the space starts the next piece, as a word-initial
  "▁" would), else between characters. SentencePiece drops training lines that are too long.
  """
  if max_bytes < 5:
    raise ValueError(f"max_bytes={max_bytes} must be at least 5 (one UTF-8 character + 1)")
  if len(line.encode("utf-8")) < max_bytes:
    return [line]
  pieces, start, size, last_space = [], 0, 0, -1
  i = 0
  while i < len(line):
    ch = line[i]
    n = len(ch.encode("utf-8"))
    if size + n >= max_bytes:
      cut = last_space if last_space > start else i
      pieces.append(line[start:cut])
      start, size, last_space = cut, len(line[cut:i].encode("utf-8")), -1
      continue
    if ch == " ":
      last_space = i
    size += n
    i += 1
  pieces.append(line[start:])
  return pieces


def training_sentences(docs: Iterable[str], max_sentence_length: int) -> Iterator[str]:
  """Non-empty lines of `docs`, long lines split to fewer than `max_sentence_length` bytes."""
  for doc in docs:
    for line in doc.splitlines():
      if line.strip():
        yield from split_long_line(line, max_sentence_length)


def _train(docs: list[str], model: io.BytesIO, vocab_size: int, max_sentence_length: int,
           split_digits: bool, num_threads: int) -> None:
  spm.SentencePieceTrainer.train(
      sentence_iterator=training_sentences(docs, max_sentence_length),
      model_writer=model,
      model_type="bpe",
      vocab_size=vocab_size,
      byte_fallback=True,
      character_coverage=1.0,
      normalization_rule_name="identity",
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      split_digits=split_digits,
      max_sentence_length=max_sentence_length,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
      control_symbols=[EOT_PIECE],
      num_threads=num_threads,
      minloglevel=2,
  )


def train_tokenizer(files: Sequence[str] | str, model_prefix: str, vocab_size: int, *,
                    max_sentence_length: int = 4192, seed: int = 0, split_digits: bool = True,
                    num_threads: int = 1) -> str:
  """Train a BPE model on the documents of `files` (paths or one corpus path); return its path.

  Writes `<model_prefix>.model`. Documents are read with `read_documents` (txt/md/jsonl);
  every non-empty line is fed, split below `max_sentence_length` bytes. Digits are split into
  single-digit pieces unless `split_digits=False`. Deterministic for a given corpus, seed and
  `num_threads` (1 by default).
  """
  paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
  if not paths:
    raise CorpusError("train_tokenizer: no corpus paths given")
  docs: list[str] = []
  for p in paths:
    docs.extend(read_documents(p)[0])
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)
  try:
    _train(docs, model, vocab_size, max_sentence_length, split_digits, num_threads)
  except RuntimeError as e:
    raise CorpusError(f"training a {vocab_size}-piece tokenizer on {paths}: {e}") from e
  out = epath.Path(f"{model_prefix}.model")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(model.getvalue())
  return str(out)


class Tokenizer:
  """A loaded SentencePiece model: `encode`, `decode`, `eot_id`, `vocab_size`."""

  def __init__(self, processor: spm.SentencePieceProcessor, model_path: str,
               model_bytes: bytes | None = None):
    self._sp = processor
    self.model_path = model_path
    self._bytes = model_bytes
    eot = processor.piece_to_id(EOT_PIECE)
    if processor.id_to_piece(eot) != EOT_PIECE:
      eot = processor.eos_id()
    if eot < 0:
      raise CorpusError(f"tokenizer {model_path!r} has neither an {EOT_PIECE!r} piece nor eos")
    self.eot_id = int(eot)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Tokenizer":
    """From a local path or any `etils.epath` one (gs://...)."""
    p = epath.Path(path)
    path = str(path)
    if not p.is_file():
      raise FileNotFoundError(f"tokenizer model {path!r} does not exist")
    data = p.read_bytes()
    try:
      sp = spm.SentencePieceProcessor(model_proto=data)
    except RuntimeError as e:
      raise CorpusError(f"tokenizer model {path!r} is not a SentencePiece model ({e})") from e
    return cls(sp, path, data)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
    """`encode` of each text, on `num_threads` threads (-1: all cores)."""
    return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def piece_to_id(self, piece: str) -> int:
    return self._sp.piece_to_id(piece)

  @functools.cached_property
  def ordinary_ids(self) -> np.ndarray:
    """int32 ids of normal text pieces: no unk, control (eot), byte or unused piece."""
    sp = self._sp
    keep = [i for i in range(self.vocab_size)
            if not (sp.is_unknown(i) or sp.is_control(i) or sp.is_byte(i) or sp.is_unused(i))]
    return np.asarray(keep, np.int32)

  @functools.cached_property
  def sha256(self) -> str:
    """Hash of the model file (it names token caches)."""
    data = self._bytes if self._bytes is not None else epath.Path(self.model_path).read_bytes()
    return hashlib.sha256(data).hexdigest()
