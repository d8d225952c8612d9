"""Token stream and Grain input pipelines for training and evaluation (docs/method.md §4).

The corpus becomes one flat int32 stream: each document's ids followed by `eot_id`, from the
text files (`tokenize_corpus`, optionally cached) or from a shard dir that scripts/pretokenize.py
wrote (`gca_jax.data.shards`: the same stream in ArrayRecord files, read lazily). Training
samples are windows of seq_len+1 tokens starting at multiples of seq_len (window i covers
stream[i*seq_len : (i+1)*seq_len + 1]; consecutive windows share one token, so every stream
token after the first is a target exactly once per epoch): inputs = window[:-1],
targets = window[1:].

The recall recipe (docs/results.md) has its own pipeline, `RecallIterator`: batches of the recall
mix (`gca_jax.data.recall`) drawn from random spans of the stream, under a length curriculum that
advances when the training answer accuracy passes a gate.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import grain
import grain.experimental
import numpy as np
from etils import epath

from gca_jax.data.corpus import (CorpusError, CorpusStats, corpus_root, file_name,
                                 list_corpus_files, read_documents)
from gca_jax.data.shards import ShardTokens, is_shard_dir, manifest_stats, open_shards
from gca_jax.data.passkey import PasskeyConfig, insert_passkey
from gca_jax.data.recall import TextFiller, check_mix, make_batch
from gca_jax.data.tokenizer import Tokenizer

CACHE_VERSION = 1
ENCODE_BATCH = 64
FORMATS = ("auto", "text", "arrayrecord")


@dataclasses.dataclass(frozen=True)
class TokenStream:
  """tokens: int32[N] (documents joined, `eot_id` after each), an array or the `ShardTokens` of
  a shard dir (`shards`: its path); where it came from."""

  tokens: np.ndarray | ShardTokens
  num_documents: int
  stats: CorpusStats
  cache_path: str | None = None
  from_cache: bool = False
  shards: str | None = None


def _size_mtime(f: epath.Path) -> tuple[int, int]:
  """(bytes, mtime in ns) of a local file; (bytes, mtime in s) through epath otherwise."""
  if "://" in os.fspath(f):
    st = f.stat()
    return st.length, st.mtime
  st = os.stat(f)
  return st.st_size, st.st_mtime_ns


def _cache_key(path: str | os.PathLike, tokenizer: Tokenizer, text_field: str) -> str:
  files, _ = list_corpus_files(path)
  root = corpus_root(path)
  entries = [[file_name(f, root), *_size_mtime(f)] for f in files]
  glob = "" if os.fspath(root) == os.fspath(path) else os.fspath(path)[len(os.fspath(root)):]
  blob = json.dumps({"version": CACHE_VERSION, "root": os.fspath(root.resolve()) + glob,
                     "files": entries, "tokenizer": tokenizer.sha256, "text_field": text_field},
                    sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _atomic_write(path: Path, write) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    write(f)
  os.replace(tmp, path)


def resolve_format(path: str | os.PathLike, format: str = "auto") -> str:
  """"text" or "arrayrecord" for corpus `path`: "auto" is "arrayrecord" when `path` is a shard
  dir (holds manifest.json). CorpusError when `format` does not fit `path`."""
  if format not in FORMATS:
    raise ValueError(f"format={format!r} must be one of {FORMATS}")
  shards = is_shard_dir(path)
  if format == "text" and shards:
    raise CorpusError(f"{os.fspath(path)!r} is a shard dir (it holds manifest.json) but "
                      f"format='text' was asked: use format 'arrayrecord' or 'auto'")
  if format == "arrayrecord" and not shards:
    raise CorpusError(f"{os.fspath(path)!r} is not a shard dir (no manifest.json) but "
                      f"format='arrayrecord' was asked: write one with scripts/pretokenize.py")
  return "arrayrecord" if shards else "text"


def tokenize_corpus(path: str | os.PathLike, tokenizer: Tokenizer,
                    cache_dir: str | os.PathLike | None = None, *, text_field: str = "text",
                    format: str = "auto") -> TokenStream:
  """Encode every document of `path` (see `read_documents`) into one int32 stream.

  A shard dir (`resolve_format`) is not re-tokenized: its `ShardTokens` (nothing read yet) is
  returned, after checking that `tokenizer` is the one the shards were made with (ShardError).
  With `cache_dir`, the stream is stored as `<cache_dir>/<key>.npy` (plus `<key>.json` with
  the corpus stats), key = hash of (file list, sizes, mtimes, tokenizer model hash,
  text_field); a later call with an unchanged corpus memory-maps it instead of re-tokenizing.
  """
  if resolve_format(path, format) == "arrayrecord":
    tokens = open_shards(path, tokenizer)
    return TokenStream(tokens=tokens, num_documents=tokens.num_documents,
                       stats=manifest_stats(tokens.manifest), shards=os.fspath(path))
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


@dataclasses.dataclass(frozen=True)
class ProcessSlice:
  """Windows [first_window, first_window + num_windows) of seq_len, one process's share;
  `tokens` is the stream (for a shard stream, a view of this slice's tokens only)."""

  first_window: int
  num_windows: int
  seq_len: int
  tokens: np.ndarray | ShardTokens

  @property
  def token_range(self) -> tuple[int, int]:
    """[lo, hi): the stream positions its windows cover (neighbour slices share one token)."""
    return (self.first_window * self.seq_len,
            (self.first_window + self.num_windows) * self.seq_len + 1)


def process_slice(tokens: np.ndarray | ShardTokens, seq_len: int, process_index: int,
                  process_count: int) -> ProcessSlice:
  """Process `process_index`'s contiguous share of the num_windows(len(tokens), seq_len)
  windows split into `process_count` equal parts (the remainder is dropped). For `ShardTokens`
  the slice's `tokens` is `restrict`ed to its windows' tokens, so the process opens only the
  shard files those lie in."""
  per = num_windows(len(tokens), seq_len) // process_count
  first = process_index * per
  if isinstance(tokens, ShardTokens) and per > 0:
    tokens = tokens.restrict(first * seq_len, (first + per) * seq_len + 1)
  return ProcessSlice(first, per, seq_len, tokens)


def _positive_int(name: str, v) -> int:
  if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
    raise ValueError(f"{name}={v!r} must be a positive integer")
  return int(v)


class _Window:
  """index -> {"inputs", "targets", "loss_weights"(, "answer_mask")} of window `index`."""

  def __init__(self, tokens: np.ndarray, seq_len: int, answer_mask: bool = False):
    self.tokens, self.seq_len, self.answer_mask = tokens, seq_len, answer_mask

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    start = int(i) * self.seq_len
    w = np.array(self.tokens[start:start + self.seq_len + 1], np.int32)
    out = {"inputs": w[:-1], "targets": w[1:], "loss_weights": np.ones(self.seq_len, np.float32)}
    if self.answer_mask:
      out["answer_mask"] = np.zeros(self.seq_len, np.float32)
    return out


class _MixPasskey:
  """With probability `config.fraction`, rewrite a window as an official passkey sample
  ("answer_mask" = 1 at the target of the key's first token)."""

  def __init__(self, config: PasskeyConfig, tokenizer: Tokenizer):
    self.config, self.tokenizer = config, tokenizer

  def __call__(self, ex: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    if rng.random() >= self.config.fraction:
      return ex
    window = np.concatenate([ex["inputs"], ex["targets"][-1:]])
    c = self.config
    w, weights, info = insert_passkey(window, self.tokenizer, rng, c.key_len_train,
                                      chunk_text=c.chunk_text, answer_offset=c.answer_offset)
    mask = np.zeros(len(weights), np.float32)
    mask[info.answer_target_index] = 1.0
    return {"inputs": w[:-1], "targets": w[1:], "loss_weights": weights, "answer_mask": mask}


def make_train_dataset(tokens: np.ndarray | ShardTokens, *, seq_len: int, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1,
                       passkey: PasskeyConfig | None = None, tokenizer: Tokenizer | None = None,
                       num_epochs: int | None = None) -> grain.IterDataset:
  """Shuffled training batches for this process (docs/method.md §4).

  Yields {"inputs": int32[b, seq_len], "targets": int32[b, seq_len],
  "loss_weights": float32[b, seq_len]} with b = global_batch_size // process_count; with
  `passkey` also "answer_mask" float32[b, seq_len] (1 at each passkey answer's first target).
  The windows are split into `process_count` equal contiguous shards (remainder dropped,
  `process_slice`); process p reads shard p only (a `ShardTokens` stream: only the records of
  shard p's tokens), reshuffled every epoch with a seed derived from
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
  share = process_slice(tokens, seq_len, process_index, process_count)
  per_process = share.num_windows
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
                   passkey.key_len_train, chunk_text=passkey.chunk_text,
                   answer_offset=passkey.answer_offset)
  shuffle_seed, map_seed = (int(x) for x in
                            np.random.SeedSequence([seed, process_index]).generate_state(2))
  start = share.first_window
  ds = grain.MapDataset.range(start, start + per_process).shuffle(seed=shuffle_seed)
  ds = ds.repeat(num_epochs).map(_Window(share.tokens, seq_len, answer_mask=passkey is not None))
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


# -- recall mix + accuracy-gated length curriculum (docs/results.md, "The recipe") ------------

@dataclasses.dataclass(frozen=True)
class Stage:
  """One curriculum stage: samples of `length` text tokens whose needle lines are written
  `repeat` times, `batch` rows per step (global batch, all processes)."""

  length: int
  repeat: int
  batch: int


@dataclasses.dataclass(frozen=True)
class Gate:
  """Stage i -> i+1 when, at a step that is a multiple of `window`, the mean training answer
  accuracy of the steps since the previous check is >= `accuracy` and stage i has run for at
  least `min_steps` steps."""

  accuracy: float = 0.8
  min_steps: int = 50
  window: int = 25


def parse_stages(spec: str) -> list[tuple[int, int]]:
  """'chunks:repeat,...' (e.g. '5:8,5:1,16:1') -> [(chunks, repeat), ...]; ValueError says why."""
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"{spec!r}: expected 'chunks:repeat,...', e.g. '5:8,5:1,16:1'")
  out = []
  for part in spec.split(","):
    bits = part.strip().split(":")
    try:
      chunks, repeat = (int(b) for b in bits)
    except ValueError:
      raise ValueError(f"stage {part.strip()!r} of {spec!r}: expected two integers "
                       f"'chunks:repeat'") from None
    if chunks < 1 or repeat < 1:
      raise ValueError(f"stage {part.strip()!r} of {spec!r}: chunks and repeat must be >= 1")
    out.append((chunks, repeat))
  return out


def curriculum_stages(pairs, *, chunk_text: int, tokens_per_step: int, batch_multiple: int = 1
                      ) -> tuple[Stage, ...]:
  """Stages of (chunks, repeat) pairs: length = chunks * chunk_text, batch = tokens_per_step //
  length rounded down to a multiple of `batch_multiple` (at least one multiple)."""
  m = _positive_int("batch_multiple", batch_multiple)
  out = []
  for chunks, repeat in pairs:
    length = chunks * _positive_int("chunk_text", chunk_text)
    out.append(Stage(length, repeat, max(m, tokens_per_step // length // m * m)))
  return tuple(out)


def has_kind_metrics(mix) -> bool:
  """Whether batches of `mix` carry "answer_kind" (mixes with multi-key or 2-hop samples)."""
  return mix.p_multikey > 0 or mix.p_2hop > 0


def answer_kind(answer_mask_BxL: np.ndarray, kind_B: np.ndarray) -> np.ndarray:
  """int32 [b, L]: the row's sample kind (`gca_jax.data.recall.KIND_*`) where answer_mask is
  set, 0 elsewhere (the per-kind answer accuracies of `gca_jax.models.loss.loss_sums`)."""
  return np.where(answer_mask_BxL > 0, np.asarray(kind_B, np.int32)[:, None], 0).astype(np.int32)


class _StageBatches:
  """step -> this process's rows of the batch of `step` in one stage: a pure function of
  (seed, process_index, step, stage), so batches can be made ahead, in any worker, and remade."""

  def __init__(self, tokens, ids, mix, stage: Stage, rows: int, *, chunk_text: int, seed: int,
               process_index: int):
    self.text = TextFiller(np.asarray(tokens))
    self.ids, self.stage, self.rows = ids, stage, rows
    self.mix = dataclasses.replace(mix, repeat=stage.repeat)
    self.chunk_text, self.seed, self.process_index = chunk_text, seed, process_index

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.process_index, int(step)])
    b = make_batch(rng, self.ids, self.text, self.rows, self.stage.length, self.mix,
                   chunk_text=self.chunk_text)
    kind = b.pop("kind")
    if has_kind_metrics(self.mix):
      b["answer_kind"] = answer_kind(b["answer_mask"], kind)
    return b


_WORKER: dict = {}


def _worker_init(tokens, ids, mix, chunk_text: int, seed: int, process_index: int) -> None:
  import signal
  # SIGTERM/SIGINT are the training process's to handle (it saves, then closes the pool)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _WORKER.update(tokens=tokens, ids=ids, mix=mix, chunk_text=chunk_text, seed=seed,
                 process_index=process_index, fns={})


def _worker_batch(stage: Stage, rows: int, step: int) -> dict[str, np.ndarray]:
  w = _WORKER
  fn = w["fns"].get((stage, rows))
  if fn is None:
    fn = w["fns"][(stage, rows)] = _StageBatches(
        w["tokens"], w["ids"], w["mix"], stage, rows, chunk_text=w["chunk_text"], seed=w["seed"],
        process_index=w["process_index"])
  return fn(step)


class RecallIterator:
  """Training batches of the recall mix under the accuracy-gated length curriculum.

  `next(it)` is the batch of step `it.step + 1` (1-based) of the current stage:
  {"inputs", "targets" int32[b, L], "loss_weights", "answer_mask" float32[b, L]} (+ "answer_kind"
  int32[b, L] when the mix has multi-key or 2-hop samples: `answer_kind`) with
  L = stage.length, b = stage.batch // process_count (see `gca_jax.data.recall.make_batch`).
  After the train step of batch n, `it.report(n, answer_accuracy)` feeds the gate (`Gate`);
  a stage change takes effect from batch n + 1. Every process must report the same (global)
  accuracies. Batches are made ahead: `num_workers=0` by a Grain dataset (step -> batch) with a
  prefetch thread, else by `num_workers` worker processes kept for the whole run (each batch is
  a pure function of the step, so both give the same batches); those of a left stage are dropped.

  `get_state()` / `set_state()`: {"step", "stage", "stage_start", "window"} (JSON), the whole
  curriculum state, so a run resumed from it draws the same batches and changes stage at the
  same steps as an uninterrupted one.
  """

  def __init__(self, tokens: np.ndarray, ids, mix, stages, gate: Gate, *, chunk_text: int,
               seed: int, steps: int | None = None, process_index: int = 0,
               process_count: int = 1, num_workers: int = 0, prefetch: int = 2):
    if not stages:
      raise ValueError("stages: at least one curriculum stage needed")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} must lie in [0, {process_count})")
    for i, st in enumerate(stages):
      if st.batch % process_count:
        raise ValueError(f"stage {i}: batch {st.batch} not divisible by process_count="
                         f"{process_count}")
      try:
        check_mix(ids, st.length, dataclasses.replace(mix, repeat=st.repeat),
                  chunk_text=chunk_text)
      except ValueError as e:
        raise ValueError(f"stage {i} ({st.length} tokens, needles x{st.repeat}): {e}") from None
    if len(tokens) < 2:
      raise CorpusError(f"token stream of {len(tokens)} tokens is too short for recall samples")
    self.tokens, self.ids, self.mix, self.stages, self.gate = tokens, ids, mix, tuple(stages), gate
    self.chunk_text, self.seed = chunk_text, seed
    self.steps = steps if steps is not None else 2 ** 40
    self.process_index, self.process_count = process_index, process_count
    self.num_workers, self.prefetch = num_workers, prefetch
    self.step, self.stage, self.stage_start = 0, 0, 0
    self.window: list[float] = []
    self._it = None
    self._pool = None
    self._pending: collections.deque = collections.deque()   # (step, future), in step order

  # -- iteration --------------------------------------------------------------------------------
  def __iter__(self):
    return self

  def _source(self):
    st = self.stages[self.stage]
    fn = _StageBatches(self.tokens, self.ids, self.mix, st, st.batch // self.process_count,
                       chunk_text=self.chunk_text, seed=self.seed,
                       process_index=self.process_index)
    ds = grain.MapDataset.range(self.step + 1, self.steps + 1).map(fn).to_iter_dataset()
    if self.prefetch > 0:
      ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=self.prefetch)
    return iter(ds)

  def _fill(self) -> None:
    """Keep num_workers * max(prefetch, 1) batches of the current stage in flight."""
    if self._pool is None:
      import concurrent.futures
      import multiprocessing
      self._pool = concurrent.futures.ProcessPoolExecutor(
          self.num_workers, mp_context=multiprocessing.get_context("spawn"),
          initializer=_worker_init, initargs=(np.asarray(self.tokens), self.ids, self.mix,
                                              self.chunk_text, self.seed, self.process_index))
    st = self.stages[self.stage]
    nxt = self._pending[-1][0] + 1 if self._pending else self.step + 1
    while len(self._pending) < self.num_workers * max(self.prefetch, 1) and nxt <= self.steps:
      self._pending.append((nxt, self._pool.submit(_worker_batch, st,
                                                   st.batch // self.process_count, nxt)))
      nxt += 1

  def start_prefetch(self) -> None:
    if self.num_workers > 0:
      self._fill()
    elif self._it is None:
      self._it = self._source()

  def _drop(self) -> None:
    it, self._it = self._it, None
    if it is not None and hasattr(it, "close"):
      it.close()
    while self._pending:
      self._pending.popleft()[1].cancel()

  def close(self) -> None:
    self._drop()
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)
      self._pool = None

  def __next__(self) -> dict[str, np.ndarray]:
    if self.step >= self.steps:
      raise StopIteration
    self.start_prefetch()
    if self.num_workers > 0:
      step, fut = self._pending.popleft()
      assert step == self.step + 1, (step, self.step)
      batch = fut.result()
      self._fill()
    else:
      batch = next(self._it)
    self.step += 1
    return batch

  @property
  def current(self) -> Stage:
    return self.stages[self.stage]

  def report(self, step: int, answer_accuracy: float | None) -> bool:
    """The training answer accuracy of batch `step` (None: no answers); True if the stage
    changed (from batch step + 1 on)."""
    if step != self.step:
      raise ValueError(f"report(step={step}) but the last batch drawn is step {self.step}")
    if answer_accuracy is not None and math.isfinite(answer_accuracy):
      self.window.append(float(answer_accuracy))
    if step % self.gate.window:
      return False
    acc = sum(self.window) / len(self.window) if self.window else 0.0
    self.window = []
    if (self.stage + 1 < len(self.stages) and step - self.stage_start >= self.gate.min_steps
        and acc >= self.gate.accuracy):
      self.stage, self.stage_start = self.stage + 1, step
      self._drop()
      return True
    return False

  # -- checkpointing ----------------------------------------------------------------------------
  def get_state(self) -> dict:
    return {"step": self.step, "stage": self.stage, "stage_start": self.stage_start,
            "window": list(self.window), "num_stages": len(self.stages)}

  def set_state(self, state) -> None:
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    if state.get("num_stages", len(self.stages)) != len(self.stages) or \
        not 0 <= state["stage"] < len(self.stages):
      raise ValueError(f"iterator state {state} does not fit a curriculum of "
                       f"{len(self.stages)} stages")
    self._drop()
    self.step, self.stage = int(state["step"]), int(state["stage"])
    self.stage_start = int(state["stage_start"])
    self.window = [float(x) for x in state["window"]]
