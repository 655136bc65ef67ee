"""Evaluation of a trained classifier: clean, calibration, FGSM / PGD, deformed, corruptions.

Everything takes a ``logits_fn(images_normalised [B, H, W, C] float32) -> logits
[B, K]`` (a jitted function in inference mode, e.g. from
``jaxmix.train.restore_for_eval``) and host test data as uint8 ``[N, H, W, C]``
with int labels ``[N]`` plus the dataset ``mean`` / ``std`` (in [0, 1] units).

Protocols (ALGORITHMS.md §10, §8.6, §9.5):

* **Clean**: top-1 / top-5 accuracy (%) and mean softmax cross-entropy.
* **Calibration**: :func:`expected_calibration_error` (15 equal-width confidence
  bins, Guo et al. 2017) and :func:`rms_calibration_error`, the RMS calibration
  error that AugMix / PixMix / IPMix report: Hendrycks' ``calib_err(confidence,
  correct, p='2', beta=100)`` (``outlier-exposure/utils/calibration_tools.py``),
  adaptive bins of 100 consecutive examples sorted by confidence.
* **FGSM as PatchUp** (§10.1): in normalised space, ``x + eps sign(grad)``, clamped
  to the batch-wide ``[min(x), max(x)]``, then the perturbation to ``[-eps, eps]``;
  eps in {0, .05, .1, .12, .15, .18, .2} (normalised units).
* **FGSM in pixel space** (§8.6, Puzzle Mix): ``clip(x01 + eps sign(grad), 0, 1)``
  with eps in {4/255, 8/255}.
* **PGD** (optional): Puzzle Mix's ``test_robust.py`` (eps 4/255, step 2/255, 20
  steps) and IPMix's ``cifar.py`` (eps 2/255, step 0.5/255, 20 steps), random start.
* **Deformed images** (§10.5): :mod:`jaxmix.deform`.
* **Corruptions** (§10.4): real CIFAR-10-C / CIFAR-100-C ``.npy`` folders, tfds
  ``cifar10_corrupted``, or the offline generator of :mod:`jaxmix.corruptions`.

:func:`evaluate_all` runs them all and returns a JSON-serialisable dict;
``jaxmix eval --checkpoint RUN_DIR`` (:func:`cli_main`) does it for a run of
``jaxmix train``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

FGSM_PATCHUP_EPSILONS = (0.0, 0.05, 0.1, 0.12, 0.15, 0.18, 0.2)
FGSM_PIXEL_EPSILONS = (4 / 255, 8 / 255)
PGD_PRESETS = {
  # Puzzle Mix checkpoint/test_robust.py (§8.6).
  "puzzlemix": {"epsilon": 4 / 255, "step_size": 2 / 255, "num_steps": 20, "clip_start": True},
  # IPMix cifar.py L310-L346, L436 (§10.4).
  "ipmix": {"epsilon": 2 / 255, "step_size": 0.5 / 255, "num_steps": 20, "clip_start": False},
}


# ----------------------------------------------------------------------------
# Metrics


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Per-example softmax cross-entropy ``[B]`` of logits ``[B, K]`` and int labels ``[B]``."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, jnp.asarray(labels, jnp.int32)[:, None], axis=-1)[:, 0]


def top_k_correct(logits: Array, labels: Array, k: int = 1) -> Array:
  """``[B]`` bool: the label is among the ``k`` largest logits (``k`` capped at K)."""
  k = min(int(k), logits.shape[-1])
  _, idx = jax.lax.top_k(jnp.asarray(logits, jnp.float32), k)
  return jnp.any(idx == jnp.asarray(labels, jnp.int32)[:, None], axis=-1)


def _check_probs(probs, labels) -> None:
  shape = jnp.shape(probs)
  if len(shape) != 2:
    raise ValueError(f"probs must be [N, K], got shape {shape}.")
  if jnp.shape(labels) != shape[:1]:
    raise ValueError(f"labels must have shape ({shape[0]},), got {jnp.shape(labels)}.")


def _confidence_correct(probs: Array, labels: Array) -> tuple[Array, Array]:
  conf = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == jnp.asarray(labels, jnp.int32)).astype(jnp.float32)
  return conf, correct


def expected_calibration_error(probs: Array, labels: Array, n_bins: int = 15) -> Array:
  """Expected calibration error with equal-width confidence bins (Guo et al., 2017).

  ``ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` with bin ``b`` holding the
  examples whose top-class probability lies in ``(b/n, (b+1)/n]`` (the
  ``_ECELoss`` of gpleiss/temperature_scaling). jit-friendly.

  Args:
    probs: ``[N, K]`` predicted probabilities (softmax of the logits).
    labels: ``[N]`` int labels.
    n_bins: number of bins (15 in the literature).

  Returns:
    Scalar float32 in ``[0, 1]``.

  Raises:
    ValueError: if ``n_bins < 1`` or the shapes disagree.

  Example:
    >>> expected_calibration_error(jax.nn.softmax(logits), labels)
  """
  if not isinstance(n_bins, int) or n_bins < 1:
    raise ValueError(f"n_bins must be a positive int, got {n_bins!r}.")
  _check_probs(probs, labels)
  return _ece(jnp.asarray(probs, jnp.float32), jnp.asarray(labels, jnp.int32), n_bins)


@functools.partial(jax.jit, static_argnums=2)
def _ece(probs: Array, labels: Array, n_bins: int) -> Array:
  conf, correct = _confidence_correct(probs, labels)
  bounds = jnp.linspace(0.0, 1.0, n_bins + 1, dtype=jnp.float32)
  bin_id = jnp.sum(conf[:, None] > bounds[None, 1:-1], axis=-1)
  valid = (conf > 0).astype(jnp.float32)
  count = jax.ops.segment_sum(valid, bin_id, n_bins)
  conf_sum = jax.ops.segment_sum(conf * valid, bin_id, n_bins)
  acc_sum = jax.ops.segment_sum(correct * valid, bin_id, n_bins)
  gap = jnp.abs(conf_sum - acc_sum) / jnp.maximum(count, 1.0)
  return jnp.sum(gap * count) / conf.shape[0]


def rms_calibration_error(probs: Array, labels: Array, *, beta: int = 100, p: int = 2, include_last_bin: bool = False) -> Array:
  """RMS calibration error as AugMix / PixMix / IPMix report it (Hendrycks' ``calib_err``).

  Sort the examples by confidence; cut them into ``N // beta`` bins of ``beta``
  consecutive examples, the last bin taking the remainder; then
  ``sqrt(sum_b |B_b|/N * (conf(B_b) - acc(B_b))^2)`` (``p=2``) or the weighted
  mean absolute gap (``p=1``).

  **QUIRK (kept by default):** the official loop is ``for i in range(len(bins) -
  1)``, so the last bin (the ``beta`` + remainder most confident examples) is never
  counted, while the weights still divide by all N. ``include_last_bin=True``
  counts it. With fewer than ``2 * beta`` examples the official value is 0; the
  official code crashes below ``beta`` examples, this one raises ``ValueError``.
  Ties in confidence are ordered stably (the official ``np.argsort`` is not).

  Args:
    probs: ``[N, K]`` predicted probabilities.
    labels: ``[N]`` int labels.
    beta: target bin size (100).
    p: 2 (RMS) or 1 (mean absolute deviation).
    include_last_bin: count the last bin (not official).

  Returns:
    Scalar float32 in ``[0, 1]``.

  Raises:
    ValueError: if ``N < beta``, ``beta < 1`` or ``p`` is not 1 or 2.
  """
  if not isinstance(beta, int) or beta < 1:
    raise ValueError(f"beta must be a positive int, got {beta!r}.")
  if p not in (1, 2):
    raise ValueError(f"p must be 1 or 2, got {p!r}.")
  _check_probs(probs, labels)
  n = jnp.shape(probs)[0]
  if n // beta < 1:
    raise ValueError(f"rms_calibration_error needs at least beta={beta} examples, got {n}.")
  return _rms(jnp.asarray(probs, jnp.float32), jnp.asarray(labels, jnp.int32), beta, p, bool(include_last_bin))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _rms(probs: Array, labels: Array, beta: int, p: int, include_last_bin: bool) -> Array:
  conf, correct = _confidence_correct(probs, labels)
  n = conf.shape[0]
  n_bins = n // beta
  order = jnp.argsort(conf, stable=True)
  conf, correct = conf[order], correct[order]
  bin_id = jnp.minimum(jnp.arange(n) // beta, n_bins - 1)
  count = jax.ops.segment_sum(jnp.ones_like(conf), bin_id, n_bins)
  gap = jnp.abs(jax.ops.segment_sum(conf, bin_id, n_bins) - jax.ops.segment_sum(correct, bin_id, n_bins)) / count
  used = jnp.ones((n_bins,), jnp.float32) if include_last_bin else (jnp.arange(n_bins) < n_bins - 1).astype(jnp.float32)
  weight = count / n * used
  if p == 2:
    return jnp.sqrt(jnp.sum(weight * gap**2))
  return jnp.sum(weight * gap)


@jax.jit
def _basic_metrics(logits: Array, labels: Array) -> tuple[Array, Array, Array]:
  return (
    jnp.mean(top_k_correct(logits, labels, 1)),
    jnp.mean(top_k_correct(logits, labels, 5)),
    jnp.mean(cross_entropy(logits, labels)),
  )


def classification_metrics(logits: Array, labels: Array, *, calibration: bool = True) -> dict:
  """Top-1 / top-5 (%), mean CE and (optionally) calibration (%).

  Calibration adds ECE, the RMS calibration error and ``mean_confidence`` (the
  mean max-softmax probability): ``mean_confidence - top1`` says whether a
  miscalibrated model is over- (> 0) or under-confident (< 0), which ECE alone
  does not. Returns plain Python floats. ``rms_calibration_error`` is ``None``
  below 100 examples (see :func:`rms_calibration_error`).
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  top1, top5, ce = (float(v) for v in _basic_metrics(logits, labels))
  out = {"top1": 100.0 * top1, "top5": 100.0 * top5, "ce": ce}
  if calibration:
    probs = jax.nn.softmax(logits, axis=-1)
    out["ece"] = 100.0 * float(expected_calibration_error(probs, labels, 15))
    out["mean_confidence"] = 100.0 * float(jnp.mean(_confidence_correct(probs, labels)[0]))
    enough = logits.shape[0] >= 100
    out["rms_calibration_error"] = 100.0 * float(rms_calibration_error(probs, labels)) if enough else None
    out["rms_calibration_error_all_bins"] = 100.0 * float(rms_calibration_error(probs, labels, include_last_bin=True)) if enough else None
  return out


# ----------------------------------------------------------------------------
# Attacks


def _as_vector(v, name: str) -> Array:
  arr = jnp.asarray(v, jnp.float32).reshape(-1)
  if arr.ndim != 1 or arr.shape[0] < 1:
    raise ValueError(f"{name} must be a scalar or a per-channel sequence, got {v!r}.")
  return arr


def input_gradient(logits_fn: Callable, images: Array, labels: Array) -> Array:
  """``d mean_b CE(logits_fn(x)_b, y_b) / dx`` for normalised images ``[B, H, W, C]``."""
  loss = lambda x: jnp.mean(cross_entropy(logits_fn(x), labels))  # noqa: E731
  return jax.grad(loss)(jnp.asarray(images, jnp.float32))


def _patchup_step(images: Array, sign: Array, epsilon) -> Array:
  minv, maxv = jnp.min(images), jnp.max(images)
  adv = jnp.clip(images + epsilon * sign, minv, maxv)
  delta = jnp.clip(adv - images, -epsilon, epsilon)
  return images + delta


@functools.partial(jax.jit, static_argnums=0)
def fgsm_patchup(logits_fn: Callable, images: Array, labels: Array, *, epsilon) -> Array:
  """FGSM exactly as PatchUp's ``utility/adversarial_attack.py::fgsm`` (ALGORITHMS.md §10.1).

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
  return _patchup_step(images, sign, epsilon)


def _normalise(images01: Array, mean, std) -> Array:
  return (images01 - _as_vector(mean, "mean")) / _as_vector(std, "std")


@functools.partial(jax.jit, static_argnums=0)
def fgsm_pixel(logits_fn: Callable, images: Array, labels: Array, *, epsilon, mean, std) -> Array:
  """One-step FGSM in [0, 1] pixel space (Puzzle Mix, ALGORITHMS.md §8.6).

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


# ----------------------------------------------------------------------------
# Batched evaluation on host data


def normalize_uint8(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 ``[N, H, W, C]`` -> float32 ``(x / 255 - mean) / std``."""
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  return (np.asarray(images, np.float32) / 255.0 - mean) / std


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the batch axis to ``size`` by repeating the last example (keeps batch min/max)."""
  if x.shape[0] == size:
    return x
  return np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)], axis=0)


def predict(logits_fn: Callable, images: np.ndarray, *, mean, std, batch_size: int = 100) -> np.ndarray:
  """Logits ``[N, K]`` (float32 numpy) of uint8 images ``[N, H, W, C]``, in fixed-size batches."""
  _check_batch_size(batch_size)
  outs = []
  for lo, hi in _batches(len(images), batch_size):
    x = _pad(normalize_uint8(images[lo:hi], mean, std), batch_size)
    outs.append(np.asarray(logits_fn(jnp.asarray(x)))[: hi - lo])
  return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), np.float32)


def _check_batch_size(batch_size) -> None:
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")


def _summarise(logits: np.ndarray, labels: np.ndarray) -> dict:
  return classification_metrics(logits, labels, calibration=False) | {"n": int(len(labels))}


def _eps_name(eps: float) -> str:
  k = eps * 255.0
  if eps and abs(k - round(k)) < 1e-6:
    return f"{int(round(k))}/255"
  return f"{eps:g}"


def _fgsm_all(logits_fn, images, labels, *, mean, std, batch_size, patchup_eps, pixel_eps) -> dict:
  """FGSM at every epsilon of both protocols, one input gradient per batch."""
  mean_v = jnp.asarray(np.asarray(mean, np.float32).reshape(-1))
  std_v = jnp.asarray(np.asarray(std, np.float32).reshape(-1))

  @jax.jit
  def grad_sign(x, y):
    return jnp.sign(input_gradient(logits_fn, x, y))

  @jax.jit
  def patchup_logits(x, sign, eps):
    return logits_fn(_patchup_step(x, sign, eps))

  @jax.jit
  def pixel_logits(x, sign, eps):
    # sign(d/dx01) == sign(d/dx_norm) since std > 0: one gradient serves both.
    x01 = x * std_v + mean_v
    return logits_fn((jnp.clip(x01 + eps * sign, 0.0, 1.0) - mean_v) / std_v)

  pu = {e: [] for e in patchup_eps}
  px = {e: [] for e in pixel_eps}
  for lo, hi in _batches(len(images), batch_size):
    x = jnp.asarray(_pad(normalize_uint8(images[lo:hi], mean, std), batch_size))
    y = jnp.asarray(_pad(np.asarray(labels[lo:hi], np.int32), batch_size))
    sign = grad_sign(x, y)
    for e in patchup_eps:
      pu[e].append(np.asarray(patchup_logits(x, sign, jnp.float32(e)))[: hi - lo])
    for e in pixel_eps:
      px[e].append(np.asarray(pixel_logits(x, sign, jnp.float32(e)))[: hi - lo])
  out = {"patchup": {}, "pixel": {}}
  for e in patchup_eps:
    out["patchup"][f"{e:g}"] = _summarise(np.concatenate(pu[e]), labels)
  for e in pixel_eps:
    out["pixel"][_eps_name(e)] = _summarise(np.concatenate(px[e]), labels)
  out["patchup_batch_size"] = batch_size
  return out


def _pgd_all(logits_fn, images, labels, *, mean, std, batch_size, presets: Sequence[str], seed: int) -> dict:
  out = {}
  for name in presets:
    if name not in PGD_PRESETS:
      raise ValueError(f"pgd presets must be among {sorted(PGD_PRESETS)}, got {name!r}.")
    cfg = PGD_PRESETS[name]

    @jax.jit
    def run(key, x01, y, cfg=cfg):
      adv = pgd_pixel(key, logits_fn, x01, y, mean=mean, std=std, **cfg)
      return logits_fn(_normalise(adv, mean, std))

    logits = []
    base = jax.random.key(seed)
    for i, (lo, hi) in enumerate(_batches(len(images), batch_size)):
      x01 = jnp.asarray(_pad(np.asarray(images[lo:hi], np.float32) / 255.0, batch_size))
      y = jnp.asarray(_pad(np.asarray(labels[lo:hi], np.int32), batch_size))
      logits.append(np.asarray(run(jax.random.fold_in(base, i), x01, y))[: hi - lo])
    out[name] = _summarise(np.concatenate(logits), labels) | {k: (v if isinstance(v, bool) else float(v)) for k, v in cfg.items()}
  return out


def _deformed_all(logits_fn, images, labels, *, mean, std, batch_size, cache_dir, seed) -> dict:
  from jaxmix import deform

  sets = deform.deformed_test_sets(images, seed=seed, cache_dir=cache_dir)
  out = {name: _summarise(predict(logits_fn, x, mean=mean, std=std, batch_size=batch_size), labels) for name, x in sets.items()}
  out["mean_top1"] = float(np.mean([v["top1"] for v in out.values()]))
  return out


def _corruptions_all(
  logits_fn, images, labels, *, mean, std, batch_size, cache_dir, seed, subset, cifar_c_dir, tfds_name, max_examples, frost_textures
) -> dict:
  from jaxmix import corruptions as jc

  if cifar_c_dir:
    sets, c_labels = jc.load_cifar_c(cifar_c_dir, names=subset, max_examples=max_examples)
    source = f"npy:{cifar_c_dir}"
  elif tfds_name:
    sets, c_labels = jc.load_tfds_corrupted(tfds_name, names=subset, max_examples=max_examples)
    source = f"tfds:{tfds_name}"
  else:
    sets = jc.corrupted_test_sets(images, names=subset, seed=seed, cache_dir=cache_dir, frost_textures=frost_textures)
    c_labels = np.broadcast_to(np.asarray(labels), (5, len(labels)))
    source = "generated (jaxmix.corruptions; see its docstring for approximations)"
  per = {}
  for name, by_sev in sets.items():
    accs = []
    for s in range(by_sev.shape[0]):
      logits = predict(logits_fn, by_sev[s], mean=mean, std=std, batch_size=batch_size)
      accs.append(100.0 * float(np.mean(np.argmax(logits, -1) == np.asarray(c_labels[s]))))
    per[name] = {"top1": float(np.mean(accs)), "top1_by_severity": accs}
  mean_acc = float(np.mean([v["top1"] for v in per.values()])) if per else float("nan")
  return {
    "source": source,
    "per_corruption": per,
    "mean_top1": mean_acc,
    "mean_corruption_error": 100.0 - mean_acc,
  }


def evaluate_all(
  logits_fn: Callable,
  test_images: np.ndarray,
  test_labels: np.ndarray,
  *,
  mean,
  std,
  batch_size: int = 100,
  fgsm: bool = True,
  fgsm_epsilons: Sequence[float] = FGSM_PATCHUP_EPSILONS,
  pixel_epsilons: Sequence[float] = FGSM_PIXEL_EPSILONS,
  pgd: bool | Sequence[str] = False,
  deformed: bool = True,
  corruptions: bool = True,
  corruption_subset: Optional[Sequence[str]] = None,
  cifar_c_dir: Optional[str] = None,
  tfds_corrupted: Optional[str] = None,
  frost_textures: Optional[Sequence[np.ndarray]] = None,
  cache_dir: Optional[str] = None,
  max_examples: Optional[int] = None,
  seed: int = 0,
  log: Optional[Callable[[str], None]] = None,
) -> dict:
  """Runs every evaluation protocol and returns a JSON-serialisable nested dict.

  Accuracies, ECE and RMS calibration error are in percent; ``ce`` is the mean
  cross-entropy in nats.

  Args:
    logits_fn: ``f(x_normalised [B, H, W, C] float32) -> logits [B, K]``, jitted,
      inference mode.
    test_images: ``[N, H, W, C]`` uint8 test images.
    test_labels: ``[N]`` int labels.
    mean: per-channel dataset mean in [0, 1] units.
    std: per-channel dataset std.
    batch_size: evaluation batch (also the batch of PatchUp's batch-wide FGSM clamp;
      PatchUp evaluated with its training batch size, 100 by default).
    fgsm: run FGSM (PatchUp normalised-space eps and pixel-space eps).
    fgsm_epsilons: PatchUp's eps (normalised units).
    pixel_epsilons: pixel-space eps.
    pgd: ``True`` for both presets of :data:`PGD_PRESETS`, or a list of names.
    deformed: evaluate the eight PatchUp deformed sets.
    corruptions: evaluate corruption robustness.
    corruption_subset: names of corruptions to use (default all 15).
    cifar_c_dir: folder of real ``<corruption>.npy`` + ``labels.npy`` files
      (CIFAR-10-C / CIFAR-100-C); when given, used instead of generated ones.
    tfds_corrupted: a tfds name such as ``"cifar10_corrupted"`` to load instead.
    frost_textures: the frost photographs of the robustness repo (uint8 arrays),
      replacing the generator's procedural frost texture.
    cache_dir: where generated deformed / corrupted sets are cached (``None``: no
      cache).
    max_examples: evaluate on N evenly spaced test examples only (class-balanced on a
      class-sorted test set; real CIFAR-C sets keep their first N per severity).
    seed: seed of the generated sets and the PGD random start.
    log: optional ``print``-like progress callback.

  Returns:
    ``{"n_examples", "clean", "fgsm", "pgd", "deformed", "corruptions",
    "seconds"}``; disabled parts are absent.

  Raises:
    ValueError: for inconsistent shapes or a bad ``batch_size`` / ``max_examples``.

  Example:
    >>> logits_fn, data, cfg = jaxmix.train.restore_for_eval("runs/x")
    >>> m = evaluate_all(logits_fn, data.test.images, data.test.labels, mean=data.mean, std=data.std, max_examples=1000)
  """
  _check_batch_size(batch_size)
  images = np.asarray(test_images)
  labels = np.asarray(test_labels).astype(np.int32).reshape(-1)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"test_images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}.")
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"test_labels has {labels.shape[0]} entries for {images.shape[0]} images.")
  if max_examples is not None:
    if not isinstance(max_examples, int) or max_examples < 1:
      raise ValueError(f"max_examples must be a positive int or None, got {max_examples!r}.")
    from jaxmix.data import spread_indices

    keep = spread_indices(len(labels), max_examples)
    images, labels = images[keep], labels[keep]
  log = log or (lambda s: None)
  result = {"n_examples": int(len(labels)), "batch_size": batch_size, "seconds": {}}

  def timed(name, fn):
    t0 = time.perf_counter()
    log(f"jaxmix eval: {name} ...")
    value = fn()
    result["seconds"][name] = round(time.perf_counter() - t0, 2)
    return value

  result["clean"] = timed(
    "clean", lambda: classification_metrics(predict(logits_fn, images, mean=mean, std=std, batch_size=batch_size), labels)
  ) | {"n": int(len(labels))}
  if fgsm:
    result["fgsm"] = timed(
      "fgsm",
      lambda: _fgsm_all(
        logits_fn,
        images,
        labels,
        mean=mean,
        std=std,
        batch_size=batch_size,
        patchup_eps=tuple(fgsm_epsilons),
        pixel_eps=tuple(pixel_epsilons),
      ),
    )
  if pgd:
    presets = list(PGD_PRESETS) if pgd is True else list(pgd)
    result["pgd"] = timed(
      "pgd", lambda: _pgd_all(logits_fn, images, labels, mean=mean, std=std, batch_size=batch_size, presets=presets, seed=seed)
    )
  if deformed:
    result["deformed"] = timed(
      "deformed",
      lambda: _deformed_all(logits_fn, images, labels, mean=mean, std=std, batch_size=batch_size, cache_dir=cache_dir, seed=seed),
    )
  if corruptions:
    result["corruptions"] = timed(
      "corruptions",
      lambda: _corruptions_all(
        logits_fn,
        images,
        labels,
        mean=mean,
        std=std,
        batch_size=batch_size,
        cache_dir=cache_dir,
        seed=seed,
        subset=corruption_subset,
        cifar_c_dir=cifar_c_dir,
        tfds_name=tfds_corrupted,
        max_examples=max_examples,
        frost_textures=frost_textures,
      ),
    )
  return _jsonable(result)


def _jsonable(obj):
  """Floats NaN/inf -> None, numpy scalars -> Python, recursively."""
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    v = float(obj)
    return v if math.isfinite(v) else None
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


# ----------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="jaxmix eval",
    description="Evaluate a run of 'jaxmix train': clean accuracy and calibration, FGSM (PatchUp and pixel space), "
    "optional PGD, the PatchUp deformed test sets and corruption robustness.",
  )
  p.add_argument("--checkpoint", required=True, help="run directory written by 'jaxmix train'")
  p.add_argument("--out", default=None, help="output JSON (default: RUN_DIR/eval_metrics.json)")
  p.add_argument("--max_examples", type=int, default=None, help="evaluate on the first N test examples")
  p.add_argument("--batch_size", type=int, default=100, help="evaluation batch (also PatchUp's FGSM clamp batch)")
  p.add_argument("--no_fgsm", action="store_true", help="skip FGSM")
  p.add_argument("--pgd", nargs="*", default=None, choices=sorted(PGD_PRESETS), help="run PGD (all presets if no name is given)")
  p.add_argument("--no_deformed", action="store_true", help="skip the PatchUp deformed test sets")
  p.add_argument("--no_corruptions", action="store_true", help="skip corruption robustness")
  p.add_argument("--corruptions", nargs="+", default=None, help="subset of corruptions (default all 15)")
  p.add_argument("--cifar_c_dir", default=None, help="folder with real CIFAR-10-C / CIFAR-100-C .npy files")
  p.add_argument("--tfds_corrupted", default=None, help="tfds name, e.g. cifar10_corrupted (needs the data prepared)")
  p.add_argument("--frost_dir", default=None, help="folder with the robustness repo's frost1.png .. frost6.jpg (real frost)")
  p.add_argument(
    "--cache_dir",
    default=None,
    help="cache of generated deformed / corrupted sets, shared between runs (default: $JAXMIX_EVAL_CACHE or ~/.cache/jaxmix/eval)",
  )
  p.add_argument("--seed", type=int, default=0, help="seed of the generated sets and of PGD")
  return p


def default_cache_dir() -> str:
  """``$JAXMIX_EVAL_CACHE`` or ``~/.cache/jaxmix/eval``: generated sets are keyed by a
  fingerprint of the test images and the seed, so runs on the same data share them."""
  return os.environ.get("JAXMIX_EVAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxmix", "eval")


def cli_main(argv: Sequence[str]) -> int:
  """``jaxmix eval --checkpoint RUN_DIR [--out metrics.json] [--max_examples N] ...``.

  Restores the run with ``jaxmix.train.restore_for_eval``, runs
  :func:`evaluate_all`, prints a summary and writes the JSON.
  """
  args = build_parser().parse_args(list(argv))
  from jaxmix import train

  try:
    logits_fn, data, _ = train.restore_for_eval(args.checkpoint)
  except FileNotFoundError as e:
    print(f"jaxmix eval: {e}", file=sys.stderr)
    return 1
  metrics = evaluate_all(
    logits_fn,
    np.asarray(data.test.images),
    np.asarray(data.test.labels),
    mean=tuple(data.mean),
    std=tuple(data.std),
    batch_size=args.batch_size,
    fgsm=not args.no_fgsm,
    pgd=(list(args.pgd) or True) if args.pgd is not None else False,
    deformed=not args.no_deformed,
    corruptions=not args.no_corruptions,
    corruption_subset=args.corruptions,
    cifar_c_dir=args.cifar_c_dir,
    tfds_corrupted=args.tfds_corrupted,
    frost_textures=_load_frost(args.frost_dir) if args.frost_dir else None,
    cache_dir=args.cache_dir or default_cache_dir(),
    max_examples=args.max_examples,
    seed=args.seed,
    log=lambda s: print(s, flush=True),
  )
  metrics["checkpoint"] = os.path.abspath(args.checkpoint)
  out = args.out or os.path.join(args.checkpoint, "eval_metrics.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(metrics, f, indent=2)
  print(format_summary(metrics))
  print(f"jaxmix eval: wrote {out}")
  return 0


def _load_frost(directory: str) -> list:
  """The frost photographs ``frost1.png, frost2.png, frost3.png, frost4.jpg, ...`` in numeric order."""
  import glob

  from PIL import Image

  paths = sorted(glob.glob(os.path.join(directory, "frost*.*")), key=lambda p: os.path.basename(p))
  if not paths:
    raise FileNotFoundError(f"no frost*.png / frost*.jpg in {directory}")
  return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def format_summary(metrics: dict) -> str:
  """A short human-readable summary of :func:`evaluate_all`'s dict."""
  c = metrics["clean"]
  fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
  lines = [
    f"examples: {metrics['n_examples']}",
    f"clean: top1 {c['top1']:.2f}%  top5 {c['top5']:.2f}%  CE {c['ce']:.4f}  ECE {fmt(c.get('ece'))}%  "
    f"mean confidence {fmt(c.get('mean_confidence'))}%  "
    f"RMS calib {fmt(c.get('rms_calibration_error'))}% (official, last bin skipped; "
    f"all bins {fmt(c.get('rms_calibration_error_all_bins'))}%)",
  ]
  if "fgsm" in metrics:
    pu = "  ".join(f"{k}: {v['top1']:.2f}" for k, v in metrics["fgsm"]["patchup"].items())
    px = "  ".join(f"{k}: {v['top1']:.2f}" for k, v in metrics["fgsm"]["pixel"].items())
    lines.append(f"FGSM (PatchUp, normalised eps) top1 %: {pu}")
    lines.append(f"FGSM (pixel eps) top1 %: {px}")
  for name, v in metrics.get("pgd", {}).items():
    lines.append(f"PGD {name}: top1 {v['top1']:.2f}%")
  if "deformed" in metrics:
    d = metrics["deformed"]
    lines.append("deformed top1 %: " + "  ".join(f"{k}: {v['top1']:.2f}" for k, v in d.items() if isinstance(v, dict)))
  if "corruptions" in metrics:
    cc = metrics["corruptions"]
    lines.append(f"corruptions ({cc['source']}): mean top1 {fmt(cc['mean_top1'])}%  mean error {fmt(cc['mean_corruption_error'])}%")
    lines.append("  " + "  ".join(f"{k}: {v['top1']:.2f}" for k, v in cc["per_corruption"].items()))
  return "\n".join(lines)
