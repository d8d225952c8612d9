"""Streaming the baselines through the modules' stream mode (gca_jax.inference): SWA
("window" cache), full attention ("causal" cache, exact phases), Landmark Attention (S2's
`landmark_cached_attention`, wired in SelfAttention(mode="landmark"))."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.inference import TRACE_COUNTS, Stream, stream_logprobs_at, stream_nll
from gca_jax.layers.attention import rope_at
from gca_jax.layers.common import MLP, RMSNorm
from _stream_helpers import full_forward_setup


def small_cfg(kind, **kw):
  base = dict(vocab_size=97, d_model=32, num_heads=4, mlp_dim=48, lower_layers=1,
              upper_groups=(1,), encoder_layers=1, window=8, chunk_size=8, top_k=2,
              model_kind=kind, dtype="float32")  # mlp_dim unlike test_landmark_stream's model
  base.update(kw)
  return DRTConfig(**base)


def _sharpen(params):
  """Sharpen attention (random init is near-uniform) so retrieval choices matter."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x * 6.0 if any(getattr(k, "key", None) in ("q_proj", "k_proj") for k in p)
      else x, params)


def setup(cfg, T, B=2, seed=0):
  params, toks, ref, logp = full_forward_setup(
      cfg, T, B, seed, _sharpen if cfg.model_kind == "landmark" else None)
  return params, np.asarray(toks), ref, logp


def _norm(p, x, cfg, dt):
  return RMSNorm(cfg.norm_eps, dtype=dt).apply({"params": p}, x)


def _mlp(p, x, cfg, dt):
  return MLP(cfg.mlp_dim, cfg.init_std, dtype=dt).apply({"params": p}, x)


# ----------------------------------------------------------------------------- SWA

T_SWA = 8 * 5 + 3  # several windows, not a multiple of W


@pytest.mark.parametrize("segment_len", [1, 5, 19, 42])  # unaligned, several W, whole
def test_swa_equals_full_forward_one_trace(segment_len):
  cfg = small_cfg("swa")
  params, toks, ref, _ = setup(cfg, T_SWA)
  before = TRACE_COUNTS["step"]
  out = stream_nll(params, cfg, toks, segment_len=segment_len)
  assert TRACE_COUNTS["step"] - before == 1
  assert out.shape == (2, T_SWA - 1) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_swa_small_query_blocks_wide_window_logprobs_at():
  cfg = small_cfg("swa", window=12)
  params, toks, ref, logp = setup(cfg, 61)
  pos = np.array([0, 7, 8, 30, 59])
  lp, out = stream_logprobs_at(params, cfg, toks, pos, segment_len=30, swa_block=4)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
  assert lp.shape == (2, 5, cfg.vocab_size) and lp.dtype == np.float32
  np.testing.assert_allclose(lp, logp[:, pos], rtol=1e-5, atol=1e-5)


