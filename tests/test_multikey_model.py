"""The multi-key / 2-hop exports of issue 15 (checkpoints/multikey_drt, multikey_drt_x2, made by
scripts/gpu/s8_call1.sh) on CPU: a few multi-key samples with 8 and 16 needles (2x and 4x top-k)
at 1x and at 64x the training length, streamed. Skipped until the export is shipped."""

import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALID = os.path.join(ROOT, "data", "corpus", "valid")
TOK = os.path.join(ROOT, "data", "tokenizer", "gca_tiny.model")


def _load(name):
  path = os.path.join(ROOT, "checkpoints", name)
  if not os.path.isfile(os.path.join(path, "config.json")):
    pytest.skip(f"checkpoints/{name} not shipped (scripts/gpu/s8_call1.sh makes it)")
  from gca_jax import export
  return export.load_model(path)


@pytest.mark.parametrize("name", ["multikey_drt", "multikey_drt_x2"])
def test_multikey_export(name, tmp_path):
  from gca_jax.data import Tokenizer, tokenize_corpus
  from gca_jax.eval import long
  m = _load(name)
  tok = Tokenizer.load(TOK)
  text = np.asarray(tokenize_corpus(VALID, tok, str(tmp_path)).tokens)
  for keys, length, trials in ((8, 1008, 3), (16, 1008, 3), (16, 64512, 1)):
    g = long.passkey_grid(m.params, m.config, tok, text, lengths=[length], depths=[0.0, 0.5, 1.0],
                          trials=trials, kinds=["multikey"], formats=["official"],
                          num_keys=keys, segment_len=8064, batch_size=9, progress=False)
    hits = sum(c["first_token_hits"] for c in g["cells"])
    n = sum(c["trials"] for c in g["cells"])
    assert hits >= n - 1, (name, keys, length, hits, n)
