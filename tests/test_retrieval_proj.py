"""`retrieval_proj` (docs/method.md §2.3, deviations): a learned query matrix in each retriever,
identity at init; the same forward in training, streaming and the config/export round trip."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.config import BlockConfig, ConfigError
from gca_jax.inference import stream_nll
from gca_jax.layers.retrieval import ChunkRetriever


def small_cfg(**kw):
  base = dict(vocab_size=97, d_model=32, num_heads=4, mlp_dim=64, lower_layers=1,
              upper_groups=(1, 1), encoder_layers=1, window=8, top_k=2, dtype="float32")
  base.update(kw)
  return DRTConfig(**base)


T = 63 * 7 + 10


def _nll(cfg, params, toks):
  logp = jax.nn.log_softmax(DRT(cfg).apply({"params": params}, toks[:, :-1]), axis=-1)
  return np.asarray(-jnp.take_along_axis(logp, toks[:, 1:, None], axis=-1)[..., 0])


def _init(cfg, toks):
  return flax.core.meta.unbox(DRT(cfg).init({"params": jax.random.key(1)}, toks)["params"])


def test_identity_at_init_then_live():
  toks = jax.random.randint(jax.random.key(0), (2, T), 0, 97)
  off, on = small_cfg(), small_cfg(retrieval_proj=True)
  p_off, p_on = _init(off, toks), _init(on, toks)
  for g in ("retriever_0", "retriever_1"):
    w = np.asarray(p_on[g]["query_proj"])
    assert w.shape == (32, 32)
    np.testing.assert_array_equal(w, np.eye(32, dtype=np.float32))
    assert "query_proj" not in p_off[g]
  # Same params otherwise: same loss at init.
  same = {k: v for k, v in p_on.items()}
  for g in ("retriever_0", "retriever_1"):
    same[g] = {k: v for k, v in p_on[g].items() if k != "query_proj"}
  chex_equal = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), same, p_off)
  assert all(jax.tree.leaves(chex_equal))
  np.testing.assert_allclose(_nll(on, p_on, toks), _nll(off, p_off, toks), rtol=1e-6, atol=1e-6)
  # A different matrix changes the retrieval (and so the loss after chunk 1).
  w = jax.random.normal(jax.random.key(3), (32, 32))
  p_rot = dict(p_on, retriever_0=dict(p_on["retriever_0"], query_proj=w),
               retriever_1=dict(p_on["retriever_1"], query_proj=-w))
  diff = np.abs(_nll(on, p_rot, toks) - _nll(on, p_on, toks))
  assert diff[:, :126].max() < 1e-6 and diff[:, 126:].max() > 1e-3


@pytest.mark.parametrize("segment_len", [17, 63 * 8])
def test_stream_equals_full_forward_with_projection(segment_len):
  toks = jax.random.randint(jax.random.key(0), (2, T), 0, 97)
  cfg = small_cfg(retrieval_proj=True)
  p = _init(cfg, toks)
  w = jax.random.normal(jax.random.key(3), (32, 32))
  p = dict(p, retriever_0=dict(p["retriever_0"], query_proj=w),
           retriever_1=dict(p["retriever_1"], query_proj=w.T))
  ref = _nll(cfg, p, toks)
  out = np.asarray(stream_nll(p, cfg, toks, segment_len=segment_len))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_scores_use_the_projection():
  bc = BlockConfig(num_heads=2, head_dim=8, top_k=2, retrieval_proj=True)
  q = jax.random.normal(jax.random.key(0), (1, 5, 16))
  lmk = jax.random.normal(jax.random.key(1), (1, 5, 16))
  r = ChunkRetriever(bc)
  v = flax.core.meta.unbox(r.init(jax.random.key(2), q, lmk))
  w = jax.random.normal(jax.random.key(4), (16, 16))
  v = {"params": dict(v["params"], query_proj=w)}
  _, _, scores = r.apply(v, q, lmk)
  qn = q * jax.lax.rsqrt(jnp.mean(q * q, -1, keepdims=True) + 1e-5)
  ref = jnp.einsum("bcd,de,bme->bcm", qn, w, lmk) / 4.0
  np.testing.assert_allclose(np.asarray(scores), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_rejects_non_bool(bad):
  with pytest.raises(ConfigError, match="retrieval_proj"):
    small_cfg(retrieval_proj=bad).validate()
  with pytest.raises(ConfigError, match="retrieval_proj"):
    BlockConfig(num_heads=2, head_dim=8, retrieval_proj=bad)


def test_config_dict_round_trip():
  cfg = small_cfg(retrieval_proj=True)
  assert DRTConfig.from_dict(cfg.to_dict()).retrieval_proj is True
  d = cfg.to_dict()
  d.pop("retrieval_proj")   # an export written before the field existed
  assert DRTConfig.from_dict(d).retrieval_proj is False
