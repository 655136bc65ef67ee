"""Adversarial attacks of the seed papers' evaluations: FGSM (PatchUp's normalised-space
form and the pixel-space form) and L-inf PGD.

Every attack takes a ``logits_fn(images_normalised [B, H, W, C]) -> logits [B, K]`` in
inference mode. The protocols and their epsilons are described in
``docs/algorithms/evaluation.md``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxmix.evaluation.metrics import cross_entropy
from jaxmix.ops.core import Array, normalize

__all__ = ("fgsm_patchup", "fgsm_pixel", "input_gradient", "patchup_step", "pgd_pixel")


def _as_vector(v, name: str) -> Array:
  arr = jnp.asarray(v, jnp.float32).reshape(-1)
  if arr.ndim != 1 or arr.shape[0] < 1:
    raise ValueError(f"{name} must be a scalar or a per-channel sequence, got {v!r}.")
  return arr


def input_gradient(logits_fn: Callable, images: Array, labels: Array) -> Array:
  """``d mean_b CE(logits_fn(x)_b, y_b) / dx`` for normalised images ``[B, H, W, C]``."""
  loss = lambda x: jnp.mean(cross_entropy(logits_fn(x), labels))  # noqa: E731
  return jax.grad(loss)(jnp.asarray(images, jnp.float32))


def patchup_step(images: Array, sign: Array, epsilon) -> Array:
  """PatchUp's FGSM update of normalised ``images`` along ``sign``: batch-wide clamp, then ``|delta| <= eps``."""
  minv, maxv = jnp.min(images), jnp.max(images)
  adv = jnp.clip(images + epsilon * sign, minv, maxv)
  delta = jnp.clip(adv - images, -epsilon, epsilon)
  return images + delta


@functools.partial(jax.jit, static_argnums=0)
def fgsm_patchup(logits_fn: Callable, images: Array, labels: Array, *, epsilon) -> Array:
  """FGSM exactly as PatchUp's ``utility/adversarial_attack.py::fgsm`` (docs/algorithms/evaluation.md#fgsm-as-patchup).

  ``x' = x + eps sign(grad_x CE)``; clamp ``x'`` to the **batch-wide** scalar range
  ``[min(x), max(x)]`` (normalised space); clamp ``x' - x`` to ``[-eps, eps]``.
  The result depends on the batch composition through that min/max (PatchUp's
  quirk); CE is the batch mean (its scale does not change the sign).

  Args:
    logits_fn: ``f(x [B, H, W, C]) -> [B, K]`` on normalised images.
    images: ``[B, H, W, C]`` float32 normalised images.
    labels: ``[B]`` int labels.
    epsilon: perturbation size in normalised units (may be traced).

  Returns:
    ``[B, H, W, C]`` float32 adversarial images (normalised).

  Jitted, with ``logits_fn`` static (pass the same function object to reuse the
  compilation).

  Example:
    >>> adv = fgsm_patchup(logits_fn, x, y, epsilon=0.1)
  """
  images = jnp.asarray(images, jnp.float32)
  sign = jnp.sign(input_gradient(logits_fn, images, labels))
  return patchup_step(images, sign, epsilon)


def _normalise(images01: Array, mean, std) -> Array:
  return normalize(images01, _as_vector(mean, "mean"), _as_vector(std, "std"), max_value=1.0)


@functools.partial(jax.jit, static_argnums=0)
def fgsm_pixel(logits_fn: Callable, images: Array, labels: Array, *, epsilon, mean, std) -> Array:
  """One-step FGSM in [0, 1] pixel space (Puzzle Mix, docs/algorithms/puzzlemix.md#puzzle-mix-evaluation-code).

  ``clip(x + eps sign(grad_x CE(f((x - mean) / std), y)), 0, 1)``.

  Args:
    logits_fn: ``f(x_normalised [B, H, W, C]) -> [B, K]``.
    images: ``[B, H, W, C]`` float32 images in ``[0, 1]``.
    labels: ``[B]`` int labels.
    epsilon: step in pixel units, e.g. ``8 / 255`` (may be traced).
    mean: per-channel mean (``[C]`` or scalar) in [0, 1] units.
    std: per-channel std.

  Returns:
    ``[B, H, W, C]`` adversarial images in ``[0, 1]`` (not normalised).
  """
  images = jnp.asarray(images, jnp.float32)
  loss = lambda x: jnp.mean(cross_entropy(logits_fn(_normalise(x, mean, std)), labels))  # noqa: E731
  return jnp.clip(images + epsilon * jnp.sign(jax.grad(loss)(images)), 0.0, 1.0)


@functools.partial(jax.jit, static_argnums=1, static_argnames=("num_steps", "random_start", "clip_start"))
def pgd_pixel(
  key,
  logits_fn: Callable,
  images: Array,
  labels: Array,
  *,
  epsilon,
  step_size,
  num_steps: int,
  mean,
  std,
  random_start: bool = True,
  clip_start: bool = False,
) -> Array:
  """L-inf PGD in [0, 1] pixel space (IPMix ``cifar.py`` PGD; Puzzle Mix ``test_robust.py``).

  ``x_0 = x + U(-eps, eps)`` (random start; IPMix leaves it unclipped, Puzzle Mix
  clips it to [0, 1]: ``clip_start``); then
  ``num_steps`` times ``x_t = clip(clip(x_{t-1} + a sign(grad), x - eps, x + eps), 0, 1)``
  with the gradient of the summed CE. A ``lax.fori_loop``, so jit-friendly.

  Args:
    key: PRNG key for the random start.
    logits_fn: ``f(x_normalised) -> logits``.
    images: ``[B, H, W, C]`` float32 in ``[0, 1]``.
    labels: ``[B]`` int labels.
    epsilon: L-inf radius (pixel units).
    step_size: step ``a``.
    num_steps: number of iterations (static int).
    mean: per-channel mean.
    std: per-channel std.
    random_start: start from a uniform point of the ball.
    clip_start: clip the random start to [0, 1] (Puzzle Mix) or not (IPMix).

  Returns:
    ``[B, H, W, C]`` adversarial images in ``[0, 1]``.
  """
  if not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}.")
  images = jnp.asarray(images, jnp.float32)
  loss = lambda x: jnp.sum(cross_entropy(logits_fn(_normalise(x, mean, std)), labels))  # noqa: E731
  start = images
  if random_start:
    start = images + jax.random.uniform(key, images.shape, jnp.float32, -epsilon, epsilon)
    if clip_start:
      start = jnp.clip(start, 0.0, 1.0)

  def body(_, x):
    x = x + step_size * jnp.sign(jax.grad(loss)(x))
    return jnp.clip(jnp.clip(x, images - epsilon, images + epsilon), 0.0, 1.0)

  return jax.lax.fori_loop(0, num_steps, body, start)
