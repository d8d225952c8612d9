"""Run-config validation: every shipped config is valid; bad values give errors naming the field."""

import importlib

import pytest

from _train_helpers import small_run_config
from gca_jax.config import DRTConfig
from gca_jax.train.run_config import (RunConfigError, base_config, from_dict, model_config,
                                      model_diff, to_dict, validate)

CONFIGS = ["tiny", "drt_128m", "drt_128m_x2", "swa_128m", "full_128m"]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_are_valid(name):
  c = importlib.import_module(f"configs.{name}").get_config()
  mcfg = validate(c, num_devices=8 if name != "tiny" else 1, check_paths=(name == "tiny"))
  assert isinstance(mcfg, DRTConfig)
  if name.endswith("128m") or name.endswith("x2"):
    assert (mcfg.d_model, mcfg.num_heads, mcfg.mlp_dim, mcfg.vocab_size) == (768, 12, 2048, 32000)
    assert c.data.seq_len == 16128 and c.train.global_batch_size == 32
    assert (c.train.lr, c.train.b1, c.train.b2, c.train.weight_decay, c.train.warmup_frac,
            c.train.clip) == (2e-3, 0.9, 0.95, 1e-3, 0.02, 1.0)
    assert mcfg.dtype == "bfloat16"


def test_paper_model_variants():
  get = lambda n: model_config(importlib.import_module(f"configs.{n}").get_config())  # noqa
  assert get("drt_128m").upper_groups == (6,) and get("drt_128m").top_k == 8
  assert get("drt_128m_x2").upper_groups == (3, 3)
  assert get("swa_128m").model_kind == "swa" and get("swa_128m").num_layers == 14
  assert get("full_128m").model_kind == "full"


def _cfg(tmp_path, **kw):
  return small_run_config(str(tmp_path / "run"), str(tmp_path / "cache"), **kw)


BAD = [
    ({"train.global_batch_size": 6}, 8, r"config\.train\.global_batch_size=6: must be divisible "
     r"by mesh data\*fsdp \(1\*8=8\) \* grad_accum \(1\) = 8"),
    ({"train.global_batch_size": 4, "train.grad_accum": 3}, 1,
     r"config\.train\.global_batch_size=4: .*grad_accum \(3\)"),
    ({"data.seq_len": 10}, 1, r"config\.data\.seq_len=10: must hold at least one chunk of 15"),
    ({"data.train_path": "/nonexistent/corpus"}, 1,
     r"config\.data\.train_path='/nonexistent/corpus': path does not exist"),
    ({"data.tokenizer": "/nonexistent.model"}, 1, r"config\.data\.tokenizer="),
    ({"model.vocab_size": 1000}, 1, r"config\.model\.vocab_size=1000: is smaller than the "
     r"tokenizer's vocabulary \(4096"),
    ({"model.num_heads": 3}, 1, r"config\.model\.d_model=32: must be divisible by num_heads=3"),
    ({"model.model_kind": "rnn"}, 1, r"config\.model\.model_kind='rnn'"),
    ({"mesh.data": 3}, 8, r"config\.mesh: .*8 devices are not divisible by 3"),
    ({"mesh.tensor": 4, "mesh.fsdp": 2}, 8, r"config\.model\.num_heads=2: must be divisible by "
     r"mesh\.tensor=4"),
    ({"train.lr": 0.0}, 1, r"config\.train\.lr=0\.0: must be > 0"),
    ({"train.warmup_frac": 1.5}, 1, r"config\.train\.warmup_frac=1\.5: must be <= 1"),
    ({"train.b2": 1.0}, 1, r"config\.train\.b2=1\.0: must be < 1"),
    ({"train.steps": 0}, 1, r"config\.train\.steps=0: must be >= 1"),
    ({"train.weight_decay_mask": "some"}, 1, r"config\.train\.weight_decay_mask='some'"),
    ({"checkpoint.keep": 0}, 1, r"config\.checkpoint\.keep=0: must be >= 1"),
    ({"data.passkey_fraction": 0.5, "data.passkey_key_len": 12}, 1,
     r"config\.data\.passkey_key_len=12: .*fit in one chunk "
     r"of 15"),
    ({"data.passkey_fraction": 1.5}, 1, r"config\.data\.passkey_fraction=1\.5: must be <= 1"),
    ({"train.eval_batch_size": 3}, 2, r"config\.train\.eval_batch_size=3"),
]


@pytest.mark.parametrize("overrides,devices,pattern", BAD,
                         ids=[next(iter(b[0])) for b in BAD])
def test_bad_values_name_the_field(tmp_path, overrides, devices, pattern):
  c = _cfg(tmp_path, **overrides)
  if devices > 1 and "mesh.fsdp" not in overrides:
    c.mesh.fsdp = -1
  with pytest.raises(RunConfigError, match=pattern):
    validate(c, num_devices=devices)


def test_passkey_needs_three_chunks(tmp_path):
  c = _cfg(tmp_path, **{"data.passkey_fraction": 0.5, "data.passkey_key_len": 5,
                        "data.seq_len": 40})
  with pytest.raises(RunConfigError, match=r"config\.data\.seq_len=40: passkey samples"):
    validate(c, num_devices=1)


def test_missing_section_and_run_dir(tmp_path):
  c = _cfg(tmp_path)
  del c["checkpoint"]
  with pytest.raises(RunConfigError, match=r"config\.checkpoint: missing section"):
    validate(c, num_devices=1)
  c = _cfg(tmp_path)
  c.run_dir = ""
  with pytest.raises(RunConfigError, match=r"config\.run_dir"):
    validate(c, num_devices=1)


def test_valid_small_config_and_roundtrip(tmp_path):
  c = _cfg(tmp_path)
  m = validate(c, num_devices=1)
  d = to_dict(c)
  assert d["model"]["upper_groups"] == [1]
  back = from_dict(d)
  assert model_config(back) == m
  assert model_diff(d["model"], to_dict(back)["model"]) == []
  d2 = dict(d["model"], top_k=3)
  assert model_diff(d["model"], d2) == ["model.top_k: 2 != 3"]


def test_base_config_has_all_model_fields():
  import dataclasses
  assert set(base_config().model.keys()) == {f.name for f in dataclasses.fields(DRTConfig)}
