"""Landmark Attention streaming mode (docs/method.md §6): `landmark_cached_attention` segment by segment vs
the training form (top_k >= blocks) and vs a float64 brute-force reference of the selection rule;
a model_kind="landmark" DRT streamed by the engine vs its full forward."""

import importlib.util
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.inference import TRACE_COUNTS, Stream, stream_nll
from gca_jax.layers.common import apply_rope, rope_tables
from gca_jax.layers.landmark_cache import landmark_cache_blocks, landmark_cached_attention
from gca_jax.layers.stream import Segment, StreamSpec
from gca_jax.ops.landmark import landmark_attention

THETA = 10000.0
SEGMENTS = (1, 17, 63, 100)  # text tokens per call


class Harness(nn.Module):
  """Calls the landmark stream on given PRE-RoPE q/k/v window rows."""
  spec: StreamSpec
  block_size: int
  top_k: int
  rope_theta: float = THETA

  @nn.compact
  def __call__(self, q, k, v, segment):
    return landmark_cached_attention(self, q, k, v, segment=segment, block_size=self.block_size,
                                     spec=self.spec, top_k=self.top_k)


def _aug_len(n_text, S):
  return n_text + n_text // (S - 1)


def _window(n_text, P, S):
  """(pos0, A, n_valid) of a call of P text tokens after n_text (the contract's layout)."""
  L = S - 1
  r = n_text % L
  return S * (n_text // L) + r, P + -(-P // L), P + (r + P) // L


def _empty_cache(model, args):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _stream(q, k, v, S, segments, spec, top_k, grow_after=None, seed=7):
  """Feeds the augmented rows of q/k/v [B, N, H, D] call by call; garbage in scratch rows.
  Returns the stream output [B, N_valid, H, D] and the cache."""
  model = Harness(spec, S, top_k)
  B, _, H, D = q.shape
  rng = np.random.default_rng(seed)
  outs, cache, n_text = [], None, 0
  step = jax.jit(lambda c, *a: model.apply({"cache": c}, *a, mutable=["cache"]))
  for si, P in enumerate(segments):
    pos0, A, n_valid = _window(n_text, P, S)
    rows = [x[:, pos0:pos0 + A] for x in (q, k, v)]
    junk = lambda x: x.at[:, n_valid:].set(
        jnp.asarray(10 * rng.standard_normal((B, A - n_valid, H, D)), x.dtype))
    rows = [junk(x) for x in rows]
    seg = Segment(n_text=jnp.int32(n_text), n_valid=jnp.int32(n_valid))
    if cache is None:
      cache = _empty_cache(model, (*rows, seg))
    o, mut = step(cache, *rows, seg)
    cache = mut["cache"]
    outs.append(np.asarray(o[:, :n_valid]))
    n_text += P
    if grow_after == si:  # engine growth: shapes at a larger capacity, zero-pad every leaf
      big = _empty_cache(Harness(StreamSpec(4 * spec.capacity_tokens, mem_block=spec.mem_block,
                                            query_block=spec.query_block,
                                            landmark_local_blocks=spec.landmark_local_blocks),
                                 S, top_k), (*rows, seg))
      cache = jax.tree.map(lambda x, b: jnp.pad(x, [(0, n - m) for m, n in zip(x.shape, b.shape)]),
                           cache, big)
  return np.concatenate(outs, axis=1), cache


def _qkv(B, N, H, D, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(kk, (B, N, H, D), jnp.float32) for kk in ks)


def _training_form(q, k, v, S):
  N, D = q.shape[1], q.shape[-1]
  cos, sin = rope_tables(np.arange(N), D, THETA)
  return np.asarray(landmark_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, S))


