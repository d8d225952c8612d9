"""The shipped 2-hop export of issue 15 (checkpoints/twohop_drt_x2: DRT ret x2, configs/twohop_tiny_x2.py,
trained by scripts/gpu/s10_call1.sh) on CPU: 2-hop samples (`|DEF X->Y|`, `|DEF Y->Z|`, ask for
the path) at 1x and 64x its training length, streamed, on filler text it never saw (Moby Dick)."""

import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALID = os.path.join(ROOT, "data", "corpus", "valid")
TOK = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from gca_jax import export
  from gca_jax.data import Tokenizer, tokenize_corpus
  m = export.load_model(os.path.join(ROOT, "checkpoints", "twohop_drt_x2"))
  tok = Tokenizer.load(TOK)
  text = np.asarray(tokenize_corpus(VALID, tok, str(tmp_path_factory.mktemp("tok"))).tokens)
  return m, tok, text


def test_export_is_ret_x2(setup):
  m, _, _ = setup
  assert m.config.model_kind == "drt" and tuple(m.config.upper_groups) == (1, 1)
  assert m.config.top_k == 4


@pytest.mark.parametrize("length,trials", [(1008, 3), (64512, 1)])
def test_twohop(setup, length, trials):
  from gca_jax.eval import long
  m, tok, text = setup
  g = long.passkey_grid(m.params, m.config, tok, text, lengths=[length], depths=[0.0, 0.5, 1.0],
                        trials=trials, kinds=["2hop"], formats=["official"], segment_len=8064,
                        batch_size=9, progress=False)
  hits = sum(c["first_token_hits"] for c in g["cells"])
  n = sum(c["trials"] for c in g["cells"])
  assert n == 3 * trials and hits >= n - 1, (length, hits, n)
