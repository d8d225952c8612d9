"""Packaging (pyproject.toml): the core imports and runs with jax + flax alone, every third-party
import of gca_jax/ is declared, and the `gca-train` / `gca-eval` entry points find the shipped
configs, also from a `pip install .` into a fresh venv."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from _train_helpers import ROOT, cli_overrides

PKG = os.path.join(ROOT, "gca_jax")
# the core: importable with the `dependencies` of pyproject.toml alone
CORE = ("gca_jax", "gca_jax.config", "gca_jax.ops", "gca_jax.kernels", "gca_jax.layers",
        "gca_jax.models", "gca_jax.inference", "gca_jax.sharding", "gca_jax.export")
# import name -> distribution name (PEP 503-normalised) where they differ
DIST = {"absl": "absl-py", "array_record": "array-record", "orbax": "orbax-checkpoint", "tensorboardx": "tensorboardx",
        "ml_collections": "ml-collections", "ml_dtypes": "ml-dtypes"}
# imports inside try/except ImportError that come with an extra's package: import -> extra
OPTIONAL = {"nvidia": "gpu",    # ops/host_store.py: the CUDA runtime of jax[cuda12]
            "etils": "train"}  # export: gs:// tokenizer paths
# what the core must not need (flax itself pulls in absl and etils, so they are not blocked)
BLOCKED = ("optax", "orbax", "grain", "ml_collections", "sentencepiece", "matplotlib",
           "tensorboardX", "tqdm", "chex")
SHIPPED = ["drt_128m", "drt_128m_x2", "drt_20m_text", "full_128m", "multikey_tiny",
           "multikey_tiny_landmark", "multikey_tiny_swa", "recall_tiny", "recall_tiny_landmark",
           "recall_tiny_swa", "swa_128m", "tiny", "twohop_tiny_x2"]


def _pyproject() -> dict:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def _dist(req: str) -> str:
  return re.split(r"[\[<>=!~;\s]", req, maxsplit=1)[0].lower().replace("_", "-")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
  return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _third_party_imports() -> dict[str, set[str]]:
  """gca_jax module -> top-level third-party names it imports (function-level ones included)."""
  out = {}
  for d, _, files in os.walk(PKG):
    for f in (f for f in files if f.endswith(".py")):
      path = os.path.join(d, f)
      names = set()
      for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
          names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
          names.add(node.module.split(".")[0])
      out[_module_name(path)] = {n for n in names if n not in sys.stdlib_module_names
                                 and n not in ("__future__", "gca_jax")}
  return out


def _declared(project: dict) -> dict[str, set[str]]:
  """'core' and each extra -> the distributions it names (self-references gca_jax[x] expanded)."""
  extras = project["optional-dependencies"]
  out = {"core": {_dist(r) for r in project["dependencies"]}}

  def expand(name, seen=()):
    dists = set()
    for r in extras[name]:
      m = re.fullmatch(r"gca_jax\[([a-z_,]+)\]", r)
      if m:
        for e in m[1].split(","):
          assert e in extras and e not in seen, f"extra {name!r}: bad self-reference {r!r}"
          dists |= expand(e, seen + (name,))
      else:
        dists.add(_dist(r))
    return dists

  out.update({name: expand(name) for name in extras})
  return out


def _core(module: str) -> bool:
  return any(module == c or module.startswith(c + ".") for c in CORE if c != "gca_jax") \
      or module == "gca_jax"


def test_every_import_is_declared_and_core_is_exactly_the_core_imports():
  imports = _third_party_imports()
  assert len(imports) > 40 and imports["gca_jax.train.checkpoint"] >= {"orbax", "etils", "grain"}
  declared = _declared(_pyproject())
  dist = lambda n: DIST.get(n.lower(), n.lower().replace("_", "-"))  # noqa: E731
  core_imports = {dist(n) for m, ns in imports.items() if _core(m) for n in ns
                  if n not in OPTIONAL}
  assert core_imports == {"jax", "flax", "numpy", "ml-dtypes"}
  assert declared["core"] == core_imports
  everything = set().union(*declared.values())
  missing = sorted({(m, n) for m, ns in imports.items() for n in ns
                    if n not in OPTIONAL and dist(n) not in everything})
  assert missing == [], f"imported by gca_jax but in no dependency list: {missing}"
  for name, extra in OPTIONAL.items():   # nvidia comes with jax[cuda12]
    assert ("jax" if name == "nvidia" else dist(name)) in declared[extra], (name, extra)
  # train-only packages are not core; what the tests need is in `test` (scripts/setup.sh)
  assert not declared["core"] & {"optax", "orbax-checkpoint", "grain", "matplotlib"}
  assert declared["test"] >= declared["train"] | declared["eval"] | {"pytest"}
  assert declared["all"] >= declared["train"] | declared["eval"]
  assert {_dist(r) for r in _pyproject()["optional-dependencies"]["gpu"]} == {"jax"}


def test_every_requirement_has_a_floor():
  """scripts/check_floors.sh pins each `pkg>=floor` as `pkg==floor`: every requirement has one."""
  project = _pyproject()
  reqs = project["dependencies"] + [r for rs in project["optional-dependencies"].values()
                                    for r in rs if not r.startswith("gca_jax[")]
  bad = [r for r in reqs if not re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z0-9_,]+\])?>=[0-9.]+", r)]
  assert bad == []
  assert project["license"] == "Apache-2.0" and project["requires-python"] == ">=3.12"
  assert "Apache License" in open(os.path.join(ROOT, "LICENSE")).read(300)


_BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ModuleNotFoundError(f"blocked by test_packaging: {{name}}", name=name)
    return None
sys.meta_path.insert(0, _Block())
"""

