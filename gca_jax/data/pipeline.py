"""Token stream and Grain input pipeline for LM training and evaluation (SPEC §4).

The corpus becomes one flat int32 stream: each document's ids followed by `eot_id`. Training
samples are windows of seq_len+1 tokens starting at multiples of seq_len (window i covers
stream[i*seq_len : (i+1)*seq_len + 1]; consecutive windows share one token, so every stream
token after the first is a target exactly once per epoch): inputs = window[:-1],
targets = window[1:].
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import grain
import numpy as np

from gca_jax.data.corpus import CorpusError, CorpusStats, list_corpus_files, read_documents
from gca_jax.data.passkey import PasskeyConfig, insert_passkey
from gca_jax.data.tokenizer import Tokenizer

CACHE_VERSION = 1
ENCODE_BATCH = 64


@dataclasses.dataclass(frozen=True)
class TokenStream:
  """tokens: int32[N] (documents joined, `eot_id` after each); where it came from."""

  tokens: np.ndarray
  num_documents: int
  stats: CorpusStats
  cache_path: str | None = None
  from_cache: bool = False


def _cache_key(path: str | os.PathLike, tokenizer: Tokenizer, text_field: str) -> str:
  files, _ = list_corpus_files(path)
  root = Path(path)
  entries = []
  for f in files:
    st = f.stat()
    entries.append([f.name if f == root else f.relative_to(root).as_posix(), st.st_size,
                    st.st_mtime_ns])
  blob = json.dumps({"version": CACHE_VERSION, "root": str(root.resolve()), "files": entries,
                     "tokenizer": tokenizer.sha256, "text_field": text_field}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _atomic_write(path: Path, write) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    write(f)
  os.replace(tmp, path)


def tokenize_corpus(path: str | os.PathLike, tokenizer: Tokenizer,
                    cache_dir: str | os.PathLike | None = None, *, text_field: str = "text"
                    ) -> TokenStream:
  """Encode every document of `path` (see `read_documents`) into one int32 stream.

  With `cache_dir`, the stream is stored as `<cache_dir>/<key>.npy` (plus `<key>.json` with
  the corpus stats), key = hash of (file list, sizes, mtimes, tokenizer model hash,
  text_field); a later call with an unchanged corpus memory-maps it instead of re-tokenizing.
  """
  npy = meta = None
  if cache_dir is not None:
    key = _cache_key(path, tokenizer, text_field)
    npy, meta = Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}.json"
    if npy.is_file() and meta.is_file():
      info = json.loads(meta.read_text())
      return TokenStream(tokens=np.load(npy, mmap_mode="r"), num_documents=info["num_documents"],
                         stats=CorpusStats.from_dict(info["stats"]), cache_path=str(npy),
                         from_cache=True)
  docs, stats = read_documents(path, text_field=text_field)
  parts = []
  for i in range(0, len(docs), ENCODE_BATCH):
    for ids in tokenizer.encode_batch(docs[i:i + ENCODE_BATCH]):
      parts.append(np.asarray(ids, np.int32))
      parts.append(np.asarray([tokenizer.eot_id], np.int32))
  tokens = np.concatenate(parts)
  if npy is not None:
    npy.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(npy, lambda f: np.save(f, tokens))
    _atomic_write(meta, lambda f: f.write(json.dumps(
        {"num_documents": len(docs), "stats": stats.to_dict()}).encode()))
  return TokenStream(tokens=tokens, num_documents=len(docs), stats=stats,
                     cache_path=None if npy is None else str(npy))


def num_windows(num_tokens: int, seq_len: int) -> int:
  """Windows of seq_len+1 tokens at stride seq_len that fit in `num_tokens`."""
  return max(0, (num_tokens - 1) // seq_len)


def _positive_int(name: str, v) -> int:
  if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
    raise ValueError(f"{name}={v!r} must be a positive integer")
  return int(v)


class _Window:
  """index -> {"inputs", "targets", "loss_weights"} of window `index`."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    self.tokens, self.seq_len = tokens, seq_len

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    start = int(i) * self.seq_len
    w = np.array(self.tokens[start:start + self.seq_len + 1], np.int32)
    return {"inputs": w[:-1], "targets": w[1:],
            "loss_weights": np.ones(self.seq_len, np.float32)}


