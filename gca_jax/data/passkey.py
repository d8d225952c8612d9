"""Passkey samples: official DRT format (training, eval), its multi-key and 2-hop variants (eval),
and the Landmark format (eval); docs/method.md §4, §7.

Coordinates. A sequence holds text positions 0..n-1; chunk c is positions
[chunk_text*c, chunk_text*c + chunk_text) (the model appends each chunk's landmark itself,
docs/method.md §1). In a training window of seq_len+1 tokens, inputs = window[:-1] and targets =
window[1:], so window index i is input position i and target index i-1.

Layout rule (docs/method.md §7). Let k be the key length. The answer chunk c is the last chunk in which
the whole answer fits after `answer_offset` positions: c = (n - answer_offset - k) // chunk_text
with n = the sequence length (seq_len+1 for a training window, so the answer's last token may be
the final target). The first answer token sits at position a = chunk_text*c + answer_offset and
is predicted by the logits at position a-1, which lies in chunk c since answer_offset >= 1. The
question of m tokens ends right before it, at [a-m, a), and must start in an earlier chunk
(m > answer_offset): the retrieval made at chunk c-1 (which serves chunk c) has read the
question. With the shipped tokenizer " The passkey is" is 4 tokens, so at answer_offset=4
(where the official data puts the answer) "|What is the passkey?" ends exactly at the last
position of chunk c-1 and chunk c opens with " The passkey is" followed by the answer.

`chunk_text` is the model's text-per-chunk count (`DRTConfig.text_per_chunk`); every builder
requires it (no default), so samples always match the model they are scored on.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from gca_jax.data.tokenizer import Tokenizer

NEEDLE_HEAD = "|The passkey is:"
NEEDLE_TAIL = "|"
QUESTION_HEAD = "|What is the passkey?"
QUESTION_TAIL = " The passkey is"

LANDMARK_TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
                 "memorize them. I will quiz you about the important information there.")
LANDMARK_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and "
                   "back again.")
LANDMARK_NEEDLE = " The pass key is {n}. Remember it. {n} is the pass key."
LANDMARK_QUESTION = " What is the pass key? The pass key is"
LANDMARK_MAX_KEY = 50000


@dataclasses.dataclass(frozen=True)
class PasskeyConfig:
  """Passkey mixing into LM training (docs/method.md §4): a `fraction` of windows become passkey samples.

  key_len_train / key_len_eval: number of random token ids in the key P (10 / 5 officially).
  answer_offset: position of the first answer token inside its chunk (official: 4).
  chunk_text: text tokens per chunk, `DRTConfig.text_per_chunk` (required keyword).
  """

  fraction: float
  key_len_train: int = 10
  key_len_eval: int = 5
  answer_offset: int = 4
  chunk_text: int = dataclasses.field(kw_only=True)

  def __post_init__(self):
    if not 0.0 <= self.fraction <= 1.0:
      raise ValueError(f"PasskeyConfig.fraction={self.fraction!r}: must lie in [0, 1]")
    for name in ("key_len_train", "key_len_eval", "answer_offset", "chunk_text"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"PasskeyConfig.{name}={v!r}: must be a positive integer")
    for name in ("key_len_train", "key_len_eval"):
      if self.answer_offset + getattr(self, name) > self.chunk_text:
        raise ValueError(f"PasskeyConfig: answer_offset={self.answer_offset} + {name}="
                         f"{getattr(self, name)} must fit in one chunk of {self.chunk_text}")


@dataclasses.dataclass(frozen=True)
class PasskeyInfo:
  """Where `insert_passkey` put things, as window (= input) indices, and the key P."""

  needle_start: int
  key_start: int
  question_start: int
  answer_start: int
  answer_target_index: int
  key: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class PasskeySample:
  """An eval sample: tokens int32[length], the key and where things are.

  answer_index: the position whose logits predict key[0] (tokens[answer_index + 1] == key[0]);
  key[j] is predicted at answer_index + j. needle_start / question_start: token indices.
  """

  tokens: np.ndarray
  answer_index: int
  key: tuple[int, ...]
  needle_start: int
  question_start: int


def answer_start(length: int, key_len: int, answer_offset: int = 4, *, chunk_text: int) -> int:
  """Position a of the first answer token in a sequence of `length` (module docstring);
  `chunk_text` = `DRTConfig.text_per_chunk`."""
  if answer_offset < 1:
    raise ValueError(f"answer_offset={answer_offset} must be >= 1 so that the answer is "
                     "predicted from inside its chunk")
  c = (length - answer_offset - key_len) // chunk_text
  if c < 1:
    raise ValueError(f"sequence of {length} tokens is too short for a passkey answer of "
                     f"{key_len} tokens at offset {answer_offset} in a chunk after the first "
                     f"(needs at least {chunk_text + answer_offset + key_len})")
  return chunk_text * c + answer_offset


def _ids(tokenizer: Tokenizer, text: str) -> np.ndarray:
  return np.asarray(tokenizer.encode(text), np.int32)


@functools.lru_cache(maxsize=8)
def _official_ids(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Needle head, needle tail and question ids (head and tail of the question encoded apart)."""
  question = np.concatenate([_ids(tokenizer, QUESTION_HEAD), _ids(tokenizer, QUESTION_TAIL)])
  return _ids(tokenizer, NEEDLE_HEAD), _ids(tokenizer, NEEDLE_TAIL), question


