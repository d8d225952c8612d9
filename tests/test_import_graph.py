"""The import graph of gca_jax (every `import` in gca_jax/**/*.py, function-level ones included,
parsed with ast): no cycles, and the layering ops < layers < models < inference < train holds."""

import ast
import os
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "gca_jax"

# importer prefix -> gca_jax subpackages/modules it must never import (directly)
FORBIDDEN = {
    "gca_jax.ops": ("gca_jax.kernels", "gca_jax.layers", "gca_jax.models", "gca_jax.inference",
                    "gca_jax.train", "gca_jax.eval", "gca_jax.evaluation", "gca_jax.export",
                    "gca_jax.data", "gca_jax.config"),
    "gca_jax.config": ("gca_jax.kernels", "gca_jax.layers", "gca_jax.models", "gca_jax.inference",
                       "gca_jax.train", "gca_jax.eval"),
    "gca_jax.layers": ("gca_jax.models", "gca_jax.inference", "gca_jax.train", "gca_jax.eval",
                       "gca_jax.evaluation", "gca_jax.export"),
    "gca_jax.models": ("gca_jax.inference", "gca_jax.train", "gca_jax.eval", "gca_jax.evaluation"),
    "gca_jax.inference": ("gca_jax.train", "gca_jax.eval", "gca_jax.evaluation"),
    "gca_jax.eval": ("gca_jax.train",),
}
# kernels import only the standard library, jax, numpy, their own package and the ops registry
KERNEL_THIRD_PARTY = ("jax", "jaxlib", "numpy")
KERNEL_ALLOWED = ("gca_jax.kernels", "gca_jax.ops.gca", "gca_jax.ops.swa", "gca_jax.ops.errors")
# Known violations (imports in files outside ops/kernels/config, written by other changes): the
# rule stands; each such import is left out of the graph and reported as a warning, not a
# failure, until the change that removes it. Drop the entry then. (importer, imported): why.
KNOWN_VIOLATIONS = {
}


def _modules() -> dict[str, str]:
  """Module name -> file path of every gca_jax module."""
  out = {}
  for d, _, files in os.walk(os.path.join(ROOT, PKG)):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].split(os.sep)
        name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
        out[name] = os.path.join(d, f)
  return out


def _is_pkg(path: str) -> bool:
  return path.endswith("__init__.py")


def _imports(name: str, path: str, modules: dict[str, str]) -> list[tuple[str, int]]:
  """(imported module, line) for every import statement in the file: `from P import n` yields
  P.n when that is a module (Python imports it as one) else P; relative imports resolved."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  base = name if _is_pkg(path) else name.rpartition(".")[0]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        parts = base.split(".")
        parts = parts[:len(parts) - node.level + 1]
        mod = ".".join(parts + ([node.module] if node.module else []))
      else:
        mod = node.module
      for a in node.names:
        sub = f"{mod}.{a.name}"
        out.append((sub if sub in modules else mod, node.lineno))
  return out


def _graph(skip_known: bool = True):
  """Edges between gca_jax modules. Importing a.b.c also runs the packages a.b and a; those
  that are not packages of the importer itself (already being imported) count as edges.
  skip_known: leave the KNOWN_VIOLATIONS imports out."""
  modules = _modules()
  edges, raw = {m: set() for m in modules}, {}
  for name, path in modules.items():
    raw[name] = _imports(name, path, modules)
    own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
    for mod, _ in raw[name]:
      if not (mod == PKG or mod.startswith(PKG + ".")) or (skip_known and (name, mod) in KNOWN_VIOLATIONS):
        continue
      parts = mod.split(".")
      targets = {mod} | {".".join(parts[:i]) for i in range(2, len(parts))}
      targets = {t for t in targets if t in modules and (t == mod or t not in own)}
      edges[name] |= targets - {name}
  return modules, edges, raw


def _cycles(edges) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan, iterative)."""
  index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
  for root in sorted(edges):
    if root in index:
      continue
    work = [(root, iter(sorted(edges[root])))]
    index[root] = low[root] = n[0]; n[0] += 1; stack.append(root); on.add(root)
    while work:
      v, it = work[-1]
      w = next(it, None)
      if w is not None:
        if w not in index:
          index[w] = low[w] = n[0]; n[0] += 1; stack.append(w); on.add(w)
          work.append((w, iter(sorted(edges[w]))))
        elif w in on:
          low[v] = min(low[v], index[w])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[v])
      if low[v] == index[v]:
        comp = []
        while True:
          w = stack.pop(); on.discard(w); comp.append(w)
          if w == v:
            break
        if len(comp) > 1:
          out.append(sorted(comp))
  return out


def _under(mod: str, prefix: str) -> bool:
  return mod == prefix or mod.startswith(prefix + ".")


