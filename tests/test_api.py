"""The public contract (README, "The API"): op conventions over ``jaxmix.__all__``, signatures, registry."""

import collections.abc
import inspect
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmix
from jaxmix.training import registry

# Public functions that are not ops (no key, not mixing). Keep this list small and explicit:
# a new public function is held to the op conventions unless it is named here.
NON_OPS = frozenset(
  {
    "one_hot",
    "normalize",
    "saliency",
    "get_method",
    "bce_on_softmax",
    "softmax_cross_entropy",
    "sigmoid_bce",
    "checked",
    "jsd_loss",
    "dropblock_schedule",
    "evaluate_all",
    "expected_calibration_error",
    "rms_calibration_error",
  }
)

# Ops that mix pairs take the lam / perm overrides (the API conventions).
PAIR_OPS = ("mixup", "cutmix", "patch_augment", "manifold_mixup", "patchup", "puzzlemix")

# Signatures fixed by the public API for the ops of this area: (name, default) after (key, images, labels).
API_SIGNATURES = {
  "mixup": [("alpha", 1.0), ("per_sample", False), ("lam", None), ("perm", None)],
  "cutmix": [("alpha", 1.0), ("per_sample", False), ("lam", None), ("perm", None)],
  "cutout": [("size", 16)],
  "patch_augment": [("prob", 1.0), ("min_dim", 0.1), ("max_dim", 0.9), ("lam", None), ("perm", None)],
}


def _public():
  return {name: getattr(jaxmix, name) for name in jaxmix.__all__}


def _ops():
  return {name: obj for name, obj in _public().items() if inspect.isfunction(obj) and name not in NON_OPS}


def test_all_names_exist_and_non_functions_are_types_modules_or_mappings():
  assert len(set(jaxmix.__all__)) == len(jaxmix.__all__)
  for name, obj in _public().items():
    if not inspect.isfunction(obj):
      assert isinstance(obj, (type, types.ModuleType, collections.abc.Mapping)), f"{name} is {type(obj)}"
  assert NON_OPS.isdisjoint(PAIR_OPS)
  for name in ("MixResult", "one_hot", "mixup", "cutmix", "cutout", "patch_augment", "METHODS"):
    assert name in jaxmix.__all__


@pytest.mark.parametrize("name", sorted(_ops()))
def test_op_convention_key_first_hyperparameters_keyword_only(name):
  params = list(inspect.signature(_ops()[name]).parameters.values())
  assert params[0].name == "key", f"{name}: the first parameter must be named key"
  assert params[0].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
  for p in params[1:]:
    assert p.kind != inspect.Parameter.VAR_POSITIONAL, f"{name}: *{p.name} is not allowed"
    if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD:
      assert p.default is inspect.Parameter.empty, f"{name}: hyper-parameter {p.name} must be keyword-only"
  data = [p.name for p in params[1:] if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD]
  assert 1 <= len(data) <= 3, f"{name}: data arguments {data}"
  if name in PAIR_OPS:
    kw = {p.name: p for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY}
    assert kw["lam"].default is None and kw["perm"].default is None


@pytest.mark.parametrize("name", sorted(API_SIGNATURES))
def test_signatures_of_api_md(name):
  params = inspect.signature(getattr(jaxmix, name)).parameters
  assert list(params)[:3] == ["key", "images", "labels"]
  for arg, default in API_SIGNATURES[name]:
    assert arg in params, f"{name} lacks {arg}"
    assert params[arg].kind == inspect.Parameter.KEYWORD_ONLY
    assert params[arg].default == default if default is not None else params[arg].default is None


def test_mixresult_fields():
  fields = jaxmix.MixResult._fields
  assert fields[:4] == ("images", "labels", "lam", "perm")


def test_registry_entries():
  methods = jaxmix.METHODS
  for name in ("vanilla", "mixup", "cutmix", "cutout", "patch_augment"):
    assert name in methods
  for name, method in methods.items():
    assert isinstance(method, jaxmix.Method) and method.name == name
    assert callable(method.op) and method.site in registry.SITES
    assert registry.SITES == ("input", "hidden", "saliency", "label_preserving")
    if name in API_SIGNATURES or name == "vanilla":  # the defaults of this area's entries are op keywords
      params = inspect.signature(method.op).parameters
      for hp in method.defaults:
        assert hp in params and params[hp].kind == inspect.Parameter.KEYWORD_ONLY, f"{name}: {hp}"
    if name in jaxmix.__all__:
      assert getattr(jaxmix, name) is method.op
  assert methods["cutout"].site == "label_preserving"
  assert methods["cutmix"].defaults["prob"] == 0.5  # CIFAR cutmix_prob of the CutMix README
  with pytest.raises(TypeError):
    methods["mixup"].defaults["alpha"] = 2.0  # read-only
  assert jaxmix.get_method("mixup") is methods["mixup"]
  with pytest.raises(ValueError, match="known methods"):
    jaxmix.get_method("mixupp")


@pytest.mark.parametrize("name", ["vanilla", "mixup", "cutmix", "cutout", "patch_augment"])
def test_registered_input_ops_run_with_their_defaults(name):
  method = jaxmix.METHODS[name]
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  y = jaxmix.one_hot(jnp.array([0, 1, 2, 3]), 10)
  res = jax.jit(lambda k, x, y: method.op(k, x, y, **method.defaults))(jax.random.key(1), x, y)
  assert isinstance(res, jaxmix.MixResult)
  assert res.images.shape == x.shape and res.labels.shape == y.shape
  assert res.lam.shape == (4,) and res.perm.shape == (4,)
  np.testing.assert_allclose(res.labels.sum(-1), 1.0, rtol=1e-6)


def test_import_does_not_load_tensorflow():
  code = "import sys, jaxmix; print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
  assert out.stdout.strip() == "[]", out.stdout
