"""Mixed precision: bfloat16 batches through every op, bfloat16 models, a bfloat16 train step."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmix
from jaxmix import training
from jaxmix.ops import hook
from jaxmix.training import config as jconfig
from jaxmix.training import models
from jaxmix.training import step as ts

IMAGE = (16, 16, 3)
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
SMALL = {"widths": (8, 8, 16, 16), "blocks": (1, 1, 1, 1)}
HPARAMS = {  # small-shape settings on top of the registry defaults
  "cutout": {"size": 8},
  "patchup": {"block_size": 3},
  "dropblock": {"block_size": 3},
  "ipmix": {"patch_sizes": (4, 8, 16)},
  "puzzlemix": {"block_num": 4},
}
X = jax.random.uniform(jax.random.key(0), (8, *IMAGE)).astype(jnp.bfloat16)
Y = jaxmix.one_hot(jnp.arange(8) % 4, 4)


def _hparams(method):
  return {**jaxmix.METHODS[method].defaults, **HPARAMS.get(method, {})}


# ----------------------------------------------------------------------------
# Every op keeps a bfloat16 batch bfloat16; labels and lam stay float32.


def _hidden_outputs(key, x, y, method, hp):
  """The mixed features and labels of ``hidden_mix`` at every site, with each site drawn in turn."""
  sites = hook.method_defaults(method)["sites"]
  layers = [None] if method == "dropblock" else range(len(sites))  # drop_block_all: every site at once
  out = []
  for layer in layers:
    mix_fn, carry = hook.hidden_mix(key, y, method=method, **hp, **({} if layer is None else {"layer": layer}))
    for site in models.SITES:
      h, carry = mix_fn(site, x, carry)
      out.append((h, carry.labels, carry.lam))
  return out


def _op_outputs(key, x, y, method):
  """(images, labels, lam) of the registry op of ``method`` (and its train-step variants) on ``x``."""
  entry, hp = jaxmix.METHODS[method], _hparams(method)
  if method == "dropblock":  # the op itself: features in, features out
    return [(entry.op(key, x, block_size=3), None, None), *_hidden_outputs(key, x, y, method, hp)]
  if entry.site == "hidden":
    res = entry.op(key, x, y, **hp)
    return [(res.images, res.labels, res.lam), *_hidden_outputs(key, x, y, method, hp)]
  if entry.site == "saliency":
    res = entry.op(key, x, y, jaxmix.saliency(jnp.cos(x)), **hp)
    grad_fn = lambda z: (jnp.cos(z), None)  # noqa: E731  (a bfloat16 "gradient")
    adv, _ = jaxmix.puzzlemix_train_batch(key, x, y, grad_fn=grad_fn, mean=MEAN, std=STD, adv_p=1.0, **HPARAMS["puzzlemix"])
    return [(res.images, res.labels, res.lam), (adv.images, adv.labels, adv.lam)]
  res = entry.op(key, x, y, **hp)
  views = [(v, None, None) for v in jaxmix.ipmix_views(key, x, **hp)] if entry.pixel_space else []  # IPMix's JSD views
  return [(res.images, res.labels, res.lam), *views]


@pytest.mark.parametrize("method", sorted(jaxmix.METHODS))
def test_every_method_keeps_a_bfloat16_batch(method):
  # dtypes are static: eval_shape traces the ops without running them.
  outputs = jax.eval_shape(lambda k, x, y: _op_outputs(k, x, y, method), jax.random.key(1), X, Y)
  assert outputs
  for images, labels, lam in outputs:
    assert images.dtype == jnp.bfloat16 and images.shape == X.shape, method
    assert labels is None or labels.dtype == jnp.float32, method
    assert lam is None or lam.dtype == jnp.float32, method


# ----------------------------------------------------------------------------
# bfloat16 models: convs and matmuls in bfloat16, float32 parameters, BN and logits.


@pytest.mark.parametrize("arch", models.ARCHS)
def test_bfloat16_model_computes_in_bfloat16_with_float32_params_stats_and_logits(arch):
  model = models.get_model(arch, 10, dtype="bfloat16")
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, updates = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
  assert {leaf.dtype for leaf in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
  matmuls = [e for e in jaxpr.eqns if e.primitive.name in ("conv_general_dilated", "dot_general")]
  kernels = [p for p in jax.tree.leaves(variables["params"]) if p.ndim in (2, 4)]
  assert len(matmuls) == len(kernels)  # every conv and the linear layer
  assert all(v.aval.dtype == jnp.bfloat16 for e in matmuls for v in e.invars)


def test_bfloat16_logits_are_close_to_float32_logits():
  x = jax.random.normal(jax.random.key(0), (4, *IMAGE))
  f32 = models.get_model("preactresnet_small", 10, **SMALL)
  bf16 = models.get_model("preactresnet_small", 10, dtype=jnp.bfloat16, **SMALL)
  variables = jax.jit(lambda x: f32.init(jax.random.key(1), x, train=False))(x)
  ref, out = jax.jit(f32.apply)(variables, x), jax.jit(bf16.apply)(variables, x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()))
  assert not np.array_equal(out, ref)  # it did compute in bfloat16


def test_dtype_setting_is_validated():
  with pytest.raises(ValueError, match="dtype"):
    models.get_model("preactresnet_small", 10, dtype="float16")
  cfg, _ = jconfig.parse_args(["--dtype", "bfloat16", "--arch", "preactresnet_small"])
  assert cfg.dtype == "bfloat16" and training.TrainConfig().dtype == "float32"
  jconfig.validate(cfg)
  with pytest.raises(SystemExit):
    jconfig.parse_args(["--dtype", "float16"])
  with pytest.raises(ValueError, match="--dtype"):
    jconfig.validate(training.TrainConfig(model_kwargs={"dtype": "bfloat16"}))
  with pytest.raises(ValueError, match="--dtype must be one of float32, bfloat16"):
    jconfig.validate(training.TrainConfig(dtype="float16"))


# ----------------------------------------------------------------------------
# The bfloat16 train step.


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, *IMAGE), dtype=np.uint8), "label": rng.integers(0, 10, n).astype(np.int32)}


def _setup(model, method, lr=0.1, **kw):
  hp = _hparams(method)
  cfg = ts.StepConfig(method=method, hparams=tuple(sorted(hp.items())), num_classes=10, mean=MEAN, std=STD, **kw)
  mesh = ts.make_mesh(1)
  state = ts.init_state(model, optax.sgd(lr, momentum=0.9), jax.random.key(2), IMAGE, seed_key=jax.random.key(3))
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  batch = jax.device_put(_batch(), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.AXIS)))
  return ts.make_train_step(model, cfg, mesh), state, batch


def _float32_everywhere(state):
  floats = jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
  return all(a.dtype == jnp.float32 for a in floats if jnp.issubdtype(a.dtype, jnp.floating))


def test_bfloat16_step_compiles_once_keeps_float32_state_and_learns():
  model = models.get_model("preactresnet_small", 10, dtype="bfloat16", **SMALL)
  step, state, batch = _setup(model, "vanilla", lr=0.05)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch, jax.random.key(4))
    assert metrics["loss"].dtype == jnp.float32
    losses.append(float(metrics["loss"]))
    if len(losses) == 3:
      assert step._cache_size() == 1
  assert step._cache_size() == 1 and int(state.step) == 30
  assert _float32_everywhere(state)
  assert np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.5 * losses[0], losses


_SEEN = []


class _Probe(nn.Module):
  """A tiny bfloat16 model that records (at trace time, in ``_SEEN``) the dtypes of the batch it is fed and of the mixed batch."""

  num_classes: int = 10
  dtype: Any = jnp.bfloat16

  @nn.compact
  def __call__(self, x, train: bool = False, mix=None, carry=None):
    _SEEN.append(("fed", x.dtype))
    h, carry = hook.apply_mix(mix, "input", x, carry)
    _SEEN.append(("mixed", h.dtype))
    h = nn.BatchNorm(use_running_average=not train, dtype=self.dtype)(h)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(h.reshape(h.shape[0], -1)).astype(jnp.float32)
    return logits if mix is None else (logits, carry)


@pytest.mark.parametrize("method, jsd", [("mixup", False), ("ipmix", True), ("manifold_mixup", False), ("puzzlemix", False)])
def test_bfloat16_step_feeds_and_mixes_a_bfloat16_batch(method, jsd):
  step, state, batch = _setup(_Probe(), method, jsd=jsd, loss="ce" if jsd else "bce")
  _SEEN.clear()  # init traced a float32 dummy
  for _ in range(3):
    state, metrics = step(state, batch, jax.random.key(5))
  assert step._cache_size() == 1 and np.isfinite(float(metrics["loss"]))
  assert {"fed", "mixed"} <= {what for what, _ in _SEEN}
  assert {dtype for _, dtype in _SEEN} == {jnp.dtype(jnp.bfloat16)}, _SEEN
  assert _float32_everywhere(state)
