"""Combinators: apply an op with a probability, or pick one op per batch, in jit."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.ops import core
from jaxmix.ops.core import Array, MixResult

Op = Callable[..., MixResult]


def _common(result: MixResult) -> MixResult:
  """Keeps the fields every op has, so branches of ``lax.cond``/``switch`` agree."""
  scale = jnp.float32(1.0) if result.loss_scale is None else jnp.asarray(result.loss_scale, jnp.float32)
  return MixResult(result.images, jnp.asarray(result.labels, jnp.float32), result.lam, result.perm, loss_scale=scale)


def maybe_apply(key, images: Array, labels: Array, *, op: Op, prob: float) -> MixResult:
  """Applies ``op(key, images, labels)`` with probability ``prob`` (one draw per batch).

  The draw is ``u < prob`` as CutMix's ``cutmix_prob``; the branch is a
  ``lax.cond``, so only the chosen branch runs. Op-specific fields (``mask``, ...)
  are dropped from the result; ``loss_scale`` is always an array.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` float images.
    labels: ``[B, K]`` soft targets.
    op: ``(key, images, labels) -> MixResult``; bind hyper-parameters with
      ``functools.partial``.
    prob: probability in ``[0, 1]``.

  Returns:
    A ``MixResult`` with ``loss_scale`` set.

  Example:
    >>> op = functools.partial(jaxmix.cutmix, alpha=1.0)
    >>> res = jaxmix.maybe_apply(key, x, y, op=op, prob=0.5)
  """
  core.check_key(key)
  core.check_prob("prob", prob)
  key_apply, key_op = jax.random.split(key)
  apply = jax.random.uniform(key_apply) < prob
  return jax.lax.cond(
    apply,
    lambda: _common(op(key_op, images, labels)),
    lambda: _common(core.identity_result(images, labels)),
  )


def switch(key, images: Array, labels: Array, *, ops: Sequence[Op], probs: Optional[Sequence[float]] = None) -> MixResult:
  """Picks one of ``ops`` per batch (timm's ``switch_prob``) and applies it.

  The index is drawn from the categorical ``probs`` (uniform if ``None``) and the
  op runs under ``lax.switch``, so only it is executed and the step compiles once.
  timm's Mixup/CutMix switch with ``switch_prob=p`` is
  ``switch(key, x, y, ops=[mixup_op, cutmix_op], probs=[1 - p, p])``.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` float images.
    labels: ``[B, K]`` soft targets.
    ops: the candidate ops, each ``(key, images, labels) -> MixResult``.
    probs: the probability of each op; non-negative, summing to 1.

  Returns:
    The chosen op's ``MixResult`` restricted to the common fields, with
    ``loss_scale`` set.

  Raises:
    ValueError: if ``ops`` is empty or ``probs`` does not match it.
  """
  core.check_key(key)
  if not ops:
    raise ValueError("ops must name at least one op.")
  if probs is None:
    probs = [1.0 / len(ops)] * len(ops)
  probs = np.asarray(probs, np.float64)
  if probs.shape != (len(ops),) or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
    raise ValueError(f"probs must be {len(ops)} non-negative numbers summing to 1, got {probs.tolist()}.")
  key_index, key_op = jax.random.split(key)
  index = jax.random.choice(key_index, len(ops), p=jnp.asarray(probs, jnp.float32))
  branches = [lambda k, x, y, op=op: _common(op(k, x, y)) for op in ops]
  return jax.lax.switch(index, branches, key_op, images, labels)
