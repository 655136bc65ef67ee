"""Mixup or CutMix, chosen per batch, per pair or per sample, with timm's ``Mixup`` semantics.

``mixup_cutmix`` is what timm users call ``Mixup(mixup_alpha, cutmix_alpha,
cutmix_minmax, prob, switch_prob, mode, correct_lam)``: the decision to mix (``prob``),
the choice of CutMix over Mixup (``switch_prob`` when both alphas are positive), the
lambda and the box are drawn once per batch (``mode="batch"``), once per disjoint pair
(``"pair"``) or once per sample (``"elem"``); the partner of sample ``i`` is
``B - 1 - i`` (timm's ``flip(0)``). Its rules, and where they differ from jaxmix's
``cutmix``, are in ``docs/algorithms/input_mixing.md``.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.ops import core
from jaxmix.ops.core import Array, MixResult

__all__ = ("MODES", "mixup_cutmix")

MODES = ("batch", "pair", "elem")


def _check(images, labels, *, mixup_alpha, cutmix_alpha, cutmix_minmax, prob, switch_prob, mode, lam, perm):
  batch, height, width, _ = core.check_images(images)
  core.check_labels(labels, batch)
  core.check_nonneg("mixup_alpha", mixup_alpha)
  core.check_nonneg("cutmix_alpha", cutmix_alpha)
  core.check_prob("prob", prob)
  core.check_prob("switch_prob", switch_prob)
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
  if mode == "pair" and batch % 2:
    raise ValueError(f"mode='pair' needs an even batch size, got {batch}.")
  if cutmix_minmax is not None:
    if len(cutmix_minmax) != 2 or not all(isinstance(v, numbers.Real) for v in cutmix_minmax):
      raise ValueError(f"cutmix_minmax must be a pair (lo, hi) of fractions, got {cutmix_minmax!r}.")
    lo, hi = cutmix_minmax
    if not 0.0 <= lo <= hi <= 1.0:
      raise ValueError(f"cutmix_minmax must satisfy 0 <= lo <= hi <= 1, got {cutmix_minmax!r}.")
  core.check_lam_perm(lam, perm, batch)
  if lam is not None and mode == "batch" and jnp.shape(lam) != ():
    raise ValueError(f"mode='batch' takes a scalar lam, got shape {jnp.shape(lam)}.")
  if perm is not None and mode == "pair":
    value = core.concrete_value(perm)
    if value is not None and not np.array_equal(value[value], np.arange(batch)):
      raise ValueError("mode='pair' needs perm to be an involution (perm[perm[i]] == i): pairs swap with each other.")
  return batch, height, width


def _box_centred(key, lam: Array, height: int, width: int):
  """timm's ``rand_bbox`` (1.0): sides ``int(side * sqrt(1 - lam))`` from ``c - s // 2`` to ``c + (s + 1) // 2``
  around a uniform centre ``c``, clipped at the border."""
  key_y, key_x = jax.random.split(key)
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy = jax.random.randint(key_y, lam.shape, 0, height)
  cx = jax.random.randint(key_x, lam.shape, 0, width)
  return (
    jnp.clip(cy - cut_h // 2, 0, height),
    jnp.clip(cy + (cut_h + 1) // 2, 0, height),
    jnp.clip(cx - cut_w // 2, 0, width),
    jnp.clip(cx + (cut_w + 1) // 2, 0, width),
  )


def _box_minmax(key, n: int, minmax, height: int, width: int):
  """timm's ``rand_bbox_minmax``: sides uniform in ``[int(lo side), int(hi side))``, corner uniform in
  ``[0, side - cut]``, so the box lies inside the image."""
  key_h, key_w, key_y, key_x = jax.random.split(key, 4)
  lo_h, hi_h = int(height * minmax[0]), max(int(height * minmax[1]), int(height * minmax[0]) + 1)
  lo_w, hi_w = int(width * minmax[0]), max(int(width * minmax[1]), int(width * minmax[0]) + 1)
  cut_h = jnp.minimum(jax.random.randint(key_h, (n,), lo_h, hi_h), height)
  cut_w = jnp.minimum(jax.random.randint(key_w, (n,), lo_w, hi_w), width)
  y1 = jax.random.randint(key_y, (n,), 0, height - cut_h + 1)
  x1 = jax.random.randint(key_x, (n,), 0, width - cut_w + 1)
  return y1, y1 + cut_h, x1, x1 + cut_w


def mixup_cutmix(
  key,
  images: Array,
  labels: Array,
  *,
  mixup_alpha: float = 1.0,
  cutmix_alpha: float = 0.0,
  cutmix_minmax: Optional[Sequence[float]] = None,
  prob: float = 1.0,
  switch_prob: float = 0.5,
  mode: str = "batch",
  correct_lam: bool = True,
  lam=None,
  perm=None,
) -> MixResult:
  """Mixup or CutMix with timm's ``Mixup`` switching, per batch, pair or sample.

  Per draw (one per batch, per pair or per sample, by ``mode``): mix with probability
  ``prob``; if both alphas are positive, CutMix with probability ``switch_prob`` and
  Mixup otherwise (one positive alpha: that method; both zero: no mixing); lambda
  ``~ Beta(alpha, alpha)`` of the chosen method. CutMix pastes the partner's box: sides
  ``int(side * sqrt(1 - lam))`` around a uniform centre, clipped at the border, or with
  ``cutmix_minmax=(lo, hi)`` sides uniform in ``[int(lo side), int(hi side))`` and the
  box inside the image; lambda becomes the kept-area fraction unless
  ``correct_lam=False`` (and ``cutmix_minmax`` is unset), which keeps the drawn lambda
  even where the box was clipped. The partner of sample ``i`` is ``B - 1 - i``; in
  ``"pair"`` mode the two samples of a pair share one decision, lambda and box, and swap
  contents.

  Label smoothing is applied by ``jaxmix.one_hot(labels, K, smoothing)`` before the call
  (timm applies it inside ``Mixup``; the targets are the same).

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` float images.
    labels: ``[B, K]`` soft targets.
    mixup_alpha: Mixup's Beta concentration (0: no Mixup).
    cutmix_alpha: CutMix's Beta concentration (0: no CutMix).
    cutmix_minmax: optional ``(lo, hi)`` fractions of the side for CutMix box sides
      (as timm, this turns CutMix on with ``cutmix_alpha = 1``).
    prob: probability of mixing a batch / pair / sample.
    switch_prob: probability of CutMix when both alphas are positive.
    mode: ``"batch"``, ``"pair"`` (even batch) or ``"elem"``.
    correct_lam: take CutMix's lambda from the clipped box area.
    lam: optional lambda override (scalar; or ``[B]`` in ``"pair"`` / ``"elem"`` mode,
      where a pair uses its first sample's value); CutMix still derives the box from it.
    perm: optional ``[B]`` partner override (an involution in ``"pair"`` mode).

  Returns:
    A ``MixResult``: ``lam`` ``[B]`` (1 where a sample was not mixed), ``perm`` ``[B]``
    (identity where not mixed), ``mask`` ``[B, H, W]`` float32 (1 where a pixel is the
    sample's own; all ones for Mixup and unmixed samples).

  Raises:
    ValueError: on bad shapes, a negative alpha, a probability outside [0, 1], an
      unknown ``mode``, an odd batch in ``"pair"`` mode, or a bad ``cutmix_minmax``.

  Example:
    >>> res = jaxmix.mixup_cutmix(key, x, y, mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem")
  """
  core.check_key(key)
  batch, height, width = _check(
    images,
    labels,
    mixup_alpha=mixup_alpha,
    cutmix_alpha=cutmix_alpha,
    cutmix_minmax=cutmix_minmax,
    prob=prob,
    switch_prob=switch_prob,
    mode=mode,
    lam=lam,
    perm=perm,
  )
  if cutmix_minmax is not None:
    cutmix_alpha = 1.0  # as timm: minmax boxes imply CutMix (its lambda comes from the box)
  if mixup_alpha == 0 and cutmix_alpha == 0:
    return core.identity_result(images, labels)._replace(mask=jnp.ones((batch, height, width), jnp.float32))
  n = 1 if mode == "batch" else batch
  key_mix, key_switch, key_mixup, key_cutmix, key_box = jax.random.split(key, 5)
  do_mix = jax.random.uniform(key_mix, (n,)) < prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(key_switch, (n,)) < switch_prob
  else:
    use_cutmix = jnp.full((n,), cutmix_alpha > 0)
  if lam is None:
    drawn = jnp.where(use_cutmix, core.sample_beta(key_cutmix, cutmix_alpha, (n,)), core.sample_beta(key_mixup, mixup_alpha, (n,)))
  else:
    drawn = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (n,) if jnp.ndim(lam) == 0 else (batch,))[:n]
  if cutmix_minmax is None:
    y1, y2, x1, x2 = _box_centred(key_box, drawn, height, width)
  else:
    y1, y2, x1, x2 = _box_minmax(key_box, n, cutmix_minmax, height, width)
  kept = 1.0 - ((y2 - y1) * (x2 - x1)).astype(jnp.float32) / float(height * width)
  cut_lam = kept if (correct_lam or cutmix_minmax is not None) else drawn
  lam_draw = jnp.where(do_mix, jnp.where(use_cutmix, cut_lam, drawn), 1.0)

  index = jnp.arange(batch)
  owner = {"batch": jnp.zeros_like(index), "pair": jnp.minimum(index, batch - 1 - index), "elem": index}[mode]
  lam_s, mixed, cut = lam_draw[owner], do_mix[owner], (do_mix & use_cutmix)[owner]
  partner = (batch - 1 - index).astype(jnp.int32) if perm is None else jnp.asarray(perm, jnp.int32)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  box = (rows >= y1[owner][:, None, None]) & (rows < y2[owner][:, None, None])
  box = box & (cols >= x1[owner][:, None, None]) & (cols < x2[owner][:, None, None])
  box = box & cut[:, None, None]
  x = jnp.asarray(images, jnp.float32)
  other = x[partner]
  weight = jnp.where(cut | ~mixed, 1.0, lam_s)[:, None, None, None]
  blended = weight * x + (1.0 - weight) * other
  out = core.paste(box, other, blended).astype(jnp.result_type(images))
  return MixResult(
    images=out,
    labels=core.mix_labels(labels, partner, lam_s),
    lam=lam_s,
    perm=jnp.where(mixed, partner, index.astype(jnp.int32)),
    mask=1.0 - box.astype(jnp.float32),
  )