def _rel(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("S,top_k,grow", [(8, 40, 1), (64, 8, None)])
def test_stream_equals_training_form_when_everything_is_retrieved(S, top_k, grow):
  T = sum(SEGMENTS)
  N = _aug_len(T, S)
  q, k, v = _qkv(1, N + 4, 2, 8, seed=S)  # +4: rows past the stream for the last window
  spec = StreamSpec(capacity_tokens=T, mem_block=4, query_block=32)
  got, cache = _stream(q, k, v, S, SEGMENTS, spec, top_k, grow_after=grow)
  ref = _training_form(q[:, :N], k[:, :N], v[:, :N], S)
  assert got.shape == ref.shape
  assert _rel(got, ref) <= 1e-5, _rel(got, ref)
  M = cache["lmk"].shape[2]
  assert cache["k"].shape == (1, 2, M * S, 8) and M % 4 == 0
  if grow is not None:
    assert M > landmark_cache_blocks(T, 2, S, 4)


def _rot64(x, p, D):
  inv = 1.0 / (THETA ** (np.arange(D // 2) * 2.0 / D))
  c, s = np.cos(p * inv), np.sin(p * inv)
  return np.concatenate([x[:D // 2] * c - x[D // 2:] * s, x[D // 2:] * c + x[:D // 2] * s])


def _brute_force(q, k, v, S, top_k, local):
  """float64 loop reference of the streaming selection rule (ops.landmark inference comment):
  forced = the `local` nearest earlier blocks; plus the top_k other earlier blocks by
  q(o + d*S) . k_lmk(S-1), d = true distance if <= top_k+local else top_k+local+1; selected blocks
  placed in order at virtual distances m..1; grouped softmax over own block + selection."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, N, H, D = q.shape
  Kt = top_k + local
  out = np.zeros_like(q)
  for b in range(B):
    for h in range(H):
      for i in range(N):
        c, o = divmod(i, S)
        qi = q[b, i, h]
        lmk = lambda j: _rot64(k[b, j * S + S - 1, h], S - 1, D)
        forced = [j for j in range(c) if c - j <= local]
        rest = [j for j in range(c) if c - j > local]
        score = {j: _rot64(qi, o + (c - j if c - j <= Kt else Kt + 1) * S, D) @ lmk(j)
                 for j in rest}
        chosen = sorted(forced + sorted(rest, key=lambda j: -score[j])[:top_k])
        m = len(chosen)
        logits, vals = [], []
        q0 = _rot64(qi, o, D)
        for j in range(c * S, i + 1):
          if j % S != S - 1:
            logits.append(q0 @ _rot64(k[b, j, h], j % S, D) / math.sqrt(D))
            vals.append(v[b, j, h])
        blocks = []
        for u, j in enumerate(chosen):
          qd = _rot64(qi, o + (m - u) * S, D)
          logits.append(qd @ lmk(j) / math.sqrt(D))
          tok = [qd @ _rot64(k[b, j * S + t, h], t, D) / math.sqrt(D) for t in range(S - 1)]
          blocks.append((len(logits) - 1, np.array(tok), v[b, j * S:j * S + S - 1, h]))
          vals.append(np.zeros(D))  # landmark values are never read
        p = np.exp(np.array(logits) - max(logits))
        p /= p.sum()
        acc = sum(pi * vi for pi, vi in zip(p, vals))
        for li, tok, vv in blocks:
          g = np.exp(tok - tok.max())
          acc = acc + p[li] * (g / g.sum()) @ vv
        out[b, i, h] = acc
  return out


@pytest.mark.parametrize("top_k,local,mem_block,query_block", [(2, 0, 4, 32), (1, 2, 2, 16),
                                                               (3, 1, 4096, 256)])
def test_stream_top_k_matches_brute_force_selection(top_k, local, mem_block, query_block):
  S = 8
  T = sum(SEGMENTS)
  N = _aug_len(T, S)
  q, k, v = _qkv(1, N + 4, 2, 8, seed=10 + top_k)
  spec = StreamSpec(capacity_tokens=T, mem_block=mem_block, query_block=query_block,
                    landmark_local_blocks=local)
  got, _ = _stream(q, k, v, S, SEGMENTS, spec, top_k)
  ref = _brute_force(q[:, :N], k[:, :N], v[:, :N], S, top_k, local)
  assert _rel(got, ref) <= 1e-5, _rel(got, ref)
  # the selection matters here: the training form (everything retrieved) differs
  assert _rel(got, _training_form(q[:, :N], k[:, :N], v[:, :N], S)) > 1e-3


def test_one_trace_per_segment_shape():
  S, P = 8, 17
  traces = []
  spec = StreamSpec(capacity_tokens=4 * P)
  model = Harness(spec, S, 2)

  def fwd(c, *a):
    traces.append(1)
    return model.apply({"cache": c}, *a, mutable=["cache"])

  step = jax.jit(fwd)
  q, k, v = _qkv(2, _aug_len(4 * P, S) + 4, 2, 8)
  cache, n_text = None, 0
  for _ in range(3):
    pos0, A, n_valid = _window(n_text, P, S)
    seg = Segment(n_text=jnp.int32(n_text), n_valid=jnp.int32(n_valid))
    rows = [x[:, pos0:pos0 + A] for x in (q, k, v)]
    cache = _empty_cache(model, (*rows, seg)) if cache is None else cache
    _, mut = step(cache, *rows, seg)
    cache = mut["cache"]
    n_text += P
  assert len(traces) == 1
  assert sorted(cache) == ["k", "lmk", "v"]
  assert all(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(cache))


# ----------------------------------------------------------------------------- the model


def _model_setup(T=7 * 10 + 4, B=2):
  """A 2-layer landmark DRT (blocks of 7 text tokens + 1 landmark), attention sharpened so that
  retrieval choices matter; tokens [B, T] and the full-forward NLL [B, T-1]."""
  cfg = DRTConfig(vocab_size=97, d_model=32, num_heads=4, mlp_dim=64, lower_layers=1,
                  upper_groups=(1,), encoder_layers=1, window=8, chunk_size=8, top_k=2,
                  model_kind="landmark", dtype="float32")
  toks = jax.random.randint(jax.random.key(0), (B, T), 0, cfg.vocab_size)
  params = flax.core.meta.unbox(DRT(cfg).init({"params": jax.random.key(1)}, toks)["params"])
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 6.0 if any(getattr(k, "key", None) in ("q_proj", "k_proj") for k in p)
      else x, params)
  logp = jax.nn.log_softmax(DRT(cfg).apply({"params": params}, toks[:, :-1]), axis=-1)
  ref = -jnp.take_along_axis(logp, toks[:, 1:, None], axis=-1)[..., 0]
  return cfg, params, np.asarray(toks), np.asarray(ref)


@pytest.mark.parametrize("segment_len", [1, 13])
def test_model_stream_all_retrieved_equals_full_forward(segment_len):
  cfg, params, toks, ref = _model_setup()
  before = TRACE_COUNTS["step"]
  out = np.asarray(stream_nll(params, cfg, toks, segment_len=segment_len, landmark_top_k=11))
  assert TRACE_COUNTS["step"] - before == 1
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  assert _rel(out, ref) <= 1e-6


# NLL of the previous engine (gca_jax.inference.baseline_stream, segment_len=10): row sums and
# the entries at text positions 0, 30, 50, 72; the new stream equalled it bit for bit.
_PREVIOUS = {
    (2, 0, 4096, 256): ([337.0289011, 335.08075762],
                        [[4.75078297, 4.56217766, 4.60317564, 4.71993446],
                         [4.53520203, 4.63093376, 4.65254164, 4.65173674]]),
    (1, 2, 2, 4): ([337.11137533, 334.8799572],
                   [[4.75078297, 4.55618858, 4.58978081, 4.75549936],
                    [4.53520203, 4.63644218, 4.66277266, 4.65047503]]),
}


@pytest.mark.parametrize("top_k,local,mem_block,query_block", sorted(_PREVIOUS))
def test_model_stream_small_top_k_matches_previous_engine(top_k, local, mem_block, query_block):
  cfg, params, toks, ref = _model_setup()
  kw = dict(landmark_top_k=top_k, landmark_local_blocks=local, mem_block=mem_block,
            query_block=query_block)
  out = np.asarray(stream_nll(params, cfg, toks, segment_len=10, **kw))
  sums, entries = _PREVIOUS[(top_k, local, mem_block, query_block)]
  np.testing.assert_allclose(out.astype(np.float64).sum(1), sums, rtol=1e-5)
  np.testing.assert_allclose(out[:, [0, 30, 50, 72]], entries, rtol=1e-5)
  exact = 7 * (1 + top_k + local)  # queries with <= top_k + local earlier blocks: all retrieved
  np.testing.assert_allclose(out[:, :exact], ref[:, :exact], rtol=1e-5, atol=1e-5)
  assert np.abs(out[:, exact:] - ref[:, exact:]).max() > 1e-3
  if importlib.util.find_spec("gca_jax.inference.baseline_stream") is not None:
    from gca_jax.inference import baseline_stream  # noqa: PLC0415
    old = baseline_stream.stream_nll(params, cfg, toks, segment_len=10, top_k=top_k,
                                     local_blocks=local, mem_block=mem_block,
                                     query_block=query_block)
    np.testing.assert_array_equal(out, np.asarray(old))


def test_model_stream_host_memory_bit_identical_to_device():
  cfg, params, toks, ref = _model_setup()
  kw = dict(landmark_top_k=1, landmark_local_blocks=1, mem_block=2, query_block=8)
  dev = np.asarray(stream_nll(params, cfg, toks, segment_len=10, memory="device", **kw))
  host = np.asarray(stream_nll(params, cfg, toks, segment_len=10, memory="host", **kw))
  np.testing.assert_array_equal(host, dev)
  assert np.abs(dev - ref).max() > 1e-3  # top_k < blocks: the selection is exercised
  s = Stream(DRT(cfg), params, 2, segment_len=10, memory="host", capacity_tokens=20, **kw)
  try:
    out = np.concatenate([np.asarray(s.feed(toks[:, i:i + 10], toks[:, i + 1:i + 11]))
                          for i in range(0, 60, 10)], axis=1)  # grows 20 -> 80 tokens
    leaves = jax.tree_util.tree_leaves_with_path(s.cache)
    names = {getattr(p[-1], "key", None) for p, _ in leaves}
    assert "host_key" in names and "k" not in names and "v" not in names
    assert s.memory_bytes()["host"] > 0
  finally:
    s.close()
  np.testing.assert_array_equal(out, dev[:, :60])
