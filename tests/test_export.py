"""The export format: safetensors bytes, save/load round trips, atomic writes, errors,
load_run / export_run / CLI on a tiny trained run, and the shipped exports."""

import hashlib
import json
import os
import struct
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from _train_helpers import (ROOT, SMALL_MODEL, TOKENIZER, compile_cache,  # noqa: F401
                            small_run_config)
from gca_jax import DRT, DRTConfig
from gca_jax import export as ex
from gca_jax.export import safetensors_io as st

BF16 = np.dtype(ml_dtypes.bfloat16)
CFG = DRTConfig(**SMALL_MODEL)
SHIPPED = {"sotu_drt": "drt", "sotu_swa": "swa", "sotu_landmark": "landmark",
           "recall_drt": "drt"}


def _init(cfg=CFG, seed=0):
  """Random float32 params of `DRT(cfg)`'s shapes (cheaper than `init` on CPU)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (rng.standard_normal(a.shape) * 0.05).astype(a.dtype),
                      ex.abstract_params(cfg))


def _flat(params):
  return ex.flatten_params(params)


def _bits(x):
  x = np.asarray(x)
  return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def _assert_same_bits(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
    np.testing.assert_array_equal(_bits(fa[k]), _bits(fb[k]), err_msg=k)


# -- safetensors -------------------------------------------------------------------------------

def test_safetensors_exact_bytes(tmp_path):
  """The byte layout of a two-tensor file, written out by hand."""
  p = str(tmp_path / "a.safetensors")
  st.save_file(p, {"w": np.array([1.0, -2.0], np.float32),
                   "h": np.array([[1.5]], np.float32).astype(BF16)}, {"k": "v"})
  header = {"__metadata__": {"k": "v"},
            "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "h": {"dtype": "BF16", "shape": [1, 1], "data_offsets": [8, 10]}}
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  want = (struct.pack("<Q", len(raw)) + raw + struct.pack("<ff", 1.0, -2.0)
          + struct.pack("<H", 0x3FC0))
  assert open(p, "rb").read() == want
  assert len(raw) % 8 == 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64", "int32",
                                   "int64", "uint8", "bool"])
def test_safetensors_roundtrip_dtypes(tmp_path, dtype):
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((3, 5)) * 100).astype(np.dtype(dtype) if dtype != "bfloat16" else BF16)
  tensors = {"a/b": x, "scalar": x.reshape(-1)[:1].reshape(()), "empty": x[:0],
             "odd": x.reshape(-1)[:7]}
  p = str(tmp_path / "t.safetensors")
  st.save_file(p, tensors, {"format": "x"})
  out, meta = st.load_file(p)
  assert meta == {"format": "x"} and list(out) == list(tensors)
  for k, v in tensors.items():
    assert out[k].dtype == v.dtype and out[k].shape == v.shape, k
    np.testing.assert_array_equal(_bits(out[k]), _bits(v))
  header, start = st.read_header(p)
  assert start % 8 == 0 and header["a/b"]["shape"] == [3, 5]


def test_safetensors_big_endian_input_is_stored_little_endian(tmp_path):
  p = str(tmp_path / "be.safetensors")
  st.save_file(p, {"x": np.array([1.0, 2.0], ">f4")})
  out, _ = st.load_file(p)
  assert out["x"].dtype == np.float32 and out["x"].tolist() == [1.0, 2.0]
  assert open(p, "rb").read()[-8:] == struct.pack("<ff", 1.0, 2.0)


def _write_raw(path, header: dict, data: bytes):
  raw = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("header,data,match", [
    ({"x": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "F99"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8 bytes"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "starts at byte"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 6, "trailing"),
    ({"x": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "malformed entry"),
])
def test_safetensors_malformed(tmp_path, header, data, match):
  p = str(tmp_path / "bad.safetensors")
  _write_raw(p, header, data)
  with pytest.raises(st.SafetensorsError, match=match):
    st.load_file(p)


def test_safetensors_not_a_file_of_the_format(tmp_path):
  p = tmp_path / "junk"
  p.write_bytes(b"\xff" * 64)
  with pytest.raises(st.SafetensorsError, match="header size"):
    st.load_file(str(p))
  p.write_bytes(b"abc")
  with pytest.raises(st.SafetensorsError, match="too short"):
    st.load_file(str(p))
  with pytest.raises(st.SafetensorsError, match="no safetensors name"):
    st.save_file(str(p), {"c": np.zeros(2, np.complex64)})
  with pytest.raises(st.SafetensorsError, match="must be strings"):
    st.save_file(str(p), {"c": np.zeros(2)}, {"n": 1})


def test_safetensors_package_reads_and_writes_our_files(tmp_path):
  """Only where the `safetensors` package happens to be installed (not a dependency)."""
  sf = pytest.importorskip("safetensors.flax")
  safetensors = pytest.importorskip("safetensors")
  x = {"f": np.arange(6, dtype=np.float32).reshape(2, 3),
       "h": np.arange(5, dtype=np.float32).astype(BF16), "i": np.array([7, 8], np.int32)}
  p = str(tmp_path / "ours.safetensors")
  st.save_file(p, x, {"format": "gca_jax-export"})
  theirs = sf.load_file(p)
  for k in x:
    np.testing.assert_array_equal(_bits(np.asarray(theirs[k])), _bits(x[k]))
  with safetensors.safe_open(p, "flax") as f:
    assert f.metadata() == {"format": "gca_jax-export"}
  q = str(tmp_path / "theirs.safetensors")
  sf.save_file({k: jnp.asarray(v) for k, v in x.items()}, q, metadata={"m": "1"})
  out, meta = st.load_file(q)
  assert meta == {"m": "1"}
  for k in x:
    np.testing.assert_array_equal(_bits(out[k]), _bits(x[k]))


# -- save_model / load_model -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_save_load_roundtrip(tmp_path, dtype):
  params = _init()
  out = ex.save_model(str(tmp_path / "m"), params, CFG, tokenizer=TOKENIZER,
                      meta={"step": 3, "note": "x"}, dtype=dtype)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.model"]
  stored = ex.load_model(out, dtype="stored")
  want = params if dtype is None else jax.tree.map(lambda x: np.asarray(x).astype(BF16), params)
  _assert_same_bits(want, stored.params)
  assert stored.config == CFG and stored.meta == {"step": 3, "note": "x"}
  assert open(stored.tokenizer, "rb").read() == open(TOKENIZER, "rb").read()
  # default: float leaves in the config's param_dtype (bf16 -> f32 exact)
  m = ex.load_model(out)
  assert {x.dtype for x in jax.tree.leaves(m.params)} == {np.dtype(np.float32)}
  _assert_same_bits(jax.tree.map(lambda x: np.asarray(x).astype(np.float32), want), m.params)
  assert isinstance(jax.tree.leaves(m.params)[0], jax.Array)
  if dtype is None:
    fwd = jax.jit(lambda p, t: DRT(CFG).apply({"params": p}, t))
    tokens = jnp.asarray((np.arange(50) * 7 % 4096)[None])
    np.testing.assert_array_equal(np.asarray(fwd(params, tokens)),
                                  np.asarray(fwd(m.params, tokens)))


def test_key_naming_and_config_json(tmp_path):
  import flax.linen as nn
  boxed = jax.tree.map(lambda x: nn.Partitioned(x, (None,) * x.ndim), _init())
  out = ex.save_model(str(tmp_path / "m"), {"params": boxed}, CFG)   # as `init` returns it
  header, _ = st.read_header(os.path.join(out, "model.safetensors"))
  assert header.pop("__metadata__") == {"format": "gca_jax-export", "version": "1"}
  assert "upper_0/gca/q_proj/kernel" in header and "encoder/layer_0/attn/k_proj/kernel" in header
  assert header["embedding"] == {"dtype": "F32", "shape": [4096, 32],
                                 "data_offsets": header["embedding"]["data_offsets"]}
  assert len(header) == 38
  info = json.load(open(os.path.join(out, "config.json")))
  st_path = os.path.join(out, "model.safetensors")
  assert info == {"format": "gca_jax-export", "version": 1, "model": CFG.to_dict(),
                  "tokenizer": None, "meta": {},
                  "files": {"model.safetensors": {
                      "sha256": hashlib.sha256(open(st_path, "rb").read()).hexdigest(),
                      "bytes": os.path.getsize(st_path)}}}
  assert ex.load_model(out).tokenizer is None


@pytest.mark.parametrize("kind", ["swa", "full", "landmark"])
def test_roundtrip_baselines(tmp_path, kind):
  cfg = CFG.replace(model_kind=kind, baseline_extra_layers=1)
  params = _init(cfg)
  out = ex.save_model(str(tmp_path / kind), params, cfg, dtype="bfloat16")
  m = ex.load_model(out, dtype="stored")
  assert m.config.model_kind == kind and len(_flat(m.params)) == len(_flat(params))
  assert {x.dtype for x in jax.tree.leaves(m.params)} == {BF16}


# -- atomic writes -----------------------------------------------------------------------------

def _boom_after_partial(monkeypatch):
  real = st.save_file

  def partial(path, tensors, metadata=None):
    real(path, dict(list(tensors.items())[:3]), metadata)
    raise OSError("disk full (simulated)")
  monkeypatch.setattr(st, "save_file", partial)


def test_failed_write_leaves_no_target(tmp_path, monkeypatch):
  _boom_after_partial(monkeypatch)
  with pytest.raises(OSError, match="simulated"):
    ex.save_model(str(tmp_path / "m"), _init(), CFG)
  assert os.listdir(tmp_path) == []


def test_failed_write_keeps_old_target(tmp_path, monkeypatch):
  old = _init(seed=1)
  out = ex.save_model(str(tmp_path / "m"), old, CFG, meta={"v": "old"})
  _boom_after_partial(monkeypatch)
  with pytest.raises(OSError, match="simulated"):
    ex.save_model(out, _init(seed=2), CFG, meta={"v": "new"})
  assert os.listdir(tmp_path) == ["m"]
  m = ex.load_model(out, dtype="stored")
  assert m.meta == {"v": "old"}
  _assert_same_bits(old, m.params)
  monkeypatch.undo()
  ex.save_model(out, _init(seed=2), CFG, meta={"v": "new"})   # a complete write replaces it
  assert ex.load_model(out).meta == {"v": "new"} and os.listdir(tmp_path) == ["m"]


def test_refuses_to_replace_a_non_model_dir(tmp_path):
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "notes.txt").write_text("keep me")
  with pytest.raises(ex.ExportError, match="not a model directory"):
    ex.save_model(str(tmp_path / "data"), _init(), CFG)
  assert (tmp_path / "data" / "notes.txt").read_text() == "keep me"
  (tmp_path / "f").write_text("x")
  with pytest.raises(ex.ExportError, match="not a directory"):
    ex.save_model(str(tmp_path / "f"), _init(), CFG)


# -- errors ------------------------------------------------------------------------------------

def test_param_tree_mismatch_names_the_path(tmp_path):
  params = _init()
  flat = _flat(params)
  del flat["upper_0/gca/q_proj/kernel"]
  with pytest.raises(ex.ExportError, match="'upper_0/gca/q_proj/kernel'.*missing"):
    ex.save_model(str(tmp_path / "a"), ex.unflatten_params(flat), CFG)
  flat = _flat(params)
  flat["mem_k/kernel"] = np.zeros((32, 16), np.float32)
  with pytest.raises(ex.ExportError, match=r"'mem_k/kernel' has shape \[32, 16\].*\[32, 32\]"):
    ex.save_model(str(tmp_path / "b"), ex.unflatten_params(flat), CFG)
  flat = dict(_flat(params), **{"extra/kernel": np.zeros(2, np.float32)})
  with pytest.raises(ex.ExportError, match="'extra/kernel' is not in the config's model"):
    ex.save_model(str(tmp_path / "c"), ex.unflatten_params(flat), CFG)
  # an export whose config.json was edited to another model
  out = ex.save_model(str(tmp_path / "d"), params, CFG)
  info = json.load(open(os.path.join(out, "config.json")))
  info["model"]["mlp_dim"] = 96
  json.dump(info, open(os.path.join(out, "config.json"), "w"))
  with pytest.raises(ex.ExportError, match=r"model.safetensors: parameter '\S+/wi_gate/kernel' "
                                           r"has shape \[32, 64\].*\[32, 96\]"):
    ex.load_model(out)
  assert ex.load_model(out, check=False).config.mlp_dim == 96


def test_load_errors(tmp_path):
  with pytest.raises(ex.ExportError, match="no such directory"):
    ex.load_model(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ex.ExportError, match="no config.json"):
    ex.load_model(str(tmp_path / "empty"))
  old = tmp_path / "old"
  old.mkdir()
  (old / "config.json").write_text(json.dumps({"model": CFG.to_dict(), "meta": {}}))
  (old / "params.npz").write_bytes(b"")
  with pytest.raises(ex.ExportError, match="format None.*old params.npz model: convert"):
    ex.load_model(str(old))
  out = ex.save_model(str(tmp_path / "m"), _init(), CFG)
  cfg_path = os.path.join(out, "config.json")
  info = json.load(open(cfg_path))
  json.dump(dict(info, version=2), open(cfg_path, "w"))
  with pytest.raises(ex.ExportError, match="version 2 is not supported"):
    ex.load_model(out)
  json.dump(dict(info, model=dict(info["model"], model_kind="rnn")), open(cfg_path, "w"))
  with pytest.raises(ex.ExportError, match="model_kind"):
    ex.load_model(out)
  json.dump(dict(info, tokenizer="tokenizer.model"), open(cfg_path, "w"))
  with pytest.raises(ex.ExportError, match="names tokenizer 'tokenizer.model'"):
    ex.load_model(out)
  json.dump(info, open(cfg_path, "w"))
  st_path = os.path.join(out, "model.safetensors")
  size = os.path.getsize(st_path)
  with open(st_path, "r+b") as f:
    f.truncate(size - 4)
  with pytest.raises(ex.ExportError, match=rf"model.safetensors: {size - 4} bytes, config.json "
                                           rf"records {size} \(the file is truncated"):
    ex.load_model(out)
  with pytest.raises(ex.ExportError, match=r"model.safetensors: tensors cover \d+ bytes, "
                                           r"the data section has \d+ \(truncated"):
    ex.load_model(out, verify=False)
  os.remove(st_path)
  with pytest.raises(ex.ExportError, match="no model.safetensors"):
    ex.load_model(out)
  with pytest.raises(ex.ExportError, match="dtype='int8'"):
    ex.save_model(str(tmp_path / "x"), _init(), CFG, dtype="int8")
  with pytest.raises(ex.ExportError, match="tokenizer='missing.model': no such file"):
    ex.save_model(str(tmp_path / "x"), _init(), CFG, tokenizer="missing.model")
  with pytest.raises(ex.ExportError, match="not JSON-serialisable"):
    ex.save_model(str(tmp_path / "x"), _init(), CFG, meta={"a": object()})
  assert not os.path.exists(tmp_path / "x")


# -- checksums ---------------------------------------------------------------------------------

def _flip_middle(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x01]))


def test_flipped_byte_is_named(tmp_path):
  params = _init()
  out = ex.save_model(str(tmp_path / "m"), params, CFG, tokenizer=TOKENIZER)
  info = json.load(open(os.path.join(out, "config.json")))
  assert sorted(info["files"]) == ["model.safetensors", "tokenizer.model"]
  st_path = os.path.join(out, "model.safetensors")
  _flip_middle(st_path)     # inside the tensor data: the file still parses
  with pytest.raises(ex.ExportError) as e:
    ex.load_model(out)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"{st_path}: sha256 ")
  assert "recorded in config.json (the file is damaged or was replaced)" in msg
  unchecked = ex.load_model(out, dtype="stored", verify=False)   # without the check: no error,
  diff = [k for k, v in _flat(params).items() if not np.array_equal(v, _flat(unchecked.params)[k])]
  assert len(diff) == 1                                          # one parameter silently changed
  out2 = ex.save_model(str(tmp_path / "t"), params, CFG, tokenizer=TOKENIZER)
  _flip_middle(os.path.join(out2, "tokenizer.model"))
  with pytest.raises(ex.ExportError, match=r"tokenizer.model: sha256 .* differs"):
    ex.load_model(out2)
  os.remove(os.path.join(out2, "tokenizer.model"))
  with pytest.raises(ex.ExportError, match=r"tokenizer.model: missing \(listed in config.json\)"):
    ex.load_model(out2)


def test_export_without_checksums_warns_and_gets_them(tmp_path, capsys):
  from gca_jax.export.checksums import add_checksums, main
  params = _init()
  out = ex.save_model(str(tmp_path / "m"), params, CFG, tokenizer=TOKENIZER)
  cfg_path = os.path.join(out, "config.json")
  info = json.load(open(cfg_path))
  files = info.pop("files")
  json.dump(info, open(cfg_path, "w"), indent=1)          # as written before checksums existed
  with pytest.warns(UserWarning, match="has no 'files' checksums") as w:
    m = ex.load_model(out, dtype="stored")
  assert len(w) == 1
  _assert_same_bits(params, m.params)
  assert main([out]) == 0 and "checksums added" in capsys.readouterr().out
  assert json.load(open(cfg_path)) == dict(info, files=files)
  assert add_checksums(out) is False                       # present and matching: unchanged
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ex.load_model(out)
  _flip_middle(os.path.join(out, "model.safetensors"))
  assert main([out]) == 1 and "sha256" in capsys.readouterr().err
  assert main([]) == 2


# -- train.py runs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, compile_cache):  # noqa: F811
  """A 4-step run of the small DRT, checkpoints at steps 2 and 4."""
  from gca_jax.train import train
  base = tmp_path_factory.mktemp("run")
  cfg = small_run_config(str(base / "run"), str(base / "cache"))
  r = train(cfg, devices=jax.devices()[:1], message=lambda _: None)
  assert r.status == "completed" and r.step == 4
  return str(base / "run")


def _full_restore(run_dir, step):
  """Params of `step` through the trainer's own full-state restore (optimizer included)."""
  from gca_jax.sharding import make_mesh
  from gca_jax.train import Checkpointer, make_optimizer, state_shardings
  from gca_jax.train.run_config import base_config
  abstract, _ = state_shardings(DRT(CFG), make_optimizer(base_config().train)[0],
                                make_mesh(devices=jax.devices()[:1]), 0)
  ck = Checkpointer(run_dir, read_only=True)
  _, state, _ = ck.restore(step, abstract)
  ck.close()
  return state.params


