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
