"""Classification metrics: top-k accuracy, cross-entropy and calibration errors.

All functions take logits or probabilities ``[N, K]`` and int labels ``[N]`` and are
jit-friendly; :func:`classification_metrics` bundles them into plain Python floats.
The calibration definitions are in ``docs/algorithms/evaluation.md``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxmix.ops.core import Array

__all__ = (
  "classification_metrics",
  "cross_entropy",
  "expected_calibration_error",
  "mean_confidence",
  "rms_calibration_error",
  "top_k_correct",
)


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


def mean_confidence(probs: Array) -> Array:
  """The mean top-class probability of ``probs`` ``[N, K]`` (compare with top-1: over- or under-confidence)."""
  return jnp.mean(jnp.max(jnp.asarray(probs, jnp.float32), axis=-1))


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
    out["mean_confidence"] = 100.0 * float(mean_confidence(probs))
    enough = logits.shape[0] >= 100
    out["rms_calibration_error"] = 100.0 * float(rms_calibration_error(probs, labels)) if enough else None
    out["rms_calibration_error_all_bins"] = 100.0 * float(rms_calibration_error(probs, labels, include_last_bin=True)) if enough else None
  return out