def test_cycle_finder_finds_a_planted_cycle():
  edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
  assert _cycles(edges) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_and_relative_imports(tmp_path):
  src = tmp_path / "m.py"
  src.write_text("def f():\n  from gca_jax.ops import gca\n  from . import swa\n"
                 "  import gca_jax.layers.retrieval\n")
  mods = _modules()
  got = {m for m, _ in _imports("gca_jax.ops.m", str(src), mods)}
  assert got == {"gca_jax.ops.gca", "gca_jax.ops.swa", "gca_jax.layers.retrieval"}


def test_no_import_cycles():
  modules, edges, _ = _graph()
  assert len(modules) > 30 and "gca_jax.kernels.gca_triton" in modules
  assert _cycles(edges) == []  # without the KNOWN_VIOLATIONS imports


def test_ops_never_imports_kernels_and_kernels_register_into_ops():
  _, edges, _ = _graph()
  ops = [m for m in edges if _under(m, "gca_jax.ops")]
  assert "gca_jax.ops.gca" in ops and "gca_jax.ops.errors" in ops
  assert not [(m, t) for m in ops for t in edges[m] if _under(t, "gca_jax.kernels")]
  assert "gca_jax.ops.gca" in edges["gca_jax.kernels"]
  assert edges["gca_jax.ops.errors"] == set()  # the leaf both import


def _layering_violations():
  modules, _, raw = _graph()
  bad = []
  for name in sorted(modules):
    for prefix, banned in FORBIDDEN.items():
      if _under(name, prefix):
        bad += [(name, mod, line) for mod, line in raw[name]
                if any(_under(mod, b) for b in banned)]
    if _under(name, "gca_jax.kernels"):
      for mod, line in raw[name]:
        top = mod.split(".")[0]
        ok = (top in sys.stdlib_module_names or top == "__future__" or top in KERNEL_THIRD_PARTY
              or any(_under(mod, a) for a in KERNEL_ALLOWED))
        if not ok:
          bad.append((name, mod, line))
  return sorted(set(bad))


def test_layering():
  bad = _layering_violations()
  new = [b for b in bad if (b[0], b[1]) not in KNOWN_VIOLATIONS]
  assert new == [], "imports across layers (importer, imported, line): " + repr(new)


def test_known_violations_are_reported():
  """Each KNOWN_VIOLATIONS import still present is a warning; with them in the graph, every
  cycle goes through one of them (they explain all that the other tests leave out)."""
  modules, _, raw = _graph()
  present = {(name, mod) for name in modules for mod, _ in raw[name]}
  for key, why in KNOWN_VIOLATIONS.items():
    if key in present:
      warnings.warn(f"known import violation to remove ({why}): {key[0]} imports {key[1]}")
  full = _graph(skip_known=False)[1]
  known_importers = {k[0] for k in KNOWN_VIOLATIONS if k in present}
  for cycle in _cycles(full):
    assert known_importers & set(cycle), f"cycle not explained by KNOWN_VIOLATIONS: {cycle}"


def test_importing_ops_alone_gives_the_registered_kernels():
  """A fresh interpreter importing only gca_jax.ops: the package init registers the kernels, so
  "auto" and the config see them; ops itself did not import them."""
  code = ("import sys; import gca_jax.ops.gca as g; from gca_jax.config import DRTConfig;"
          "print(g.available_gca_impls()); print(DRTConfig(gca_impl='pallas_triton').gca_impl)")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                     cwd=ROOT, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  impls, name = r.stdout.split("\n")[:2]
  assert impls == "('auto', 'xla', 'pallas_triton', 'pallas_tpu')"
  assert name == "pallas_triton"


@pytest.mark.parametrize("field,value", [("gca_impl", "pallas"), ("gca_impl", "triton"),
                                         ("swa_impl", "flash")])
def test_config_lists_the_registered_names(field, value):
  from gca_jax import ops
  from gca_jax.config import ConfigError, DRTConfig
  from gca_jax.ops import swa
  with pytest.raises(ConfigError) as e:
    DRTConfig(**{field: value})
  names = ops.available_gca_impls() if field == "gca_impl" else swa.SWA_IMPLS
  assert f"DRTConfig.{field}={value!r}" in str(e.value) and str(tuple(names)) in str(e.value)
  assert len(names) >= 4


def test_config_accepts_a_newly_registered_kernel():
  from gca_jax.config import ConfigError, DRTConfig
  from gca_jax.ops import gca as gca_mod
  with pytest.raises(ConfigError):
    DRTConfig(gca_impl="test_registry_kernel")
  gca_mod.register_gca_impl("test_registry_kernel", gca_mod.gca_reference, platforms=("cpu",))
  try:
    assert DRTConfig(gca_impl="test_registry_kernel").gca_impl == "test_registry_kernel"
  finally:
    gca_mod._IMPLS.pop("test_registry_kernel")
