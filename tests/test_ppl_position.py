"""NLL by position on one stream (gca_jax.eval.long.ppl_by_position, eval.py --task
ppl_position): bucket edges, bucket NLL = the mean per-token NLL of the full forward (f32)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.eval import long

CFG = DRTConfig(vocab_size=4096, d_model=32, num_heads=2, mlp_dim=64, lower_layers=1,
                upper_groups=(1,), encoder_layers=1, window=16, chunk_size=16, top_k=2,
                dtype="float32", param_dtype="float32")


def _init(cfg, seed=1):
  toks = jnp.zeros((1, 30), jnp.int32)
  return flax.core.meta.unbox(DRT(cfg).init({"params": jax.random.key(seed)}, toks)["params"])


def _full_nll(cfg, params, w):
  logp = jax.nn.log_softmax(DRT(cfg).apply({"params": params}, jnp.asarray(w[None, :-1])), -1)
  return -np.asarray(jnp.take_along_axis(logp, jnp.asarray(w[None, 1:, None]), -1)[0, :, 0],
                     np.float64)


@pytest.fixture(scope="module")
def text():
  return np.asarray(jax.random.randint(jax.random.key(5), (700,), 258, 4096), np.int32)


def test_position_edges():
  assert long.position_edges(1000, 10) == [0, 10, 40, 160, 640, 1000]
  assert long.position_edges(640, 10) == [0, 10, 40, 160, 640]
  assert long.position_edges(1000, 10, factor=10) == [0, 10, 100, 1000]
  assert long.position_edges(5, 10) == [0, 5]
  with pytest.raises(ValueError, match="factor=1 >= 2"):
    long.position_edges(100, 10, factor=1)


@pytest.mark.parametrize("kind", ["drt", "swa"])
def test_bucket_nll_equals_full_forward(kind, text):
  cfg = CFG if kind == "drt" else CFG.replace(model_kind="swa")
  p = _init(cfg)
  L, unit = 610, 15
  r = long.ppl_by_position(p, cfg, text, length=L, unit=unit, segment_len=40, progress=False)
  ref = _full_nll(cfg, p, text[:L + 1])
  edges = [0, 15, 60, 240, 610]
  assert [(b["start"], b["end"]) for b in r["buckets"]] == list(zip(edges[:-1], edges[1:]))
  for b in r["buckets"]:
    np.testing.assert_allclose(b["nll"], ref[b["start"]:b["end"]].mean(), rtol=1e-5, atol=1e-6)
    assert b["tokens"] == b["end"] - b["start"]
  np.testing.assert_allclose(r["loss"], ref.mean(), rtol=1e-5)
  first = r["buckets"][0]["nll"]
  np.testing.assert_allclose(r["buckets"][2]["rel_to_first"], r["buckets"][2]["nll"] / first - 1,
                             rtol=1e-9)
  assert r["buckets"][0]["rel_to_first"] == 0.0


def test_stream_too_short(text):
  with pytest.raises(ValueError, match="length 700 needs 701 held-out tokens, the stream has 700"):
    long.ppl_by_position(_init(CFG), CFG, text, length=700, unit=15, progress=False)


def test_report_position_table():
  from gca_jax.eval import report

  def res(nlls):
    bs = [{"start": a, "end": b, "nll": x, "rel_to_first": x / nlls[0] - 1}
          for (a, b), x in zip([(0, 10), (10, 40)], nlls)]
    return {"ppl_position": {"train_length": 10, "buckets": bs}}
  text = report.markdown({"drt": res([2.0, 2.1]), "swa": res([2.0, 2.0])}, kinds=(),
                         ppl_ref="swa")
  assert "| model | [0×, 1×) | [1×, 4×) |" in text
  assert "| drt | 2.0000 (+0.0%; +0.00%) | 2.1000 (+5.0%; +5.00%) |" in text
  with pytest.raises(ValueError, match="--ppl_ref='lm': no ppl_position result"):
    report.markdown({"drt": res([2.0, 2.1])}, kinds=(), ppl_ref="lm")


def test_plot_ppl_by_position(tmp_path):
  from gca_jax.eval import plots
  r = {"train_length": 10, "buckets": [{"start": 0, "end": 10, "nll": 2.0},
                                       {"start": 10, "end": 40, "nll": 1.9}]}
  p = plots.plot_ppl_by_position({"drt": r, "swa": r}, str(tmp_path / "pos.png"))
  data = open(p, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