def test_load_run(tiny_run):
  m = ex.load_run(tiny_run)
  assert m.config == CFG and m.meta["step"] == 4
  assert m.tokenizer == os.path.abspath(TOKENIZER)
  assert m.meta["train_seq_len"] == 60 and m.meta["run_config"]["model"]["d_model"] == 32
  assert m.meta["tokens_seen"] == 4 * 4 * 60
  _assert_same_bits(_full_restore(tiny_run, 4), m.params)
  m2 = ex.load_run(tiny_run, step=2)
  assert m2.meta["step"] == 2
  _assert_same_bits(_full_restore(tiny_run, 2), m2.params)
  assert not np.array_equal(np.asarray(m.params["embedding"]), np.asarray(m2.params["embedding"]))
  with pytest.raises(ex.ExportError, match=r"no checkpoint for step 3; available: \[2, 4\]"):
    ex.load_run(tiny_run, step=3)


def test_load_run_config_json_fallback(tiny_run, tmp_path):
  """A checkpoint without its config item: the run dir's config.json is used."""
  import shutil
  run = str(tmp_path / "copy")
  shutil.copytree(tiny_run, run)
  shutil.rmtree(os.path.join(run, "checkpoints", "4", "config"))
  m = ex.load_run(run)
  assert m.meta["step"] == 4 and m.config == CFG
  _assert_same_bits(ex.load_run(tiny_run).params, m.params)
  os.remove(os.path.join(run, "config.json"))
  with pytest.raises(ex.ExportError, match="no saved config and there is no"):
    ex.load_run(run)


