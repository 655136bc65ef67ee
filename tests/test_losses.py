"""Losses: softmax CE and the BCE-on-softmax of the PatchUp / MM / Puzzle Mix code."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmix

LOGITS = jax.random.normal(jax.random.key(0), (6, 5)) * 3
T1 = jaxmix.one_hot(jnp.array([0, 1, 2, 3, 4, 0]), 5)
T2 = jax.nn.softmax(jax.random.normal(jax.random.key(1), (6, 5)))


def _np_bce(logits, t):
  """PyTorch ``BCELoss()(softmax(z), t)`` in float64: log terms clamped at -100."""
  z = np.asarray(logits, np.float64)
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  with np.errstate(divide="ignore"):
    log_p, log_q = np.maximum(np.log(p), -100), np.maximum(np.log(1 - p), -100)
  return -np.mean(np.asarray(t) * log_p + (1 - np.asarray(t)) * log_q)


def test_softmax_cross_entropy_matches_optax():
  for t in (T1, T2):
    expected = optax.softmax_cross_entropy(LOGITS, t).mean()
    np.testing.assert_allclose(jaxmix.softmax_cross_entropy(LOGITS, t), expected, rtol=1e-6)


def test_bce_on_softmax_matches_torch_semantics():
  for t in (T1, T2):
    np.testing.assert_allclose(jaxmix.bce_on_softmax(LOGITS, t), _np_bce(LOGITS, t), rtol=1e-5)


def test_bce_on_softmax_saturated_logits_clamped_and_finite_grads():
  logits = jnp.array([[200.0, 0.0, -200.0], [0.0, 0.0, 0.0]])
  t = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  np.testing.assert_allclose(jaxmix.bce_on_softmax(logits, t), _np_bce(logits, t), rtol=1e-5)
  wrong = jnp.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # log p = -400 -> -100, log(1 - 1) -> -100
  np.testing.assert_allclose(jaxmix.bce_on_softmax(logits, wrong), _np_bce(logits, wrong), rtol=1e-5)
  for loss in (jaxmix.bce_on_softmax, jaxmix.softmax_cross_entropy):
    g = jax.grad(loss)(logits, wrong)
    assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("loss", [jaxmix.bce_on_softmax, jaxmix.softmax_cross_entropy])
def test_losses_are_affine_in_the_target(loss):
  # The identity behind PatchUp's collapsed target: sum_i w_i L(t_i) = W L(sum_i w_i t_i / W).
  w = (0.3, 0.7, 1.0)
  ts = (T1, T2, 0.5 * T1 + 0.5 * T2)
  lhs = sum(wi * loss(LOGITS, ti) for wi, ti in zip(w, ts, strict=True))
  rhs = 2.0 * loss(LOGITS, sum(wi * ti for wi, ti in zip(w, ts, strict=True)) / 2.0)
  np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_losses_jit_bf16_and_validation():
  for loss in (jaxmix.bce_on_softmax, jaxmix.softmax_cross_entropy):
    np.testing.assert_allclose(jax.jit(loss)(LOGITS, T2), loss(LOGITS, T2), rtol=1e-6)
    out = loss(LOGITS.astype(jnp.bfloat16), T1)
    assert out.dtype == jnp.float32 and out.shape == ()
    with pytest.raises(ValueError, match="logits"):
      loss(LOGITS, T1[:, :3])
