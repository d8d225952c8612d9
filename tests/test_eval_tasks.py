"""gca_jax.eval on a tiny random DRT: perplexity vs length, the passkey builder, scorer and grid,
the full-forward cross-check, the memory check, plots."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax import inference
from gca_jax.data import Tokenizer
from gca_jax.eval import long, passkey as pk
from gca_jax.eval import Evaluator, LengthFitError, passkey_grid, ppl_vs_length, score_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")

# chunks of 15 text tokens + landmark (as the CLI tests' model); vocab of the shipped tokenizer
CFG = DRTConfig(vocab_size=4096, d_model=32, num_heads=2, mlp_dim=64, lower_layers=1,
                upper_groups=(1,), encoder_layers=1, window=16, chunk_size=16, top_k=2,
                dtype="float32", param_dtype="float32")
GRID = dict(lengths=[180], depths=[0.0, 1.0], trials=2, batch_size=4)


def _init(cfg, seed=1):
  toks = jnp.zeros((1, 30), jnp.int32)
  return flax.core.meta.unbox(DRT(cfg).init({"params": jax.random.key(seed)}, toks)["params"])


def _full_nll(cfg, params, w):
  logp = jax.nn.log_softmax(DRT(cfg).apply({"params": params}, jnp.asarray(w[:, :-1])), -1)
  return -np.asarray(jnp.take_along_axis(logp, jnp.asarray(w[:, 1:, None]), -1)[..., 0])


@pytest.fixture(scope="module")
def params():
  return _init(CFG)


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load(TOKENIZER)


@pytest.fixture(scope="module")
def text():
  return np.asarray(jax.random.randint(jax.random.key(5), (1000,), 258, 4096), np.int32)


@pytest.fixture(scope="module")
def grid(params, tok, text):
  return passkey_grid(params, CFG, tok, text, seed=3, segment_len=60, progress=False, **GRID)


def test_ppl_vs_length_equals_full_forward(params, text):
  L = 95  # not a multiple of the chunk or the segment
  r = ppl_vs_length(params, CFG, text, [L], windows=2, segment_len=40, batch_size=2,
                    progress=False)
  ref = _full_nll(CFG, params, np.stack([text[:L + 1], text[L:2 * L + 1]]))
  out = r[str(L)]
  assert out["windows"] == 2 and out["tokens"] == 2 * L
  np.testing.assert_allclose(out["loss"], ref.mean(), rtol=1e-5)
  np.testing.assert_allclose(out["ppl"], np.exp(ref.mean()), rtol=1e-5)
  assert list(out["by_position"]) == ["0-15", "15-30", "30-60", "60-95"]
  np.testing.assert_allclose(out["by_position"]["30-60"], ref[:, 30:60].mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="length 5000 needs 5001 held-out tokens for one window, "
                                       "the stream has 1000"):
    ppl_vs_length(params, CFG, text, [L, 5000], windows=1, segment_len=40, progress=False)


def test_score_key():
  """The one scorer: argmax per answer position against the key, and the key's mean NLL."""
  lp = np.log(np.full((3, 5), 0.1, np.float32))
  lp[0, 2] = lp[1, 4] = lp[2, 0] = np.log(0.6)
  s = score_key(lp, (2, 4, 0))
  assert s.first and s.whole and s.nll == pytest.approx(-np.log(0.6), rel=1e-6)
  s = score_key(lp, (2, 1, 0))  # second token wrong: first-token hit only
  assert s.first and not s.whole
  assert s.nll == pytest.approx(-(2 * np.log(0.6) + np.log(0.1)) / 3, rel=1e-6)
  s = score_key(lp, (3, 4, 0))  # first wrong, rest right: no hit at all
  assert not s.first and not s.whole
  with pytest.raises(ValueError, match=r"must be \[len\(key\)=2, V\]"):
    score_key(lp, (2, 4))


def test_passkey_grid_cells(grid):
  cells = grid["cells"]
  keys = {(c["kind"], c["format"], c["length"], c["depth"]) for c in cells}
  assert keys == {(k, f, 180, d) for k in ("single", "multikey", "2hop")
                  for f in ("official", "landmark") for d in (0.0, 1.0)}
  assert len(cells) == 12 and grid["engine"] == "stream" and grid["segment_len"] == 60
  for c in cells:
    assert c["trials"] == 2
    assert 0.0 <= c["whole_key_accuracy"] <= c["first_token_accuracy"] <= 1.0
    assert c["whole_key_hits"] <= c["first_token_hits"]
    assert 0.5 * np.log(4096) < c["key_nll"] < 2 * np.log(4096)  # a random model
  assert {c["key_len"]["max"] for c in cells if c["kind"] == "2hop"} == {12}
  d, lengths, acc = pk.grid_table(grid, "2hop", "official")
  assert d == [0.0, 1.0] and lengths == [180] and acc.shape == (2, 1)
  s = pk.summary(grid)
  assert set(s) == {"single", "multikey", "2hop"} and set(s["single"]) == {"official", "landmark"}