def test_load_run_skips_a_damaged_step(tiny_run, tmp_path, capfd):
  import glob
  import shutil
  run = str(tmp_path / "copy")
  shutil.copytree(tiny_run, run)
  for f in glob.glob(os.path.join(run, "checkpoints", "4", "state", "ocdbt.process_0", "d", "*")):
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)
  capfd.readouterr()
  m = ex.load_run(run)
  assert m.meta["step"] == 2
  _assert_same_bits(ex.load_run(tiny_run, step=2).params, m.params)
  err = capfd.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("warning: checkpoint step 4 is damaged (its state "
                                             "cannot be read (")
  assert err[0].endswith("); using step 2")
  assert os.path.isdir(os.path.join(run, "checkpoints", "4"))    # read-only: left in place
  with pytest.raises(ex.ExportError, match=r"checkpoint step 4 is damaged: its state cannot be"):
    ex.load_run(run, step=4)


def test_load_run_errors(tmp_path):
  with pytest.raises(ex.ExportError, match="no such directory"):
    ex.load_run(str(tmp_path / "nope"))
  with pytest.raises(ex.ExportError, match="no checkpoint directory"):
    ex.load_run(str(tmp_path))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(ex.ExportError, match="no complete checkpoint"):
    ex.load_run(str(tmp_path))


