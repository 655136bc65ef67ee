"""The losses of the seed recipes, both taking soft targets ``[B, K]``.

Both are affine in the target, so a weighted sum of losses against several
targets equals one loss against the weighted target (see ``jaxmix.patchup``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmix.ops.core import Array

_LOG_FLOOR = -100.0


def _check(logits, targets) -> None:
  if jnp.ndim(logits) != 2 or jnp.shape(logits) != jnp.shape(targets):
    raise ValueError(f"logits and targets must both be [B, K] with equal shapes, got {jnp.shape(logits)} and {jnp.shape(targets)}.")


def softmax_cross_entropy(logits: Array, targets: Array) -> Array:
  """Softmax cross-entropy against soft targets, averaged over the batch.

  ``-(1 / B) sum_b sum_k t_bk log softmax(z_b)_k``, the loss of mixup-cifar10,
  CutMix, Cutout, IPMix and the Keras notebooks (for one-hot ``t`` the usual CE;
  for mixed targets equal to the papers' ``lam CE(y_a) + (1 - lam) CE(y_b)``).
  Computed in float32.

  Args:
    logits: ``[B, K]`` unnormalised scores.
    targets: ``[B, K]`` soft targets (rows usually sum to 1).

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if the shapes differ or are not 2-D.

  Example:
    >>> loss = jaxmix.softmax_cross_entropy(logits, res.labels)
  """
  _check(logits, targets)
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(jnp.asarray(targets, jnp.float32) * logp, axis=-1))


def bce_on_softmax(logits: Array, targets: Array) -> Array:
  """Binary cross-entropy on softmax probabilities, mean over all ``B * K`` entries.

  The loss of the Manifold Mixup, PatchUp and Puzzle Mix (CIFAR) code
  (``nn.BCELoss()(softmax(z), t)``, docs/algorithms/README.md#shared-conventions):
  ``-(1 / (B K)) sum_bk [t_bk log p_bk + (1 - t_bk) log(1 - p_bk)]`` with
  ``p = softmax(z)``. Each log term is clamped at ``>= -100`` as PyTorch's
  BCELoss does. ``log p`` comes from ``log_softmax`` (more accurate than
  ``log(softmax)``; equal wherever PyTorch's is finite and unclamped) and the
  clamp is applied without producing NaN gradients when ``p`` reaches 0 or 1.

  Args:
    logits: ``[B, K]`` unnormalised scores.
    targets: ``[B, K]`` soft targets in ``[0, 1]``.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if the shapes differ or are not 2-D.

  Example:
    >>> loss = res.loss_scale * jaxmix.bce_on_softmax(logits, res.labels)
  """
  _check(logits, targets)
  z = jnp.asarray(logits, jnp.float32)
  t = jnp.asarray(targets, jnp.float32)
  log_p = jnp.maximum(jax.nn.log_softmax(z, axis=-1), _LOG_FLOOR)
  one_minus = 1.0 - jax.nn.softmax(z, axis=-1)
  positive = one_minus > 0
  log_q = jnp.where(positive, jnp.log(jnp.where(positive, one_minus, 1.0)), _LOG_FLOOR)
  log_q = jnp.maximum(log_q, _LOG_FLOOR)
  return -jnp.mean(t * log_p + (1.0 - t) * log_q)


def sigmoid_bce(logits: Array, targets: Array) -> Array:
  """Binary cross-entropy on sigmoid outputs, one binary problem per class.

  timm's ``--bce-loss`` (``BinaryCrossEntropy``, ``binary_cross_entropy_with_logits``
  with the mean over batch and classes): ``-mean_{b,k}(t log s(z) + (1 - t) log s(-z))``
  with ``s`` the sigmoid. big_vision's ``sigmoid_xent`` sums over classes instead of
  averaging, so it is ``K`` times this value (and gradient).

  Args:
    logits: ``[B, K]`` logits.
    targets: ``[B, K]`` soft targets (mixed labels).

  Returns:
    Scalar float32 loss.

  Example:
    >>> loss = jaxmix.sigmoid_bce(logits, res.labels)
  """
  _check(logits, targets)
  z = jnp.asarray(logits, jnp.float32)
  t = jnp.asarray(targets, jnp.float32)
  return -jnp.mean(t * jax.nn.log_sigmoid(z) + (1.0 - t) * jax.nn.log_sigmoid(-z))
