"""The Colab notebooks in ``colab/`` run end to end, offline, at a tiny budget.

Each notebook has a cell tagged ``parameters`` (papermill convention). The test
parses the names that cell assigns and injects, right after it, a cell overriding
the ones listed in ``CI_PARAMS`` (papermill's ``injected-parameters``): the shared
CIFAR-10 zips instead of tfds, one epoch of two steps, a handful of evaluation
examples. Then nbclient executes the notebook in a kernel running this very
interpreter (a throw-away kernel spec, nothing installed) with the test's
persistent compilation cache, and any cell error fails the test.
"""

import ast
import json
import os
import pathlib
import sys

import jax
import nbformat
import pytest
from conftest import CIFAR_DIR
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
KERNEL = "jaxmix-nbtest"

# Tiny-budget overrides; each notebook gets those its parameters cell defines.
CI_PARAMS = {
  "DATA_DIR": CIFAR_DIR,
  "EPOCHS": 1,
  "LABELS_PER_CLASS": 10,
  "MAX_STEPS": 2,
  "MAX_EVAL": 64,
  "BATCH_SIZE": 16,
  "ARCH": "preactresnet_small",
  "N_PROBLEMS": 8,
}


def _parameters_cell(nb) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
  return tagged[0]


def _assigned_names(source: str) -> set:
  names = set()
  for node in ast.parse(source).body:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    names.update(t.id for t in targets if isinstance(t, ast.Name))
  return names


def _inject(nb, params: dict):
  """Inserts the overrides after the parameters cell (as papermill does)."""
  index = _parameters_cell(nb)
  defined = _assigned_names(nb.cells[index].source)
  assert "DATA_DIR" in defined, "the parameters cell must define DATA_DIR (offline data for CI)"
  lines = [f"{name} = {value!r}" for name, value in params.items() if name in defined]
  cell = nbformat.v4.new_code_cell("# Parameters injected by tests/test_notebooks.py\n" + "\n".join(lines))
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(index + 1, cell)
  return nb


def _kernel_env(spec_root: pathlib.Path) -> dict:
  """Writes a kernel spec for ``sys.executable`` under ``spec_root``; returns the kernel's environment."""
  spec_dir = spec_root / "kernels" / KERNEL
  spec_dir.mkdir(parents=True, exist_ok=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": KERNEL, "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  env = dict(os.environ)
  env["JUPYTER_PATH"] = os.pathsep.join([str(spec_root)] + ([env["JUPYTER_PATH"]] if env.get("JUPYTER_PATH") else []))
  env.pop("XLA_FLAGS", None)  # one CPU device, as a plain local run
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
  # The test suite's persistent compilation cache (conftest.py), also across the notebooks' repeated compiles.
  env["JAX_COMPILATION_CACHE_DIR"] = str(jax.config.jax_compilation_cache_dir)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


def execute(path: pathlib.Path, workdir: pathlib.Path, params: dict = CI_PARAMS, allow_errors: bool = False):
  """Runs the notebook at ``path`` with ``params`` injected, in ``workdir``; returns the executed notebook."""
  nb = _inject(nbformat.read(path, as_version=4), params)
  env = _kernel_env(workdir / ".jupyter")
  client = NotebookClient(nb, kernel_name=KERNEL, timeout=600, allow_errors=allow_errors, resources={"metadata": {"path": str(workdir)}})
  # The kernel spec is looked up in this process: point JUPYTER_PATH at it while starting the kernel.
  old = os.environ.get("JUPYTER_PATH")
  os.environ["JUPYTER_PATH"] = env["JUPYTER_PATH"]
  try:
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
  finally:
    if old is None:
      os.environ.pop("JUPYTER_PATH", None)
    else:
      os.environ["JUPYTER_PATH"] = old
  return nb


def test_notebooks_found():
  names = {p.name for p in NOTEBOOKS}
  assert {"quickstart.ipynb", "train_cifar.ipynb", "puzzlemix_explained.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"cell {i} of {path.name} has outputs; strip them before committing"
      assert cell.execution_count is None, f"cell {i} of {path.name} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_opens_with_badge_and_colab_only_install(path):
  nb = nbformat.read(path, as_version=4)
  assert f"colab.research.google.com/github/jaxmix/jaxmix/blob/main/colab/{path.name}" in nb.cells[0].source
  installs = [c.source for c in nb.cells if c.cell_type == "code" and "pip" in c.source and "install" in c.source]
  assert installs and all('"google.colab" in sys.modules' in s for s in installs)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
  nb = execute(path, tmp_path)
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  assert not errors
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
  assert images, f"{path.name} drew no figure"
