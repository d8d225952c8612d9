"""Synthetic recall / passkey samples for learning GCA retrieval (issue 5, docs/method.md §4, §7).

One generator, `make_recall_sample`, covers the whole family that the recall training mix
(`config.data.recall`, `gca_jax.data.pipeline.RecallIterator`) draws from:

- **official passkey** (`named=False, n_queries=1, repeat=1`): the docs/method.md §4 format.  Needle
  `|The passkey is:` P `|` somewhere in filler, question `|What is the passkey? The passkey is`
  and the answer P at the end.  This is also the evaluation format.
- **named multi-query** (`named=True, n_queries=q`): q needles `|The passkey of` X_i ` is:` P_i
  `|` (X_i a one-token name, P_i a random key) and q questions `|What is the passkey of` X_i `?
  The passkey of` X_i ` is` P_i, one answer per chunk in the last q chunks: dense associative
  recall (MQAR-like), where each answer chunk must retrieve its own needle's chunk.
- **needle density** (`repeat=r`): each needle line is written r times in a row.  With r large
  the needle fills most of a chunk, so even the uniform attention inside a retrieved chunk that
  GCA starts with (docs/method.md §7) already carries the key tokens; a curriculum lowers r to 1.
- **filler**: real text (a contiguous span of a token stream, e.g. Moby Dick) or the Landmark
  Attention filler sentences repeated (`TextFiller` / `RepeatFiller`).
- **multi-key** (`make_multikey_train_sample`): n needles `|One of the special magic numbers for`
  X_i ` is` Y_i `|` at uniform random depths, one question for a random X_q, answer Y_q; n is
  drawn in [1, `multikey_needles`] (fewer where they do not fit), so most samples hold more
  needles than top-k and the retrieval must select by the name the question asks.
- **2-hop** (`make_2hop_train_sample`): `|DEF X->Y|`, `|DEF Y->Z|`, question for the path from
  X, answer `Y->Z`.
  Both are built by the eval builders of `gca_jax.data.passkey` (one definition of the strings
  and the layout), on a window of length + 1 tokens, with `PieceTokenizer` (the prompt strings'
  ids, picklable for the batch workers).

Coordinates follow `gca_jax.data.passkey`: a sample is a window of `length + 1` ids;
inputs = window[:-1], targets = window[1:]; window index i is input position i and target index
i - 1.  Chunk c is text positions [C c, C c + C), C = `chunk_text` = the model's
`DRTConfig.text_per_chunk` (63 for chunk_size 64); every function takes it as a keyword.

Layout rule (docs/method.md §7).  The last answer sits in the last chunk in which it fits,
c_q = (length + 1 - answer_offset - key_len) // C, its first token at a = C c_q + answer_offset,
so it is predicted from position a - 1 inside chunk c_q.  Query i of q uses chunk
c_i = c_q - (q - 1 - i).  Its question (m tokens) ends right before a_i and starts in chunk
c_i - 1 (m > answer_offset is checked), so the retrieval made at chunk c_i - 1's landmark — which
serves chunk c_i — has read the question (and, for named needles, the name).  Every needle ends
before chunk c_1 - 1 starts, i.e. lies in a chunk strictly before the first question's chunk.

Loss weights: 1 on every target up to and including the last answer token (LM loss on the
filler, needles and questions), `answer_weight` on the answer targets, 0 after the last answer.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# the official format is the eval format's (one definition, in passkey.py)
from gca_jax.data import passkey as pk
from gca_jax.data.passkey import NEEDLE_HEAD, NEEDLE_TAIL, QUESTION_HEAD, QUESTION_TAIL, _span
from gca_jax.data.tokenizer import Tokenizer

NAMED_NEEDLE_HEAD = "|The passkey of"
NAMED_NEEDLE_MID = " is:"
NAMED_QUESTION_HEAD = "|What is the passkey of"
NAMED_QUESTION_MID = "?"
NAMED_QUESTION_TAIL = " The passkey of"
NAMED_QUESTION_END = " is"
LANDMARK_FILLER = (" The grass is green. The sky is blue. The sun is yellow. Here we go. There and"
                   " back again.")


@dataclasses.dataclass(frozen=True)
class PromptIds:
  """Token ids of the fixed prompt pieces, keys' and names' id pools (from one tokenizer)."""

  needle_head: np.ndarray
  needle_tail: np.ndarray
  question_head: np.ndarray
  question_tail: np.ndarray
  named_needle_head: np.ndarray
  named_needle_mid: np.ndarray
  named_question_head: np.ndarray
  named_question_mid: np.ndarray
  named_question_tail: np.ndarray
  named_question_end: np.ndarray
  key_pool: np.ndarray        # ids a key token is drawn from (ordinary pieces)
  name_pool: np.ndarray       # ids a name is drawn from (word pieces ' Abc...')
  landmark_filler: np.ndarray
  pieces: "PieceTokenizer | None" = None   # multi-key / 2-hop prompt strings


# the strings the multi-key and 2-hop builders of gca_jax.data.passkey encode
PIECE_STRINGS = (pk.MULTIKEY_NEEDLE_HEAD, pk.MULTIKEY_NEEDLE_MID, pk.MULTIKEY_NEEDLE_TAIL,
                 pk.MULTIKEY_QUESTION_HEAD, pk.MULTIKEY_QUESTION_MID, pk.MULTIKEY_QUESTION_TAIL,
                 pk.HOP_NEEDLE_HEAD, pk.HOP_ARROW, pk.HOP_NEEDLE_TAIL, pk.HOP_QUESTION_HEAD,
                 pk.HOP_QUESTION_MID)


@dataclasses.dataclass(frozen=True)
class PieceTokenizer:
  """The part of a Tokenizer the passkey builders use: `encode` of the prompt strings
  (`PIECE_STRINGS`, precomputed) and `ordinary_ids`; picklable (no sentencepiece object)."""

  table: tuple[tuple[str, tuple[int, ...]], ...]
  ordinary_ids: np.ndarray

  def encode(self, text: str) -> list[int]:
    for s, ids in self.table:
      if s == text:
        return list(ids)
    raise KeyError(f"PieceTokenizer: {text!r} is not one of the prompt strings PIECE_STRINGS")


@functools.lru_cache(maxsize=4)
def prompt_ids(tokenizer: Tokenizer) -> PromptIds:
  enc = lambda s: np.asarray(tokenizer.encode(s), np.int32)  # noqa: E731
  ordinary = np.asarray(tokenizer.ordinary_ids, np.int32)
  names = [i for i in ordinary.tolist()
           if (p := tokenizer.decode([i])).startswith(" ") and p[1:].isalpha() and len(p) >= 4]
  return PromptIds(
      needle_head=enc(NEEDLE_HEAD), needle_tail=enc(NEEDLE_TAIL),
      question_head=enc(QUESTION_HEAD), question_tail=enc(QUESTION_TAIL),
      named_needle_head=enc(NAMED_NEEDLE_HEAD), named_needle_mid=enc(NAMED_NEEDLE_MID),
      named_question_head=enc(NAMED_QUESTION_HEAD), named_question_mid=enc(NAMED_QUESTION_MID),
      named_question_tail=enc(NAMED_QUESTION_TAIL), named_question_end=enc(NAMED_QUESTION_END),
      key_pool=ordinary, name_pool=np.asarray(names, np.int32),
      landmark_filler=enc(LANDMARK_FILLER),
      pieces=PieceTokenizer(tuple((p, tuple(int(i) for i in tokenizer.encode(p)))
                                  for p in PIECE_STRINGS), ordinary))


class TextFiller:
  """Contiguous spans of a token stream from a random start (wrapping around)."""

  def __init__(self, tokens: np.ndarray):
    self.tokens = np.asarray(tokens, np.int32)
    if self.tokens.size == 0:
      raise ValueError("TextFiller: empty token stream")

  def take(self, rng: np.random.Generator, n: int) -> np.ndarray:
    return _span(self.tokens, int(rng.integers(len(self.tokens))), n)


class RepeatFiller(TextFiller):
  """The Landmark-Attention filler sentences repeated (`tokens` = one group of them), from a
  random phase: the same wrapping span as TextFiller over the repeated unit."""


@dataclasses.dataclass(frozen=True)
class RecallSample:
  """tokens int32[length+1]; weights float32[length] (per target); answer_targets int32[q, k]:
  target indices of every answer token (answer_targets[i, 0] predicts key i's first token from
  input position answer_targets[i, 0]); keys int32[q, k]; needle_starts int32[q] (window index
  of each needle block, in query order); question_starts int32[q]."""

  tokens: np.ndarray
  weights: np.ndarray
  answer_targets: np.ndarray
  keys: np.ndarray
  needle_starts: np.ndarray
  question_starts: np.ndarray


def answer_chunk(length: int, key_len: int, *, chunk_text: int, answer_offset: int = 4) -> int:
  """c_q: the last chunk of a `length + 1` window in which an answer of key_len fits."""
  return (length + 1 - answer_offset - key_len) // chunk_text


def max_queries(length: int, key_len: int, needle_len: int, *, chunk_text: int,
                answer_offset: int = 4) -> int:
  """Largest q whose needles (needle_len tokens each) fit before the first question's chunk."""
  cq = answer_chunk(length, key_len, chunk_text=chunk_text, answer_offset=answer_offset)
  q = 0
  while True:
    c1 = cq - q  # first answer chunk if q + 1 queries
    if c1 - 1 < 1 or chunk_text * (c1 - 1) < (q + 1) * needle_len:
      return q
    q += 1