def test_passkey_grid_seeds(params, tok, text, grid):
  again = passkey_grid(params, CFG, tok, text, seed=3, segment_len=60, progress=False, **GRID)
  assert again["cells"] == grid["cells"]
  # the samples: same seed -> same keys, another seed -> other keys
  for kind in ("single", "multikey", "2hop"):
    a, b, c = (pk.make_grid_sample(kind, "official", 150, 0.5, tok, text,
                                   pk.cell_rng(seed, kind, "official", 150, 0.5), chunk_text=15)
               for seed in (3, 3, 4))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.key == b.key and a.key != c.key
    assert len(a.tokens) == 150 and a.answer_index % 15 == 3  # answer_offset 4, chunks of 15


def test_passkey_grid_scores_the_answer(monkeypatch, params, tok, text):
  """A model that always predicts the right token scores 1.0: log-probs are taken where the
  sample says the answer is (checked through a fake engine that reads the next token)."""
  calls = []

  def fake(params_, config, tokens, positions, *, segment_len, memory, **kw):
    calls.append((tokens.shape, len(positions)))
    B = tokens.shape[0]
    lp = np.full((B, len(positions), config.vocab_size), -10.0, np.float32)
    for b in range(B):
      lp[b, np.arange(len(positions)), tokens[b, np.asarray(positions) + 1]] = 0.0
    return lp, None
  monkeypatch.setattr(inference, "stream_logprobs_at", fake)
  r = passkey_grid(params, CFG, tok, text, seed=0, lengths=[180, 240], depths=[0.5],
                   trials=3, batch_size=4, progress=False)
  assert len(r["cells"]) == 12
  assert all(c["first_token_accuracy"] == c["whole_key_accuracy"] == 1.0 for c in r["cells"])
  assert all(c["key_nll"] == 0.0 for c in r["cells"])
  # 18 samples per length in batches of 4 (the last padded): 5 calls of [4, L] per length
  assert [s for s, _ in calls] == [(4, 180)] * 5 + [(4, 240)] * 5
  assert all(q & (q - 1) == 0 for _, q in calls)  # positions padded to a power of two


def test_full_forward_cross_check_agrees(params, tok, text, grid):
  """Evaluator.passkey (full forward) on the grid's samples gives the same hits and key NLL."""
  from gca_jax.sharding import make_mesh
  from gca_jax.train.state import abstract_params
  model = DRT(CFG)
  mesh = make_mesh(devices=jax.devices()[:1])
  _, shardings = abstract_params(model, mesh)
  ev = Evaluator(model, mesh, shardings)
  r = ev.passkey(params, tok, text, seed=3, kinds=pk.KINDS, formats=pk.FORMATS, **GRID)
  assert r["engine"] == "full_forward" and len(r["cells"]) == len(grid["cells"]) == 12
  for a, b in zip(r["cells"], grid["cells"]):
    assert {k: a[k] for k in ("kind", "format", "length", "depth", "first_token_hits",
                              "whole_key_hits", "key_len")} == \
        {k: b[k] for k in ("kind", "format", "length", "depth", "first_token_hits",
                           "whole_key_hits", "key_len")}
    np.testing.assert_allclose(a["key_nll"], b["key_nll"], rtol=1e-5)
  # the log-probs themselves, at arbitrary positions
  w = text[None, :120].repeat(2, 0)
  lp = ev.logprobs_at(params, w, np.asarray([0, 44, 118]), batch_size=2)
  lp_s, _ = inference.stream_logprobs_at(params, CFG, w, np.asarray([0, 44, 118]),
                                         segment_len=50)
  np.testing.assert_allclose(lp, np.asarray(lp_s), atol=2e-5)


