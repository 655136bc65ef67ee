"""Input-space mixing ops: Mixup, CutMix, Cutout, Patch Augmentation.

Every op is ``op(key, images, labels, *, hparams) -> MixResult``, pure, jit/vmap
clean, with static shapes: boxes are masks built from ``iota`` comparisons.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.ops import core
from jaxmix.ops.core import Array, MixResult


def _skip_unless(words: core.Words, prob: float, mixed: MixResult, images: Array, labels: Array) -> MixResult:
  """Keeps ``mixed`` with probability ``prob`` (one draw per batch), else the identity.

  Follows the official test ``r < prob`` (CutMix, PatchUp); ``prob = 1`` always mixes
  and is resolved in Python, so it costs nothing (and takes no word).
  """
  if prob >= 1.0:
    return mixed
  apply = words.uniform(()) < prob
  same = core.identity_result(images, labels)
  if mixed.mask is not None:
    same = same._replace(mask=jnp.ones_like(mixed.mask))
  return jax.tree.map(lambda a, b: jnp.where(apply, a, b), mixed, same)


def _box_mask(height: int, width: int, y1, y2, x1, x2) -> Array:
  """``[..., H, W]`` bool mask, True inside ``[y1, y2) x [x1, x2)``; bounds broadcast.

  Built as the outer AND of a row test ``[..., H]`` and a column test ``[..., W]``.
  """
  rows = jnp.arange(height, dtype=jnp.int32)
  cols = jnp.arange(width, dtype=jnp.int32)
  e = lambda v: jnp.asarray(v)[..., None]  # noqa: E731
  in_rows = (rows >= e(y1)) & (rows < e(y2))
  in_cols = (cols >= e(x1)) & (cols < e(x2))
  return in_rows[..., :, None] & in_cols[..., None, :]


def _check_pairing(pairing: str) -> None:
  if pairing not in ("permutation", "roll"):
    raise ValueError(f"pairing must be 'permutation' or 'roll', got {pairing!r}.")


def _pair_words(batch: int, *, alpha, per_sample: bool, lam, perm, pairing: str, prob: float, extra: int = 0) -> int:
  """How many random words a pair op takes (lam, partner, apply draw, ``extra``)."""
  n = extra + (1 if prob < 1.0 else 0)
  if lam is None:
    n += core.beta_words(alpha, (batch,) if per_sample else ())
  if perm is None and pairing == "permutation":
    n += batch
  return n


def _pair_draws(words: core.Words, batch: int, *, alpha, per_sample: bool, lam, perm, pairing: str) -> tuple[Array, Array]:
  """lam (scalar, or ``[B]`` if per-sample or given so) and the int32 partner ``[B]``."""
  if lam is None:
    lam = words.beta(alpha, (batch,) if per_sample else ())
  lam = jnp.asarray(lam, jnp.float32)
  if perm is not None:
    perm = jnp.asarray(perm, jnp.int32)
  elif pairing == "roll":
    perm = jnp.roll(jnp.arange(batch, dtype=jnp.int32), 1)
  else:
    perm = words.permutation(batch)
  return lam, perm


def _identity_where_unmixed(perm: Array, lam: Array) -> Array:
  """The partner index, replaced by the sample itself where nothing was mixed (lam = 1)."""
  return jnp.where(lam < 1.0, perm, jnp.arange(perm.shape[0], dtype=jnp.int32))


def _kept_fraction(area: Array, height: int, width: int) -> Array:
  """``1 - area / (H W)`` in float32, exactly 0 for a full box and 1 for an empty one.

  Written as ``(H W - area) / (H W)`` on integers: XLA turns division by a constant
  into multiplication by its reciprocal, which would give ``1 - 36 * (1 / 36) < 0``.
  """
  return (height * width - area).astype(jnp.float32) / (height * width)


def _check_pair_op(images, labels, lam, perm) -> tuple[int, int, int, int]:
  shape = core.check_images(images)
  core.check_labels(labels, shape[0])
  core.check_lam_perm(lam, perm, shape[0])
  return shape


def mixup(
  key,
  images: Array,
  labels: Array,
  *,
  alpha: float = 1.0,
  per_sample: bool = False,
  lam=None,
  perm=None,
  prob: float = 1.0,
  pairing: str = "permutation",
) -> MixResult:
  """Input Mixup (Zhang et al., 2018, "mixup: Beyond Empirical Risk Minimization").

  ``x~ = lam x + (1 - lam) x[perm]`` and ``y~ = lam y + (1 - lam) y[perm]`` with
  ``lam ~ Beta(alpha, alpha)`` once per batch (the official default) or per sample.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` float images (normalised or not: mixing is linear).
    labels: ``[B, K]`` soft targets.
    alpha: Beta concentration; ``0`` disables mixing (lam = 1).
    per_sample: draw one lam per sample instead of one per batch.
    lam: optional scalar or ``[B]`` override of the sampled lam.
    perm: optional ``[B]`` int override of the partner permutation.
    prob: probability of mixing this batch (one draw per batch).
    pairing: ``"permutation"`` (official) or ``"roll"`` (partner ``b - 1``).

  Returns:
    A ``MixResult``; ``lam`` is ``[B]``. A fixed point of ``perm`` keeps its image
    and label bit-exactly; ``perm`` is reported as the identity where ``lam = 1``
    (nothing was mixed), so ``labels == lam * y + (1 - lam) * y[perm]`` always holds.

  Raises:
    ValueError: on a non-4-D or integer image batch, labels of another batch
      size, ``alpha < 0``, ``prob`` outside ``[0, 1]`` or badly shaped overrides.

  Example:
    >>> res = jaxmix.mixup(jax.random.key(0), x, jaxmix.one_hot(y, 10))
  """
  core.check_key(key)
  batch = _check_pair_op(images, labels, lam, perm)[0]
  core.check_nonneg("alpha", alpha)
  core.check_prob("prob", prob)
  _check_pairing(pairing)
  draws = dict(alpha=alpha, per_sample=per_sample, lam=lam, perm=perm, pairing=pairing)
  words = core.Words(key, _pair_words(batch, prob=prob, **draws))
  lam, perm = _pair_draws(words, batch, **draws)
  lam_b = jnp.broadcast_to(lam, (batch,))
  w = lam_b[:, None, None, None]
  mixed = (w * images.astype(jnp.float32) + (1.0 - w) * images[perm].astype(jnp.float32)).astype(images.dtype)
  # A fixed point of perm keeps its image bit-exactly (no float round-off of lam + (1 - lam)).
  fixed = perm == jnp.arange(batch, dtype=perm.dtype)
  mixed = jnp.where(fixed[:, None, None, None], images, mixed)
  perm = _identity_where_unmixed(perm, lam_b)
  result = MixResult(mixed, core.mix_labels(labels, perm, lam_b), lam_b, perm)
  return _skip_unless(words, prob, result, images, labels)


BOX_RULES = ("clovaai", "puzzlemix")


def cutmix_box(key, lam: Array, height: int, width: int, rule: str = "clovaai") -> tuple[Array, Array, Array, Array]:
  """The CutMix box for a given lam (scalar or ``[B]``).

  ``rule="clovaai"`` (the official CutMix code): ``cut = floor(side * sqrt(1 - lam))``,
  an integer centre uniform over the image and ``[c - cut // 2, c + cut // 2)`` clipped
  to the image (so the unclipped box side is ``2 * (cut // 2)``, the official quirk).
  ``rule="puzzlemix"`` (Puzzle Mix's ``mixup_box``, its ``--box True`` baseline): a
  continuous centre ``c ~ U(0, side)``, a float side ``s = side * sqrt(1 - lam)`` and the
  edges ``int(clip(c -+ s / 2, 0, side))``.

  Args:
    key: PRNG key, or a ``core.Words`` to take the two centre draws from.
    lam: nominal lam, scalar or ``[B]``.
    height: H.
    width: W.
    rule: ``"clovaai"`` or ``"puzzlemix"``.

  Returns:
    ``(y1, y2, x1, x2)`` int32 arrays shaped like ``lam``.
  """
  lam = jnp.asarray(lam, jnp.float32)
  words = key if isinstance(key, core.Words) else core.Words(key, 2 * lam.size)
  rho = jnp.sqrt(jnp.maximum(1.0 - lam, 0.0))
  if rule == "puzzlemix":
    cy, cx = words.uniform(lam.shape) * height, words.uniform(lam.shape) * width
    edge = lambda c, s, side: jnp.floor(jnp.clip(c + s, 0.0, side)).astype(jnp.int32)  # noqa: E731
    rh, rw = height * rho / 2, width * rho / 2
    return edge(cy, -rh, height), edge(cy, rh, height), edge(cx, -rw, width), edge(cx, rw, width)
  half_h = jnp.floor(height * rho).astype(jnp.int32) // 2
  half_w = jnp.floor(width * rho).astype(jnp.int32) // 2
  cy = words.randint(lam.shape, 0, height)
  cx = words.randint(lam.shape, 0, width)
  return (
    jnp.clip(cy - half_h, 0, height),
    jnp.clip(cy + half_h, 0, height),
    jnp.clip(cx - half_w, 0, width),
    jnp.clip(cx + half_w, 0, width),
  )


def cutmix(
  key,
  images: Array,
  labels: Array,
  *,
  alpha: float = 1.0,
  per_sample: bool = False,
  lam=None,
  perm=None,
  prob: float = 1.0,
  pairing: str = "permutation",
  box_rule: str = "clovaai",
) -> MixResult:
  """CutMix (Yun et al., ICCV 2019) with the official clovaai box rule.

  ``lam ~ Beta(alpha, alpha)``; the box side is ``floor(side * sqrt(1 - lam))``
  rounded down to even, centred at an integer position uniform over the image and
  clipped at the border; the partner's pixels are pasted into the box and ``lam`` is
  re-computed from the clipped area: ``lam' = 1 - box_area / (H * W)``, exactly the
  fraction of pixels kept from the sample's own image. One box per batch (official)
  or, with ``per_sample=True``, one per sample. Non-square images use ``H`` for
  the box height and ``W`` for its width (the official code names the axes the other
  way round, which only matters for non-square images, which it never sees).
  ``cut = floor(side * sqrt(1 - lam))`` is computed in float32 (the official code uses
  float64), which can differ by one pixel only when ``side * sqrt(1 - lam)`` lies
  within float32 rounding of an integer.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` float images.
    labels: ``[B, K]`` soft targets.
    alpha: Beta concentration (clovaai ``--beta``); ``0`` disables mixing.
    per_sample: one lam and box per sample instead of per batch.
    lam: optional scalar or ``[B]`` nominal lam override (the box is derived from it
      and lam re-computed from the clipped area). A ``[B]`` override gives per-sample
      boxes.
    perm: optional ``[B]`` int partner override.
    prob: probability of mixing this batch (clovaai / PatchUp ``--cutmix_prob``; the
      papers' CIFAR default is 0.5, the function's default 1.0 always mixes).
    pairing: ``"permutation"`` (official) or ``"roll"``.
    box_rule: ``"clovaai"`` (default) or ``"puzzlemix"`` (Puzzle Mix's own CutMix
      baseline; see :func:`cutmix_box`).

  Returns:
    A ``MixResult`` with ``lam`` the exact kept-area fraction and ``mask``
    ``[B, H, W]`` float32, 1 where the pixel is the sample's own; ``perm`` is the
    identity where the box is empty (``lam = 1``).

  Raises:
    ValueError: as ``mixup``.

  Example:
    >>> res = jaxmix.cutmix(key, x, y, alpha=1.0, prob=0.5)
  """
  core.check_key(key)
  batch, height, width, _ = _check_pair_op(images, labels, lam, perm)
  core.check_nonneg("alpha", alpha)
  core.check_prob("prob", prob)
  _check_pairing(pairing)
  if box_rule not in BOX_RULES:
    raise ValueError(f"box_rule must be one of {BOX_RULES}, got {box_rule!r}.")
  draws = dict(alpha=alpha, per_sample=per_sample, lam=lam, perm=perm, pairing=pairing)
  boxes = batch if per_sample or (lam is not None and jnp.shape(lam) == (batch,)) else 1
  words = core.Words(key, _pair_words(batch, prob=prob, extra=2 * boxes, **draws))
  lam, perm = _pair_draws(words, batch, **draws)
  y1, y2, x1, x2 = cutmix_box(words, lam, height, width, box_rule)
  lam_adj = _kept_fraction((y2 - y1) * (x2 - x1), height, width)
  lam_adj = jnp.broadcast_to(lam_adj, (batch,))
  inside = jnp.broadcast_to(_box_mask(height, width, y1, y2, x1, x2), (batch, height, width))
  mixed = core.paste(inside, images[perm], images)
  own = (~inside).astype(jnp.float32)
  perm = _identity_where_unmixed(perm, lam_adj)
  result = MixResult(mixed, core.mix_labels(labels, perm, lam_adj), lam_adj, perm, mask=own)
  return _skip_unless(words, prob, result, images, labels)


def cutout_box(cy, cx, height: int, width: int, size: int, *, exact_size: bool = False) -> tuple[Array, Array, Array, Array]:
  """The Cutout hole ``[y1, y2) x [x1, x2)`` around integer centres, clipped to the image.

  Args:
    cy: int array of row centres.
    cx: int array of column centres (same shape).
    height: H.
    width: W.
    size: hole side L.
    exact_size: ``False``: the official rule ``[c - L // 2, c + L // 2)`` (an odd L
      gives an ``L - 1`` hole). ``True``: the PatchUp / Manifold Mixup copies'
      ``int(clip(c -+ L / 2))``, i.e. ``[c - ceil(L / 2), c + floor(L / 2))``, exactly
      L wide inside the image.

  Returns:
    ``(y1, y2, x1, x2)`` int32 arrays shaped like ``cy``.
  """
  lo, hi = ((size + 1) // 2, size // 2) if exact_size else (size // 2, size // 2)
  cy, cx = jnp.asarray(cy, jnp.int32), jnp.asarray(cx, jnp.int32)
  return jnp.clip(cy - lo, 0, height), jnp.clip(cy + hi, 0, height), jnp.clip(cx - lo, 0, width), jnp.clip(cx + hi, 0, width)


def cutout(
  key,
  images: Array,
  labels: Array,
  *,
  size: int = 16,
  n_holes: int = 1,
  shared: bool = False,
  prob: float = 1.0,
) -> MixResult:
  """Cutout (DeVries & Taylor, 2017): zero a square hole, labels unchanged.

  Official rule (default): per image and per hole, an integer centre uniform over
  the image and the hole ``[c - size // 2, c + size // 2)`` clipped to the image (an
  odd ``size`` gives a ``size - 1`` hole, as the official code). Apply it after
  normalisation, so zeros mean the dataset mean colour.

  ``shared=True`` reproduces the PatchUp / Manifold Mixup batch copy: one hole for
  the whole batch, with their float rule ``[c - ceil(size / 2), c + floor(size / 2))``
  (exactly ``size`` wide inside the image).

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` float images.
    labels: ``[B, K]`` soft targets (returned unchanged).
    size: hole side L in pixels, ``0 <= size <= max(H, W)``; 0 is the identity.
    n_holes: holes per image (official ``--n_holes``, default 1).
    shared: one hole for the whole batch (PatchUp copy) instead of one per image.
    prob: probability of applying it to this batch.

  Returns:
    A ``MixResult`` with ``lam = 1``, identity ``perm`` and ``mask`` ``[B, H, W]``
    float32, 0 inside the hole.

  Raises:
    ValueError: on a bad batch, ``size`` out of range or ``n_holes < 1``.

  Example:
    >>> res = jaxmix.cutout(key, x, y, size=16)
  """
  core.check_key(key)
  batch, height, width, _ = core.check_images(images)
  core.check_labels(labels, batch)
  core.check_prob("prob", prob)
  if not core.is_int(size) or not 0 <= size <= max(height, width):
    raise ValueError(f"size must be an int in [0, {max(height, width)}] (the image side), got {size!r}.")
  if not core.is_int(n_holes) or n_holes < 1:
    raise ValueError(f"n_holes must be an int >= 1, got {n_holes!r}.")
  shape = (n_holes,) if shared else (n_holes, batch)
  words = core.Words(key, 2 * int(np.prod(shape)) + (1 if prob < 1.0 else 0))
  cy = words.randint(shape, 0, height)
  cx = words.randint(shape, 0, width)
  holes = _box_mask(height, width, *cutout_box(cy, cx, height, width, size, exact_size=shared))
  hole = jnp.broadcast_to(jnp.any(holes, axis=0), (batch, height, width))
  keep = ~hole
  out = images * keep[..., None].astype(images.dtype)  # the official ``img * mask`` (a select is slower on CPU, see core.paste)
  result = core.identity_result(out, labels)._replace(mask=keep.astype(jnp.float32))
  return _skip_unless(words, prob, result, images, labels)


def _round_half_even(x: float) -> int:
  return int(round(x))  # Python's round is banker's rounding, as the official code.


def patch_augment(
  key,
  images: Array,
  labels: Array,
  *,
  prob: float = 1.0,
  min_dim: float = 0.1,
  max_dim: float = 0.9,
  lam=None,
  perm=None,
  pairing: str = "permutation",
) -> MixResult:
  """Patch Augmentation (Bloice et al., 2021), the current ``PatchAugmentation.py``.

  Per sample: with probability ``prob`` paste a ``ph x pw`` patch of the partner,
  taken at a random source location, at an independent random destination (hard
  paste, no blending). ``ph, pw ~ U{round(min_dim D) .. round(max_dim D)}``
  (independent, banker's rounding as Python's ``round``) with ``D = min(H, W)``, the
  shorter side (the image side of the official square images; so the defaults fit any
  image of at least 8 pixels a side);
  top-left corners ``~ U{0 .. side - patch - 1}`` (the official exclusive
  ``randint``: the last row / column is never touched). The partner's label weight
  is the patch area fraction ``ph pw / (H W)`` (counted even where the pixels
  coincide), so ``lam = 1 - ph pw / (H W)``.

  Deviations: the official partner is drawn from the whole training set; inside a
  jitted step the partner is the batch's random permutation (``pairing``). The
  official test is ``u <= p``; this uses ``u < prob`` (the same for a continuous
  ``u``) so that ``prob = 0`` never augments. Non-square images (the official code
  is square only) use ``H`` and ``W`` for the corner ranges and the area fraction.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` float images.
    labels: ``[B, K]`` soft targets.
    prob: per-sample probability of augmenting (class default 1.0; CIFAR-100
      notebook 0.9).
    min_dim: smallest patch side as a fraction of D (class default 0.1), >= 0; a side
      that rounds to 0 pastes nothing.
    max_dim: largest patch side as a fraction of D (class default 0.9); the largest
      side ``round(max_dim D)`` must be smaller than the image side (the official
      code crashes at ``max_dim = 1``).
    lam: optional scalar or ``[B]`` override: a square patch of side
      ``round(D sqrt(1 - lam))`` (at most the image side, so ``lam = 0`` pastes the
      whole partner) is pasted instead of a sampled size, and ``lam`` is re-derived
      from its area. The per-sample ``prob`` still applies.
    perm: optional ``[B]`` int partner override.
    pairing: ``"permutation"`` or ``"roll"``.

  Returns:
    A ``MixResult``; ``lam`` = 1 - patch area fraction where augmented, 1 (and the
    identity partner) elsewhere; ``mask`` ``[B, H, W]``, 0 where pasted.

  Raises:
    ValueError: on a bad batch, a probability outside [0, 1], or patch bounds with
      ``0 <= min_dim <= max_dim`` violated or as large as the image.

  Example:
    >>> res = jaxmix.patch_augment(key, x, y, prob=0.9, min_dim=0.3, max_dim=0.8)
  """
  core.check_key(key)
  batch, height, width, _ = _check_pair_op(images, labels, lam, perm)
  core.check_prob("prob", prob)
  for name, value in (("min_dim", min_dim), ("max_dim", max_dim)):
    core.check_nonneg(name, value)
  if not min_dim <= max_dim:
    raise ValueError(f"min_dim and max_dim must satisfy 0 <= min_dim <= max_dim, got {min_dim!r}, {max_dim!r}.")
  side = min(height, width)
  w_min, w_max = _round_half_even(min_dim * side), _round_half_even(max_dim * side)
  if w_max >= min(height, width):
    raise ValueError(
      f"max_dim={max_dim!r} gives patch sides up to {w_max}; they must be smaller than the image side "
      f"{min(height, width)} (max_dim < {(min(height, width) - 0.5) / side:.4g} for {height}x{width} images)."
    )
  _check_pairing(pairing)
  words = core.Words(key, _pair_words(batch, alpha=0.0, per_sample=False, lam=0.0, perm=perm, pairing=pairing, prob=1.0, extra=7 * batch))
  _, perm = _pair_draws(words, batch, alpha=0.0, per_sample=False, lam=0.0, perm=perm, pairing=pairing)
  sizes = words.randint((2, batch), w_min, w_max + 1)
  if lam is None:
    ph, pw = sizes[0], sizes[1]
  else:
    sq = jnp.round(side * jnp.sqrt(1.0 - jnp.asarray(lam, jnp.float32))).astype(jnp.int32)
    sq = jnp.broadcast_to(sq, (batch,))
    ph, pw = jnp.minimum(sq, height), jnp.minimum(sq, width)
  # Top-left corners ~ U{0 .. side - patch - 1} (the official exclusive randint); a
  # full-side patch (only reachable through a ``lam`` override) sits at 0.
  s0 = words.randint((batch,), 0, jnp.maximum(height - ph, 1))
  s1 = words.randint((batch,), 0, jnp.maximum(width - pw, 1))
  d0 = words.randint((batch,), 0, jnp.maximum(height - ph, 1))
  d1 = words.randint((batch,), 0, jnp.maximum(width - pw, 1))
  apply = words.uniform((batch,)) < prob
  ph, pw = jnp.where(apply, ph, 0), jnp.where(apply, pw, 0)
  inside = _box_mask(height, width, d0, d0 + ph, d1, d1 + pw)
  # One gather: pixel (b, i, j) of the shifted partner is x[perm[b], i - d0 + s0, j - d1 + s1].
  rows = jnp.clip(jnp.arange(height, dtype=jnp.int32)[None, :] - d0[:, None] + s0[:, None], 0, height - 1)
  cols = jnp.clip(jnp.arange(width, dtype=jnp.int32)[None, :] - d1[:, None] + s1[:, None], 0, width - 1)
  shifted = images[perm[:, None, None], rows[:, :, None], cols[:, None, :]]
  mixed = core.paste(inside, shifted, images)
  lam_adj = _kept_fraction(ph * pw, height, width)
  perm = _identity_where_unmixed(perm, lam_adj)
  return MixResult(mixed, core.mix_labels(labels, perm, lam_adj), lam_adj, perm, mask=(~inside).astype(jnp.float32))


def vanilla(key, images: Array, labels: Array) -> MixResult:
  """No mixing: returns the batch unchanged (lam = 1, identity partner).

  The registry's ``vanilla`` entry, so a train step treats the baseline like any
  other method.

  Args:
    key: PRNG key (unused; kept for the common signature).
    images: ``[B, H, W, C]`` float images.
    labels: ``[B, K]`` soft targets.

  Returns:
    ``MixResult(images, labels, ones, arange)``.
  """
  core.check_key(key)
  del key
  batch = core.check_images(images)[0]
  core.check_labels(labels, batch)
  return core.identity_result(images, labels)