def test_cli_entry_point():
  import subprocess
  import sys
  r = subprocess.run([sys.executable, "-m", "gca_jax.export", "--help"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and "--run_dir" in r.stdout and "--dtype" in r.stdout


def test_export_run_and_cli(tiny_run, tmp_path, capsys):
  from gca_jax.export.__main__ import main
  out = ex.export_run(tiny_run, str(tmp_path / "e"), step=2, dtype="bfloat16")
  m = ex.load_model(out, dtype="stored")
  want = jax.tree.map(lambda x: np.asarray(x).astype(BF16), ex.load_run(tiny_run, 2).params)
  _assert_same_bits(want, m.params)
  assert m.meta["step"] == 2 and m.meta["source"] == "train.py run"
  assert open(m.tokenizer, "rb").read() == open(TOKENIZER, "rb").read()
  assert main(["--run_dir", tiny_run, "--out", str(tmp_path / "cli")]) == 0
  assert "exported step 4" in capsys.readouterr().out
  m = ex.load_model(str(tmp_path / "cli"), dtype="stored")
  _assert_same_bits(ex.load_run(tiny_run).params, m.params)    # float32 kept
  assert main(["--run_dir", tiny_run, "--out", str(tmp_path / "x"), "--step", "3"]) == 1
  assert "no checkpoint for step 3" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "x")
  with pytest.raises(ex.ExportError, match="not a model directory"):   # the run dir itself
    ex.export_run(tiny_run, tiny_run)
  assert ex.load_run(tiny_run).meta["step"] == 4


# -- the shipped exports -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_exports(name):
  path = os.path.join(ROOT, "checkpoints", name)
  assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "tokenizer.model"]
  info = json.load(open(os.path.join(path, "config.json")))
  assert sorted(info["files"]) == ["model.safetensors", "tokenizer.model"]
  with warnings.catch_warnings():
    warnings.simplefilter("error")       # checksums present and verified: no warning
    m = ex.load_model(path, dtype="stored")
  assert m.config.model_kind == SHIPPED[name] and m.config.d_model == 128
  assert {x.dtype for x in jax.tree.leaves(m.params)} == {BF16}
  assert open(m.tokenizer, "rb").read() == open(TOKENIZER, "rb").read()
  assert m.meta["step"] == 4000 and m.meta["train_seq_len"] == 1008
  assert m.meta["eval_path"] in ("data/sotu/valid", "data/corpus/valid")
  ex.check_params(m.params, m.config)