def _split(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
  """`parts` non-negative ints summing to `total`, uniformly (stars and bars)."""
  cuts = np.sort(rng.integers(0, total + 1, size=parts - 1))
  return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)


def make_recall_sample(rng: np.random.Generator, ids: PromptIds, filler: TextFiller, length: int,
                       *, chunk_text: int, key_len: int = 5, n_queries: int = 1,
                       named: bool = False, repeat: int = 1, answer_weight: float = 1.0,
                       answer_offset: int = 4, depth: float | None = None) -> RecallSample:
  """One sample (module docstring).  `depth` in [0, 1] (single query only) places the needle at
  that fraction of the room before the question's chunk; None draws it uniformly."""
  if key_len < 1 or n_queries < 1 or repeat < 1:
    raise ValueError(f"key_len={key_len}, n_queries={n_queries}, repeat={repeat} must be >= 1")
  if answer_offset < 1 or answer_offset + key_len > chunk_text:
    raise ValueError(f"answer_offset={answer_offset} must be >= 1 and leave room for the key")
  if n_queries > 1 and not named:
    raise ValueError("several queries need named needles (otherwise they all ask the same key "
                     "and an earlier answer in the sliding window gives it away)")
  q = n_queries
  if named and len(ids.name_pool) < q:
    raise ValueError(f"only {len(ids.name_pool)} names for {q} queries")
  keys = rng.choice(ids.key_pool, size=(q, key_len)).astype(np.int32)
  if named:
    names = rng.choice(ids.name_pool, size=q, replace=False).astype(np.int32)
    needles = [np.tile(np.concatenate([ids.named_needle_head, [names[i]], ids.named_needle_mid,
                                       keys[i], ids.needle_tail]), repeat) for i in range(q)]
    questions = [np.concatenate([ids.named_question_head, [names[i]], ids.named_question_mid,
                                 ids.named_question_tail, [names[i]], ids.named_question_end])
                 for i in range(q)]
  else:
    needles = [np.tile(np.concatenate([ids.needle_head, keys[0], ids.needle_tail]), repeat)]
    questions = [np.concatenate([ids.question_head, ids.question_tail])]
  m = len(questions[0])
  if m <= answer_offset:
    raise ValueError(f"question of {m} tokens must be longer than answer_offset={answer_offset}")
  if q > 1 and m + key_len > chunk_text:
    raise ValueError(f"{q} queries: a question ({m} tokens) and its key ({key_len}) must fit in "
                     f"one chunk of {chunk_text} (one query per chunk)")
  n = length + 1
  cq = answer_chunk(length, key_len, chunk_text=chunk_text, answer_offset=answer_offset)
  c1 = cq - (q - 1)
  a = chunk_text * (c1 + np.arange(q)) + answer_offset           # first answer token, window idx
  if c1 < 2 or a[0] - m < chunk_text * (c1 - 1):
    raise ValueError(f"length={length} too short for {q} queries (first answer chunk {c1})")
  room = chunk_text * (c1 - 1)                                   # needles live in [0, room)
  need = sum(len(x) for x in needles)
  if need > room:
    raise ValueError(f"length={length}: {q} needle block(s) of {need} tokens do not fit in the "
                     f"{room} tokens before the first question's chunk")
  # filler counts: gaps between needles (q+1 gaps in [0, room)), then the query region
  free = room - need
  if depth is not None:
    if q != 1 or not 0.0 <= depth <= 1.0:
      raise ValueError("depth needs a single query and 0 <= depth <= 1")
    g0 = int(round(depth * free))
    gaps = np.array([g0, free - g0])
  else:
    gaps = _split(rng, free, q + 1)
  order = rng.permutation(q)                                      # needle order != query order
  text = filler.take(rng, n - need - q * (m + key_len))
  out, pos, t = [], 0, 0
  needle_starts = np.zeros(q, np.int64)
  for gi in range(q + 1):
    out.append(text[t:t + gaps[gi]]); t += gaps[gi]; pos += gaps[gi]
    if gi < q:
      needle_starts[order[gi]] = pos
      out.append(needles[order[gi]]); pos += len(needles[order[gi]])
  assert pos == room
  for i in range(q):
    qs = a[i] - m
    out.append(text[t:t + qs - pos]); t += qs - pos; pos = qs
    out.append(questions[i]); out.append(keys[i]); pos = a[i] + key_len
  out.append(text[t:t + n - pos]); t += n - pos
  tokens = np.concatenate(out).astype(np.int32)
  assert len(tokens) == n and t == len(text), (len(tokens), n, t, len(text))
  answer_targets = (a[:, None] - 1 + np.arange(key_len)[None, :]).astype(np.int32)
  weights = np.zeros(length, np.float32)
  weights[:answer_targets[-1, -1] + 1] = 1.0
  weights[answer_targets.reshape(-1)] = answer_weight
  return RecallSample(tokens=tokens, weights=weights, answer_targets=answer_targets, keys=keys,
                      needle_starts=needle_starts.astype(np.int32),
                      question_starts=(a - m).astype(np.int32))


