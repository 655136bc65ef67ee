"""The train step computes what it means to: each method's loss by hand, the optimizers by hand.

For every registry method one step's loss is recomputed outside the step from the op's
own output (same key, same parameters, ``loss_scale`` included); a step that skipped the
op, fed it the wrong input or dropped the scale gives another number.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmix
from jaxmix import training
from jaxmix.training import step as ts

IMAGE = (16, 16, 3)
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
SMALL = {"widths": (8, 8, 16, 16), "blocks": (1, 1, 1, 1)}
HPARAMS = {
  "cutout": {"size": 8},
  "patchup": {"block_size": 3},
  "dropblock": {"block_size": 3},
  "ipmix": {"patch_sizes": (4, 8, 16)},
  "puzzlemix": {"block_num": 4},
}


@pytest.fixture(scope="module")
def model():
  return training.get_model("preactresnet_small", 10, **SMALL)


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, *IMAGE), dtype=np.uint8), "label": rng.integers(0, 10, n).astype(np.int32)}


def _forward(model, variables, x, **kw):
  (out, _) = model.apply(variables, x, train=True, mutable=["batch_stats"], **kw)
  return out


def _loss_by_hand(model, variables, method, hp, batch, key):
  """The method's loss on ``batch`` from the op's output, as the step should compute it (1 device)."""
  entry = jaxmix.METHODS[method]
  k = jax.random.fold_in(jax.random.fold_in(key, 0), 0)  # the step's fold_in(step = 0), then device 0
  y = jaxmix.one_hot(jnp.asarray(batch["label"]), 10)
  x01 = jnp.asarray(batch["image"], jnp.float32) / 255.0
  xn = jaxmix.normalize(x01, MEAN, STD, max_value=1.0)
  if entry.site == "hidden":
    mix_fn, carry = jaxmix.hidden_mix(k, y, method=method, **hp)
    logits, carry = _forward(model, variables, xn, mix=mix_fn, carry=carry)
    return carry.loss_scale * jaxmix.bce_on_softmax(logits, carry.labels)
  if entry.site == "saliency":

    def grad_fn(x_in):
      ce = lambda x: jaxmix.softmax_cross_entropy(model.apply(variables, x, train=False), y)  # noqa: E731
      return jax.grad(ce)(x_in), None

    res, _ = jaxmix.puzzlemix_train_batch(k, xn, y, grad_fn=grad_fn, mean=MEAN, std=STD, **hp)
    return jaxmix.bce_on_softmax(_forward(model, variables, res.images), res.labels)
  if entry.pixel_space:
    res = entry.op(k, x01, y, **hp)
    x_in = jaxmix.normalize(res.images, MEAN, STD, max_value=1.0)
  else:
    res = entry.op(k, xn, y, **hp)
    x_in = res.images
  scale = 1.0 if res.loss_scale is None else res.loss_scale
  return scale * jaxmix.bce_on_softmax(_forward(model, variables, x_in), res.labels)


@pytest.mark.parametrize("method", sorted(jaxmix.METHODS))
def test_step_loss_equals_the_loss_of_the_ops_output(method, model):
  hp = {**jaxmix.METHODS[method].defaults, **HPARAMS.get(method, {})}
  cfg = ts.StepConfig(method=method, hparams=tuple(sorted(hp.items())), num_classes=10, mean=MEAN, std=STD)
  mesh = ts.make_mesh(1)
  state = ts.init_state(model, optax.sgd(0.1), jax.random.key(3), IMAGE, seed_key=jax.random.key(3))
  variables = jax.tree.map(lambda a: jnp.array(a, copy=True), {"params": state.params, "batch_stats": state.batch_stats})
  batch = _batch()
  key = jax.random.key(7)
  expected = jax.jit(functools.partial(_loss_by_hand, model, method=method, hp=hp))(variables, batch=batch, key=key)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.AXIS))
  replicated = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  _, metrics = ts.make_train_step(model, cfg, mesh)(replicated, jax.device_put(batch, sharding), key)
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=2e-5)
  if method != "vanilla":  # the comparison can tell a mixed batch from a clean one
    clean = _loss_by_hand(model, variables, "vanilla", {}, batch, key)
    assert abs(float(clean) - float(expected)) > 1e-4


def _pytorch_sgd(params, grads_seq, lrs, momentum, decay, nesterov):
  """torch.optim.SGD(momentum, weight_decay, nesterov) written out, one step per gradient."""
  p, buf = np.array(params, np.float64), None
  for g, lr in zip(grads_seq, lrs, strict=True):
    d = g + decay * p
    buf = d if buf is None else momentum * buf + d
    p = p - lr * (d + momentum * buf if nesterov else buf)
  return p


def _adam_l2(params, grads_seq, lrs, decay, b1=0.9, b2=0.999, eps=1e-8):
  """Adam on the L2-decayed gradient (PyTorch Adam with weight_decay) written out."""
  p, m, v = np.array(params, np.float64), 0.0, 0.0
  for t, (g, lr) in enumerate(zip(grads_seq, lrs, strict=True), start=1):
    d = g + decay * p
    m, v = b1 * m + (1 - b1) * d, b2 * v + (1 - b2) * d * d
    p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  return p


def _run_tx(tx, params, grads_seq):
  params = jnp.asarray(params, jnp.float32)
  opt_state = tx.init(params)
  for g in grads_seq:
    updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params)


GRADS = [np.array([0.5, -1.0, 2.0]), np.array([0.1, 0.3, -0.2]), np.array([-0.4, 0.0, 1.0]), np.array([0.2, 0.2, 0.2])]
P0 = np.array([1.0, -2.0, 0.5])


def _cosine(lr, step, total):
  floor = 1e-6 / lr
  return lr * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * step / total)))


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_with_weight_decay_and_cosine_schedule_by_hand(nesterov):
  cfg = training.TrainConfig(learning_rate=0.2, momentum=0.9, decay=5e-4, nesterov=nesterov, lr_schedule="cosine", epochs=2)
  tx = training.make_optimizer(cfg, steps_per_epoch=2)
  lrs = [_cosine(0.2, s, 4) for s in range(4)]
  np.testing.assert_allclose(_run_tx(tx, P0, GRADS), _pytorch_sgd(P0, GRADS, lrs, 0.9, 5e-4, nesterov), rtol=1e-5)


def test_adam_with_l2_decay_by_hand():
  cfg = training.TrainConfig(optimizer="adam", learning_rate=1e-3, decay=1e-4, schedule=(1,), step_factors=(0.5,))
  tx = training.make_optimizer(cfg, steps_per_epoch=2)
  lrs = [1e-3, 1e-3, 5e-4, 5e-4]
  np.testing.assert_allclose(_run_tx(tx, P0, GRADS), _adam_l2(P0, GRADS, lrs, 1e-4), rtol=1e-5)


def test_l2_conv_is_the_sum_of_squared_conv_kernels(model):
  state = ts.init_state(model, optax.sgd(0.1), jax.random.key(0), IMAGE, seed_key=jax.random.key(0))
  flat = jax.tree_util.tree_leaves_with_path(state.params)
  expected = sum(float(np.sum(np.square(np.asarray(v, np.float64)))) for path, v in flat if v.ndim == 4)
  dense = sum(float(np.sum(np.square(np.asarray(v, np.float64)))) for path, v in flat if v.ndim != 4)
  assert dense > 0  # the Dense kernel and biases exist and are left out
  np.testing.assert_allclose(float(ts.l2_conv(state.params)), expected, rtol=1e-5)


def test_ema_of_params_and_batch_stats_follows_timm_model_ema_v2(model):
  decay = 0.8
  cfg = ts.StepConfig(method="vanilla", num_classes=10, mean=MEAN, std=STD, ema_decay=decay)
  mesh = ts.make_mesh(1)
  state = ts.init_state(model, optax.sgd(0.1), jax.random.key(1), IMAGE, seed_key=jax.random.key(1), ema=True)
  step = ts.make_train_step(model, cfg, mesh)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.AXIS))
  copy = lambda s: jax.tree.map(lambda a: np.array(a, np.float64), {"params": s.params, "batch_stats": s.batch_stats})  # noqa: E731
  expected = copy(state)
  for i in range(3):
    state, _ = step(state, jax.device_put(_batch(seed=i), sharding), jax.random.key(2))
    expected = jax.tree.map(lambda e, v: decay * e + (1 - decay) * v, expected, copy(state))
  for a, b in zip(jax.tree.leaves(state.ema), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.tree.leaves(state.ema["params"])[0], jax.tree.leaves(state.params)[0])
