"""Pretokenized ArrayRecord shards of a corpus's token stream (docs/method.md §4 data).

A shard dir holds `manifest.json` and `shard-NNNNN.array_record` files. The stream is the text
path's (`gca_jax.data.pipeline.tokenize_corpus`): each document's ids followed by `eot_id`,
documents in `read_documents` order. It is cut into blocks of `block_tokens` tokens (the last
block may be shorter); one record = one block, the ids as little-endian uint16 (vocab <= 65535)
or uint32; shard j holds the next `shard_tokens // block_tokens` blocks.

Records are fixed-size blocks, not documents, because a training window starts at any multiple
of seq_len of the stream and crosses document ends: the records of window [a, b) are blocks
a // block_tokens .. (b - 1) // block_tokens, found by arithmetic, and a window reads fewer than
2 * block_tokens tokens it does not use. With one record per document it would need an offset
index and read whole books. Since the stream is the text path's, every window, and so every
training sample, is the same as with the text path.

`ShardTokens` reads the stream through Grain's `ArrayRecordDataSource`; `restrict(lo, hi)` gives
a view that opens only the shard files of tokens [lo, hi) (one process's slice).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from typing import Callable, Sequence

import numpy as np
from etils import epath

from gca_jax.data.corpus import (GLOB_CHARS, CorpusError, CorpusStats, corpus_root, file_name,
                                 list_corpus_files, read_file_documents)

MANIFEST = "manifest.json"
FORMAT = "gca_jax.token_shards"
VERSION = 1
WRITER_OPTIONS = "group_size:1"


class ShardError(CorpusError):
  """A shard dir that cannot be used; the message names the dir and the cause."""


def token_dtype(vocab_size: int) -> np.dtype:
  """uint16 when every id fits (vocab_size <= 65535), else uint32."""
  return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def is_shard_dir(path: str | os.PathLike) -> bool:
  """`path` is a directory holding a manifest.json."""
  return (epath.Path(path) / MANIFEST).is_file()


# -- writing ---------------------------------------------------------------------------------

class _ShardWriter:
  """Appends token arrays; writes full blocks as records, `blocks_per_shard` per file."""

  def __init__(self, out: epath.Path, block_tokens: int, blocks_per_shard: int, dtype: np.dtype,
               options: str, eot_id: int):
    self.out, self.block, self.per_shard = out, block_tokens, blocks_per_shard
    self.dtype, self.options, self.eot_id = dtype, options, eot_id
    self.buf: list[np.ndarray] = []
    self.buffered = 0
    self.shards: list[dict] = []
    self._writer = None

  def _record(self, block: np.ndarray) -> None:
    if self._writer is None or self.shards[-1]["blocks"] == self.per_shard:
      self._close_file()
      from array_record.python.array_record_module import ArrayRecordWriter
      name = f"shard-{len(self.shards):05d}.array_record"
      self._writer = ArrayRecordWriter(os.fspath(self.out / name), self.options)
      self.shards.append({"name": name, "tokens": 0, "blocks": 0, "documents": 0})
    self._writer.write(block.tobytes())
    s = self.shards[-1]
    s["tokens"] += len(block)
    s["blocks"] += 1
    s["documents"] += int(np.count_nonzero(block == self.eot_id))

  def add(self, ids: np.ndarray) -> None:
    self.buf.append(ids)
    self.buffered += len(ids)
    if self.buffered >= self.block:
      flat = np.concatenate(self.buf)
      n = len(flat) // self.block * self.block
      for i in range(0, n, self.block):
        self._record(flat[i:i + self.block])
      self.buf, self.buffered = [flat[n:]], len(flat) - n

  def _close_file(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def close(self) -> list[dict]:
    if self.buffered:
      self._record(np.concatenate(self.buf))
    self.buf, self.buffered = [], 0
    self._close_file()
    return self.shards


_TOKENIZER: dict = {}


def _worker_init(model_path: str) -> None:
  from gca_jax.data.tokenizer import Tokenizer
  _TOKENIZER["tok"] = Tokenizer.load(model_path)


def _encode_file(args) -> tuple[np.ndarray, dict, int]:
  """(path, name, text_field, dtype) -> (ids of its documents, each + eot; stats; documents)."""
  path, name, text_field, dtype = args
  tok = _TOKENIZER["tok"]
  stats = CorpusStats(path=name)
  docs = read_file_documents(epath.Path(path), name, stats, text_field=text_field)
  stats.documents, stats.chars = len(docs), sum(len(d) for d in docs)
  parts = []
  for ids in tok.encode_batch(docs, num_threads=1) if docs else []:
    parts.append(np.asarray(ids, dtype))
    parts.append(np.asarray([tok.eot_id], dtype))
  ids = np.concatenate(parts) if parts else np.zeros(0, dtype)
  return ids, stats.to_dict(), len(docs)


def pretokenize(input_path: str | os.PathLike, tokenizer_path: str | os.PathLike,
                out_dir: str | os.PathLike, *, workers: int = 1, shard_tokens: int = 1 << 26,
                block_tokens: int = 4096, text_field: str = "text", overwrite: bool = False,
                writer_options: str = WRITER_OPTIONS,
                say: Callable[[str], None] | None = None) -> dict:
  """Tokenize every document of `input_path` (dir, file or glob, see `read_documents`) once and
  write the shard dir `out_dir` (see the module docstring); returns its manifest.

  `workers` processes (spawned) each tokenize whole files; 0 = in this process. The result does
  not depend on `workers`. `shard_tokens` is rounded down to a multiple of `block_tokens`.
  Written to a sibling temp dir, then renamed into place; an existing `out_dir` is an error
  unless `overwrite`.
  """
  from gca_jax.data.tokenizer import Tokenizer
  for name, v in (("block_tokens", block_tokens), ("shard_tokens", shard_tokens)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"{name}={v!r} must be a positive integer")
  if shard_tokens < block_tokens:
    raise ValueError(f"shard_tokens={shard_tokens} must be >= block_tokens={block_tokens}")
  if not isinstance(workers, int) or workers < 0:
    raise ValueError(f"workers={workers!r} must be a non-negative integer")
  if "group_size:1" not in writer_options.replace(" ", ""):
    raise ValueError(f"writer_options={writer_options!r} must contain 'group_size:1' (random "
                     f"access reads one record)")
  say = say or (lambda _: None)
  out = epath.Path(out_dir)
  if out.exists() and not overwrite:
    raise ShardError(f"output dir {os.fspath(out)!r} exists (pass overwrite=True / --overwrite)")
  tok = Tokenizer.load(tokenizer_path)
  dtype = token_dtype(tok.vocab_size)
  files, ignored = list_corpus_files(input_path)
  root = corpus_root(input_path)
  names = [file_name(f, root) for f in files]
  tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
  if tmp.exists():
    shutil.rmtree(os.fspath(tmp))
  tmp.mkdir(parents=True)
  writer = _ShardWriter(tmp, block_tokens, shard_tokens // block_tokens, dtype, writer_options,
                        tok.eot_id)
  s = os.fspath(input_path)
  stats = CorpusStats(path=s if GLOB_CHARS.search(s) else str(root), ignored_files=ignored)
  sources = []
  jobs = [(os.fspath(f), n, text_field, dtype) for f, n in zip(files, names)]
  try:
    for name, (ids, fstats, ndocs) in zip(names, _map_files(jobs, workers, tok.model_path)):
      stats.add(CorpusStats.from_dict(fstats))
      sources.append({"name": name, "documents": ndocs, "tokens": int(len(ids))})
      writer.add(ids)
      if len(sources) % 1000 == 0:
        say(f"{len(sources)}/{len(jobs)} files, {stats.documents} documents")
    shards = writer.close()
    if not stats.documents:
      raise CorpusError(f"corpus {s!r} has no usable documents: {stats.summary()}")
    manifest = {
        "format": FORMAT, "version": VERSION,
        "num_tokens": sum(x["tokens"] for x in shards), "num_documents": stats.documents,
        "block_tokens": block_tokens, "dtype": dtype.name,
        "tokenizer": {"sha256": tok.sha256, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
                      "path": os.fspath(tokenizer_path)},
        "shards": shards, "writer_options": writer_options,
        "source": {"input": s, "text_field": text_field, "files": sources,
                   "stats": {**stats.to_dict(), "skipped": stats.skipped}},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
      out.rename(old)
    tmp.rename(out)
    if old.exists():
      shutil.rmtree(os.fspath(old))
  except BaseException:
    writer._close_file()
    shutil.rmtree(os.fspath(tmp), ignore_errors=True)
    raise
  say(f"{manifest['num_tokens']} tokens, {stats.summary()}; {len(shards)} shards in "
      f"{os.fspath(out)}")
  return manifest


def _map_files(jobs: list, workers: int, model_path: str):
  if workers == 0:
    _worker_init(model_path)
    yield from map(_encode_file, jobs)
    return
  import multiprocessing
  ctx = multiprocessing.get_context("spawn")
  chunk = max(1, min(64, len(jobs) // (workers * 8)))
  with ctx.Pool(workers, initializer=_worker_init, initargs=(model_path,)) as pool:
    yield from pool.imap(_encode_file, jobs, chunksize=chunk)


# -- reading ---------------------------------------------------------------------------------

def read_manifest(path: str | os.PathLike) -> dict:
  """The manifest of shard dir `path`, checked for consistency (ShardError says what is off)."""
  p = epath.Path(path) / MANIFEST
  if not p.is_file():
    raise ShardError(f"{os.fspath(path)!r} is not a shard dir: no {MANIFEST} (write one with "
                     f"scripts/pretokenize.py)")
  try:
    m = json.loads(p.read_text())
  except json.JSONDecodeError as e:
    raise ShardError(f"{os.fspath(p)!r}: not JSON ({e})") from None
  if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
    raise ShardError(f"{os.fspath(p)!r}: format {m.get('format')!r} version "
                     f"{m.get('version')!r}, expected {FORMAT!r} version {VERSION}")
  shards, block = m["shards"], m["block_tokens"]
  total = sum(s["tokens"] for s in shards)
  if total != m["num_tokens"] or not shards:
    raise ShardError(f"{os.fspath(p)!r}: shard token counts sum to {total}, num_tokens is "
                     f"{m['num_tokens']}")
  for i, s in enumerate(shards):
    last = i == len(shards) - 1
    if s["blocks"] != -(-s["tokens"] // block) or (not last and s["tokens"] % block):
      raise ShardError(f"{os.fspath(p)!r}: shard {s['name']} has {s['tokens']} tokens in "
                       f"{s['blocks']} blocks of {block}; only the last block may be short")
  if np.dtype(m["dtype"]) != token_dtype(m["tokenizer"]["vocab_size"]):
    raise ShardError(f"{os.fspath(p)!r}: dtype {m['dtype']} does not fit vocab_size "
                     f"{m['tokenizer']['vocab_size']}")
  return m


def check_tokenizer(path: str | os.PathLike, manifest: dict, tokenizer) -> None:
  """ShardError unless `tokenizer` (a `Tokenizer`) is the one the shards were made with."""
  t = manifest["tokenizer"]
  if t["sha256"] != tokenizer.sha256:
    raise ShardError(
        f"shard dir {os.fspath(path)!r} was tokenized with {t['path']!r} (sha256 "
        f"{t['sha256'][:16]}..., vocab {t['vocab_size']}), but the tokenizer given, "
        f"{tokenizer.model_path!r}, has sha256 {tokenizer.sha256[:16]}... (vocab "
        f"{tokenizer.vocab_size}): re-run scripts/pretokenize.py with it, or set "
        f"config.data.tokenizer to the shards' tokenizer")


@dataclasses.dataclass(frozen=True)
class _FileInstruction:
  """array_record's FileInstruction protocol: records [skip, skip + take) of `filename`."""

  filename: str
  skip: int
  take: int
  examples_in_shard: int