def _train_sample(s: "pk.MultiNeedleSample", length: int, answer_weight: float) -> RecallSample:
  """A RecallSample of an eval-builder sample of length + 1 tokens (one query)."""
  k = len(s.key)
  answer_targets = (s.answer_index + np.arange(k, dtype=np.int32))[None, :]
  weights = np.zeros(length, np.float32)
  weights[:answer_targets[0, -1] + 1] = 1.0
  weights[answer_targets[0]] = answer_weight
  return RecallSample(tokens=s.tokens, weights=weights, answer_targets=answer_targets,
                      keys=np.asarray([s.key], np.int32),
                      needle_starts=np.asarray(s.needle_starts, np.int32),
                      question_starts=np.asarray([s.question_start], np.int32))


def multikey_needle_len(ids: PromptIds, *, name_len: int = 2, key_len: int = 5) -> int:
  enc = ids.pieces.encode
  return (len(enc(pk.MULTIKEY_NEEDLE_HEAD)) + name_len + len(enc(pk.MULTIKEY_NEEDLE_MID))
          + key_len + len(enc(pk.MULTIKEY_NEEDLE_TAIL)))


def multikey_cap(ids: PromptIds, length: int, max_needles: int, *, chunk_text: int,
                 key_len: int = 5, answer_offset: int = 4) -> int:
  """Most needles of a multi-key sample of `length` (+1) tokens: max_needles, fewer where they
  would take more than half of the room before the question's chunk (at least 1)."""
  cq = answer_chunk(length, key_len, chunk_text=chunk_text, answer_offset=answer_offset)
  room = chunk_text * (cq - 1)
  return max(1, min(max_needles, room // (2 * multikey_needle_len(ids, key_len=key_len))))


def make_multikey_train_sample(rng: np.random.Generator, ids: PromptIds, filler: TextFiller,
                               length: int, *, chunk_text: int, max_needles: int,
                               key_len: int = 5, answer_weight: float = 1.0,
                               answer_offset: int = 4) -> RecallSample:
  """Multi-key training sample (module docstring): n ~ U[1, cap] needles at uniform depths, the
  question for a random one; `gca_jax.data.passkey.make_multikey_passkey_sample` builds it."""
  if ids.pieces is None:
    raise ValueError("PromptIds without multi-key pieces (build them with prompt_ids)")
  cap = multikey_cap(ids, length, max_needles, chunk_text=chunk_text, key_len=key_len,
                     answer_offset=answer_offset)
  n = int(rng.integers(1, cap + 1))
  s = pk.make_multikey_passkey_sample(filler.tokens, length + 1, rng.uniform(size=n).tolist(),
                                      ids.pieces, rng, key_len=key_len, chunk_text=chunk_text,
                                      answer_offset=answer_offset)
  return _train_sample(s, length, answer_weight)


def make_2hop_train_sample(rng: np.random.Generator, ids: PromptIds, filler: TextFiller,
                           length: int, *, chunk_text: int, key_len: int = 5,
                           answer_weight: float = 1.0, answer_offset: int = 4) -> RecallSample:
  """2-hop training sample (module docstring), both needles at uniform depths;
  `gca_jax.data.passkey.make_2hop_passkey_sample` builds it."""
  if ids.pieces is None:
    raise ValueError("PromptIds without 2-hop pieces (build them with prompt_ids)")
  s = pk.make_2hop_passkey_sample(filler.tokens, length + 1, rng.uniform(size=2).tolist(),
                                  ids.pieces, rng, key_len=key_len, chunk_text=chunk_text,
                                  answer_offset=answer_offset)
  return _train_sample(s, length, answer_weight)


KIND_TEXT, KIND_SINGLE, KIND_NAMED, KIND_MULTIKEY, KIND_2HOP = 0, 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class MixSpec:
  """What a training batch is made of: fractions of official single-needle passkey samples
  (`p_single`), named multi-query samples (`p_named`, up to `n_queries` each), multi-key
  samples (`p_multikey`, up to `multikey_needles` needles), 2-hop samples (`p_2hop`) and plain
  LM text windows (the rest); Landmark filler instead of text in `p_landmark_filler` of the
  single / named samples; each single / named needle line written `repeat` times;
  `answer_weight` on the answer targets."""

  p_single: float = 1.0
  p_named: float = 0.0
  n_queries: int = 4
  p_landmark_filler: float = 0.0
  key_len: int = 5
  repeat: int = 1
  answer_weight: float = 1.0
  answer_offset: int = 4
  p_multikey: float = 0.0
  multikey_needles: int = 16
  p_2hop: float = 0.0

  @property
  def p_recall(self) -> float:
    return self.p_single + self.p_named + self.p_multikey + self.p_2hop

  def __post_init__(self):
    for name in ("p_single", "p_named", "p_landmark_filler", "p_multikey", "p_2hop"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
    if self.p_recall > 1.0 + 1e-9:
      raise ValueError(f"p_single + p_named + p_multikey + p_2hop = {self.p_recall} must be <= 1")
    for name in ("n_queries", "key_len", "repeat", "answer_offset", "multikey_needles"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
    if self.answer_weight < 0:
      raise ValueError(f"answer_weight={self.answer_weight} must be >= 0")


def named_queries(ids: PromptIds, length: int, mix: MixSpec, *, chunk_text: int) -> int:
  """Queries of a named sample of `length` tokens: n_queries, fewer where they do not fit."""
  needle = (len(ids.named_needle_head) + 1 + len(ids.named_needle_mid) + mix.key_len
            + len(ids.needle_tail)) * mix.repeat
  question = (len(ids.named_question_head) + len(ids.named_question_mid)
              + len(ids.named_question_tail) + len(ids.named_question_end) + 2)
  if question + mix.key_len > chunk_text:   # one query per chunk needs question + key in one
    return 1
  q = max_queries(length, mix.key_len, needle, chunk_text=chunk_text,
                  answer_offset=mix.answer_offset)
  return max(1, min(mix.n_queries, q))


def mix_spec(recall) -> MixSpec:
  """The MixSpec of a `config.data.recall` section (multi-key / 2-hop fields optional, 0 if
  absent: configs saved before they existed)."""
  g = recall.get if hasattr(recall, "get") else (lambda k, d=None: getattr(recall, k, d))
  return MixSpec(p_single=float(g("p_single")), p_named=float(g("p_named")),
                 n_queries=int(g("n_queries")), p_landmark_filler=float(g("p_landmark_filler")),
                 key_len=int(g("key_len")), answer_weight=float(g("answer_weight")),
                 answer_offset=int(g("answer_offset")), p_multikey=float(g("p_multikey", 0.0)),
                 multikey_needles=int(g("multikey_needles", 16)),
                 p_2hop=float(g("p_2hop", 0.0)))


def check_mix(ids: PromptIds, length: int, mix: MixSpec, *, chunk_text: int) -> None:
  """Raises ValueError (why) if a sample kind the mix draws cannot be built at `length`."""
  rng = np.random.default_rng(0)
  filler = RepeatFiller(ids.landmark_filler)
  if mix.p_single > 0:
    make_recall_sample(rng, ids, filler, length, chunk_text=chunk_text, key_len=mix.key_len,
                       repeat=mix.repeat, answer_offset=mix.answer_offset)
  if mix.p_named > 0:
    make_recall_sample(rng, ids, filler, length, chunk_text=chunk_text, key_len=mix.key_len,
                       n_queries=named_queries(ids, length, mix, chunk_text=chunk_text),
                       named=True, repeat=mix.repeat, answer_offset=mix.answer_offset)
  kw = dict(chunk_text=chunk_text, key_len=mix.key_len, answer_offset=mix.answer_offset)
  if mix.p_multikey > 0:   # the most needles, each at depth 1 (the tightest layout)
    cap = multikey_cap(ids, length, mix.multikey_needles, **kw)
    pk.make_multikey_passkey_sample(filler.tokens, length + 1, [1.0] * cap, ids.pieces, rng,
                                    **kw)
  if mix.p_2hop > 0:
    make_2hop_train_sample(rng, ids, filler, length, **kw)


def make_batch(rng: np.random.Generator, ids: PromptIds, text: TextFiller, batch: int, length: int,
               mix: MixSpec, *, chunk_text: int, repeat_filler: TextFiller | None = None
               ) -> dict[str, np.ndarray]:
  """One batch of the mix: {"inputs", "targets" int32[b, length], "loss_weights" f32[b, length],
  "answer_mask" f32[b, length] (1 at the target of each query's first answer token),
  "kind" int32[b] (KIND_TEXT / KIND_SINGLE / KIND_NAMED / KIND_MULTIKEY / KIND_2HOP)}. Row
  kinds are drawn independently with the mix's probabilities; everything is a function of `rng`
  only (a mix without multi-key / 2-hop draws exactly the batches it drew before they existed)."""
  repeat_filler = repeat_filler or RepeatFiller(ids.landmark_filler)
  toks = np.zeros((batch, length + 1), np.int32)
  w = np.zeros((batch, length), np.float32)
  first = np.zeros((batch, length), np.float32)
  kind = np.zeros(batch, np.int32)
  q_named = named_queries(ids, length, mix, chunk_text=chunk_text) if mix.p_named > 0 else 1
  for b in range(batch):
    u = rng.random()
    if u >= mix.p_recall:
      toks[b] = text.take(rng, length + 1)
      w[b] = 1.0
      continue
    if u >= mix.p_single + mix.p_named:
      hop = u >= mix.p_single + mix.p_named + mix.p_multikey
      kw = dict(chunk_text=chunk_text, key_len=mix.key_len, answer_weight=mix.answer_weight,
                answer_offset=mix.answer_offset)
      s = (make_2hop_train_sample(rng, ids, text, length, **kw) if hop else
           make_multikey_train_sample(rng, ids, text, length,
                                      max_needles=mix.multikey_needles, **kw))
      toks[b], w[b] = s.tokens, s.weights
      first[b, s.answer_targets[:, 0]] = 1.0
      kind[b] = KIND_2HOP if hop else KIND_MULTIKEY
      continue
    filler = repeat_filler if rng.random() < mix.p_landmark_filler else text
    named = u >= mix.p_single
    s = make_recall_sample(rng, ids, filler, length, chunk_text=chunk_text, key_len=mix.key_len,
                           n_queries=q_named if named else 1, named=named, repeat=mix.repeat,
                           answer_weight=mix.answer_weight, answer_offset=mix.answer_offset)
    toks[b], w[b] = s.tokens, s.weights
    first[b, s.answer_targets[:, 0]] = 1.0
    kind[b] = KIND_NAMED if named else KIND_SINGLE
  return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "loss_weights": w,
          "answer_mask": first, "kind": kind}
