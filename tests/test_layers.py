"""The package's layering holds: imports go down only, no cycle, no private name crosses a module.

Read from the source with ``ast`` (module-level and function-level imports alike), so
the test also sees imports that only run when a function is called.
"""

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxmix"

# Rank of each module: a module may import jaxmix modules of its own rank or lower only.
# ops (pure JAX) < evaluation (metrics, attacks, test sets, protocols) < training < commands.
TOP = {"jaxmix", "jaxmix.cli", "jaxmix.gallery", "jaxmix.dialects", "jaxmix.evaluation.cli"}
FORBIDDEN_IN_OPS = ("flax", "optax", "orbax", "tensorflow", "tensorflow_datasets", "PIL")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _rank(module: str) -> int:
  if module in TOP:
    return 3
  for prefix, rank in (("jaxmix.ops", 0), ("jaxmix.evaluation", 1), ("jaxmix.training", 2)):
    if module == prefix or module.startswith(prefix + "."):
      return rank
  raise AssertionError(f"{module} belongs to no layer; add it to the test's layer table.")


def _imports(module: str):
  """``(target module, names taken, line)`` for every import statement of ``module``."""
  tree = ast.parse(MODULES[module].read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, (), node.lineno
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        if sub in MODULES:
          yield sub, (), node.lineno  # a submodule
        else:
          yield node.module, (alias.name,), node.lineno


def _edges():
  for module in MODULES:
    for target, names, line in _imports(module):
      if target in MODULES or target.startswith("jaxmix"):
        yield module, target, names, line


def test_every_module_has_a_layer():
  for module in MODULES:
    _rank(module)


def test_imports_go_down_only():
  upward = [
    f"{m}:{line} imports {t} (layer {_rank(t)} above {_rank(m)})"
    for m, t, _, line in _edges()
    if t in MODULES and _rank(t) > _rank(m) and not t.startswith(m + ".")
  ]
  assert not upward, "\n".join(upward)


def test_ops_need_only_jax():
  bad = [f"{m}:{line} imports {t}" for m in MODULES if _rank(m) == 0 for t, _, line in _imports(m) if t.split(".")[0] in FORBIDDEN_IN_OPS]
  assert not bad, "\n".join(bad)


def test_no_import_cycle():
  graph = {m: set() for m in MODULES}
  for m, t, _, _ in _edges():
    if t in MODULES and t != m:
      graph[m].add(t)
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)


def _attribute_uses(module: str):
  """``(alias target module, attribute, line)`` for ``alias._name`` where alias is an imported jaxmix module."""
  tree = ast.parse(MODULES[module].read_text())
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        if sub in MODULES:
          aliases[alias.asname or alias.name] = sub
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
      yield aliases[node.value.id], node.attr, node.lineno


def test_no_private_name_crosses_a_module():
  taken = [f"{m}:{line} takes {t}.{n}" for m, t, names, line in _edges() for n in names if n.startswith("_") and n != "__version__"]
  reached = [
    f"{m}:{line} uses {t}.{a}" for m in MODULES for t, a, line in _attribute_uses(m) if a.startswith("_") and not a.startswith("__")
  ]
  assert not taken + reached, "\n".join(taken + reached)


@pytest.mark.parametrize("package", ["jaxmix.ops", "jaxmix.evaluation", "jaxmix.training"])
def test_subpackages_declare_their_public_names(package):
  import importlib

  mod = importlib.import_module(package)
  assert mod.__all__, package
  missing = [name for name in mod.__all__ if not hasattr(mod, name)]
  assert not missing, f"{package}.__all__ names missing attributes: {missing}"


def test_the_layer_test_can_fail(tmp_path, monkeypatch):
  """The rules catch an upward import and a cycle when one is planted."""
  fake = dict(MODULES)
  up = tmp_path / "bad_op.py"
  up.write_text("from jaxmix.training import loop\n")
  fake["jaxmix.ops.bad_op"] = up
  monkeypatch.setattr(sys.modules[__name__], "MODULES", fake)
  with pytest.raises(AssertionError, match="bad_op"):
    test_imports_go_down_only()
  cyc = tmp_path / "cyc.py"
  cyc.write_text("from jaxmix.ops import core\n")
  back = tmp_path / "core.py"
  back.write_text(MODULES["jaxmix.ops.core"].read_text() + "\nfrom jaxmix.ops import cyc\n")
  fake.pop("jaxmix.ops.bad_op")
  fake.update({"jaxmix.ops.cyc": cyc, "jaxmix.ops.core": back})
  with pytest.raises(AssertionError, match="cycle"):
    test_no_import_cycle()