class ShardTokens:
  """The token stream of a shard dir, read lazily: `tokens[a:b]` -> int32[b - a].

  Positions are stream positions; `len()` is the stream length. A view made by `restrict(lo,
  hi)` reads only tokens [lo, hi) (IndexError outside) and its data source holds only the
  records of those tokens. `np.asarray(view)` is int32 tokens [lo, hi).
  """

  def __init__(self, path: str | os.PathLike, manifest: dict | None = None, lo: int = 0,
               hi: int | None = None):
    self.path = os.fspath(path)
    self.manifest = read_manifest(path) if manifest is None else manifest
    m = self.manifest
    self.num_tokens, self.block = int(m["num_tokens"]), int(m["block_tokens"])
    self.dtype = np.dtype(m["dtype"])
    self.lo, self.hi = int(lo), int(m["num_tokens"] if hi is None else hi)
    if not 0 <= self.lo < self.hi <= self.num_tokens:
      raise ValueError(f"token range [{lo}, {hi}) is not a non-empty part of the "
                       f"{self.num_tokens}-token stream of {self.path!r}")
    self.first_block = self.lo // self.block
    self.end_block = -(-self.hi // self.block)
    self._source = None

  @property
  def num_documents(self) -> int:
    return int(self.manifest["num_documents"])

  def __len__(self) -> int:
    return self.num_tokens

  def __repr__(self) -> str:
    return (f"ShardTokens({self.path!r}, tokens [{self.lo}, {self.hi}) of {self.num_tokens}, "
            f"blocks [{self.first_block}, {self.end_block}))")

  def restrict(self, lo: int, hi: int) -> "ShardTokens":
    """View of tokens [lo, hi) (clipped to the stream's end), inside this view's range."""
    hi = min(hi, self.num_tokens)
    if lo < self.lo or hi > self.hi:
      raise IndexError(f"tokens [{lo}, {hi}) are outside this view's [{self.lo}, {self.hi})")
    return ShardTokens(self.path, self.manifest, lo, hi)

  def file_instructions(self) -> list[_FileInstruction]:
    """The (file, first record, record count) reads of this view's blocks, in stream order."""
    out, start = [], 0
    for s in self.manifest["shards"]:
      end = start + s["blocks"]
      a, b = max(start, self.first_block), min(end, self.end_block)
      if a < b:
        out.append(_FileInstruction(os.fspath(epath.Path(self.path) / s["name"]), a - start,
                                    b - a, s["blocks"]))
      start = end
    return out

  @property
  def source(self):
    """Grain ArrayRecordDataSource of this view's blocks (record i = block first_block + i)."""
    if self._source is None:
      import grain
      fis = self.file_instructions()
      missing = [f.filename for f in fis if not epath.Path(f.filename).is_file()]
      if missing:
        raise ShardError(f"shard dir {self.path!r}: missing shard file(s) {missing}")
      self._source = grain.sources.ArrayRecordDataSource(fis)
    return self._source

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_source"] = None
    return state

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      i = int(key) + (self.num_tokens if key < 0 else 0)
      if not 0 <= i < self.num_tokens:
        raise IndexError(f"token {int(key)} is outside the {self.num_tokens}-token stream")
      return self[i:i + 1][0]
    if not isinstance(key, slice) or key.step not in (None, 1):
      raise TypeError(f"ShardTokens supports ints and step-1 slices, not {key!r}")
    a, b, _ = key.indices(self.num_tokens)
    if b <= a:
      return np.zeros(0, np.int32)
    if a < self.lo or b > self.hi:
      self._out_of_range(a, b)
    b0, b1 = a // self.block, (b - 1) // self.block
    src = self.source
    recs = [src[k - self.first_block] for k in range(b0, b1 + 1)]
    flat = np.frombuffer(b"".join(recs), self.dtype)
    return flat[a - b0 * self.block:b - b0 * self.block].astype(np.int32)

  def _out_of_range(self, a: int, b: int):
    raise IndexError(f"tokens [{a}, {b}) are outside this view's [{self.lo}, {self.hi}) of "
                     f"{self.path!r} (another process's slice, or past the end)")

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    out = self[self.lo:self.hi]
    return out if dtype is None else out.astype(dtype)


def open_shards(path: str | os.PathLike, tokenizer=None) -> ShardTokens:
  """The whole stream of shard dir `path`, after checking the manifest and, if given, that
  `tokenizer` is the shards' (ShardError otherwise). Opens no shard file."""
  tokens = ShardTokens(path)
  if tokenizer is not None:
    check_tokenizer(path, tokens.manifest, tokenizer)
  return tokens


def manifest_stats(manifest: dict) -> CorpusStats:
  """The corpus report (`CorpusStats`) stored in a manifest."""
  d = dict(manifest["source"]["stats"])
  d.pop("skipped", None)
  return CorpusStats.from_dict(d)

