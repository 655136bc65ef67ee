"""IPMix (Huang et al., NeurIPS 2023): label-preserving image-, patch- and pixel-level mixing.

Everything runs on device with per-sample randomness, vectorised over the batch:
the ``B x k`` chains are one ``[B, k, H, W, C]`` array, and a chain of random depth
is a fixed ``depth``-step ``lax.scan`` whose steps past the drawn depth keep the
image. Both chain types (and every op of a step) are computed for every chain and
the drawn one is selected, as ``vmap`` of a ``lax.switch`` would do; the IMG and
the P chains run as two separate scans (about 1.7x faster on CPU than one scan
whose fused step computes both). The batch axes
are explicit rather than ``vmap``-ed because XLA:CPU runs the batched gathers and
scatters ``vmap`` produces (bilinear taps, histograms) 5-20x slower than one flat
gather / scatter; the result is the same either way, and ``ipmix`` itself can be
``vmap``-ed or ``jit``-ed.

Pixel values follow the official code's PIL images: each chain starts from the
image rounded to uint8 levels ``k / 255`` and every step returns values on that
grid (see ``jaxmix.image_ops`` for the image-level ops and ``_quantize`` for the
pixel mixing ops).
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from jaxmix.ops import core, fractals, image_ops
from jaxmix.ops.core import Array, MixResult

#: Pixel mixing ops of a P chain step, in the official order (``IPMix_utils.mixings``).
MIXING_OPS = ("add", "multiply", "random_pixels", "random_elems")

# Truncation tolerance of ``_quantize``, in uint8 levels.
_QUANT_EPS = 1e-3


# ----------------------------------------------------------------------------
# Pixel mixing ops (docs/algorithms/ipmix.md#pixel-mixing-ops), on [0, 1] arrays of the same shape.


def sample_ab(key, beta: float) -> tuple[Array, Array]:
  """The official ``get_ab(beta)`` for ``add`` / ``multiply``.

  With probability 1/2, ``a ~ Beta(beta, 1)`` and ``b ~ Beta(1, beta)``; otherwise
  ``a = 1 + Beta(1, beta)`` and ``b = -Beta(1, beta)`` (two separate draws). Both
  Beta laws are sampled exactly by inversion: ``U**(1/beta)`` and ``1 - U**(1/beta)``.

  Returns:
    ``(a, b)`` float32 scalars.
  """
  return _ab_from_uniforms(jax.random.uniform(key, (3,)), beta)


def _ab_from_uniforms(u: Array, beta: float) -> tuple[Array, Array]:
  """``get_ab`` from three uniforms ``(coin, u1, u2)``."""
  root1, root2 = u[1] ** (1.0 / beta), u[2] ** (1.0 / beta)
  first = u[0] < 0.5
  # first: a = Beta(beta, 1) = root1, b = Beta(1, beta) = 1 - root2;
  # else:  a = 1 + Beta(1, beta) = 2 - root1, b = -Beta(1, beta) = root2 - 1.
  return jnp.where(first, root1, 2.0 - root1), jnp.where(first, 1.0 - root2, root2 - 1.0)


def mix_add(x: Array, y: Array, a, b) -> Array:
  """``add``: ``(a (2x - 1) + b (2y - 1) + 1) / 2``; ``(a, b) = (1, 0)`` gives ``x``."""
  return (a * (2.0 * x - 1.0) + b * (2.0 * y - 1.0) + 1.0) / 2.0


def mix_multiply(x: Array, y: Array, a, b) -> Array:
  """``multiply``: ``(2x)**a * max(2y, 1e-37)**b / 2``; ``(a, b) = (1, 0)`` gives ``x``.

  Computed as ``exp(a log 2x + b log max(2y, 1e-37)) / 2`` (``a > 0`` always), five
  times cheaper than two ``pow`` on CPU; ``x = 0`` gives 0 as ``pow`` does.
  """
  return jnp.exp(a * jnp.log(2.0 * x) + b * jnp.log(jnp.maximum(2.0 * y, 1e-37))) / 2.0


def mix_random_pixels(key, x: Array, y: Array, tau) -> Array:
  """``random_pixels`` on ``[H, W, C]``: ``x`` where ``U[H, W] < tau`` (all channels), else ``y``."""
  return _random_pixels(jax.random.uniform(key, x.shape[:-1] + (1,)), x, y, tau)


def mix_random_elems(key, x: Array, y: Array, tau) -> Array:
  """``random_elems`` on ``[H, W, C]``: ``x`` where ``U[H, W, C] < tau``, else ``y``."""
  return _random_elems(jax.random.uniform(key, x.shape), x, y, tau)


def _random_pixels(noise: Array, x: Array, y: Array, tau) -> Array:
  return jnp.where(noise[..., :1] < tau, x, y)


def _random_elems(noise: Array, x: Array, y: Array, tau) -> Array:
  return jnp.where(noise < tau, x, y)


OVERFLOWS = ("clip", "wrap")
"""How ``add`` / ``multiply`` values outside ``[0, 1]`` become uint8 levels: ``"clip"``
(jaxmix's default, as PixMix) or ``"wrap"`` (the official code's cast: truncate, modulo 256)."""


def _quantize(values: Array, overflow: str = "clip") -> Array:
  """A mixed patch back to uint8 levels, as the official ``ToPILImage`` (``mul(255).byte()``).

  QUIRK decision (docs/algorithms/ipmix.md#pixel-mixing-ops): the official code casts ``add`` /
  ``multiply`` results to uint8 without clipping, so values outside ``[0, 1]`` wrap
  around (or are undefined behaviour in the float -> uint8 cast): a slightly too
  bright pixel turns black. jaxmix clips to ``[0, 1]`` first, as PixMix does,
  and then truncates like ``.byte()``. The truncation allows ``1e-3`` of a level of
  float32 rounding noise, so that ``add`` with ``(a, b) = (1, 0)`` (which in float32
  returns ``k / 255`` minus an ulp for about a quarter of the levels, dropping a
  level in the official code) is the identity. ``overflow="wrap"`` reproduces the
  official cast instead: ``trunc(255 v)`` modulo 256, so 256 becomes 0 and -3 becomes 253.
  """
  if overflow == "wrap":
    return jnp.mod(jnp.trunc(values * 255.0 + jnp.where(values >= 0, _QUANT_EPS, -_QUANT_EPS)), 256.0) / 255.0
  return jnp.floor(jnp.clip(values, 0.0, 1.0) * 255.0 + _QUANT_EPS) / 255.0


# ----------------------------------------------------------------------------
# Chain steps on batches [..., H, W, C] with values k / 255.


# Uniforms and words one chain step consumes: 3 for the IMG op, 11 for the patch step,
# then 2 uint32 hash seeds for the pixel masks.
_STEP_UNIFORMS = 14
_STEP_WORDS = _STEP_UNIFORMS + 2


def _randint(u: Array, low, high) -> Array:
  """``U{low..high-1}`` from a uniform in ``[0, 1)`` (``high`` may be traced)."""
  return jnp.minimum(low + jnp.floor(u * (high - low)).astype(jnp.int32), high - 1)


def _to_uniform(words: Array) -> Array:
  return (words >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def _patch_step(u: Array, seeds: Array, x: Array, g: Array, patch_sizes: tuple[int, ...], beta: float, overflow: str = "clip") -> Array:
  """``patch_mixing(x, g, P, op, beta)`` per image, ``P ~ U(patch_sizes)``, ``op ~ U(MIXING_OPS)``.

  ``x``, ``g``: ``[..., H, W, C]``; ``u``: ``[..., 11]`` uniforms (size, left, top,
  square?, rect w, rect h, op, coin, u1, u2, tau); ``seeds``: ``[..., 2]`` uint32
  for the pixel masks. The patch is cropped at the same place from ``x`` and
  ``g``. Its left / top edge is ``U{0..W-P}`` / ``U{0..H-P}`` and a rectangle's sides
  are ``U{2..P}``, so it always lies inside the image (a 32 patch on a 32x32 image
  is the image-level pixel mixing case).
  """
  height, width, channels = x.shape[-3:]
  e = lambda v: v[..., None, None, None]  # noqa: E731
  size = jnp.asarray(patch_sizes, jnp.int32)[_randint(u[..., 0], 0, len(patch_sizes))]
  left = _randint(u[..., 1], 0, width - size + 1)
  top = _randint(u[..., 2], 0, height - size + 1)
  square = u[..., 3] > 0.5
  box_w = jnp.where(square, size, _randint(u[..., 4], 2, size + 1))
  box_h = jnp.where(square, size, _randint(u[..., 5], 2, size + 1))
  rows = jnp.arange(height)[:, None, None]
  cols = jnp.arange(width)[None, :, None]
  inside = (rows >= e(top)) & (rows < e(top + box_h)) & (cols >= e(left)) & (cols < e(left + box_w))

  op = e(_randint(u[..., 6], 0, len(MIXING_OPS)))
  a, b = (e(v) for v in _ab_from_uniforms(jnp.moveaxis(u[..., 7:10], -1, 0), beta))
  tau = e(u[..., 10])
  noise = core.hash_uniform(seeds, (height, width, channels))  # shared: only one random op is used
  mixed = jnp.select(
    [op == 0, op == 1, op == 2],
    [mix_add(x, g, a, b), mix_multiply(x, g, a, b), _random_pixels(noise, x, g, tau)],
    _random_elems(noise, x, g, tau),
  )
  return jnp.where(inside, _quantize(mixed, overflow), x)


def _chains(words: Array, is_img: Array, depth_drawn: Array, start: Array, g: Array, *, severity, patch_sizes, beta, overflow) -> Array:
  """Runs all chains: ``start`` ``[B, k, H, W, C]``, ``words`` ``[depth, B, k, _STEP_WORDS]``.

  A chain of drawn depth ``d`` applies steps ``0..d-1`` of a fixed ``depth``-step
  scan; later steps keep the image. A chain's type is fixed: at each step the IMG
  op runs on the live IMG chains and the patch step on the live P chains, each on
  just those rows (``core.apply_to_selected``; about 3/8 of the chains each at the
  first step for ``depth = 3``, fewer later), not on every chain.
  """
  batch, k = is_img.shape
  n = batch * k
  flat = lambda a: a.reshape(n, *a.shape[2:])  # noqa: E731
  is_img = flat(is_img)
  pictures = flat(jnp.broadcast_to(g, start.shape))
  depth = words.shape[0]
  rate = 0.5 * depth / (depth + 1)  # a type, and a depth above the step (the first step's rate; later ones are lower)
  capacity = core.selection_capacity(n, rate)

  def patch(rows, u, seeds, g):
    return _patch_step(u, seeds, rows, g, patch_sizes, beta, overflow)

  def step(images, inputs):
    index, step_words = inputs
    live = flat(index < depth_drawn)
    step_words = flat(step_words)
    u = _to_uniform(step_words[:, :_STEP_UNIFORMS])
    images = image_ops.random_op_from_uniforms(u[:, :3], images, severity=severity, active=live & is_img, active_rate=rate)
    return core.apply_to_selected(patch, live & ~is_img, capacity, images, u[:, 3:], step_words[:, _STEP_UNIFORMS:], pictures), None

  out, _ = jax.lax.scan(step, flat(start), (jnp.arange(depth), words))
  return out.reshape(start.shape)


def ipmix_from_pictures(
  key,
  images: Array,
  pictures: Array,
  *,
  k: int = 3,
  depth: int = 3,
  beta: float = 3.0,
  severity: float = 3,
  patch_sizes: Optional[Sequence[int]] = None,
  overflow: str = "clip",
  m=None,
  chain_depth=None,
) -> Array:
  """IPMix of a batch given each sample's mixing picture (the core of ``ipmix``).

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` in ``[0, 1]``.
    pictures: ``[B, H, W, C]`` in ``[0, 1]``, the mixing picture of each sample.
    k, depth, beta, severity, patch_sizes, m, chain_depth: as ``ipmix``.

  Returns:
    ``[B, H, W, C]`` in ``[0, 1]``, in the dtype of ``images``.

  Raises:
    ValueError: as ``ipmix``, or if ``pictures`` has another shape than ``images``.
  """
  core.check_key(key)
  batch, height, width, channels = core.check_images(images)
  patch_sizes = default_patch_sizes(height, width) if patch_sizes is None else patch_sizes
  _check_hparams(k, depth, beta, severity, patch_sizes, height, width, overflow)
  if jnp.shape(pictures) != (batch, height, width, channels):
    raise ValueError(f"pictures must have the images' shape {(batch, height, width, channels)}, got {jnp.shape(pictures)}.")
  key_scalars, key_steps = jax.random.split(key)
  u = jax.random.uniform(key_scalars, (batch, 1 + 3 * k))
  exp = -jnp.log1p(-u[:, 1 : k + 1])
  ws = exp / jnp.sum(exp, axis=-1, keepdims=True)  # Dirichlet(1, ..., 1)
  if m is None:
    m = u[:, 0]  # Beta(1, 1)
  else:
    if jnp.shape(m) not in ((), (batch,)):
      raise ValueError(f"m must be a scalar or have shape ({batch},), got shape {jnp.shape(m)}.")
    m = jnp.broadcast_to(jnp.asarray(m, jnp.float32), (batch,))
  if chain_depth is None:
    chain_depth = _randint(u[:, k + 1 : 2 * k + 1], 0, depth + 1)
  else:
    if jnp.shape(chain_depth) not in ((), (batch,), (batch, k)):
      raise ValueError(f"chain_depth must be a scalar or have shape ({batch},) or ({batch}, {k}), got shape {jnp.shape(chain_depth)}.")
    if isinstance(chain_depth, numbers.Integral) and not 0 <= chain_depth <= depth:
      raise ValueError(f"chain_depth must lie in [0, depth={depth}], got {chain_depth!r}.")
    chain_depth = jnp.asarray(chain_depth, jnp.int32)
    chain_depth = jnp.broadcast_to(chain_depth.reshape(chain_depth.shape + (1,) * (2 - chain_depth.ndim)), (batch, k))
  is_img = u[:, 2 * k + 1 :] < 0.5

  x = images.astype(jnp.float32)
  start = jnp.broadcast_to(image_ops.from_levels(image_ops.to_levels(x))[:, None], (batch, k, height, width, channels))
  if depth > 0:
    words = jax.random.bits(key_steps, (depth, batch, k, _STEP_WORDS), jnp.uint32)
    g = jnp.asarray(pictures, jnp.float32)[:, None]
    patch_sizes = tuple(int(p) for p in patch_sizes)
    start = _chains(words, is_img, chain_depth, start, g, severity=severity, patch_sizes=patch_sizes, beta=float(beta), overflow=overflow)
  mixed = jnp.einsum("bk,bkhwc->bhwc", ws, start)
  w = m[:, None, None, None]
  return jnp.clip((1.0 - w) * x + w * mixed, 0.0, 1.0).astype(images.dtype)


# ----------------------------------------------------------------------------
# The mixing set.


def _mixing_levels(mixing_set, height: int, width: int, channels: int) -> Array:
  """The mixing set as ``[N, Hs, Ws, C]`` levels (the built-in fractals when ``None``)."""
  if mixing_set is None:
    if channels != 3:
      raise ValueError(f"the built-in fractal mixing set is RGB; pass a mixing_set for {channels}-channel images.")
    side = max(height, width)
    return jnp.asarray(fractals.default_mixing_set(side + side // 8))
  shape = jnp.shape(mixing_set)
  if len(shape) != 4 or shape[0] < 1 or shape[1] < height or shape[2] < width or shape[3] != channels:
    raise ValueError(
      f"mixing_set must be [N, Hs, Ws, {channels}] with N >= 1, Hs >= {height}, Ws >= {width} (values in [0, 1]), got {tuple(shape)}."
    )
  if jnp.issubdtype(jnp.result_type(mixing_set), jnp.integer):
    return mixing_set
  return image_ops.to_levels(mixing_set)


def mixing_pictures(key, mixing_set, batch: int, height: int, width: int, channels: int = 3, *, mixing_index=None) -> Array:
  """Draws each sample's mixing picture: a uniform index and, for a larger set, a random crop.

  The official code loads the picture with ``Resize(36)`` then ``RandomCrop(32)``;
  the built-in fractals are generated at side ``1.125 * max(H, W)`` (36 for 32x32)
  and cropped the same way. A user set of larger pictures is cropped likewise
  (never resized).

  Args:
    key: PRNG key.
    mixing_set: ``None`` (built-in fractals) or ``[N, Hs, Ws, C]`` in ``[0, 1]``
      (or uint8 levels) with ``Hs >= H``, ``Ws >= W``.
    batch, height, width, channels: the image batch shape.
    mixing_index: optional ``[B]`` int override of the drawn indices.

  Returns:
    ``[B, H, W, C]`` float32 pictures on the uint8 grid.
  """
  levels = _mixing_levels(mixing_set, height, width, channels)
  count, set_h, set_w, _ = levels.shape
  key_index, key_y, key_x = jax.random.split(key, 3)
  if mixing_index is None:
    mixing_index = jax.random.randint(key_index, (batch,), 0, count)
  top = jax.random.randint(key_y, (batch,), 0, set_h - height + 1)
  left = jax.random.randint(key_x, (batch,), 0, set_w - width + 1)
  crop = lambda i, t, s: jax.lax.dynamic_slice(levels[i], (t, s, 0), (height, width, channels))  # noqa: E731
  return image_ops.from_levels(jax.vmap(crop)(jnp.asarray(mixing_index, jnp.int32), top, left).astype(jnp.float32))


DEFAULT_PATCH_SIZES = (4, 8, 16, 32)
"""The official CIFAR patch sides; ``patch_sizes=None`` takes those that fit the shorter image side."""


def default_patch_sizes(height: int, width: int) -> tuple[int, ...]:
  """The sides of :data:`DEFAULT_PATCH_SIZES` that fit an ``height x width`` image (``(2,)`` below 4 pixels)."""
  return tuple(p for p in DEFAULT_PATCH_SIZES if p <= min(height, width)) or (2,)


def _check_hparams(k, depth, beta, severity, patch_sizes, height: int, width: int, overflow: str = "clip") -> None:
  if overflow not in OVERFLOWS:
    raise ValueError(f"overflow must be one of {OVERFLOWS}, got {overflow!r}.")
  if not isinstance(k, numbers.Integral) or k < 1:
    raise ValueError(f"k must be an int >= 1, got {k!r}.")
  if not isinstance(depth, numbers.Integral) or depth < 0:
    raise ValueError(f"depth must be an int >= 0, got {depth!r}.")
  if not isinstance(beta, numbers.Real) or not beta > 0:
    raise ValueError(f"beta must be a number > 0, got {beta!r}.")
  image_ops.check_severity(severity)
  sizes = tuple(patch_sizes)
  if not sizes or any(not isinstance(p, numbers.Integral) or not 2 <= p <= min(height, width) for p in sizes):
    raise ValueError(f"patch_sizes must be a non-empty sequence of ints in [2, {min(height, width)}], got {patch_sizes!r}.")


# ----------------------------------------------------------------------------
# Public ops.


def ipmix(
  key,
  images: Array,
  labels: Array,
  *,
  mixing_set: Optional[Array] = None,
  k: int = 3,
  depth: int = 3,
  beta: float = 3.0,
  severity: float = 3,
  patch_sizes: Optional[Sequence[int]] = None,
  overflow: str = "clip",
  mixing_index=None,
  m=None,
  chain_depth=None,
) -> MixResult:
  """IPMix (Huang et al., NeurIPS 2023, "IPMix: Label-Preserving Data Augmentation
  Method for Training Robust Classifiers"), per sample on device.

  Per sample (docs/algorithms/ipmix.md#structure-of-one-augmented-image): a mixing picture ``g`` drawn uniformly from the
  mixing set (shared by all chains), ``ws ~ Dirichlet(1, ..., 1)`` over ``k``
  chains and ``m ~ Beta(1, 1)``. Chain i starts at ``x``, picks IMG or P with
  probability 1/2 and a depth ``~ U{0..depth}`` (0 allowed), and repeats: IMG, one
  of ``jaxmix.image_ops.IPMIX_OPS`` at ``severity``; P, ``patch_mixing`` of a
  square or rectangular patch of side ``P ~ U(patch_sizes)`` with ``g`` by one of
  ``MIXING_OPS`` (``beta`` parametrises add / multiply). The output is
  ``(1 - m) x + m sum_i ws_i x_i`` and the labels are unchanged.

  Pixel space: the official output is ``(1 - m) n(x) + m sum_i ws_i n(x_i)`` with
  ``n(v) = (v - 0.5) / 0.5`` (``Normalize(0.5, 0.5)``). ``n`` is affine and the
  weights sum to 1, so that equals ``n`` of this function's ``[0, 1]`` output:
  normalise after ``ipmix`` (with any mean / std) and the result is identical.

  Deviations: the mixing set defaults to 256 procedural IFS fractals
  (``jaxmix.fractals``, 36x36 for 32x32 images, randomly cropped like the official
  ``Resize(36)`` + ``RandomCrop(32)``; the official set is downloaded); add /
  multiply results are clipped to ``[0, 1]`` before the uint8 conversion (the
  official code lets them wrap, see ``_quantize``); translations scale with the
  image side (the official code hard-codes 32); the per-pixel masks of
  random_pixels / random_elems use hashed uniforms seeded from ``key`` (see
  ``core.hash_uniform``). The ImageNet variant (a P step mixing with an augmented copy
  of ``x`` half the time) is not implemented. Chains start from ``x`` rounded to
  uint8 levels, as the official PIL images are; the ``(1 - m) x`` term uses ``x``
  as given. Per-sample draws come from batch-shaped calls, so a sample's
  augmentation depends on the key and the batch size.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` float images in ``[0, 1]`` (after flip and crop).
    labels: ``[B, K]`` soft targets, returned unchanged (as float32).
    mixing_set: ``[N, Hs, Ws, C]`` mixing pictures in ``[0, 1]`` (or uint8) with
      ``Hs >= H``, ``Ws >= W`` (randomly cropped when larger); ``None`` uses the
      built-in fractals (RGB only).
    k: number of chains (official 3).
    depth: maximum chain depth t (official 3); depths are drawn from ``{0..t}``.
    beta: the add / multiply Beta parameter (official 3; ImageNet 4).
    severity: the image-op severity in ``[0.1, 10]`` (official 3; ImageNet 1).
    patch_sizes: patch sides, each in ``[2, min(H, W)]``; ``None`` (default) takes
      those of the official CIFAR ``(4, 8, 16, 32)`` that fit the shorter image side,
      so the defaults work on any image of at least 4 pixels a side.
    overflow: ``"clip"`` (default) or ``"wrap"`` (the official uint8 cast) for ``add``
      / ``multiply`` values outside ``[0, 1]``; see ``OVERFLOWS``.
    mixing_index: optional ``[B]`` int override of the mixing-picture indices.
    m: optional scalar or ``[B]`` override of the skip weight ``m``.
    chain_depth: optional int, ``[B]`` or ``[B, k]`` override of the chain depths
      (each in ``[0, depth]``; larger traced values act as ``depth``).

  Returns:
    A ``MixResult`` with ``images`` in ``[0, 1]`` (dtype of the input), ``labels``
    unchanged, ``lam = 1`` and ``perm`` the identity.

  Raises:
    ValueError: on a non-4-D or integer image batch, labels of another batch size,
      or hyper-parameters out of range.

  Example:
    >>> res = jaxmix.ipmix(jax.random.key(0), x01, jaxmix.one_hot(y, 10))
    >>> x_in = (res.images - 0.5) / 0.5
  """
  core.check_key(key)
  batch, height, width, channels = core.check_images(images)
  core.check_labels(labels, batch)
  patch_sizes = default_patch_sizes(height, width) if patch_sizes is None else patch_sizes
  _check_hparams(k, depth, beta, severity, patch_sizes, height, width, overflow)
  key_pictures, key_mix = jax.random.split(key)
  pictures = mixing_pictures(key_pictures, mixing_set, batch, height, width, channels, mixing_index=mixing_index)
  out = ipmix_from_pictures(
    key_mix,
    images,
    pictures,
    k=k,
    depth=depth,
    beta=beta,
    severity=severity,
    patch_sizes=patch_sizes,
    m=m,
    chain_depth=chain_depth,
    overflow=overflow,
  )
  return core.identity_result(out, labels)


def ipmix_views(
  key,
  images: Array,
  *,
  n_views: int = 2,
  mixing_set: Optional[Array] = None,
  k: int = 3,
  depth: int = 3,
  beta: float = 3.0,
  severity: float = 3,
  patch_sizes: Optional[Sequence[int]] = None,
  overflow: str = "clip",
  mixing_index=None,
) -> Array:
  """Independent IPMix views of a batch that share each sample's mixing picture.

  The JSD training batch of the official code is ``(clean, aug1, aug2)`` where the
  two augmented views are independent ``ipmix`` draws with the same ``g`` (and
  the same crop of it). Feed ``images`` (normalised) and the views (normalised
  the same way) to the model and ``jsd_loss`` to the logits.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` in ``[0, 1]``.
    n_views: number of views, >= 1 (official 2).
    mixing_set, k, depth, beta, severity, patch_sizes, mixing_index: as ``ipmix``.

  Returns:
    ``[n_views, B, H, W, C]`` in ``[0, 1]``, dtype of ``images``.

  Raises:
    ValueError: as ``ipmix``, or if ``n_views < 1``.

  Example:
    >>> views = jaxmix.ipmix_views(key, x01)  # [2, B, H, W, C]
  """
  core.check_key(key)
  batch, height, width, channels = core.check_images(images)
  if not isinstance(n_views, numbers.Integral) or n_views < 1:
    raise ValueError(f"n_views must be an int >= 1, got {n_views!r}.")
  patch_sizes = default_patch_sizes(height, width) if patch_sizes is None else patch_sizes
  _check_hparams(k, depth, beta, severity, patch_sizes, height, width, overflow)
  key_pictures, key_views = jax.random.split(key)
  pictures = mixing_pictures(key_pictures, mixing_set, batch, height, width, channels, mixing_index=mixing_index)
  # One traced view mapped over the view keys: the views draw what a Python loop over
  # the keys would, and a train step compiles IPMix's chains once instead of n_views times.
  return jax.lax.map(
    lambda view_key: ipmix_from_pictures(
      view_key, images, pictures, k=k, depth=depth, beta=beta, severity=severity, patch_sizes=patch_sizes, overflow=overflow
    ),
    jax.random.split(key_views, n_views),
  )


def jsd_loss(logits_clean: Array, logits_views: Sequence[Array], labels: Array, *, weight: float = 12.0) -> Array:
  """Cross-entropy on the clean logits plus the AugMix / IPMix Jensen-Shannon consistency term.

  ``CE(z_clean, y) + weight * (1 / V) sum_v KL(p_v || M)`` over the ``V`` =
  1 + ``len(logits_views)`` distributions (clean and views), with ``M =
  clip(mean_v p_v, 1e-7, 1)`` and each KL summed over classes and averaged over
  the batch (``F.kl_div(log M, p_v, reduction="batchmean")``), CE averaged over the
  batch. With two views and ``weight = 12`` this is the official loss
  (``docs/algorithms/ipmix.md#defaults-and-the-jsd-loss``).

  Args:
    logits_clean: ``[B, K]`` logits of the clean images.
    logits_views: a sequence of ``[B, K]`` logits, one per IPMix view (official 2).
    labels: ``[B, K]`` soft targets of the clean images.
    weight: the consistency weight (official 12).

  Returns:
    float32 scalar loss.

  Example:
    >>> loss = jaxmix.jsd_loss(z_clean, (z_aug1, z_aug2), jaxmix.one_hot(y, 10))
  """
  logits = [jnp.asarray(z, jnp.float32) for z in (logits_clean, *logits_views)]
  log_probs = [jax.nn.log_softmax(z, axis=-1) for z in logits]
  probs = [jnp.exp(lp) for lp in log_probs]
  log_mixture = jnp.log(jnp.clip(sum(probs) / len(probs), 1e-7, 1.0))
  batch = logits[0].shape[0]
  kl = sum(jnp.sum(p * (lp - log_mixture)) for p, lp in zip(probs, log_probs, strict=True)) / batch
  ce = -jnp.mean(jnp.sum(jnp.asarray(labels, jnp.float32) * log_probs[0], axis=-1))
  return ce + weight * kl / len(probs)
