"""Streaming API input checks: token ids outside the vocab / non-integer ids raise clear
ValueErrors (stream_nll, stream_logprobs_at, generate); segment_len above T is clamped."""

import jax
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.inference import generate, stream_logprobs_at, stream_nll

CFG = DRTConfig(vocab_size=97, d_model=32, num_heads=4, mlp_dim=64, lower_layers=1,
                upper_groups=(1,), encoder_layers=1, window=8, chunk_size=8, top_k=2,
                model_kind="drt", dtype="float32")


@pytest.fixture(scope="module")
def params():
  return DRT(CFG).init(jax.random.key(0), np.zeros((1, 16), np.int32))["params"]


def _toks(T=20):
  return np.random.default_rng(0).integers(0, CFG.vocab_size, (1, T)).astype(np.int32)


@pytest.mark.parametrize("bad", [97, 1000, -1])
def test_out_of_vocab_ids_raise(params, bad):
  t = _toks()
  t[0, 5] = bad
  for call in (lambda: stream_nll(params, CFG, t, segment_len=8, memory="device"),
               lambda: stream_logprobs_at(params, CFG, t, [1], segment_len=8, memory="device"),
               lambda: generate(params, CFG, t, 2, memory="device")):
    with pytest.raises(ValueError, match=rf"token id {bad} at index \(0, 5\).*\[0, 97\)"):
      call()


def test_float_ids_raise(params):
  t = _toks().astype(np.float32) + 0.5
  with pytest.raises(ValueError, match="integer token ids"):
    stream_nll(params, CFG, t, segment_len=8, memory="device")
  with pytest.raises(ValueError, match="integer token ids"):
    generate(params, CFG, t, 2, memory="device")


def test_huge_segment_len_is_clamped(params):
  t = _toks(20)
  a = np.asarray(stream_nll(params, CFG, t, segment_len=10**6, memory="device"))
  b = np.asarray(stream_nll(params, CFG, t, segment_len=19, memory="device"))
  np.testing.assert_array_equal(a, b)


# -- memory check before allocating ------------------------------------------------------------

def _fake_available(monkeypatch, device, host):
  from gca_jax.inference import engine
  monkeypatch.setattr(engine, "available_bytes",
                      lambda: {"device": device, "host": host, "device_name": "fake:0"})


def _mib(n):
  from gca_jax.inference.engine import _mib as f
  return f(n)


def test_stream_memory_check_device(params, monkeypatch):
  from gca_jax.inference import TRACE_COUNTS, cache_bytes
  from gca_jax.inference.engine import StreamMemoryError
  B, T, seg = 4, 161, 16                       # 160 inputs: 10 segments, capacity 160 tokens
  t = np.random.default_rng(1).integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  dev = cache_bytes(CFG, B, 160, segment_len=seg, memory="device")
  host = cache_bytes(CFG, B, 160, segment_len=seg, memory="host")
  assert host["host"] > 0 and host["device"] < dev["device"]
  logits = 3 * B * seg * CFG.vocab_size * 4
  need = dev["device"] + logits
  traces = TRACE_COUNTS["step"]
  _fake_available(monkeypatch, need - 1, 10**12)
  for call in (lambda: stream_nll(params, CFG, t, segment_len=seg, memory="device"),
               lambda: stream_logprobs_at(params, CFG, t, [3], segment_len=seg, memory="device"),
               lambda: generate(params, CFG, t[:, :144], 16, segment_len=seg, memory="device")):
    with pytest.raises(StreamMemoryError) as e:
      call()
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in msg
    assert (f"batch 4 x 160 tokens (segment_len 16, memory='device') needs about {_mib(need)} "
            f"of device memory of fake:0 (chunk memory {_mib(dev['device'])}, one segment's "
            f"logits {_mib(logits)}), {_mib(need - 1)} available") in msg
    assert f'memory="host" (moves {_mib(host["host"])} of chunk memory' in msg
    assert "a smaller batch (batch 4 -> 3)" in msg
    from gca_jax.cli.eval import _as_flags    # eval.py names its own flags instead
    flags = _as_flags(msg)
    assert "--memory=host (moves" in flags and "--batch_size 3 (now 4)" in flags, flags
    assert 'memory="' not in flags and "--memory=device" not in flags
  assert TRACE_COUNTS["step"] == traces        # refused before anything ran
  # host placement: the device part fits, the chunk memory goes to host RAM
  _fake_available(monkeypatch, need - 1, 10**12)
  a = np.asarray(stream_nll(params, CFG, t, segment_len=seg, memory="host"))
  _fake_available(monkeypatch, 10**12, 10**12)
  b = np.asarray(stream_nll(params, CFG, t, segment_len=seg, memory="device"))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # ... unless host RAM is short too
  _fake_available(monkeypatch, 10**12, host["host"] - 1)
  with pytest.raises(StreamMemoryError, match=r"memory='host'\) needs about .* of host memory "
                                              r"\(MemAvailable\)"):
    stream_nll(params, CFG, t, segment_len=seg, memory="host")


def test_stream_memory_check_cpu_and_unknown(params, monkeypatch):
  from gca_jax.inference.engine import StreamMemoryError
  t = _toks(40)
  _fake_available(monkeypatch, None, 1000)      # CPU backend: arrays live in host RAM
  with pytest.raises(StreamMemoryError, match=r"needs about [\d.]+ MiB of host memory "
                                              r"\(MemAvailable; the CPU backend's arrays live "
                                              r"there\) .*, 0\.0 MiB available; use a shorter "
                                              r"stream$"):
    stream_nll(params, CFG, t, segment_len=8, memory="device")
  _fake_available(monkeypatch, None, None)      # nothing known: no check
  assert np.asarray(stream_nll(params, CFG, t, segment_len=8, memory="device")).shape == (1, 39)