_CORE_RUN = """
import sys
try:
  import optax
  raise SystemExit("the blocker does not block optax")
except ModuleNotFoundError:
  pass
import jax, jax.numpy as jnp, numpy as np
import gca_jax
from gca_jax import ops, layers, models, inference, export
from gca_jax.config import DRTConfig
cfg = DRTConfig(vocab_size=64, d_model=32, num_heads=2, mlp_dim=64, lower_layers=1,
                upper_groups=(1,), encoder_layers=1, window=16, chunk_size=16, top_k=2,
                dtype="float32", param_dtype="float32")
m = models.DRT(cfg)
tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 45)), jnp.int32)
params = m.init(jax.random.key(0), tokens)
logits = m.apply(params, tokens)
shipped = export.load_model(sys.argv[1])
tok = jnp.zeros((1, 30), jnp.int32)
logits2 = models.DRT(shipped.config).apply({"params": shipped.params}, tok)
bad = sorted({n.split(".")[0] for n in sys.modules} & set(BLOCKED))
print(tuple(logits.shape), bool(np.isfinite(np.asarray(logits)).all()), tuple(logits2.shape),
      bool(np.isfinite(np.asarray(logits2)).all()), bad)
"""


def _env(**extra) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env


def test_core_runs_without_the_train_and_eval_packages(tmp_path):
  """ops / layers / models / inference / export import, build, init and run a tiny DRT and a
  shipped export with optax, orbax, grain, ml_collections, sentencepiece, matplotlib,
  tensorboardX, tqdm, chex unimportable (a meta-path blocker in sitecustomize)."""
  (tmp_path / "sitecustomize.py").write_text(_BLOCKER.format(blocked=BLOCKED))
  code = f"BLOCKED = {BLOCKED!r}\n" + _CORE_RUN
  p = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "checkpoints", "sotu_drt")],
                     cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                     env=_env(PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT])))
  assert p.returncode == 0, p.stderr[-3000:]
  vocab = json.load(open(os.path.join(ROOT, "checkpoints", "sotu_drt", "config.json")))
  vocab = vocab["model"]["vocab_size"] if "model" in vocab else vocab["vocab_size"]
  assert p.stdout.split("\n")[-2] == f"(2, 45, 64) True (1, 30, {vocab}) True []"


def test_blocker_blocks(tmp_path):
  """The same blocker makes the train stack fail to import (so the test above means something)."""
  (tmp_path / "sitecustomize.py").write_text(_BLOCKER.format(blocked=BLOCKED))
  p = subprocess.run([sys.executable, "-c", "import gca_jax.train"], cwd=str(tmp_path),
                     capture_output=True, text=True, timeout=120,
                     env=_env(PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT])))
  assert p.returncode == 1 and "blocked by test_packaging" in p.stderr, p.stderr[-2000:]


def test_resolve_config(tmp_path, monkeypatch):
  from gca_jax.cli import CONFIG_DIR, resolve_config, resolve_config_args, shipped_configs
  assert shipped_configs() == SHIPPED
  tiny = os.path.join(CONFIG_DIR, "tiny.py")
  assert CONFIG_DIR == os.path.join(ROOT, "gca_jax", "configs")
  own = tmp_path / "mine.py"
  own.write_text("")
  monkeypatch.chdir(tmp_path)   # no configs/ here: a configs/<name>.py path falls back
  assert resolve_config("tiny") == tiny
  assert resolve_config("tiny.py") == tiny
  assert resolve_config("configs/tiny.py") == tiny
  assert resolve_config("drt_128m:arg") == os.path.join(CONFIG_DIR, "drt_128m.py") + ":arg"
  assert resolve_config("mine.py") == "mine.py"       # an existing file wins
  assert resolve_config(str(own)) == str(own)
  with pytest.raises(ValueError, match=r"--config='tinyy': no such file.*tiny"):
    resolve_config("tinyy")
  with pytest.raises(ValueError, match="no such file"):
    resolve_config("elsewhere/tiny.py")                # not a configs/ dir: no fallback
  assert resolve_config_args(["--config", "tiny", "--config.train.steps=2", "--x=tiny"]) == \
      ["--config", tiny, "--config.train.steps=2", "--x=tiny"]
  assert resolve_config_args(["--config=recall_tiny"]) == \
      ["--config=" + os.path.join(CONFIG_DIR, "recall_tiny.py")]


