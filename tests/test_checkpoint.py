"""Checkpoints: round trip (also across meshes), keep-N, partial temp dirs, iterator state, config."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from _train_helpers import (CORPUS_VALID, SMALL_MODEL, TOKENIZER, compile_cache,  # noqa: F401
                            small_run_config)
from gca_jax import DRT, DRTConfig
from gca_jax.sharding import make_mesh
from gca_jax.train import (Checkpointer, CheckpointError, TrainHooks, init_state,
                           make_optimizer, state_shardings, train)
from gca_jax.train.run_config import base_config
from gca_jax.train.state import abstract_params

pytestmark = pytest.mark.usefixtures("compile_cache")
ONE = jax.devices()[:1]


def _state(mesh, seed=0):
  model = DRT(DRTConfig(**SMALL_MODEL))
  tx, _ = make_optimizer(base_config().train)
  abstract, sh = state_shardings(model, tx, mesh, seed)
  return model, tx, abstract, init_state(model, tx, mesh, seed, sh)


def _assert_tree_equal(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_roundtrip_and_reshard(tmp_path):
  """Saved from one device, restored into an 8-device fsdp mesh (and back), bit for bit."""
  _, _, _, state = _state(make_mesh(devices=ONE))
  ck = Checkpointer(str(tmp_path), keep=3, async_save=True)
  assert ck.save(5, state, {"next_index": 20}, {"model": {"a": 1}})
  ck.wait()
  assert not ck.save(5, state, None, {})  # an existing step is never overwritten
  ck.close()

  mesh8 = make_mesh(data=1, fsdp=8, tensor=1)
  _, _, abstract8, _ = _state(mesh8)
  ck = Checkpointer(str(tmp_path), read_only=True)
  step, restored, _ = ck.restore(None, abstract8)
  assert step == 5
  _assert_tree_equal(state, restored)
  emb = restored.params["embedding"]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert len(emb.addressable_shards) == 8 and emb.addressable_shards[0].data.shape == (4096, 4)
  assert ck.restore_config()[1] == {"model": {"a": 1}}
  assert ck.restore_meta(5)["step"] == 5
  # params only (eval path): no optimizer state is read
  abstract_p, _ = abstract_params(DRT(DRTConfig(**SMALL_MODEL)), make_mesh(devices=ONE))
  _, params = ck.restore_params(5, abstract_p)
  _assert_tree_equal(state.params, params)
  with pytest.raises(CheckpointError, match="no checkpoint for step 7"):
    ck.restore_config(7)
  ck.close()


def test_keep_n(tmp_path):
  _, _, _, state = _state(make_mesh(devices=ONE))
  ck = Checkpointer(str(tmp_path), keep=2, async_save=False)
  for s in (1, 2, 3, 4):
    ck.save(s, state, None, {})
  ck.wait()
  assert ck.all_steps() == [3, 4]
  ck.close()


def test_partial_temp_dir_is_ignored_on_resume(tmp_path):
  """A save cut short (temp dir never renamed) is invisible; the run resumes from the last one."""
  cache = str(tmp_path / "cache")
  run_dir = str(tmp_path / "run")
  cfg = small_run_config(run_dir, cache, **{"train.steps": 3})
  stop_at_2 = TrainHooks(on_step=lambda s, m: s == 2 and os.kill(os.getpid(), signal.SIGTERM))
  assert train(cfg, devices=ONE, message=lambda s: None, hooks=stop_at_2).step == 2
  ckdir = os.path.join(run_dir, "checkpoints")
  # what an interrupted save of step 4 leaves behind: a temp dir with some of the items
  tmp = os.path.join(ckdir, "4.orbax-checkpoint-tmp-1234567")
  os.makedirs(os.path.join(tmp, "state"))
  with open(os.path.join(tmp, "state", "garbage"), "w") as f:
    f.write("half-written")
  ck = Checkpointer(run_dir, read_only=True)
  assert ck.all_steps() == [2]
  ck.close()
  res = train(cfg, devices=ONE, message=lambda s: None)
  assert res.start_step == 2 and res.step == 3
  assert sorted(os.listdir(ckdir)) == ["2", "3"]  # the temp dir was cleaned up


def test_iterator_state_in_checkpoint(tmp_path):
  """The saved Grain state is the one after the batches of the saved steps, per process."""
  from gca_jax.data import Tokenizer, make_train_dataset, tokenize_corpus
  tok = Tokenizer.load(TOKENIZER)
  stream = tokenize_corpus(CORPUS_VALID, tok, str(tmp_path / "cache")).tokens
  ds = make_train_dataset(stream, seq_len=60, global_batch_size=4, seed=3)
  it = iter(ds)
  for _ in range(3):
    next(it)
  snap = it.get_state()
  expected = next(it)
  _, _, _, state = _state(make_mesh(devices=ONE))
  ck = Checkpointer(str(tmp_path / "run"), async_save=True)
  ck.save(3, state, snap, {})
  ck.close()
  files = os.listdir(os.path.join(str(tmp_path / "run"), "checkpoints", "3", "data_iter"))
  assert "process_0-of-1.json" in files
  with open(os.path.join(str(tmp_path / "run"), "checkpoints", "3", "data_iter",
                         "process_0-of-1.json")) as f:
    assert json.load(f) == json.loads(json.dumps(snap))
  fresh = iter(ds)
  _, _, abstract, _ = _state(make_mesh(devices=ONE))
  ck = Checkpointer(str(tmp_path / "run"), read_only=True)
  ck.restore(3, abstract, iterator=fresh)
  ck.close()
  got = next(fresh)
  for k in expected:
    np.testing.assert_array_equal(got[k], expected[k])


def test_missing_run_dir_is_a_clear_error(tmp_path):
  with pytest.raises(CheckpointError, match="no checkpoint directory"):
    Checkpointer(str(tmp_path / "nope"), read_only=True)
  os.makedirs(tmp_path / "empty" / "checkpoints")
  ck = Checkpointer(str(tmp_path / "empty"), read_only=True)
  with pytest.raises(CheckpointError, match="no complete checkpoint"):
    ck.restore_config()
  ck.close()
