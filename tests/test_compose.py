"""maybe_apply (CutMix's cutmix_prob) and switch (timm's switch_prob) inside jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxmix

_X = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
_Y = jaxmix.one_hot(jnp.array([0, 1, 2, 3]), 4)
_MIX = functools.partial(jaxmix.mixup, alpha=1.0)
_CUT = functools.partial(jaxmix.cutmix, alpha=1.0)
_OUT = functools.partial(jaxmix.cutout, size=2)


def _is_identity(res):
  return bool(np.array_equal(res.images, _X) and np.array_equal(res.labels, _Y) and np.all(res.lam == 1))


@jax.jit
def _maybe_many(keys):
  return jax.vmap(lambda k: jaxmix.maybe_apply(k, _X, _Y, op=_MIX, prob=0.3))(keys)


def test_maybe_apply_probability():
  res = _maybe_many(jax.random.split(jax.random.key(1), 1000))
  applied = np.asarray(res.lam[:, 0] < 1)
  assert stats.binomtest(int(applied.sum()), 1000, 0.3).pvalue > 1e-3
  skipped = ~applied
  np.testing.assert_array_equal(np.asarray(res.images)[skipped], np.broadcast_to(_X, (skipped.sum(),) + _X.shape))
  np.testing.assert_array_equal(np.asarray(res.perm)[skipped], np.broadcast_to(np.arange(4), (skipped.sum(), 4)))
  np.testing.assert_allclose(np.asarray(res.labels).sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(res.loss_scale, 1.0)


def test_maybe_apply_extremes_and_jit_equals_eager():
  key = jax.random.key(2)
  assert _is_identity(jaxmix.maybe_apply(key, _X, _Y, op=_CUT, prob=0.0))
  eager = jaxmix.maybe_apply(key, _X, _Y, op=_MIX, prob=1.0)
  assert not _is_identity(eager)
  jitted = jax.jit(functools.partial(jaxmix.maybe_apply, op=_MIX, prob=1.0))(key, _X, _Y)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_maybe_apply_validation():
  with pytest.raises(ValueError, match="prob"):
    jaxmix.maybe_apply(jax.random.key(0), _X, _Y, op=_MIX, prob=1.2)


def _tagged(i):
  """An op whose output images are all ``i``, so the branch taken is visible."""
  return lambda key, x, y: jaxmix.vanilla(key, jnp.full_like(x, i), y)


@jax.jit
def _switch_many(keys):
  ops = [_tagged(0), _tagged(1), _tagged(2)]
  return jax.vmap(lambda k: jaxmix.switch(k, _X, _Y, ops=ops, probs=[0.5, 0.3, 0.2]))(keys)


def test_switch_frequencies():
  res = _switch_many(jax.random.split(jax.random.key(3), 1500))
  images = np.asarray(res.images)
  branch = images[:, 0, 0, 0, 0].astype(int)
  np.testing.assert_array_equal(images, np.broadcast_to(branch[:, None, None, None, None], images.shape))
  counts = np.bincount(branch, minlength=3)
  assert stats.chisquare(counts, np.array([0.5, 0.3, 0.2]) * 1500).pvalue > 1e-3
  np.testing.assert_array_equal(res.labels, np.broadcast_to(_Y, (1500,) + _Y.shape))


def test_switch_between_real_ops_in_jit():
  f = jax.jit(functools.partial(jaxmix.switch, ops=[_MIX, _CUT, _OUT], probs=[0.4, 0.4, 0.2]))
  results = [f(jax.random.key(10 + i), _X, _Y) for i in range(3)]
  for res in results:
    np.testing.assert_allclose(res.labels.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(res.labels, res.lam[:, None] * _Y + (1 - res.lam[:, None]) * _Y[res.perm], rtol=1e-6, atol=1e-7)
  again = f(jax.random.key(10), _X, _Y)
  np.testing.assert_array_equal(again.images, results[0].images)


def test_switch_degenerate_probs_pick_one_op():
  key = jax.random.key(4)
  res = jaxmix.switch(key, _X, _Y, ops=[_MIX, _OUT], probs=[0.0, 1.0])
  np.testing.assert_array_equal(res.lam, 1.0)
  single = jax.jit(functools.partial(jaxmix.switch, ops=[_MIX]))(key, _X, _Y)
  assert not _is_identity(single)


def test_switch_validation():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="ops"):
    jaxmix.switch(key, _X, _Y, ops=[])
  with pytest.raises(ValueError, match="probs"):
    jaxmix.switch(key, _X, _Y, ops=[_MIX, _CUT], probs=[0.5, 0.6])
  with pytest.raises(ValueError, match="probs"):
    jaxmix.switch(key, _X, _Y, ops=[_MIX, _CUT], probs=[1.0])
  with pytest.raises(ValueError, match="probs"):
    jaxmix.switch(key, _X, _Y, ops=[_MIX, _CUT], probs=[1.5, -0.5])
