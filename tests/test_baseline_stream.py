"""Streaming inference for the SWA and Landmark baselines (gca_jax.inference.baseline_stream)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.inference import baseline_stream as bs
from gca_jax.inference import stream as drt_stream
from _stream_helpers import full_forward_setup


def small_cfg(kind, **kw):
  base = dict(vocab_size=97, d_model=32, num_heads=4, mlp_dim=64, lower_layers=1,
              upper_groups=(1,), encoder_layers=1, window=8, chunk_size=8, top_k=2,
              model_kind=kind, dtype="float32")
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


# ----------------------------------------------------------------------------- SWA

T_SWA = 8 * 5 + 3  # several windows, not a multiple of W


@pytest.mark.parametrize("segment_len", [1, 5, 8, 19, 42])  # unaligned, W, several W, whole
def test_swa_equals_full_forward_one_trace(segment_len):
  cfg = small_cfg("swa")
  params, toks, ref, _ = setup(cfg, T_SWA)
  before = bs.TRACE_COUNTS["swa_step"]
  out = bs.stream_nll(params, cfg, toks, segment_len=segment_len)
  assert bs.TRACE_COUNTS["swa_step"] - before == 1
  assert out.shape == (2, T_SWA - 1) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_swa_small_query_blocks_and_wide_window():
  cfg = small_cfg("swa", window=12)
  params, toks, ref, _ = setup(cfg, 61)
  out = bs.stream_nll(params, cfg, toks, segment_len=30, swa_block=4)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_swa_logprobs_at():
  cfg = small_cfg("swa")
  params, toks, ref, logp = setup(cfg, T_SWA)
  pos = np.array([0, 7, 8, 30, T_SWA - 2])
  lp, nll = bs.stream_logprobs_at(params, cfg, toks, pos, segment_len=9)
  assert lp.shape == (2, 5, cfg.vocab_size) and lp.dtype == np.float32
  np.testing.assert_allclose(lp, logp[:, pos], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(nll), ref, rtol=1e-5, atol=1e-5)


def test_swa_depends_on_relative_positions_only():
  """Same local text after a long or a short prefix: identical NLL once the receptive field
  (num_layers * (W-1) tokens) lies inside the shared text (no absolute position in the state)."""
  cfg = small_cfg("swa")
  params, toks, _, _ = setup(cfg, T_SWA)
  x = toks[:, 20:]
  long_ = np.concatenate([toks[:, :20], x], 1)
  short = np.concatenate([toks[:, 15:20], x], 1)
  a = np.asarray(bs.stream_nll(params, cfg, long_, segment_len=6))
  b = np.asarray(bs.stream_nll(params, cfg, short, segment_len=6))
  rf = cfg.num_layers * (cfg.window - 1)
  np.testing.assert_allclose(a[:, 20 + rf:], b[:, 5 + rf:], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- Landmark

T_LM = 7 * 10 + 4  # 10 full blocks of 7 text tokens + 1 landmark, then a partial block


@pytest.mark.parametrize("segment_len", [1, 5, 7, 13, 73])  # unaligned, one block, whole
def test_landmark_all_retrieved_equals_full_forward(segment_len):
  """top_k >= number of earlier blocks: the training form exactly; one trace per stream."""
  cfg = small_cfg("landmark")
  params, toks, ref, _ = setup(cfg, T_LM)
  before = bs.TRACE_COUNTS["landmark_step"]
  out = bs.stream_nll(params, cfg, toks, segment_len=segment_len, top_k=11)
  assert bs.TRACE_COUNTS["landmark_step"] - before == 1
  assert out.shape == (2, T_LM - 1) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_landmark_local_blocks_all_retrieved_equals_full_forward():
  cfg = small_cfg("landmark")
  params, toks, ref, _ = setup(cfg, T_LM)
  out = bs.stream_nll(params, cfg, toks, segment_len=13, top_k=8, local_blocks=3,
                      query_block=8, mem_block=2)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("local_blocks", [0, 1])
def test_landmark_small_topk(local_blocks):
  """top_k=2: exact while at most 2 + local_blocks earlier blocks exist, different after;
  deterministic; independent of the scan block, query block and segment length."""
  cfg = small_cfg("landmark")
  params, toks, ref, _ = setup(cfg, T_LM)
  kw = dict(top_k=2, local_blocks=local_blocks)
  a = np.asarray(bs.stream_nll(params, cfg, toks, segment_len=10, **kw))
  b = np.asarray(bs.stream_nll(params, cfg, toks, segment_len=10, **kw))
  np.testing.assert_array_equal(a, b)
  c = np.asarray(bs.stream_nll(params, cfg, toks, segment_len=6, mem_block=2, query_block=4, **kw))
  np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(a))
  exact = 7 * (3 + local_blocks)  # text tokens of blocks 0..2+local: <= 2+local earlier blocks
  np.testing.assert_allclose(a[:, :exact], ref[:, :exact], rtol=1e-5, atol=1e-5)
  assert np.abs(a[:, exact:] - ref[:, exact:]).max() > 1e-3


def test_landmark_causality():
  cfg = small_cfg("landmark")
  params, toks, _, _ = setup(cfg, T_LM)
  base = np.asarray(bs.stream_nll(params, cfg, toks, segment_len=9, top_k=1))
  for t in (3, 30, 60):
    t2 = toks.copy()
    t2[:, t] = (t2[:, t] + 1) % cfg.vocab_size
    out = np.asarray(bs.stream_nll(params, cfg, t2, segment_len=9, top_k=1))
    np.testing.assert_array_equal(out[:, :t - 1], base[:, :t - 1])
    assert np.abs(out[:, t - 1:] - base[:, t - 1:]).max() > 0


def test_landmark_stream_grows_and_logprobs_at():
  cfg = small_cfg("landmark")
  params, toks, ref, logp = setup(cfg, T_LM)
  s = bs.LandmarkStream(params, cfg, 2, segment_len=8, capacity=1, top_k=11)
  before = bs.TRACE_COUNTS["landmark_step"]
  nll = []
  inp = np.pad(toks[:, :-1], ((0, 0), (0, 80 - (T_LM - 1))))
  tgt = np.pad(toks[:, 1:], ((0, 0), (0, 80 - (T_LM - 1))))
  for i in range(10):
    nll.append(np.asarray(s.feed(inp[:, 8 * i:8 * i + 8], tgt[:, 8 * i:8 * i + 8])))
  assert s.state["lmk"].shape[3] == 16
  assert bs.TRACE_COUNTS["landmark_step"] - before <= 4  # one per power-of-two capacity
  np.testing.assert_allclose(np.concatenate(nll, 1)[:, :T_LM - 1], ref, rtol=1e-5, atol=1e-5)
  pos = np.array([0, 6, 7, 40, T_LM - 2])
  lp, nll2 = bs.stream_logprobs_at(params, cfg, toks, pos, segment_len=11, top_k=11)
  np.testing.assert_allclose(lp, logp[:, pos], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(nll2), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- dispatch


def test_dispatch_full_drt_and_errors():
  cfg = small_cfg("full")
  toks = np.zeros((1, 10), np.int32)
  with pytest.raises(NotImplementedError, match="full"):
    bs.stream_nll({}, cfg, toks, segment_len=4)
  with pytest.raises(NotImplementedError, match="full"):
    bs.stream_logprobs_at({}, cfg, toks, [1], segment_len=4)
  lcfg = small_cfg("landmark")
  params, ltoks, _, _ = setup(lcfg, T_LM)
  with pytest.raises(NotImplementedError, match="host"):
    bs.stream_nll(params, lcfg, ltoks, segment_len=7, memory="host")
  with pytest.raises(TypeError, match="swa_block"):
    bs.stream_nll(params, lcfg, ltoks, segment_len=7, swa_block=3)
  dcfg = small_cfg("drt")
  toks = np.asarray(jax.random.randint(jax.random.key(3), (1, 40), 0, 97))
  params = flax.core.meta.unbox(DRT(dcfg).init({"params": jax.random.key(1)}, toks)["params"])
  a = bs.stream_nll(params, dcfg, toks, segment_len=16)
  b = drt_stream.stream_nll(params, dcfg, toks, segment_len=16)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _reference_topk(params, cfg, toks, top_k, local_blocks):
  """Float64 loop reference of the streaming Landmark inference rule (module docstring) for a
  ONE-layer model: per query and head, scores of earlier landmarks (true distance for the
  top_k + local most recent blocks, else that of block c - top_k - local - 1; the `local` most
  recent forced), top-k, selected blocks placed in order right before the current block,
  grouped softmax. Returns nll [B, T-1]."""
  from gca_jax.inference.stream import _mlp, _norm
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
  out = np.asarray(bs.stream_nll(params, cfg, toks, segment_len=segment_len, top_k=top_k,
                                 local_blocks=local_blocks, mem_block=2))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  assert np.abs(out - ref_full).max() > 1e-3  # the selection matters here