class _MixPasskey:
  """With probability `config.fraction`, rewrite a window as an official passkey sample."""

  def __init__(self, config: PasskeyConfig, tokenizer: Tokenizer):
    self.config, self.tokenizer = config, tokenizer

  def __call__(self, ex: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    if rng.random() >= self.config.fraction:
      return ex
    window = np.concatenate([ex["inputs"], ex["targets"][-1:]])
    c = self.config
    w, weights, _ = insert_passkey(window, self.tokenizer, rng, c.key_len_train, c.chunk_text,
                                   c.answer_offset)
    return {"inputs": w[:-1], "targets": w[1:], "loss_weights": weights}


def make_train_dataset(tokens: np.ndarray, *, seq_len: int, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1,
                       passkey: PasskeyConfig | None = None, tokenizer: Tokenizer | None = None,
                       num_epochs: int | None = None) -> grain.IterDataset:
  """Shuffled training batches for this process (SPEC §4).

  Yields {"inputs": int32[b, seq_len], "targets": int32[b, seq_len],
  "loss_weights": float32[b, seq_len]} with b = global_batch_size // process_count.
  The windows are split into `process_count` equal contiguous shards (remainder dropped);
  process p reads shard p only, reshuffled every epoch with a seed derived from
  (seed, process_index); `num_epochs=None` repeats forever. With `passkey`, a fraction of the
  windows become passkey samples (a seeded `random_map`, so deterministic; needs `tokenizer`).
  `iter(ds)` supports get_state()/set_state() for exact resumption.
  """
  seq_len = _positive_int("seq_len", seq_len)
  global_batch_size = _positive_int("global_batch_size", global_batch_size)
  process_count = _positive_int("process_count", process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, {process_count})")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"process_count={process_count}")
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f"seed={seed!r} must be a non-negative integer")
  if num_epochs is not None:
    num_epochs = _positive_int("num_epochs", num_epochs)
  if passkey is not None and tokenizer is None:
    raise ValueError("passkey mixing needs the tokenizer (tokenizer=None given)")
  b = global_batch_size // process_count
  per_process = num_windows(len(tokens), seq_len) // process_count
  if per_process < 1:
    raise CorpusError(f"token stream too short: {process_count} process(es) x 1 window of "
                      f"seq_len+1={seq_len + 1} need {process_count * seq_len + 1} tokens, "
                      f"the stream has {len(tokens)}")
  if num_epochs is not None and per_process * num_epochs < b:
    raise CorpusError(f"token stream too short for one batch: {num_epochs} epoch(s) of "
                      f"{per_process} windows per process < batch {b}; need "
                      f"{-(-b // num_epochs) * process_count * seq_len + 1} tokens, "
                      f"the stream has {len(tokens)}")
  if passkey is not None:
    insert_passkey(np.zeros(seq_len + 1, np.int32), tokenizer, np.random.default_rng(0),
                   passkey.key_len_train, passkey.chunk_text, passkey.answer_offset)
  shuffle_seed, map_seed = (int(x) for x in
                            np.random.SeedSequence([seed, process_index]).generate_state(2))
  start = process_index * per_process
  ds = grain.MapDataset.range(start, start + per_process).shuffle(seed=shuffle_seed)
  ds = ds.repeat(num_epochs).map(_Window(tokens, seq_len))
  if passkey is not None:
    ds = ds.random_map(_MixPasskey(passkey, tokenizer), seed=map_seed)
  return ds.to_iter_dataset().batch(b, drop_remainder=True)


def make_eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int
                      ) -> dict[str, np.ndarray]:
  """The first min(max_windows, available) windows, in stream order, for perplexity.

  Returns {"inputs": int32[n, seq_len], "targets": int32[n, seq_len],
  "loss_weights": float32[n, seq_len]} (weights all 1).
  """
  seq_len = _positive_int("seq_len", seq_len)
  max_windows = _positive_int("max_windows", max_windows)
  n = min(max_windows, num_windows(len(tokens), seq_len))
  if n < 1:
    raise CorpusError(f"token stream too short: one eval window of seq_len+1={seq_len + 1} "
                      f"tokens needed, the stream has {len(tokens)}")
  idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
  w = np.asarray(tokens[:n * seq_len + 1], np.int32)[idx]
  return {"inputs": w[:, :-1], "targets": w[:, 1:],
          "loss_weights": np.ones((n, seq_len), np.float32)}