def test_unknown_config_name_exits_2(tmp_path):
  p = subprocess.run([sys.executable, "-c", "from gca_jax.cli import train_main; train_main()",
                      "--config", "tinyy"], cwd=str(tmp_path), capture_output=True, text=True,
                     timeout=120, env=_env(PYTHONPATH=ROOT))
  assert p.returncode == 2, p.stderr[-2000:]
  assert p.stderr.strip().splitlines()[-1].startswith("error: --config='tinyy': no such file")


def test_train_entry_point_runs_a_shipped_config_by_name(tmp_path):
  """gca_jax.cli:train_main (`gca-train`) with `--config tiny`: 2 steps of the small model."""
  run_dir = str(tmp_path / "run")
  args = ["--config", "tiny", *cli_overrides(run_dir, str(tmp_path / "cache"),
                                             **{"train.steps": 2, "train.eval_every": -1,
                                                "train.progress_bar": False})]
  p = subprocess.run([sys.executable, "-c",
                      "import sys; from gca_jax.cli import train_main; train_main()", *args],
                     cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                     env=_env(PYTHONPATH=ROOT))
  assert p.returncode == 0, p.stderr[-3000:]
  assert f"completed at step 2 (run_dir {run_dir})" in p.stdout
  recs = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  assert [r["step"] for r in recs if "loss" in r] == [1, 2]
  assert all(0 < r["loss"] < 20 for r in recs if "loss" in r)
  cfg = json.load(open(os.path.join(run_dir, "config.json")))
  assert cfg["model"]["d_model"] == 32 and cfg["train"]["steps"] == 2


def test_pip_install_gives_working_console_scripts(tmp_path):
  """`pip install --no-deps .` into a fresh venv whose dependencies come from this one (a .pth
  line; no downloads): gca-train --help and gca-eval --help work, and the shipped configs are in
  the installed package, not taken from the checkout."""
  pytest.importorskip("setuptools", reason="the test extra's setuptools builds the wheel offline")
  import site

  import gca_jax
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                 timeout=120)
  py = venv / "bin" / "python"
  purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], capture_output=True, text=True, check=True).stdout
  ours = [p for p in site.getsitepackages() if os.path.isdir(p)]
  with open(os.path.join(purelib.strip(), "_project_deps.pth"), "w") as f:
    f.write("\n".join(ours) + "\n")   # plain paths: their own .pth (the editable gca_jax) unused
  src = tmp_path / "src"   # a copy: pip builds in the source tree (build/, *.egg-info)
  src.mkdir()
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  shutil.copytree(PKG, src / "gca_jax", ignore=shutil.ignore_patterns("__pycache__"))
  p = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                      "--no-deps", "--no-build-isolation", "--no-index", str(src)],
                     capture_output=True, text=True, timeout=300, env=_env(),
                     cwd=str(tmp_path))
  assert p.returncode == 0, p.stderr[-3000:]
  env = _env()
  env.pop("PYTHONPATH", None)
  for script, needle in (("gca-train", "Train (or resume)"), ("gca-eval", "Evaluate a model")):
    h = subprocess.run([str(venv / "bin" / script), "--help"], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=120)
    assert h.returncode == 1, h.stderr[-2000:]   # absl's --help exits 1, as `python train.py`
    assert needle in h.stdout and "--config" in h.stdout, h.stdout[:500]
  code = ("import json, gca_jax, gca_jax.configs.swa_128m as s; from gca_jax import cli; "
          "from importlib import metadata as md; m = md.metadata('gca_jax'); "
          "print(json.dumps([gca_jax.__file__, cli.shipped_configs(), cli.resolve_config('tiny'), "
          "s.get_config().model.model_kind, m['License-Expression'], m['Version'], "
          "sorted(e.name for e in md.entry_points(group='console_scripts') "
          "if e.value.startswith('gca_jax'))]))")
  q = subprocess.run([str(py), "-c", code], cwd=str(tmp_path), env=env, capture_output=True,
                     text=True, timeout=120)
  assert q.returncode == 0, q.stderr[-2000:]
  init, names, tiny, kind, lic, version, scripts = json.loads(q.stdout)
  site_dir = os.path.join(purelib.strip(), "gca_jax")
  assert init == os.path.join(site_dir, "__init__.py")
  assert names == SHIPPED and tiny == os.path.join(site_dir, "configs", "tiny.py")
  assert kind == "swa" and lic == "Apache-2.0" and version == gca_jax.__version__ == "0.1.0"
  assert scripts == ["gca-eval", "gca-train"]
