"""Long-context eval tasks (gca_jax.inference.tasks / plots) on a tiny random DRT."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gca_jax import DRT, DRTConfig
from gca_jax.data import Tokenizer
from gca_jax.inference import tasks
from gca_jax.inference.tasks import LengthFitError, passkey_grid, ppl_vs_length

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")

# chunks of 15 text tokens + landmark (as the CLI tests' model); vocab of the shipped tokenizer
CFG = DRTConfig(vocab_size=4096, d_model=32, num_heads=2, mlp_dim=64, lower_layers=1,
                upper_groups=(1,), encoder_layers=1, window=16, chunk_size=16, top_k=2,
                dtype="float32", param_dtype="float32")
GRID = dict(lengths=[180], depths=[0.0, 1.0], trials=2, segment_len=60, batch_size=4,
            progress=False)


@pytest.fixture(scope="module")
def params():
  toks = jnp.zeros((1, 30), jnp.int32)
  return flax.core.meta.unbox(DRT(CFG).init({"params": jax.random.key(1)}, toks)["params"])


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load(TOKENIZER)


@pytest.fixture(scope="module")
def text():
  return np.asarray(jax.random.randint(jax.random.key(5), (1000,), 258, 4096), np.int32)


@pytest.fixture(scope="module")
def grid(params, tok, text):
  return passkey_grid(params, CFG, tok, text, seed=3, **GRID)


def test_ppl_vs_length_equals_full_forward(params, text):
  L = 95  # not a multiple of the chunk or the segment
  r = ppl_vs_length(params, CFG, text, [L], windows=2, segment_len=40, batch_size=2,
                    progress=False)
  w = np.stack([text[:L + 1], text[L:2 * L + 1]])
  logp = jax.nn.log_softmax(DRT(CFG).apply({"params": params}, jnp.asarray(w[:, :-1])), -1)
  ref = -np.asarray(jnp.take_along_axis(logp, jnp.asarray(w[:, 1:, None]), -1)[..., 0])
  out = r[str(L)]
  assert out["windows"] == 2 and out["tokens"] == 2 * L
  np.testing.assert_allclose(out["loss"], ref.mean(), rtol=1e-5)
  np.testing.assert_allclose(out["ppl"], np.exp(ref.mean()), rtol=1e-5)
  assert list(out["by_position"]) == ["0-15", "15-30", "30-60", "60-95"]
  np.testing.assert_allclose(out["by_position"]["30-60"], ref[:, 30:60].mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="length 5000 needs 5001 held-out tokens for one window, "
                                       "the stream has 1000"):
    ppl_vs_length(params, CFG, text, [L, 5000], windows=1, segment_len=40, progress=False)


def test_passkey_grid_cells(grid):
  cells = grid["cells"]
  keys = {(c["kind"], c["format"], c["length"], c["depth"]) for c in cells}
  assert keys == {(k, f, 180, d) for k in ("single", "multikey", "2hop")
                  for f in ("official", "landmark") for d in (0.0, 1.0)}
  assert len(cells) == 12
  for c in cells:
    assert c["trials"] == 2
    assert 0.0 <= c["whole_key_accuracy"] <= c["first_token_accuracy"] <= 1.0
    assert c["whole_key_hits"] <= c["first_token_hits"]
  assert {c["key_len"]["max"] for c in cells if c["kind"] == "2hop"} == {12}
  d, lengths, acc = tasks.grid_table(grid, "2hop", "official")
  assert d == [0.0, 1.0] and lengths == [180] and acc.shape == (2, 1)
  s = tasks.summary(grid)
  assert set(s) == {"single", "multikey", "2hop"} and set(s["single"]) == {"official", "landmark"}


def test_passkey_grid_seeds(params, tok, text, grid):
  again = passkey_grid(params, CFG, tok, text, seed=3, **GRID)
  assert again["cells"] == grid["cells"]
  # the samples: same seed -> same keys, another seed -> other keys
  kw = dict(chunk_text=15)
  for kind in ("single", "multikey", "2hop"):
    a = tasks.make_grid_sample(kind, "official", 150, 0.5, tok, text,
                               tasks._cell_rng(3, kind, "official", 150, 0.5), **kw)
    b = tasks.make_grid_sample(kind, "official", 150, 0.5, tok, text,
                               tasks._cell_rng(3, kind, "official", 150, 0.5), **kw)
    c = tasks.make_grid_sample(kind, "official", 150, 0.5, tok, text,
                               tasks._cell_rng(4, kind, "official", 150, 0.5), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.key == b.key and a.key != c.key


def test_passkey_grid_scores_the_answer(params, tok, text):
  """A model that always predicts the right token scores 1.0: log-probs are taken where the
  sample says the answer is (checked through a fake engine that reads the next token)."""
  def fake(params_, config, tokens, positions, *, segment_len, memory):
    B = tokens.shape[0]
    lp = np.full((B, len(positions), config.vocab_size), -10.0, np.float32)
    for b in range(B):
      lp[b, np.arange(len(positions)), tokens[b, np.asarray(positions) + 1]] = 0.0
    return lp, None
  orig = tasks.score_logprobs_at
  tasks.score_logprobs_at = fake
  try:
    r = passkey_grid(params, CFG, tok, text, seed=0, lengths=[180, 240], depths=[0.5],
                     trials=3, batch_size=4, progress=False)
  finally:
    tasks.score_logprobs_at = orig
  assert len(r["cells"]) == 12
  assert all(c["first_token_accuracy"] == c["whole_key_accuracy"] == 1.0 for c in r["cells"])


def test_fit_check_absurd_length(params, tok, text):
  with pytest.raises(LengthFitError, match=r"passkey_grid: length 1000000000000 does not fit: "
                                           r"the stream engine needs about .* GiB of .*available; "
                                           r"use fewer sequences per call \(batch_size 2 -> 1\)"):
    passkey_grid(params, CFG, tok, text, lengths=[180, 10**12], depths=[0.5], trials=2,
                 batch_size=2, progress=False)
  with pytest.raises(LengthFitError, match="ppl_vs_length: length 1000000000000 does not fit"):
    tasks.check_fit(CFG, 1, 10**12, segment_len=60, what="ppl_vs_length")
  est = tasks.estimate_memory(CFG, 1, 10**12, segment_len=60, memory="device")
  host = tasks.estimate_memory(CFG, 1, 10**12, segment_len=60, memory="host")
  assert host["host"] == est["parts"]["chunk_memory"] + 16 * 10**12
  assert host["device"] == est["device"] - est["parts"]["chunk_memory"]
  # chunk memory (encoder outputs) ~ ceil(T/15) chunks x 16 rows x d_model x 4 bytes
  assert est["parts"]["chunk_memory"] == (-(-10**12 // 15) + 4) * 16 * CFG.d_model * 4
  # fits when the available memory is known to be large
  tasks.check_fit(CFG, 1, 10**6, segment_len=60, available={"device": 2**40, "host": 2**40})
  with pytest.raises(LengthFitError, match='device memory of gpu:0 .* use memory="host"'):
    tasks.check_fit(CFG, 1, 10**6, segment_len=60, memory="device",
                    available={"device": 2**20, "host": 2**40, "device_name": "gpu:0"})


def test_baseline_fallback_full_forward(monkeypatch, text):
  """model_kind 'swa' without a baseline streaming engine: the full forward pass."""
  cfg = CFG.replace(model_kind="swa")
  monkeypatch.setattr(tasks, "_baseline_module", lambda: None)
  p = flax.core.meta.unbox(DRT(cfg).init({"params": jax.random.key(2)},
                                         jnp.zeros((1, 30), jnp.int32))["params"])
  assert tasks.engine_name(cfg) == "full"
  r = ppl_vs_length(p, cfg, text, [64], windows=1, progress=False)
  logp = jax.nn.log_softmax(DRT(cfg).apply({"params": p}, jnp.asarray(text[None, :64])), -1)
  ref = -np.asarray(jnp.take_along_axis(logp, jnp.asarray(text[None, 1:65, None]), -1)[..., 0])
  np.testing.assert_allclose(r["64"]["loss"], ref.mean(), rtol=1e-5)
  with pytest.raises(LengthFitError, match="full forward pass .* needs about"):
    tasks.check_fit(cfg, 1, 10**9, what="full forward pass (model_kind='swa')")


def test_plots(grid, tmp_path):
  from gca_jax.inference import plots
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
