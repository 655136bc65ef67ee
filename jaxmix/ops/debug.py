"""A checked mode for the ops: traced ``lam`` / ``perm`` outside their ranges become errors.

Eagerly, every op checks concrete ``lam`` and ``perm`` values. Inside ``jax.jit`` they are
traced, and a ``lam`` outside ``[0, 1]`` extrapolates while a ``perm`` outside
``[0, B)`` is clamped by the gather, silently. :func:`checked` wraps an op with
``jax.experimental.checkify`` checks for both::

  mix = jax.jit(jaxmix.checked(jaxmix.mixup))
  err, res = mix(key, x, y, lam=lam, perm=perm)
  err.throw()  # ValueError-like JaxRuntimeError naming lam or perm

The checks cost a reduction each; use the mode to find a bug, not in a long run.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
from jax.experimental import checkify

__all__ = ("checked",)


def checked(op: Callable) -> Callable:
  """Wraps a pair-mixing ``op(key, images, labels, *, lam=None, perm=None, ...)`` with range checks.

  Args:
    op: a jaxmix op that takes ``lam`` / ``perm`` overrides (``mixup``, ``cutmix``,
      ``patch_augment``, ``manifold_mixup``, ``patchup``, ...).

  Returns:
    ``f(key, images, labels, *args, **kwargs) -> (error, result)``, jit-able; call
    ``error.throw()`` on the returned error (outside jit) to raise if ``lam`` left
    ``[0, 1]`` or ``perm`` left ``[0, B)``.

  Example:
    >>> err, res = jax.jit(jaxmix.checked(jaxmix.mixup))(key, x, y, lam=lam)
    >>> err.throw()
  """

  def body(key, images, labels, *args, lam=None, perm=None, **kwargs):
    batch = jnp.shape(images)[0]
    if lam is not None:
      lam_arr = jnp.asarray(lam, jnp.float32)
      checkify.check(
        jnp.all((lam_arr >= 0.0) & (lam_arr <= 1.0)), "lam must lie in [0, 1]; got min {} max {}", lam_arr.min(), lam_arr.max()
      )
    if perm is not None:
      perm_arr = jnp.asarray(perm)
      ok = jnp.all((perm_arr >= 0) & (perm_arr < batch))
      checkify.check(ok, f"perm values must lie in [0, {batch}); got min {{}} max {{}}", perm_arr.min(), perm_arr.max())
    return op(key, images, labels, *args, lam=lam, perm=perm, **kwargs)

  return functools.wraps(op)(checkify.checkify(body))
