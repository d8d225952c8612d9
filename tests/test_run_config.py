"""Run-config validation: every shipped config is valid; bad values give errors naming the field."""

import importlib

import pytest

from _train_helpers import RECALL, recall_run_config, small_run_config
from gca_jax.config import DRTConfig
from gca_jax.train.run_config import (RunConfigError, base_config, from_dict, model_config,
                                      model_diff, to_dict, validate)

CONFIGS = ["tiny", "drt_128m", "drt_128m_x2", "swa_128m", "full_128m", "recall_tiny",
           "recall_tiny_swa", "recall_tiny_landmark"]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_are_valid(name):
  c = importlib.import_module(f"configs.{name}").get_config()
  mcfg = validate(c, num_devices=1 if name == "tiny" or "recall" in name else 8,
                  check_paths=(name == "tiny"))
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
  # a run saved before a field existed (no loss_impl) resumes when the field is at its default
  old = {k: v for k, v in d["model"].items() if k != "loss_impl"}
  assert model_diff(old, dict(d["model"], loss_impl="fused")) == []
  assert model_diff(old, dict(d["model"], loss_impl="logits")) == [
      "model.loss_impl: 'fused' != 'logits'"]


def test_base_config_has_all_model_fields():
  import dataclasses
  assert set(base_config().model.keys()) == {f.name for f in dataclasses.fields(DRTConfig)}


def test_recall_configs_are_the_recipe():
  """configs/recall_tiny*.py: the sotu_drt / sotu_swa / sotu_landmark models and recipe."""
  get = lambda n: importlib.import_module(f"configs.{n}").get_config()  # noqa: E731
  c = get("recall_tiny")
  m = model_config(c)
  assert (m.d_model, m.num_heads, m.mlp_dim, m.window, m.lower_layers, m.upper_groups,
          m.encoder_layers, m.top_k, m.vocab_size) == (128, 4, 384, 128, 2, (2,), 2, 4, 4096)
  assert (c.data.recall.p_single, c.data.recall.p_named, c.data.recall.n_queries) == (0.4, 0.5, 4)
  assert c.data.curriculum.stages == "5:8,5:4,5:2,5:1,8:2,8:1,16:1"
  assert (c.data.curriculum.gate_accuracy, c.data.curriculum.min_steps,
          c.data.curriculum.window, c.data.curriculum.tokens_per_step) == (0.8, 50, 25, 32768)
  assert (c.train.steps, c.train.lr, c.train.b2, c.train.weight_decay, c.train.lr_end_frac,
          round(c.train.warmup_frac * c.train.steps)) == (4000, 2e-3, 0.95, 1e-3, 0.1, 100)
  assert c.data.train_path == "data/sotu/train" and c.data.tokenizer.endswith("gca_tiny.model")
  for name, kind in (("recall_tiny_swa", "swa"), ("recall_tiny_landmark", "landmark")):
    b = model_config(get(name))
    assert b.model_kind == kind and b.num_layers == 6 and b.d_model == 128
    assert to_dict(get(name))["data"] == to_dict(c)["data"]


RECALL_BAD = [
    ({"data.recall.p_named": 0.7}, r"config\.data\.recall\.p_named=0\.7: p_single \(0\.4\) "
     r"\+ p_named must be <= 1"),
    ({"data.recall.p_single": -0.1}, r"config\.data\.recall\.p_single=-0\.1: must be >= 0"),
    ({"data.recall.n_queries": 0}, r"config\.data\.recall\.n_queries=0: must be >= 1"),
    ({"data.recall.key_len": 12}, r"config\.data\.recall\.key_len=12: .*one chunk of 15"),
    ({"data.recall.answer_weight": -1.0}, r"config\.data\.recall\.answer_weight=-1\.0"),
    ({"data.curriculum.stages": "5:1,x"}, r"config\.data\.curriculum\.stages='5:1,x': stage "
     r"'x'"),
    ({"data.curriculum.stages": "5:1,6:1"}, r"config\.data\.curriculum\.stages='5:1,6:1': the "
     r"last stage \(6 chunks x 15 = 90 tokens\) must be the training length data\.seq_len=120"),
    ({"data.curriculum.stages": "2:1,8:1"}, r"config\.data\.curriculum\.stages=.*at least 3 "
     r"chunks"),
    ({"data.curriculum.gate_accuracy": 1.5}, r"config\.data\.curriculum\.gate_accuracy=1\.5"),
    ({"data.curriculum.window": 0}, r"config\.data\.curriculum\.window=0: must be >= 1"),
    ({"data.passkey_fraction": 0.2}, r"config\.data\.passkey_fraction=0\.2: must be 0 with "
     r"the recall mix"),
    ({"data.num_workers": -1}, r"config\.data\.num_workers=-1: must be >= 0"),
    ({"data.recall.p_single": 0.0, "data.recall.p_named": 0.0},
     r"config\.data\.curriculum\.stages='5:1,8:1': the curriculum gates on the answer "
     r"accuracy of recall samples"),
]


@pytest.mark.parametrize("overrides,pattern", RECALL_BAD,
                         ids=[next(iter(b[0])) for b in RECALL_BAD])
def test_recall_values_name_the_field(tmp_path, overrides, pattern):
  c = recall_run_config(str(tmp_path / "run"), str(tmp_path / "cache"), **overrides)
  with pytest.raises(RunConfigError, match=pattern):
    validate(c, num_devices=1, check_paths=False)


def test_recall_stage_that_cannot_hold_a_sample_names_the_field(tmp_path):
  """Checked when the pipeline is built (it needs the tokenizer): a needle repeated 8 times does
  not fit before the question in 5 chunks of 15 tokens."""
  import jax

  from gca_jax.train import train
  c = recall_run_config(str(tmp_path / "run"), str(tmp_path / "cache"),
                        **{"data.curriculum.stages": "5:8,8:1"})
  validate(c, num_devices=1)
  with pytest.raises(RunConfigError, match=r"config\.data\.curriculum\.stages='5:8,8:1': "
                     r"stage 0 \(75 tokens, needles x8\)"):
    train(c, devices=jax.devices()[:1], message=lambda s: None)
  assert RECALL["data.curriculum.stages"] == "5:1,8:1"
