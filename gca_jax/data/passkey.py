"""Passkey samples: official DRT format (training, eval) and Landmark format (eval); SPEC §4, §7.

Coordinates. A sequence holds text positions 0..n-1; chunk c is positions
[chunk_text*c, chunk_text*c + chunk_text) (the model appends each chunk's landmark itself,
SPEC §1). In a training window of seq_len+1 tokens, inputs = window[:-1] and targets =
window[1:], so window index i is input position i and target index i-1.

Layout rule (SPEC §7). Let k be the key length. The answer chunk c is the last chunk in which
the whole answer fits after `answer_offset` positions: c = (n - answer_offset - k) // chunk_text
with n = the sequence length (seq_len+1 for a training window, so the answer's last token may be
the final target). The first answer token sits at position a = chunk_text*c + answer_offset and
is predicted by the logits at position a-1, which lies in chunk c since answer_offset >= 1. The
question of m tokens ends right before it, at [a-m, a), and must start in an earlier chunk
(m > answer_offset): the retrieval made at chunk c-1 (which serves chunk c) has read the
question. With the shipped tokenizer " The passkey is" is 4 tokens, so at answer_offset=4
(where the official data puts the answer) "|What is the passkey?" ends exactly at the last
position of chunk c-1 and chunk c opens with " The passkey is" followed by the answer.
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
  """Passkey mixing into LM training (SPEC §4): a `fraction` of windows become passkey samples.

  key_len_train / key_len_eval: number of random token ids in the key P (10 / 5 officially).
  answer_offset: position of the first answer token inside its chunk (official: 4).
  chunk_text: text tokens per chunk (63).
  """

  fraction: float
  key_len_train: int = 10
  key_len_eval: int = 5
  answer_offset: int = 4
  chunk_text: int = 63

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


def answer_start(length: int, key_len: int, answer_offset: int = 4, chunk_text: int = 63) -> int:
  """Position a of the first answer token in a sequence of `length` (module docstring)."""
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
                   key_len: int, chunk_text: int = 63, answer_offset: int = 4
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
  a = answer_start(n, key_len, answer_offset, chunk_text)
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


def make_passkey_sample(filler_tokens: np.ndarray, length: int, depth: float, tokenizer: Tokenizer,
                        rng: np.random.Generator, key_len: int = 5, chunk_text: int = 63,
                        answer_offset: int = 4) -> PasskeySample:
  """An official-format eval sample of `length` tokens with real-text filler (SPEC §4).

  Filler is a contiguous span of `filler_tokens` from a random start (wrapping around when the
  stream is shorter than needed). The needle is placed after a fraction `depth` of the filler
  that precedes the question; question and answer follow the layout rule; filler text follows
  the answer up to `length`.
  """
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth={depth!r} must lie in [0, 1]")
  filler = np.asarray(filler_tokens, np.int32)
  if filler.size == 0:
    raise ValueError("filler_tokens is empty")
  head, tail, question = _official_ids(tokenizer)
  m = len(question)
  a = answer_start(length, key_len, answer_offset, chunk_text)
  _check_question(m, answer_offset)
  key = _random_key(tokenizer, rng, key_len)
  needle = np.concatenate([head, key, tail])
  before = a - m - len(needle)
  if before < 0:
    raise ValueError(f"length={length} leaves no room for the needle ({len(needle)} tokens)")
  after = length - a - key_len
  text = _span(filler, int(rng.integers(len(filler))), before + after)
  s = int(round(depth * before))
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
                                 rng: np.random.Generator, chunk_text: int = 63,
                                 answer_offset: int = 4) -> PasskeySample:
  """A Landmark-Attention-format eval sample of `length` tokens (SPEC §4, last bullet).

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
  a = answer_start(length, k, answer_offset, chunk_text)
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
