"""A user's model built from gca_jax.layers streams with the same engine (gca_jax.inference)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.inference import TRACE_COUNTS, Stream, run_segments
from gca_jax.inference.generate import generate_with
from gca_jax.layers import BlockConfig, DecoderBlock, RMSNorm, SlidingWindowAttention


class TinySWALM(nn.Module):
  """Two SWA layers (one DecoderBlock, one bare SlidingWindowAttention), forwarding `stream=`."""
  vocab: int = 64
  d: int = 32

  @nn.compact
  def __call__(self, tokens, *, stream=None):
    h = nn.Embed(self.vocab, self.d)(tokens)
    h = DecoderBlock(BlockConfig(num_heads=4, head_dim=8, mlp_dim=64, window=6), mode="window")(
        h, stream=stream)
    h = h + SlidingWindowAttention(BlockConfig(num_heads=2, head_dim=16, window=9))(
        RMSNorm()(h), stream=stream)
    return nn.Dense(self.vocab)(RMSNorm()(h))


def test_user_model_streams_equal_full_forward_and_generates():
  model = TinySWALM()
  toks = np.asarray(jax.random.randint(jax.random.key(0), (2, 41), 0, 64))
  params = model.init(jax.random.key(1), toks)["params"]
  logp = jax.nn.log_softmax(model.apply({"params": params}, toks[:, :-1]), -1)
  ref = -np.asarray(jnp.take_along_axis(logp, toks[:, 1:, None], -1)[..., 0])
  for seg in (1, 7, 40):
    before = TRACE_COUNTS["step"]
    s = Stream(model, params, 2, segment_len=seg, capacity_tokens=seg)  # grows: shapes do not
    nll, lp = run_segments(s, toks, seg, positions=np.array([3, 39]))
    assert TRACE_COUNTS["step"] - before == 1 and s.capacity_tokens >= 40
    np.testing.assert_allclose(np.asarray(nll), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lp, np.asarray(logp)[:, [3, 39]], rtol=1e-5, atol=1e-5)
  out = np.asarray(generate_with(model, params, toks[:, :20], 6, segment_len=8))
  seq = jnp.asarray(toks[:, :20])
  for _ in range(6):
    nxt = jnp.argmax(model.apply({"params": params}, seq)[:, -1], -1).astype(seq.dtype)
    seq = jnp.concatenate([seq, nxt[:, None]], 1)
  np.testing.assert_array_equal(out, np.asarray(seq))
