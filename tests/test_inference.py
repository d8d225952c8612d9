"""Streaming inference (gca_jax.inference): equality with the full forward pass, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.inference import (TRACE_COUNTS, DRTStream, blocked_topk_retrieval, stream_logprobs_at,
                               stream_nll)
from gca_jax.layers.retrieval import masked_topk_weights
from _stream_helpers import full_forward_setup


def small_cfg(**kw):
  base = dict(vocab_size=97, d_model=32, num_heads=4, mlp_dim=64, lower_layers=1,
              upper_groups=(1, 1), encoder_layers=1, window=8, top_k=2, dtype="float32")
  base.update(kw)
  return DRTConfig(**base)


def setup(cfg, T, B=2, seed=0):
  return full_forward_setup(cfg, T, B, seed)


T_ODD = 63 * 7 + 10  # not a multiple of 63; 8 chunks, so retrieval (top_k 2) is non-trivial


@pytest.mark.parametrize("window", [8, 100])
@pytest.mark.parametrize("segment_len", [63, 189, 63 * 8])  # 1 chunk, 3 chunks, whole sequence
def test_stream_nll_equals_full_forward(window, segment_len):
  cfg = small_cfg(window=window)
  params, toks, ref, _ = setup(cfg, T_ODD)
  out = stream_nll(params, cfg, toks, segment_len=segment_len)
  assert out.shape == (2, T_ODD - 1) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [8, 100])
@pytest.mark.parametrize("segment_len", [1, 17, 100, 130])
def test_unaligned_segments_equal_full_forward(window, segment_len):
  """Segments not aligned to chunks (landmarks fall mid-segment, chunks span segments); >= 4
  segments each, one trace of the step per stream."""
  cfg = small_cfg(window=window)
  params, toks, ref, _ = setup(cfg, T_ODD)
  before = TRACE_COUNTS["segment_step"]
  out = stream_nll(params, cfg, toks, segment_len=segment_len)
  assert TRACE_COUNTS["segment_step"] - before == 1
  assert out.shape == (2, T_ODD - 1) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_retrieval_is_live():
  """The reference depends on the retrieved memory (so the equality tests exercise GCA)."""
  cfg = small_cfg(window=8)
  params, toks, ref, _ = setup(cfg, T_ODD)
  p2 = dict(params, mem_v={"kernel": jnp.zeros_like(params["mem_v"]["kernel"])})
  logp = jax.nn.log_softmax(DRT(cfg).apply({"params": p2}, toks[:, :-1]), axis=-1)
  nll0 = -np.asarray(jnp.take_along_axis(logp, toks[:, 1:, None], axis=-1)[..., 0])
  assert np.abs(nll0[:, :126] - ref[:, :126]).max() < 1e-6  # chunks 0, 1: nothing retrieved
  assert np.abs(nll0[:, 126:] - ref[:, 126:]).max() > 1e-3


@pytest.mark.parametrize("window,swa_block", [(8, 50), (100, 16)])
def test_blocked_swa_queries(window, swa_block):
  """SWA query blocks of max(swa_block, W) rows (192 positions -> padded blocks) stay exact."""
  cfg = small_cfg(window=window)
  params, toks, ref, _ = setup(cfg, T_ODD)
  out = stream_nll(params, cfg, toks, segment_len=189, swa_block=swa_block)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_standard_residual_and_deeper_groups():
  cfg = small_cfg(window=37, gca_residual="standard", upper_groups=(2, 1), lower_layers=2, top_k=3)
  params, toks, ref, _ = setup(cfg, 63 * 6 + 1)
  out = stream_nll(params, cfg, toks, segment_len=126)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_one_compile_across_segments():
  cfg = small_cfg(window=11)
  params, toks, ref, _ = setup(cfg, 63 * 5 + 3)
  before = TRACE_COUNTS["segment_step"]
  out = stream_nll(params, cfg, toks, segment_len=63)  # 6 segments
  assert TRACE_COUNTS["segment_step"] - before == 1
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_blocked_topk_matches_dense():
  B, n, M, d, K = 2, 5, 24, 16, 3
  ks = jax.random.split(jax.random.key(3), 2)
  q = jax.random.normal(ks[0], (B, n, d))
  lmk = jax.random.normal(ks[1], (B, M, d))
  ids = jnp.arange(n, dtype=jnp.int32) * 5  # chunk ids 0, 5, ..., 20 (0 has no valid past)
  scores = jnp.einsum("bcd,bmd->bcm", q, lmk) / jnp.sqrt(jnp.float32(d))
  valid = jnp.broadcast_to(jnp.arange(M)[None, :] < ids[:, None], scores.shape)
  ri, rw, _ = masked_topk_weights(scores, valid, K)
  for block in (1, 4, 8, 24):
    i, w = blocked_topk_retrieval(q, lmk, ids, K, block)
    np.testing.assert_array_equal(np.asarray(i), np.asarray(ri))
    np.testing.assert_allclose(np.asarray(w), np.asarray(rw), rtol=1e-6, atol=1e-7)
  assert np.all(np.asarray(w)[:, 0] == 0)


def test_small_memory_blocks_and_capacity_growth():
  """Memory processed in blocks of 2 chunks, capacity grown 1 -> 2 -> 4 -> 8 (power of two)."""
  cfg = small_cfg(window=8)
  params, toks, ref, _ = setup(cfg, T_ODD)
  out = stream_nll(params, cfg, toks, segment_len=63, mem_block=2)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
  s = DRTStream(params, cfg, 2, segment_len=63, capacity=1, mem_block=2)
  inp = np.pad(np.asarray(toks[:, :-1]), ((0, 0), (0, 8 * 63 - (T_ODD - 1))))
  tgt = np.pad(np.asarray(toks[:, 1:]), ((0, 0), (0, 8 * 63 - (T_ODD - 1))))
  nll = [s.feed(inp[:, i * 63:(i + 1) * 63], tgt[:, i * 63:(i + 1) * 63]) for i in range(8)]
  assert s.state["lmk"].shape[1] == 8
  np.testing.assert_allclose(np.asarray(jnp.concatenate(nll, 1))[:, :T_ODD - 1], ref,
                             rtol=1e-5, atol=1e-5)
  # unaligned segments (40 tokens): memory grows (4 -> 8) to hold count + ceil(40/63) rows
  s = DRTStream(params, cfg, 2, segment_len=40, capacity=4, mem_block=2)
  nll = [s.feed(inp[:, i * 40:(i + 1) * 40], tgt[:, i * 40:(i + 1) * 40]) for i in range(12)]
  assert int(s.state["count"]) == 480 // 63 and int(s.state["n_text"]) == 480
  assert s.state["lmk"].shape[1] == 8
  np.testing.assert_allclose(np.asarray(jnp.concatenate(nll, 1))[:, :T_ODD - 1], ref,
                             rtol=1e-5, atol=1e-5)


def test_far_positions_match_near_zero():
  """SPEC §7: the same text streamed from position 16M+ gives the same NLL as from 0
  (SWA RoPE uses positions relative to the window cache, float64 tables)."""
  cfg = small_cfg(window=100)
  params, toks, ref, _ = setup(cfg, T_ODD)
  inp = np.pad(np.asarray(toks[:, :-1]), ((0, 0), (0, 3 * 189 - (T_ODD - 1))))
  tgt = np.pad(np.asarray(toks[:, 1:]), ((0, 0), (0, 3 * 189 - (T_ODD - 1))))
  outs = []
  for start in (0, (1 << 24) + 64 * 7):
    s = DRTStream(params, cfg, 2, segment_len=189, capacity=9, start_position=start)
    outs.append(np.concatenate([np.asarray(s.feed(inp[:, i * 189:(i + 1) * 189],
                                                  tgt[:, i * 189:(i + 1) * 189]))
                                for i in range(3)], 1)[:, :T_ODD - 1])
    assert int(s.state["pos"]) == start + 3 * 3 * 64
  np.testing.assert_array_equal(outs[0], outs[1])
  np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("segment_len", [126, 50])
def test_logprobs_at_positions(segment_len):
  cfg = small_cfg(window=8)
  params, toks, ref, logp = setup(cfg, T_ODD)
  pos = np.array([0, 62, 63, 200, T_ODD - 2])
  lp, nll = stream_logprobs_at(params, cfg, toks, pos, segment_len=segment_len)
  assert lp.shape == (2, 5, 97)
  np.testing.assert_allclose(lp, logp[:, pos], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(nll), ref, rtol=1e-5, atol=1e-5)


def test_errors():
  cfg = small_cfg()
  params, toks, _, _ = setup(cfg, T_ODD)
  for bad in (0, -63, 2.5):
    with pytest.raises(ValueError, match="segment_len"):
      stream_nll(params, cfg, toks, segment_len=bad)
  with pytest.raises(ValueError, match="memory"):
    stream_nll(params, cfg, toks, segment_len=63, memory="disk")
  with pytest.raises(ValueError, match="model_kind"):
    stream_nll(params, small_cfg(model_kind="swa"), toks, segment_len=63)


@pytest.mark.parametrize("segment_len", [17, 130])
def test_host_memory_equals_device(segment_len):
  """memory="host" (chunk memory in a numpy buffer, selected chunks fetched by io_callback) gives
  the same NLL and log-probs as memory="device" and the full forward pass; the device state holds
  no chunk memory and the host buffer grows past its initial capacity."""
  cfg = small_cfg()
  params, toks, ref, logp = setup(cfg, T_ODD)
  dev = stream_nll(params, cfg, toks, segment_len=segment_len, memory="device")
  host = stream_nll(params, cfg, toks, segment_len=segment_len, memory="host")
  np.testing.assert_array_equal(np.asarray(host), np.asarray(dev))
  np.testing.assert_allclose(np.asarray(host), ref, rtol=1e-5, atol=1e-5)
  pos = np.array([5, 63, 300])
  lp, _ = stream_logprobs_at(params, cfg, toks, pos, segment_len=segment_len, memory="host")
  np.testing.assert_allclose(lp, logp[:, pos], rtol=1e-5, atol=1e-5)
  s = DRTStream(params, cfg, 2, segment_len=segment_len, capacity=2, memory="host")
  assert "enc" not in s.state and s.memory == "host"
  tin, tgt = np.asarray(toks[:, :-1]), np.asarray(toks[:, 1:])
  n = (T_ODD - 1) // segment_len
  out = [s.feed(tin[:, i * segment_len:(i + 1) * segment_len],
                tgt[:, i * segment_len:(i + 1) * segment_len]) for i in range(n)]
  np.testing.assert_allclose(np.concatenate([np.asarray(o) for o in out], 1),
                             ref[:, :n * segment_len], rtol=1e-5, atol=1e-5)
  assert s.host.buf.shape[1] >= n * segment_len // 63 and s.memory_bytes()["host"] > 0
  s.close()



@pytest.mark.parametrize("threads", [1, 3])
def test_host_memory_gather_write(threads):
  """HostMemory (threaded gather into two alternating buffers, huge-page-advised buffer above
  64 MiB, growth by doubling) returns exactly the rows numpy indexing returns, for bf16, B = 2,
  duplicate and clipped indices, and counts its bytes."""
  from gca_jax.inference.stream import HostMemory
  rng = np.random.default_rng(threads)
  h = HostMemory(2, 64, 128, jnp.bfloat16, capacity=3000, threads=threads)  # 96 MiB: mmap path
  assert h.buf.nbytes == 2 * 3000 * 64 * 128 * 2
  data = rng.standard_normal((2, 3100, 64, 128)).astype(jnp.bfloat16)
  for c0 in range(0, 3100, 100):
    h.write(c0, data[:, c0:c0 + 100])
  assert h.buf.shape[1] == 4096  # grew past 3000 by doubling
  outs = []
  for _ in range(3):
    idx = rng.integers(0, 3100, (2, 37)).astype(np.int32)
    idx[0, :3] = idx[0, 3]       # duplicates in one row
    idx[1, 5] = 4096 + 7         # beyond the buffer: clipped to the last row
    g = h.gather(idx)
    want = np.stack([h.buf[b][np.minimum(idx[b], 4095)] for b in range(2)])
    np.testing.assert_array_equal(g.view(np.uint16), want.view(np.uint16))
    np.testing.assert_array_equal(g[:, :5].view(np.uint16), data[np.arange(2)[:, None],
                                                                idx[:, :5]].view(np.uint16))
    outs.append(g)
  assert outs[0] is not outs[1] and np.shares_memory(outs[0], outs[2])  # two buffers in turn
  assert h.stats["gathers"] == 3 and h.stats["gather_bytes"] == 3 * 2 * 37 * 64 * 128 * 2
  assert h.stats["write_bytes"] == data.nbytes
  h.close()

def test_memory_auto_and_sizes():
  from gca_jax.inference.stream import memory_bytes, resolve_memory
  cfg = small_cfg()
  mb = memory_bytes(cfg, 2, 63 * 10)
  assert mb["enc"] == 2 * 11 * 64 * 32 * 4 and mb["lmk"] == 2 * 11 * 32 * 4
  assert resolve_memory("host", cfg, 2, 10) == "host"
  assert resolve_memory("auto", cfg, 2, None) == "device"
  with pytest.raises(ValueError, match="memory"):
    resolve_memory("gpu", cfg, 2, 10)