def _check_question(m: int, answer_offset: int) -> None:
  if m <= answer_offset:
    raise ValueError(f"question of {m} tokens does not reach back before the answer chunk "
                     f"(answer_offset={answer_offset}); use a smaller answer_offset")


def _random_key(tokenizer: Tokenizer, rng: np.random.Generator, key_len: int) -> np.ndarray:
  return rng.choice(tokenizer.ordinary_ids, size=key_len).astype(np.int32)


def insert_passkey(window_tokens: np.ndarray, tokenizer: Tokenizer, rng: np.random.Generator,
                   key_len: int, *, chunk_text: int, answer_offset: int = 4
                   ) -> tuple[np.ndarray, np.ndarray, PasskeyInfo]:
  """Turn a book-text window (seq_len+1 ids) into an official passkey training sample.

  The needle `|The passkey is:` P `|` goes at a uniform random start such that it ends before
  chunk c-1 starts (at least two chunks before the end) and before the question; the question
  `|What is the passkey? The passkey is` and P follow the layout rule of the module docstring.
  The window's own text fills the rest, in order. P = `key_len` ids drawn uniformly from the
  ordinary pieces (no unk, eot, byte pieces).
  Returns (tokens int32[seq_len+1], loss_weights float32[seq_len], info): weights are 1 up to
  and including the target of P's last token, 0 on the targets after it.
  """
  w = np.asarray(window_tokens, np.int32)
  n = len(w)
  head, tail, question = _official_ids(tokenizer)
  m = len(question)
  a = answer_start(n, key_len, answer_offset, chunk_text=chunk_text)
  _check_question(m, answer_offset)
  key = _random_key(tokenizer, rng, key_len)
  needle = np.concatenate([head, key, tail])
  q0 = a - m
  needle_end_max = min(a - answer_offset - chunk_text, q0)
  if needle_end_max < len(needle):
    raise ValueError(f"window of {n} tokens is too short for a passkey sample: the needle "
                     f"({len(needle)} tokens) must end at least two chunks of {chunk_text} "
                     f"before the end, i.e. by position {needle_end_max}")
  s = int(rng.integers(0, needle_end_max - len(needle) + 1))
  gap = q0 - s - len(needle)
  tail_len = n - a - key_len
  out = np.concatenate([w[:s], needle, w[s:s + gap], question, key,
                        w[s + gap:s + gap + tail_len]])
  weights = np.zeros(n - 1, np.float32)
  weights[:a + key_len - 1] = 1.0
  info = PasskeyInfo(needle_start=s, key_start=s + len(head), question_start=q0, answer_start=a,
                     answer_target_index=a - 1, key=tuple(int(t) for t in key))
  return out, weights, info


def _span(filler: np.ndarray, start: int, size: int) -> np.ndarray:
  return filler[(start + np.arange(size)) % len(filler)]