def test_swa_depends_on_relative_positions_only():
  """Same local text after a long or a short prefix: identical NLL once the receptive field
  (num_layers * (W-1) tokens) lies inside the shared text (no absolute position in the state)."""
  cfg = small_cfg("swa")
  params, toks, _, _ = setup(cfg, T_SWA)
  x = toks[:, 20:]
  long_ = np.concatenate([toks[:, :20], x], 1)
  short = np.concatenate([toks[:, 15:20], x], 1)
  a = np.asarray(stream_nll(params, cfg, long_, segment_len=6))
  b = np.asarray(stream_nll(params, cfg, short, segment_len=6))
  rf = cfg.num_layers * (cfg.window - 1)
  np.testing.assert_allclose(a[:, 20 + rf:], b[:, 5 + rf:], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- full attention


@pytest.mark.parametrize("segment_len", [1, 7, 30])
def test_full_equals_full_forward_and_grows(segment_len):
  """The growable K/V cache of every position: equal to the full forward for unaligned
  segments, also when the stream starts small and doubles (one trace per capacity)."""
  cfg = small_cfg("full")
  params, toks, ref, _ = setup(cfg, T_SWA)
  out = stream_nll(params, cfg, toks, segment_len=segment_len)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
  if segment_len != 7:
    return
  s = Stream(DRT(cfg), params, 2, segment_len=7, capacity_tokens=7)
  tin, tgt = np.pad(toks[:, :-1], ((0, 0), (0, 7))), np.pad(toks[:, 1:], ((0, 0), (0, 7)))
  before = TRACE_COUNTS["step"]
  nll = [np.asarray(s.feed(tin[:, i:i + 7], tgt[:, i:i + 7])) for i in range(0, T_SWA - 1, 7)]
  assert s.capacity_tokens == 56 and TRACE_COUNTS["step"] - before <= 4  # 7 .. 56
  assert s.cache["layer_0"]["attn"]["k"].shape[1] == 64
  np.testing.assert_allclose(np.concatenate(nll, 1)[:, :T_SWA - 1], ref, rtol=1e-5, atol=1e-5)


def test_full_rope_phases_exact_at_large_positions():
  """rope_at (angle addition of two float64 tables) matches float64 trig to float32 rounding
  at positions up to 2^24 + 10^6, where float32 trig of the angle is off by O(1)."""
  D, theta = 16, 10000.0
  pos = np.array([0, 1, 63, 4097, (1 << 24) + 12345, (1 << 24) + 999_999])
  c, s = jax.jit(lambda p: rope_at(p, D, theta, (1 << 24) + 10**6))(jnp.asarray(pos, jnp.int32))
  inv = 1.0 / theta ** (np.arange(D // 2) * 2.0 / D)
  ang = pos[:, None].astype(np.float64) * inv[None]
  np.testing.assert_allclose(np.asarray(c), np.cos(ang), atol=3e-7)
  np.testing.assert_allclose(np.asarray(s), np.sin(ang), atol=3e-7)
  f32 = np.cos(pos[:, None].astype(np.float32) * inv[None].astype(np.float32))
  assert np.abs(f32 - np.cos(ang)).max() > 1e-2  # what rope_at avoids


# ----------------------------------------------------------------------------- Landmark

T_LM = 7 * 10 + 4  # 10 full blocks of 7 text tokens + 1 landmark, then a partial block


@pytest.mark.parametrize("segment_len", [1, 13, 73])  # unaligned, whole
def test_landmark_all_retrieved_equals_full_forward(segment_len):
  """top_k >= number of earlier blocks: the training form exactly; one trace per stream."""
  cfg = small_cfg("landmark")
  params, toks, ref, _ = setup(cfg, T_LM)
  before = TRACE_COUNTS["step"]
  out = stream_nll(params, cfg, toks, segment_len=segment_len, top_k=11)
  assert TRACE_COUNTS["step"] - before == 1
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_landmark_local_blocks_grows_and_logprobs_at():
  cfg = small_cfg("landmark")
  params, toks, ref, logp = setup(cfg, T_LM)
  s = Stream(DRT(cfg), params, 2, segment_len=8, capacity_tokens=8, landmark_top_k=8,
             landmark_local_blocks=3, query_block=8, mem_block=2)
  inp = np.pad(toks[:, :-1], ((0, 0), (0, 80 - (T_LM - 1))))
  tgt = np.pad(toks[:, 1:], ((0, 0), (0, 80 - (T_LM - 1))))
  nll = [np.asarray(s.feed(inp[:, 8 * i:8 * i + 8], tgt[:, 8 * i:8 * i + 8])) for i in range(10)]
  assert s.capacity_tokens == 128
  np.testing.assert_allclose(np.concatenate(nll, 1)[:, :T_LM - 1], ref, rtol=1e-5, atol=1e-5)
  pos = np.array([0, 6, 7, 40, T_LM - 2])
  lp, nll2 = stream_logprobs_at(params, cfg, toks, pos, segment_len=11, top_k=11)
  np.testing.assert_allclose(lp, logp[:, pos], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(nll2), ref, rtol=1e-5, atol=1e-5)
  host = stream_nll(params, cfg, toks, segment_len=11, top_k=11, memory="host")
  np.testing.assert_array_equal(np.asarray(host), np.asarray(nll2))  # bit-identical


def _reference_topk(params, cfg, toks, top_k, local_blocks):
  """Float64 loop reference of the streaming Landmark inference rule (module docstring) for a
  ONE-layer model: per query and head, scores of earlier landmarks (true distance for the
  top_k + local most recent blocks, else that of block c - top_k - local - 1; the `local` most
  recent forced), top-k, selected blocks placed in order right before the current block,
  grouped softmax. Returns nll [B, T-1]."""
  from gca_jax.models.drt import insert_landmarks, remove_landmarks
  S, L, H, Dh = cfg.chunk_size, cfg.text_per_chunk, cfg.num_heads, cfg.head_dim
  Kt = top_k + local_blocks
  f32 = jnp.float32
  inp = jnp.asarray(toks[:, :-1])
  B, T = inp.shape
  h = insert_landmarks(jnp.take(params["embedding"], inp, axis=0), params["landmark"], L)
  p = params["layer_0"]
  xin = np.asarray(_norm(p["norm1"], h, cfg, f32), np.float64)
  proj = lambda name: (xin @ np.asarray(p["attn"][name]["kernel"], np.float64)).reshape(
      B, -1, H, Dh)
  q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
  N = q.shape[1]
  inv = 1.0 / cfg.rope_theta ** (np.arange(Dh // 2) * 2.0 / Dh)

  def rot(x, pos):
    a = pos * inv
    x1, x2 = x[: Dh // 2], x[Dh // 2:]
    return np.concatenate([x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)])

  out = np.zeros((B, N, H, Dh))
  for b in range(B):
    for hh in range(H):
      for i in range(N):
        c, o = divmod(i, S)
        qi = rot(q[b, i, hh], i)
        cand = []
        for j in range(c):
          dist = min(c - j, Kt + 1)
          s = qi @ rot(k[b, j * S + S - 1, hh], (c - dist) * S + S - 1) / np.sqrt(Dh)
          cand.append((np.inf if c - j <= local_blocks else s, j))
        sel = sorted(j for _, j in sorted(cand, key=lambda t: -t[0])[:Kt])
        m = len(sel)
        keys = [(i - o + t, i - o + t) for t in range(o + 1) if t != S - 1]  # (row, position)
        logit = lambda row, pos: qi @ rot(k[b, row, hh], pos) / np.sqrt(Dh)
        top = [np.exp(logit(r_, p_)) for r_, p_ in keys]
        gates = [np.exp(logit(j * S + S - 1, (c - m + r) * S + S - 1)) for r, j in enumerate(sel)]
        z = sum(top) + sum(gates)
        acc = sum(w / z * v[b, r_, hh] for w, (r_, _) in zip(top, keys))
        for r, j in enumerate(sel):
          e = np.array([np.exp(logit(j * S + t, (c - m + r) * S + t)) for t in range(S - 1)])
          acc = acc + gates[r] / z * (e / e.sum()) @ v[b, j * S:j * S + S - 1, hh]
        out[b, i, hh] = acc
  a = jnp.asarray(out.reshape(B, N, H * Dh), f32) @ p["attn"]["o_proj"]["kernel"]
  h = h + a
  h = h + _mlp(p["mlp"], _norm(p["norm2"], h, cfg, f32), cfg, f32)
  h = _norm(params["final_norm"], h, cfg, f32)
  logits = remove_landmarks(h, L, T) @ params["embedding"].T
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -np.asarray(jnp.take_along_axis(logp, jnp.asarray(toks[:, 1:, None]), axis=-1)[..., 0])


@pytest.mark.parametrize("top_k,local_blocks,segment_len", [(1, 0, 5), (2, 1, 7), (3, 0, 16)])
def test_landmark_topk_matches_loop_reference(top_k, local_blocks, segment_len):
  """Small top_k (retrieval actually chooses): equals the float64 loop reference of the rule."""
  cfg = small_cfg("landmark", upper_groups=())  # one layer
  params, toks, ref_full, _ = setup(cfg, 7 * 8 + 3, B=1)
  ref = _reference_topk(params, cfg, toks, top_k, local_blocks)
  out = np.asarray(stream_nll(params, cfg, toks, segment_len=segment_len, top_k=top_k,
                                 local_blocks=local_blocks, mem_block=2))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  assert np.abs(out - ref_full).max() > 1e-3  # the selection matters here