def test_fit_check_absurd_length(params, tok, text):
  with pytest.raises(LengthFitError, match=r"passkey_grid: length 1000000000000 does not fit: "
                                           r"the stream needs about .* GiB of .*available; "
                                           r"use fewer sequences per call \(batch_size 2 -> 1\)"):
    passkey_grid(params, CFG, tok, text, lengths=[180, 10**12], depths=[0.5], trials=2,
                 batch_size=2, progress=False)
  with pytest.raises(LengthFitError, match="ppl_vs_length: length 1000000000000 does not fit"):
    long.check_fit(CFG, 1, 10**12, segment_len=60, what="ppl_vs_length")
  dev = long.estimate_memory(CFG, 1, 10**12, segment_len=60, memory="device")
  host = long.estimate_memory(CFG, 1, 10**12, segment_len=60, memory="host")
  grow = long._cache_bytes(CFG, 1, 10**12, 60, "host")["host"]
  # chunk memory (encoder outputs) in host RAM: ~T/15 chunks x 16 rows x d_model x 4 B
  assert abs(grow / ((10**12 / 15) * 16 * CFG.d_model * 4) - 1) < 1e-3
  # exact at an int32-safe length: the engine's own cache shapes
  assert long._cache_bytes(CFG, 1, 10**5, 60, "host") == inference.cache_bytes(
      CFG, 1, 10**5 + 60, segment_len=60, memory="host")
  assert host["host"] == grow + 16 * 10**12 and host["parts"]["stream_caches_on_host"] == grow
  assert abs(host["device"] - (dev["device"] - grow)) <= 1e-9 * dev["device"]  # extrapolated
  # fits when the available memory is known to be large
  long.check_fit(CFG, 1, 10**6, segment_len=60, available={"device": 2**40, "host": 2**40})
  with pytest.raises(LengthFitError, match='device memory of gpu:0 .* use memory="host"'):
    long.check_fit(CFG, 1, 10**6, segment_len=60, memory="device",
                   available={"device": 2**20, "host": 2**40, "device_name": "gpu:0"})
  with pytest.raises(ValueError, match="memory='disk': expected 'auto', 'device' or 'host'"):
    long.estimate_memory(CFG, 1, 100, memory="disk")


@pytest.mark.skipif(not hasattr(inference, "cache_bytes"),
                    reason="needs the model-agnostic stream engine (Contract 1) that streams "
                           "every model_kind")
@pytest.mark.parametrize("kind", ["swa", "full", "landmark"])
def test_ppl_vs_length_every_model_kind(kind, text):
  cfg = CFG.replace(model_kind=kind, top_k=64)  # landmark: top_k >= blocks = exact
  p = _init(cfg, seed=2)
  r = ppl_vs_length(p, cfg, text, [64], windows=2, segment_len=25, batch_size=2, progress=False)
  ref = _full_nll(cfg, p, np.stack([text[:65], text[64:129]]))
  np.testing.assert_allclose(r["64"]["loss"], ref.mean(), rtol=1e-5)


def test_plots(grid, tmp_path):
  from gca_jax.eval import plots
  ppl = {"63": {"loss": 3.0, "ppl": 20.1}, "126": {"loss": 2.9, "ppl": 18.2},
         "252": {"loss": 2.95, "ppl": 19.1}}
  p1 = plots.plot_ppl_vs_length(ppl, str(tmp_path / "ppl.png"), train_length=63)
  paths = plots.plot_passkey_grid(grid, str(tmp_path / "pk"))
  assert len(paths) == 6 * 1 and os.path.exists(p1)
  for p in [p1] + paths:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  plots.write_json({"a": 1}, str(tmp_path / "r.json"))
  assert json.load(open(tmp_path / "r.json")) == {"a": 1}
  assert not [x for x in os.listdir(tmp_path) if x.endswith(".tmp")]


def test_report_markdown(grid, tmp_path):
  """Side-by-side table of eval.py results: hits and samples summed over depths."""
  from gca_jax.eval import report
  fake = json.loads(json.dumps(grid))
  for c in fake["cells"]:
    c["first_token_hits"], c["whole_key_hits"] = (2, 1) if c["depth"] == 0.0 else (1, 0)
  res = {"a": {"passkey_grid": grid, "seq_len": 60},
         "b": {"passkey_grid": fake, "ppl_length": {"lengths": {"60": {"ppl": 12.345}}}}}
  text = report.markdown(res, kinds=("single",))
  first = text.split("**single passkey (official format), whole-key")[0]
  assert "| model | 180 (3×) |" in first
  assert "| b | 75% (4) |" in first  # (2 + 1) / 4
  assert "| b | 25% (4) |" in text  # whole key: (1 + 0) / 4
  assert "| b | 12.35 |" in text and "| a | – |" in text
  (tmp_path / "a.json").write_text(json.dumps(res["b"]))
  assert report.main([f"b={tmp_path / 'a.json'}", "--kinds=single",
                      f"--out={tmp_path / 't.md'}"]) == 0
  assert (tmp_path / "t.md").read_text() == report.markdown({"b": res["b"]}, kinds=("single",))
