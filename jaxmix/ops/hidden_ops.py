"""Hidden-space ops: Manifold Mixup, PatchUp (soft / hard) and DropBlock.

They act on feature maps ``[B, H, W, C]`` inside a model; ``jaxmix.hidden_mix``
wires them to a model's mixing sites. Every op is pure, jit/vmap clean and has
static shapes: block masks come from ``lax.reduce_window`` over Bernoulli seeds.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from jax import lax

from jaxmix.ops import core
from jaxmix.ops.core import Array, MixResult

PATCHUP_DEFAULTS = {"soft": (0.75, 1.0), "hard": (0.5, 0.7)}
"""PatchUp mode -> (gamma, prob) of the official README."""


def _check_block_size(block_size, height: int, width: int, *, odd: bool) -> None:
  side = min(height, width)
  if not isinstance(block_size, numbers.Integral) or not 1 <= block_size <= side or (odd and block_size % 2 == 0):
    kind = "an odd int" if odd else "an int"
    raise ValueError(f"block_size must be {kind} in [1, {side}] (the feature map side), got {block_size!r}.")


def block_mask(seeds: Array, block_size) -> Array:
  """Grows each seed into a ``block_size`` square: a "SAME" stride-1 max-pool.

  The PyTorch ``max_pool2d(kernel=bs, stride=1, padding=bs // 2)`` of the PatchUp
  and DropBlock code for odd ``bs``; for even ``bs`` the TF "SAME" alignment
  (``(bs - 1) // 2`` rows above the seed, ``bs // 2`` below). Blocks are clipped at
  the border (a corner seed with ``bs = 7`` gives a 4x4 block).

  Args:
    seeds: ``[N, H, W, C]`` array of 0 / 1.
    block_size: int, or a pair ``(bh, bw)``.

  Returns:
    ``[N, H, W, C]`` float32, 1 inside a block.
  """
  bh, bw = (block_size, block_size) if isinstance(block_size, numbers.Integral) else block_size
  seeds = jnp.asarray(seeds, jnp.float32)
  # Separable: a max over rows then over columns equals the 2-D window max (and is
  # ~15x faster on CPU than one bs x bs window).
  rows = lax.reduce_window(seeds, 0.0, lax.max, (1, bh, 1, 1), (1, 1, 1, 1), "SAME")
  return lax.reduce_window(rows, 0.0, lax.max, (1, 1, bw, 1), (1, 1, 1, 1), "SAME")


def sample_lam(key, alpha: float) -> Array:
  """``lam ~ Beta(alpha, alpha)`` as a float32 scalar, with exact cheap special cases.

  ``alpha = 0`` gives 1 (no mixing); ``alpha = 1`` a uniform draw; ``alpha = 2`` the
  median of three uniforms (the 2nd order statistic of 3 is exactly Beta(2, 2)),
  which avoids compiling JAX's rejection sampler for the defaults of PatchUp,
  Manifold Mixup and CutMix; other values use ``jax.random.beta``.
  """
  if alpha == 2:
    return jnp.median(jax.random.uniform(key, (3,), jnp.float32))
  return core.sample_beta(key, alpha)


def patchup_gamma_adj(gamma, height: int, width: int, block_size: int):
  """PatchUp's seed rate ``gamma * H W / (bs^2 (H - bs + 1)(W - bs + 1))``.

  ``patchup.py::adjust_gamma`` (square maps there). At ``S = 32, bs = 7`` it is
  ``gamma * 1024 / 33124`` (0.0231856 at ``gamma = 0.75``). ``gamma`` is not the
  changed fraction: with border clipping the expected changed fraction is 0.636 at
  ``gamma = 0.75`` and 0.491 at 0.5.
  """
  return seed_rate(gamma, height, width, block_size, block_size)


def seed_rate(fraction, height: int, width: int, block_height: int, block_width: int):
  """The Bernoulli rate of block seeds that drops about ``fraction`` of an ``H x W`` map.

  ``fraction * H W / (bh bw (H - bh + 1)(W - bw + 1))``: the DropBlock paper's formula,
  which PatchUp reuses with ``fraction = gamma``. The one copy of it in the package.
  """
  return fraction * height * width / (block_height * block_width * (height - block_height + 1) * (width - block_width + 1))


def pair_mix(features: Array, perm: Array, lam: Array) -> Array:
  """``lam * h + (1 - lam) * h[perm]`` per sample (``lam`` scalar or ``[B]``), computed in float32."""
  lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), features.shape[:1]).reshape((-1,) + (1,) * (features.ndim - 1))
  h = features.astype(jnp.float32)
  return (lam * h + (1.0 - lam) * h[perm]).astype(features.dtype)


def _check_features(features, labels, lam, perm, *, rank4: bool = True):
  if rank4:
    shape = core.check_images(features, "features")
  else:
    shape = tuple(jnp.shape(features))
    if len(shape) < 2 or not jnp.issubdtype(jnp.result_type(features), jnp.floating):
      raise ValueError(f"features must be a floating point batch [B, ...] of rank >= 2, got shape {shape}.")
  if labels is not None:
    core.check_labels(labels, shape[0])
  core.check_lam_perm(lam, perm, shape[0])
  return shape


def manifold_mixup(key, features: Array, labels: Array, *, alpha: float = 2.0, perm=None, lam=None) -> MixResult:
  """Manifold Mixup at one hidden layer (Verma et al., ICML 2019).

  ``h~ = lam h + (1 - lam) h[perm]`` and ``y~ = lam y + (1 - lam) y[perm]`` with
  ``lam ~ Beta(alpha, alpha)`` and one permutation per batch. The layer is chosen
  by the caller (``jaxmix.hidden_mix`` samples it from the official
  ``{input, layer1, layer2}`` per batch). Gradients flow through both terms.

  Args:
    key: PRNG key.
    features: ``[B, ...]`` float hidden states (any rank >= 2, e.g.
      ``[B, H, W, C]``).
    labels: ``[B, K]`` soft targets (the running target; one-hot before the mix).
    alpha: Beta concentration (2.0 for the CIFAR / SVHN recipes, 0.2 for
      Tiny-ImageNet); ``0`` means no mixing.
    perm: optional ``[B]`` int partner override.
    lam: optional scalar or ``[B]`` override.

  Returns:
    A ``MixResult`` with the mixed features in ``images`` and ``lam`` ``[B]``.

  Raises:
    ValueError: on a non-float or rank < 2 batch, labels of another batch size,
      ``alpha < 0`` or badly shaped overrides.

  Example:
    >>> res = jaxmix.manifold_mixup(key, h, y, alpha=2.0)
  """
  core.check_key(key)
  batch = _check_features(features, labels, lam, perm, rank4=False)[0]
  core.check_nonneg("alpha", alpha)
  key_lam, key_perm = jax.random.split(key)
  lam = sample_lam(key_lam, alpha) if lam is None else jnp.asarray(lam, jnp.float32)
  perm = core.sample_perm(key_perm, batch) if perm is None else jnp.asarray(perm, jnp.int32)
  lam_b = jnp.broadcast_to(lam, (batch,))
  return MixResult(pair_mix(features, perm, lam_b), core.mix_labels(labels, perm, lam_b), lam_b, perm, loss_scale=jnp.float32(1.0))


def patchup(
  key,
  features: Array,
  labels: Array,
  *,
  mode: str = "soft",
  alpha: float = 2.0,
  block_size: int = 7,
  gamma=None,
  prob=None,
  lam=None,
  perm=None,
  use_alpha: bool = False,
  per_sample: bool = False,
  seeds=None,
) -> MixResult:
  """PatchUp on a feature map (Faramarzi et al., AAAI 2022), soft or hard.

  Official ``modules/patchup.py``: seeds ``m ~ Bernoulli(gamma_adj)`` at every
  position of every channel (no valid-centre rule), **one seed map shared by the
  whole batch**, grown into ``block_size`` squares by a "SAME" max-pool: ``Hm`` (1 =
  changed). Soft: ``h~ = (1 - Hm) h + Hm (lam h + (1 - lam) h[perm])``; hard:
  ``h~ = (1 - Hm) h + Hm h[perm]``. ``lam ~ Beta(2, 2)`` as the official code
  hard-codes (``alpha`` is ignored unless ``use_alpha=True``).

  Targets: with ``p_chg`` the changed fraction of the map (over ``H W C``) and
  ``p_keep = 1 - p_chg``, the official loss is
  ``p_keep L(y) + p_chg L(t_b) + L(t_rw)`` with ``t_b = lam y + (1 - lam) y[perm]``
  (soft) or ``y[perm]`` (hard) and ``t_rw = p_keep y + p_chg t_b``. The loss (BCE on
  softmax or CE) is affine in the target, so this equals ``2 L(t_rw)``: the op
  returns ``labels = t_rw`` and ``loss_scale = 2``; multiply the loss by it.

  Quirk decisions:
    * ``gamma_adj`` is computed from this call's map size; the official module
      caches the value of its first call. Identical for every reachable site of
      the recipes (all 32x32 at k = 2); differs only if one module were reused
      across sizes.
    * The official code assumes a square map when counting ``C S^2`` features; here
      ``p_chg`` is the mean of the mask over ``H W C`` (the same on square maps).
    * With nothing changed the loss is still ``2 L(y)`` while a skipped batch
      (``prob``) uses ``1 L(y)``: the official discontinuity, kept.

  Args:
    key: PRNG key.
    features: ``[B, H, W, C]`` float feature map.
    labels: ``[B, K]`` soft targets.
    mode: ``"soft"`` or ``"hard"``.
    alpha: Beta concentration, used only with ``use_alpha=True`` (the reference's
      ``--alpha`` never reaches PatchUp).
    block_size: odd block side (7), at most the map side.
    gamma: seed-rate parameter in ``[0, 1]``; ``None`` -> 0.75 soft / 0.5 hard
      (README).
    prob: probability of applying PatchUp to this batch (``--patchup_prob``);
      ``None`` -> 1.0 soft / 0.7 hard. A skipped batch returns the features and
      labels unchanged with ``loss_scale = 1``.
    lam: optional scalar or ``[B]`` override of lam.
    perm: optional ``[B]`` int partner override.
    use_alpha: draw ``lam ~ Beta(alpha, alpha)`` instead of the official
      ``Beta(2, 2)``.
    per_sample: draw one seed map per sample (an option; the official map is
      shared by the batch). Then ``p_chg`` and the targets are per sample.
    seeds: optional ``[1, H, W, C]`` (shared) or ``[B, H, W, C]`` 0 / 1 seed
      override, used instead of the Bernoulli draw (for known answers).

  Returns:
    A ``MixResult``: ``images`` the mixed map (input dtype), ``labels`` the
    collapsed target ``t_rw``, ``lam`` ``[B]`` the weight of the own label in it
    (``p_keep + p_chg lam`` soft, ``p_keep`` hard), ``perm``, ``mask``
    ``[B, H, W, C]`` float32 (1 = changed feature) and ``loss_scale`` (2.0, or 1.0
    for a skipped batch).

  Raises:
    ValueError: on a bad batch or labels, an unknown ``mode``, ``gamma``/``prob``
      outside ``[0, 1]``, ``alpha < 0``, an even or too large ``block_size``, or
      badly shaped overrides.

  Example:
    >>> res = jaxmix.patchup(key, h, y, mode="hard")
    >>> loss = res.loss_scale * jaxmix.bce_on_softmax(logits, res.labels)
  """
  core.check_key(key)
  batch, height, width, channels = _check_features(features, labels, lam, perm)
  if mode not in PATCHUP_DEFAULTS:
    raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}.")
  default_gamma, default_prob = PATCHUP_DEFAULTS[mode]
  gamma = default_gamma if gamma is None else gamma
  prob = default_prob if prob is None else prob
  core.check_prob("gamma", gamma)
  core.check_prob("prob", prob)
  core.check_nonneg("alpha", alpha)
  _check_block_size(block_size, height, width, odd=True)
  n_maps = batch if per_sample else 1
  if seeds is not None and jnp.shape(seeds) not in ((1, height, width, channels), (batch, height, width, channels)):
    raise ValueError(f"seeds must have shape (1 or {batch}, {height}, {width}, {channels}), got {jnp.shape(seeds)}.")
  key_lam, key_perm, key_seeds, key_apply = jax.random.split(key, 4)
  if lam is None:
    lam = sample_lam(key_lam, alpha if use_alpha else 2.0)
  lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (batch,))
  perm = core.sample_perm(key_perm, batch) if perm is None else jnp.asarray(perm, jnp.int32)

  def apply(features, labels):
    if seeds is None:
      rate = patchup_gamma_adj(gamma, height, width, block_size)
      drawn = jax.random.bernoulli(key_seeds, rate, (n_maps, height, width, channels))
    else:
      drawn = seeds
    holes = block_mask(drawn, block_size)
    p_chg = jnp.broadcast_to(jnp.mean(holes, axis=(1, 2, 3)), (batch,))
    p_keep = 1.0 - p_chg
    partner = features[perm]
    if mode == "soft":
      changed = pair_mix(features, perm, lam)
      t_b = core.mix_labels(labels, perm, lam)
      own = p_keep + p_chg * lam
    else:
      changed = partner
      t_b = jnp.asarray(labels, jnp.float32)[perm]
      own = p_keep
    mixed = jnp.where(holes > 0, changed, features)
    t_rw = p_keep[:, None] * jnp.asarray(labels, jnp.float32) + p_chg[:, None] * t_b
    mask = jnp.broadcast_to(holes, features.shape)
    return MixResult(mixed, t_rw, own, perm, mask=mask, loss_scale=jnp.float32(2.0))

  if core.is_static_number(prob) and prob >= 1.0:
    return apply(features, labels)

  def skip(features, labels):
    same = core.identity_result(features, labels)
    return same._replace(mask=jnp.zeros(features.shape, jnp.float32), loss_scale=jnp.float32(1.0))

  return lax.cond(jax.random.uniform(key_apply) < prob, apply, skip, features, labels)


def dropblock_gamma(keep_prob, height: int, width: int, block_size: int):
  """DropBlock's seed rate ``(1 - keep_prob) H W / (bs^2 (H - bs + 1)(W - bs + 1))``.

  The paper / TF formula, also used by the PatchUp copy. ``0.0030914`` at
  ``S = 32, bs = 7, keep_prob = 0.9``.
  """
  return patchup_gamma_adj(1.0 - keep_prob, height, width, block_size)


def dropblock(key, features: Array, *, block_size: int = 7, keep_prob=0.9, variant: str = "patchup", seeds=None) -> Array:
  """DropBlock (Ghiasi et al., NeurIPS 2018): drop contiguous blocks, rescale.

  ``variant="patchup"`` (default) is the copy in the PatchUp repo
  (``modules/drop_block.py``), used by its DropBlock baseline: seeds
  ``~ Bernoulli(gamma)`` with ``gamma = dropblock_gamma(keep_prob, ...)``, drawn at
  **every** position, independently per sample and channel; the block mask is
  ``1 - maxpool_bs(seeds)`` ("SAME", odd ``bs``); ``out = x * mask * numel / sum``
  over the whole tensor.

  ``variant="paper"`` is the paper's / TF reference form: the block side is
  clipped to the map (``min(bs, H)``, ``min(bs, W)``), seeds only at **valid
  centres** (every dropped block lies fully inside the map), any ``bs`` allowed
  (even sides use the TF "SAME" alignment); the same rescaling.

  The paper decreases ``keep_prob`` linearly from 1 to the target over training
  (``dropblock_schedule``); the PatchUp recipe keeps it constant at 0.9. The
  PatchUp module caches ``gamma`` at its first call; here it is computed from each
  map's size (the same for the recipes' 32x32 sites). Where the official code
  divides by zero (everything dropped) this returns zeros.

  Args:
    key: PRNG key.
    features: ``[B, H, W, C]`` float feature map.
    block_size: block side (7).
    keep_prob: target keep probability in ``[0, 1]``; may be a traced scalar (a
      schedule inside jit). ``1`` is the identity.
    variant: ``"patchup"`` or ``"paper"``.
    seeds: optional ``[B, H, W, C]`` 0 / 1 seed override (valid-centre masking is
      still applied for ``"paper"``).

  Returns:
    The features with blocks dropped and rescaled, in the input dtype.

  Raises:
    ValueError: on a bad batch, ``keep_prob`` outside ``[0, 1]``, an unknown
      ``variant`` or a bad ``block_size`` (``"patchup"``: odd, at most the map side;
      ``"paper"``: >= 1).

  Example:
    >>> h = jaxmix.dropblock(key, h, block_size=7, keep_prob=0.9)
  """
  core.check_key(key)
  shape = core.check_images(features, "features")
  _, height, width, _ = shape
  if core.is_static_number(keep_prob):
    core.check_prob("keep_prob", keep_prob)
  if variant == "patchup":
    _check_block_size(block_size, height, width, odd=True)
    bh, bw = block_size, block_size
  elif variant == "paper":
    if not isinstance(block_size, numbers.Integral) or block_size < 1:
      raise ValueError(f"block_size must be an int >= 1, got {block_size!r}.")
    bh, bw = min(block_size, height), min(block_size, width)
  else:
    raise ValueError(f"variant must be 'patchup' or 'paper', got {variant!r}.")
  if seeds is not None and jnp.shape(seeds) != shape:
    raise ValueError(f"seeds must have the features' shape {shape}, got {jnp.shape(seeds)}.")
  if seeds is None:
    # One uniform per element from a hash keyed per sample (core.hash_uniform): threefry's
    # per-element draw was 90 % of this op's time on CPU.
    rate = seed_rate(1.0 - keep_prob, height, width, bh, bw)
    seeds = core.hash_uniform(jax.random.bits(key, (shape[0], 2), jnp.uint32), shape[1:]) < rate
  seeds = jnp.asarray(seeds) > 0
  if variant == "paper":
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    valid = (rows >= bh // 2) & (rows < height - (bh - 1) // 2) & (cols >= bw // 2) & (cols < width - (bw - 1) // 2)
    seeds = seeds & valid[None, :, :, None]
  if height <= _WORD_BITS:
    dropped, n_dropped = _packed_block_mask(seeds, bh, bw)
  else:  # taller maps: the dense window max
    dropped = block_mask(seeds, (bh, bw))
    n_dropped = jnp.sum(dropped)
  total = jnp.float32(dropped.size) - n_dropped
  scale = jnp.where(total > 0, dropped.size / jnp.where(total > 0, total, 1.0), 0.0)
  # The mask is materialised (the barrier keeps XLA from recomputing the unpacking inside
  # every consumer: on CPU those are transposing fusions of the backward pass, where it was slow).
  mask = jax.lax.optimization_barrier((1.0 - dropped.astype(jnp.float32)) * scale)
  return (features.astype(jnp.float32) * mask).astype(features.dtype)


_WORD_BITS = 32


def _packed_block_mask(seeds: Array, bh: int, bw: int) -> tuple[Array, Array]:
  """:func:`block_mask` of boolean ``[B, H, W, C]`` seeds with ``H <= 32``, on bit-packed columns.

  Each column of ``H`` rows becomes one uint32 (bit ``i`` = row ``i``); growing the
  seeds over rows is an OR of ``bh`` shifts of that word, over columns an OR of ``bw``
  neighbouring words, each with the "SAME" alignment of :func:`block_mask`. A 32x
  smaller array than the map goes through the window max.

  Returns:
    ``(dropped, count)``: ``[B, H, W, C]`` uint32 0 / 1, and the number of ones (float32).
  """
  _, height, width, _ = seeds.shape
  row_bit = lax.broadcasted_iota(jnp.uint32, (1, height, 1, 1), 1)
  words = jnp.sum(seeds.astype(jnp.uint32) << row_bit, axis=1, dtype=jnp.uint32)  # [B, W, C], distinct bits
  above, below = (bh - 1) // 2, bh // 2  # block_mask's "SAME" window: rows i - above .. i + below
  grown = words
  for t in range(1, below + 1):
    grown = grown | (words >> t)
  for t in range(1, above + 1):
    grown = grown | (words << t)
  if height < _WORD_BITS:
    grown = grown & jnp.uint32((1 << height) - 1)
  left, right = (bw - 1) // 2, bw // 2
  padded = jnp.pad(grown, ((0, 0), (left, right), (0, 0)))
  cols = padded[:, :width]
  for t in range(1, bw):
    cols = cols | padded[:, t : t + width]
  count = jnp.sum(lax.population_count(cols), dtype=jnp.int32).astype(jnp.float32)
  return (cols[:, None] >> row_bit) & 1, count


def dropblock_schedule(step, total_steps: int, *, keep_prob: float = 0.9, start_keep_prob: float = 1.0):
  """The paper's linear ``keep_prob`` schedule: ``start_keep_prob`` -> ``keep_prob``.

  ``start + (keep_prob - start) * min(step / total_steps, 1)``; works on a traced
  ``step`` inside jit. Pass the result to ``dropblock(..., keep_prob=...)`` or to
  ``hidden_mix(..., method="dropblock", keep_prob=...)``.

  Args:
    step: current step (int or traced scalar).
    total_steps: steps over which to anneal (> 0); the value stays at
      ``keep_prob`` afterwards.
    keep_prob: final keep probability in ``[0, 1]``.
    start_keep_prob: initial keep probability in ``[0, 1]`` (1.0 in the paper).

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if ``total_steps < 1`` or a probability is outside ``[0, 1]``.
  """
  if not isinstance(total_steps, numbers.Integral) or total_steps < 1:
    raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}.")
  core.check_prob("keep_prob", keep_prob)
  core.check_prob("start_keep_prob", start_keep_prob)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
  return jnp.float32(start_keep_prob) + (keep_prob - start_keep_prob) * frac
