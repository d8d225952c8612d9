"""Streaming DRT through the modules' stream mode (gca_jax.inference): equality with the full
forward pass, one compile per stream, growth, host memory, memory planning."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.inference import (TRACE_COUNTS, HostStore, Stream, cache_bytes, cache_shapes,
                               resolve_memory, stream_logprobs_at, stream_nll)
from gca_jax.layers.retrieval import blocked_topk_retrieval, masked_topk_weights
from gca_jax.layers.stream import StreamSpec
from _stream_helpers import full_forward_setup


def small_cfg(**kw):
  base = dict(vocab_size=97, d_model=32, num_heads=4, mlp_dim=64, lower_layers=1,
              upper_groups=(1, 1), encoder_layers=1, window=8, top_k=2, dtype="float32")
  base.update(kw)
  return DRTConfig(**base)


def setup(cfg, T, B=2, seed=0):
  return full_forward_setup(cfg, T, B, seed)


T_ODD = 63 * 7 + 10  # not a multiple of 63; 8 chunks, so retrieval (top_k 2) is non-trivial


def _pad_io(toks, n):
  tin, tgt = np.asarray(toks[:, :-1]), np.asarray(toks[:, 1:])
  return (np.pad(tin, ((0, 0), (0, n - tin.shape[1]))),
          np.pad(tgt, ((0, 0), (0, n - tgt.shape[1]))))


@pytest.mark.parametrize("window,segment_len", [(8, 1), (8, 17), (100, 63), (8, 100),
                                                (100, 130), (8, 63 * 8)])
def test_stream_nll_equals_full_forward_one_trace(window, segment_len):
  """Chunk-aligned and unaligned segments (landmarks mid-segment, chunks spanning segments),
  windows below and above a chunk, the whole sequence in one segment; one trace per stream."""
  cfg = small_cfg(window=window)
  params, toks, ref, _ = setup(cfg, T_ODD)
  before = TRACE_COUNTS["step"]
  out = stream_nll(params, cfg, toks, segment_len=segment_len)
  assert TRACE_COUNTS["step"] - before == 1
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


def test_blocked_swa_queries_standard_residual_deeper_groups():
  """SWA query blocks of max(swa_block, W) rows, the standard residual, 2-layer groups."""
  cfg = small_cfg(window=37, gca_residual="standard", upper_groups=(2, 1), lower_layers=2,
                  top_k=3)
  params, toks, ref, _ = setup(cfg, 63 * 6 + 1)
  out = stream_nll(params, cfg, toks, segment_len=126, swa_block=16)
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
  with pytest.raises(ValueError, match="multiple of block"):
    blocked_topk_retrieval(q, lmk, ids, K, 5)


def test_capacity_growth_small_memory_blocks():
  """A stream started at 40 tokens of capacity grows by doubling (cache leaves zero-padded,
  one trace per capacity) with memory blocks of 2 chunks, and still equals the full forward."""
  cfg = small_cfg(window=8)
  params, toks, ref, _ = setup(cfg, T_ODD)
  s = Stream(DRT(cfg), params, 2, segment_len=40, capacity_tokens=40, mem_block=2)
  m0 = s.cache["memory"]["lmk"].shape[1]
  before = TRACE_COUNTS["step"]
  inp, tgt = _pad_io(toks, 480)
  nll = [s.feed(inp[:, i * 40:(i + 1) * 40], tgt[:, i * 40:(i + 1) * 40]) for i in range(12)]
  assert s.capacity_tokens == s.spec.capacity_tokens == 640
  assert TRACE_COUNTS["step"] - before <= 5  # one per capacity whose cache shapes differ
  assert int(s.cache["memory"]["count"]) == 480 // 63 and int(s.cache["n_text"]) == 480
  assert s.cache["memory"]["lmk"].shape[1] > m0 and s.cache["memory"]["lmk"].shape[1] % 2 == 0
  np.testing.assert_allclose(np.asarray(jnp.concatenate(nll, 1))[:, :T_ODD - 1], ref,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("segment_len", [126, 50])
def test_logprobs_at_positions(segment_len):
  cfg = small_cfg(window=8)
  params, toks, ref, logp = setup(cfg, T_ODD)
  pos = np.array([0, 62, 63, 200, T_ODD - 2])
  lp, nll = stream_logprobs_at(params, cfg, toks, pos, segment_len=segment_len)
  assert lp.shape == (2, 5, 97) and lp.dtype == np.float32
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
  with pytest.raises(TypeError, match="swa_blok"):
    stream_nll(params, cfg, toks, segment_len=63, swa_blok=4)
  with pytest.raises(ValueError, match="positions"):
    stream_logprobs_at(params, cfg, toks, [T_ODD - 1], segment_len=63)
  with pytest.raises(ValueError, match="train"):
    DRT(cfg).apply({"params": params}, toks[:, :5], train=True, stream=StreamSpec(64),
                   rngs={"gumbel": jax.random.key(0)}, mutable=["cache"])


@pytest.mark.parametrize("segment_len", [17, 130])
def test_host_memory_bit_identical_to_device(segment_len):
  """memory="host" (encoder outputs in a HostStore, selected chunks fetched by io_callback)
  gives bit-identical NLL and log-probs to memory="device"; the device cache holds no "enc" and
  the host buffer grows with the stream."""
  cfg = small_cfg()
  params, toks, ref, logp = setup(cfg, T_ODD)
  pos = np.array([5, 63, 300])
  lp_d, dev = stream_logprobs_at(params, cfg, toks, pos, segment_len=segment_len,
                                 memory="device")
  lp_h, host = stream_logprobs_at(params, cfg, toks, pos, segment_len=segment_len,
                                  memory="host")
  np.testing.assert_array_equal(np.asarray(host), np.asarray(dev))
  np.testing.assert_array_equal(lp_h, lp_d)
  np.testing.assert_allclose(np.asarray(host), ref, rtol=1e-5, atol=1e-5)
  s = Stream(DRT(cfg), params, 2, segment_len=segment_len, memory="host",
             capacity_tokens=segment_len)
  assert "enc" not in s.cache["memory"] and s.memory == "host"
  assert int(s.cache["memory"]["host_key"]) == s.store.key
  inp, tgt = _pad_io(toks, T_ODD - 1)
  n = (T_ODD - 1) // segment_len
  out = [s.feed(inp[:, i * segment_len:(i + 1) * segment_len],
                tgt[:, i * segment_len:(i + 1) * segment_len]) for i in range(n)]
  np.testing.assert_allclose(np.concatenate([np.asarray(o) for o in out], 1),
                             ref[:, :n * segment_len], rtol=1e-5, atol=1e-5)
  (buf,) = s.store.buffers.values()
  assert buf.shape[1] >= n * segment_len // 63 and s.memory_bytes()["host"] == buf.nbytes
  s.close()


@pytest.mark.parametrize("threads", [1, 3])
def test_host_store_gather_write(threads):
  """HostStore (threaded gather into two alternating buffers, huge-page-advised buffer above
  64 MiB, growth by doubling) returns exactly the rows numpy indexing returns, for bf16, B = 2,
  duplicate and clipped indices, and counts its bytes."""
  rng = np.random.default_rng(threads)
  h = HostStore(threads=threads)
  data = rng.standard_normal((2, 3100, 64, 128)).astype(jnp.bfloat16)
  h.write("m", 0, data[:, :100], 3000)  # 96 MiB: mmap path
  assert h.buffers["m"].nbytes == 2 * 3000 * 64 * 128 * 2
  for c0 in range(100, 3100, 100):
    h.write("m", c0, data[:, c0:c0 + 100], 3000)
  buf = h.buffers["m"]
  assert buf.shape[1] == 4096  # grew past 3000 by doubling
  outs = []
  for _ in range(3):
    idx = rng.integers(0, 3100, (2, 37)).astype(np.int32)
    idx[0, :3] = idx[0, 3]       # duplicates in one row
    idx[1, 5] = 4096 + 7         # beyond the buffer: clipped to the last row
    g = h.gather("m", idx, (64, 128), jnp.bfloat16)
    want = np.stack([buf[b][np.minimum(idx[b], 4095)] for b in range(2)])
    np.testing.assert_array_equal(g.view(np.uint16), want.view(np.uint16))
    np.testing.assert_array_equal(g[:, :5].view(np.uint16), data[np.arange(2)[:, None],
                                                                idx[:, :5]].view(np.uint16))
    outs.append(g)
  assert outs[0] is not outs[1] and np.shares_memory(outs[0], outs[2])  # two buffers in turn
  assert h.stats["gathers"] == 3 and h.stats["gather_bytes"] == 3 * 2 * 37 * 64 * 128 * 2
  assert h.stats["write_bytes"] == data.nbytes and h.nbytes == buf.nbytes
  h.close()


def test_cache_bytes_and_resolve_memory():
  cfg = small_cfg()
  n = 63 * 10
  dev = cache_bytes(cfg, 2, n, segment_len=63, memory="device")
  host = cache_bytes(cfg, 2, n, segment_len=63, memory="host")
  spec = StreamSpec(n, "device")
  rows = cache_shapes(DRT(cfg), 2, 63, spec)["memory"]["enc"].shape[1]
  assert rows == 16  # 10 + 2 rows, rounded up to the (power-of-two) scan block
  assert host["host"] == 2 * rows * 64 * 32 * 4  # "enc" moves off the device ...
  assert dev["device"] - host["device"] == host["host"] - 4 and dev["host"] == 0  # + host_key
  assert resolve_memory("host", cfg, 2, 10) == "host"
  assert resolve_memory("auto", cfg, 2, None) == "device"
  with pytest.raises(ValueError, match="memory"):
    resolve_memory("gpu", cfg, 2, 10)


@pytest.mark.parametrize("kind", ["drt", "swa", "full", "landmark"])
def test_stream_mode_keeps_param_tree(kind):
  """init with and without `stream` gives the same parameter names, shapes and values."""
  cfg = small_cfg(model_kind=kind, chunk_size=8)
  toks = jnp.zeros((1, 20), jnp.int32)
  a = DRT(cfg).init({"params": jax.random.key(1)}, toks)
  b = DRT(cfg).init({"params": jax.random.key(1)}, toks, stream=StreamSpec(64))
  assert set(a) == {"params"} and set(b) == {"params", "cache"}
  pa, pb = (flax.traverse_util.flatten_dict(flax.core.meta.unbox(x["params"])) for x in (a, b))
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_array_equal(np.asarray(pa[k]), np.asarray(pb[k]))
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(b["cache"]))