def _reach(before: int, question_start: int, needle_tokens: int, chunk_text: int) -> int:
  """Largest filler offset at which the needle(s) still end before the question's chunk.

  Depth d puts a needle after round(d * reach) filler tokens, so depth 1 ends the needle(s) right
  where the question's chunk begins: the last place GCA retrieval can reach, since the answer
  chunk is served by the retrieval made at the question chunk's landmark, which sees only
  earlier chunks (docs/method.md §2.3, §4: needles at least two chunks before the end). Where the length
  leaves no whole chunk before the question's, the needle may share that chunk (reach = before).
  """
  limit = (question_start // chunk_text) * chunk_text - needle_tokens
  return before if limit < 0 else min(before, limit)


def make_passkey_sample(filler_tokens: np.ndarray, length: int, depth: float, tokenizer: Tokenizer,
                        rng: np.random.Generator, key_len: int = 5, *, chunk_text: int,
                        answer_offset: int = 4) -> PasskeySample:
  """An official-format eval sample of `length` tokens with real-text filler (docs/method.md §4).

  Filler is a contiguous span of `filler_tokens` from a random start (wrapping around when the
  stream is shorter than needed). The needle is placed after a fraction `depth` of the filler
  that GCA can retrieve from (`_reach`: depth 1 = the needle ends where the question's chunk
  begins); question and answer follow the layout rule; filler text follows the answer up to
  `length`.
  """
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth={depth!r} must lie in [0, 1]")
  filler = np.asarray(filler_tokens, np.int32)
  if filler.size == 0:
    raise ValueError("filler_tokens is empty")
  head, tail, question = _official_ids(tokenizer)
  m = len(question)
  a = answer_start(length, key_len, answer_offset, chunk_text=chunk_text)
  _check_question(m, answer_offset)
  key = _random_key(tokenizer, rng, key_len)
  needle = np.concatenate([head, key, tail])
  before = a - m - len(needle)
  if before < 0:
    raise ValueError(f"length={length} leaves no room for the needle ({len(needle)} tokens)")
  after = length - a - key_len
  text = _span(filler, int(rng.integers(len(filler))), before + after)
  s = int(round(depth * _reach(before, a - m, len(needle), chunk_text)))
  tokens = np.concatenate([text[:s], needle, text[s:before], question, key, text[before:]])
  return PasskeySample(tokens=tokens, answer_index=a - 1, key=tuple(int(t) for t in key),
                       needle_start=s, question_start=a - m)


def _landmark_question_and_key(tokenizer: Tokenizer, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Question ids and answer ids for key N; whitespace-only answer pieces join the question."""
  q = tokenizer.encode(LANDMARK_QUESTION)
  full = tokenizer.encode(f"{LANDMARK_QUESTION} {n}")
  if full[:len(q)] != q:
    raise ValueError(f"tokenizer {tokenizer.model_path!r} merges the question with the answer")
  ans = full[len(q):]
  while len(ans) > 1 and not tokenizer.decode(ans[:1]).strip():
    q, ans = q + ans[:1], ans[1:]
  return np.asarray(q, np.int32), np.asarray(ans, np.int32)


def make_landmark_passkey_sample(length: int, depth: float, tokenizer: Tokenizer,
                                 rng: np.random.Generator, *, chunk_text: int,
                                 answer_offset: int = 4) -> PasskeySample:
  """A Landmark-Attention-format eval sample of `length` tokens (docs/method.md §4, last bullet).

  Task line, then the filler sentences repeated, with the line `The pass key is N. Remember it.
  N is the pass key.` (N uniform in 1..50000) inserted at a sentence-group boundary after a
  fraction `depth` of the filler, then `What is the pass key? The pass key is` and the answer
  " N" (its leading whitespace piece, if separate, counted as part of the question), placed by
  the layout rule; the filler is cut to fit before the question and continues after the
  answer. key = the answer's token ids (the digits): score all of them, as the generated integer.
  """
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth={depth!r} must lie in [0, 1]")
  n = int(rng.integers(1, LANDMARK_MAX_KEY + 1))
  task = _ids(tokenizer, LANDMARK_TASK)
  unit = _ids(tokenizer, " " + LANDMARK_FILLER)
  needle = _ids(tokenizer, LANDMARK_NEEDLE.format(n=n))
  question, key = _landmark_question_and_key(tokenizer, n)
  m, k = len(question), len(key)
  a = answer_start(length, k, answer_offset, chunk_text=chunk_text)
  _check_question(m, answer_offset)
  before = a - m - len(task) - len(needle)
  if before < 0:
    raise ValueError(f"length={length} leaves no room for the task line and the needle")
  u = len(unit)
  s = min(int(round(depth * before / u)), before // u) * u
  filler = np.resize(unit, before)
  tokens = np.concatenate([task, filler[:s], needle, filler[s:], question, key,
                           np.resize(unit, length - a - k)])
  return PasskeySample(tokens=tokens, answer_index=a - 1, key=tuple(int(t) for t in key),
                       needle_start=len(task) + s, question_start=a - m)


# ------------------------------------------------------------------- multi-key and 2-hop variants
#
# Both variants (docs/method.md §4, "Variants") are built from random-token keys, like the official passkey
# P, and follow the same layout rule (module docstring): the answer starts `answer_offset` tokens
# into the answer chunk c, and the question ends right before it and starts in an earlier chunk.
# The question repeats the name it asks about near its start, so that the whole name has been
# read before chunk c (the retrieval made at chunk c-1's landmark, which serves chunk c, has seen
# it); `_check_name_read` enforces this.
#
# Multi-key (`make_multikey_passkey_sample`), needles and question, with X_i (`name_len` tokens)
# and Y_i (`key_len` tokens) random ordinary ids, all ids of all X's and Y's distinct:
#   needle i: "|One of the special magic numbers for" X_i " is" Y_i "|"
#   question: "|What is the special magic number for" X_q "? The special magic number for" X_q " is"
#   answer:   Y_q  (key_len tokens)
#
# 2-hop (`make_2hop_passkey_sample`), X, Y, Z each `key_len` random ordinary ids, all distinct:
#   needle 0: "|DEF " X "->" Y "|"          needle 1: "|DEF " Y "->" Z "|"
#   question: "|What is the path from" X "? The path is " X "->"
#   answer:   Y "->" Z  (key_len + len(ids("->")) + key_len tokens; 5 + 2 + 5 = 12 with the
#             shipped tokenizer, where "->" is the two pieces "-", ">")
# The first answer token Y[0] needs the first hop (X -> Y); the whole answer, teacher-forced,
# needs both hops (after Y "->", find "DEF Y->" and copy Z).
#
# "Haystack": real text from a token stream (`filler_tokens`, a contiguous span from a random
# start, wrapping) by default; `prefix_tokens` (e.g. Landmark's task line) goes first and
# `filler_start` fixes the span's start (0 for Landmark's repeated filler unit, so that it starts
# on a sentence). Needle i goes after a fraction depths[i] of the retrievable filler (filler
# offset round(depths[i] * reach), `_reach`: at depth 1 the needles end where the question's
# chunk begins); needles at the same offset keep their order.

MULTIKEY_NEEDLE_HEAD = "|One of the special magic numbers for"
MULTIKEY_NEEDLE_MID = " is"
MULTIKEY_NEEDLE_TAIL = "|"
MULTIKEY_QUESTION_HEAD = "|What is the special magic number for"
MULTIKEY_QUESTION_MID = "? The special magic number for"
MULTIKEY_QUESTION_TAIL = " is"

HOP_NEEDLE_HEAD = "|DEF "
HOP_ARROW = "->"
HOP_NEEDLE_TAIL = "|"
HOP_QUESTION_HEAD = "|What is the path from"
HOP_QUESTION_MID = "? The path is "


@dataclasses.dataclass(frozen=True)
class MultiNeedleSample:
  """A multi-key or 2-hop eval sample (token indices into `tokens`, int32[length]).

  answer_index: the position whose logits predict key[0] (tokens[answer_index + 1] == key[0]);
    key[j] is predicted at answer_index + j (as in `PasskeySample`).
  key: the answer tokens (multi-key: Y of the queried needle; 2-hop: Y "->" Z).
  needle_starts[i]: where needle i begins ("|..."); value_starts[i]: where its answer-bearing
    span begins (multi-key: Y_i; 2-hop: the token after "->", i.e. Y in needle 0, Z in needle 1).
  question_start: where the question begins. names / values: X_i / Y_i (multi-key) or
    (X, Y) / (Y, Z) (2-hop), as tuples of ids. query: the index of the needle asked about.
  """

  tokens: np.ndarray
  answer_index: int
  key: tuple[int, ...]
  needle_starts: tuple[int, ...]
  value_starts: tuple[int, ...]
  question_start: int
  names: tuple[tuple[int, ...], ...]
  values: tuple[tuple[int, ...], ...]
  query: int

  @property
  def answer_start(self) -> int:
    return self.answer_index + 1


def _distinct_ids(tokenizer: Tokenizer, rng: np.random.Generator, n: int) -> np.ndarray:
  ids = tokenizer.ordinary_ids
  if n > len(ids):
    raise ValueError(f"{n} distinct key tokens needed, the tokenizer has {len(ids)} ordinary ids")
  return rng.choice(ids, size=n, replace=False).astype(np.int32)


def _check_depths(depths, n: int) -> list[float]:
  depths = [float(x) for x in depths]
  if len(depths) != n:
    raise ValueError(f"{len(depths)} depths given for {n} needles")
  for x in depths:
    if not 0.0 <= x <= 1.0:
      raise ValueError(f"depth={x!r} must lie in [0, 1]")
  return depths


def _check_name_read(tail_after_name: int, answer_offset: int) -> None:
  if tail_after_name < answer_offset:
    raise ValueError(f"the question's name would reach into the answer chunk "
                     f"(answer_offset={answer_offset} > {tail_after_name} tokens after it); "
                     "use a smaller answer_offset")


def _assemble(filler_tokens, prefix_tokens, filler_start, needles: list[np.ndarray],
              depths: list[float], question: np.ndarray, key: np.ndarray, length: int,
              answer_offset: int, chunk_text: int, rng: np.random.Generator):
  """tokens, answer position a, needle starts, question start (layout rule, module docstring)."""
  filler = np.asarray(filler_tokens, np.int32)
  if filler.size == 0:
    raise ValueError("filler_tokens is empty")
  prefix = np.zeros((0,), np.int32) if prefix_tokens is None else np.asarray(prefix_tokens,
                                                                             np.int32)
  m, k = len(question), len(key)
  a = answer_start(length, k, answer_offset, chunk_text=chunk_text)
  _check_question(m, answer_offset)
  before = a - m - len(prefix) - sum(len(x) for x in needles)
  if before < 0:
    raise ValueError(f"length={length} leaves no room for {len(needles)} needles "
                     f"({sum(len(x) for x in needles)} tokens) and the question ({m} tokens)")
  after = length - a - k
  start = int(rng.integers(len(filler))) if filler_start is None else int(filler_start)
  text = _span(filler, start, before + after)
  reach = _reach(before, a - m, len(prefix) + sum(len(x) for x in needles), chunk_text)
  offs = [int(round(d * reach)) for d in depths]
  order = sorted(range(len(needles)), key=lambda i: (offs[i], i))
  parts, starts, pos, prev = [prefix], [0] * len(needles), len(prefix), 0
  for i in order:
    parts.append(text[prev:offs[i]])
    pos += offs[i] - prev
    starts[i] = pos
    parts.append(needles[i])
    pos += len(needles[i])
    prev = offs[i]
  parts += [text[prev:before], question, key, text[before:]]
  tokens = np.concatenate(parts).astype(np.int32)
  assert len(tokens) == length and pos + before - prev == a - m
  return tokens, a, starts


def make_multikey_passkey_sample(filler_tokens: np.ndarray, length: int, depths,
                                 tokenizer: Tokenizer, rng: np.random.Generator, *,
                                 query: int | None = None, name_len: int = 2, key_len: int = 5,
                                 chunk_text: int, answer_offset: int = 4,
                                 prefix_tokens: np.ndarray | None = None,
                                 filler_start: int | None = None) -> MultiNeedleSample:
  """Multi-key sample: len(depths) needles `|One of the special magic numbers for X is Y|`
  (distinct X's) at those depths, the question for needle `query` (default: random), answer Y.
  Formats and layout: the comment block above."""
  n = len(depths)
  if n < 1:
    raise ValueError("multi-key needs at least one needle (depths is empty)")
  depths = _check_depths(depths, n)
  q = int(rng.integers(n)) if query is None else int(query)
  if not 0 <= q < n:
    raise ValueError(f"query={query} must index one of the {n} needles")
  ids = _distinct_ids(tokenizer, rng, n * (name_len + key_len))
  names = ids[:n * name_len].reshape(n, name_len)
  values = ids[n * name_len:].reshape(n, key_len)
  head, mid, tail = (_ids(tokenizer, s) for s in (MULTIKEY_NEEDLE_HEAD, MULTIKEY_NEEDLE_MID,
                                                   MULTIKEY_NEEDLE_TAIL))
  needles = [np.concatenate([head, names[i], mid, values[i], tail]) for i in range(n)]
  qh, qm, qt = (_ids(tokenizer, s) for s in (MULTIKEY_QUESTION_HEAD, MULTIKEY_QUESTION_MID,
                                             MULTIKEY_QUESTION_TAIL))
  question = np.concatenate([qh, names[q], qm, names[q], qt])
  _check_name_read(len(qm) + name_len + len(qt), answer_offset)
  tokens, a, starts = _assemble(filler_tokens, prefix_tokens, filler_start, needles, depths,
                                question, values[q], length, answer_offset, chunk_text, rng)
  vstart = len(head) + name_len + len(mid)
  return MultiNeedleSample(
      tokens=tokens, answer_index=a - 1, key=tuple(int(t) for t in values[q]),
      needle_starts=tuple(starts), value_starts=tuple(s + vstart for s in starts),
      question_start=a - len(question), names=tuple(tuple(int(t) for t in x) for x in names),
      values=tuple(tuple(int(t) for t in y) for y in values), query=q)


def make_2hop_passkey_sample(filler_tokens: np.ndarray, length: int, depths, tokenizer: Tokenizer,
                             rng: np.random.Generator, *, key_len: int = 5, chunk_text: int,
                             answer_offset: int = 4, prefix_tokens: np.ndarray | None = None,
                             filler_start: int | None = None) -> MultiNeedleSample:
  """2-hop sample: `|DEF X->Y|` at depths[0], `|DEF Y->Z|` at depths[1] (either order in the
  text), question `|What is the path from X? The path is X->`, answer `Y->Z` (the comment block
  above). names = (X, Y), values = (Y, Z), query = 0."""
  depths = _check_depths(depths, 2)
  x, y, z = _distinct_ids(tokenizer, rng, 3 * key_len).reshape(3, key_len)
  head, arrow, tail = (_ids(tokenizer, s) for s in (HOP_NEEDLE_HEAD, HOP_ARROW, HOP_NEEDLE_TAIL))
  needles = [np.concatenate([head, x, arrow, y, tail]), np.concatenate([head, y, arrow, z, tail])]
  qh, qm = _ids(tokenizer, HOP_QUESTION_HEAD), _ids(tokenizer, HOP_QUESTION_MID)
  question = np.concatenate([qh, x, qm, x, arrow])
  _check_name_read(len(qm) + key_len + len(arrow), answer_offset)
  key = np.concatenate([y, arrow, z])
  tokens, a, starts = _assemble(filler_tokens, prefix_tokens, filler_start, needles, depths,
                                question, key, length, answer_offset, chunk_text, rng)
  vstart = len(head) + key_len + len(arrow)
  as_t = lambda v: tuple(int(t) for t in v)  # noqa: E731
  return MultiNeedleSample(
      tokens=tokens, answer_index=a - 1, key=as_t(key), needle_starts=tuple(starts),
      value_starts=tuple(s + vstart for s in starts), question_start=a - len(question),
      names=(as_t(x), as_t(y)), values=(as_t(y), as_t(z)), query=0)


def landmark_haystack(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """(prefix, filler unit) of the Landmark format: its task line and one " " + filler group,
  for multi-key / 2-hop samples in the Landmark haystack (pass filler_start=0)."""
  return _ids(tokenizer, LANDMARK_TASK), _ids(tokenizer, " " + LANDMARK_FILLER)
