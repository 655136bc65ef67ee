"""PIL-compatible image-level ops on [0, 1] images, the IPMix / AugMix CIFAR op list.

Each op takes an image ``[H, W, C]`` or a batch ``[..., H, W, C]`` with values in
``[0, 1]``, rounds it to uint8 levels ``k / 255`` as the official code's PIL images
are, applies the PIL operation on the levels and returns ``k' / 255`` in float32.
Parameters are scalars or one per image (``[...]``) and may be traced, so every op
runs under ``jit`` and ``vmap``. The batch form is the fast one: it issues one flat
gather / scatter for the whole batch, where XLA:CPU runs the batched gathers and
scatters that ``vmap`` produces 5-20x slower.

How close they come to Pillow (``tests/test_image_ops.py`` compares them on real
CIFAR-10 images):

* ``equalize``, ``posterize``, ``solarize``, ``invert``, ``mirror`` and
  ``translate_x`` / ``translate_y`` (integer shifts) are exact: the same integer
  arithmetic as Pillow's lookup tables and copies.
* ``rotate``, ``shear_x``, ``shear_y`` and the generic ``affine`` follow Pillow's
  ``ImagingGenericTransform`` exactly in structure (pixel centres at ``+0.5``, the
  inverse map from output to input, black fill where the mapped centre leaves
  ``[0, W) x [0, H)``, edge-clamped bilinear taps, truncation of the interpolated
  value to uint8), but in float32 where Pillow uses double. A pixel whose exact
  interpolated value lies within float32 rounding of an integer can truncate to
  the level below or above, so a small fraction of pixels differs by one level.

dm_pix (``rotate``, ``affine_transform``) and augmax blend with zeros at the
border, interpolate in float without truncation and have no ``equalize``,
``posterize`` or shear, so they do not reproduce the PIL ops; these small
functions do.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxmix.ops import core
from jaxmix.ops.core import Array

#: The IPMix CIFAR op list (``IPMix_utils.augmentations``), in the official order.
IPMIX_OPS = ("equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y", "translate_x", "translate_y", "mirror", "invert")


def to_levels(image: Array) -> Array:
  """``[0, 1]`` floats -> float32 uint8 levels ``round(255 x)`` in ``[0, 255]``."""
  return jnp.round(jnp.clip(jnp.asarray(image, jnp.float32), 0.0, 1.0) * 255.0)


def from_levels(levels: Array) -> Array:
  """Float32 levels -> ``[0, 1]``, ``levels / 255`` as torchvision's ``ToTensor``."""
  return levels / 255.0


def _check_image(image) -> None:
  if jnp.ndim(image) < 3:
    raise ValueError(f"image must be [..., H, W, C] (one image [H, W, C] or a batch), got shape {jnp.shape(image)}.")


def _per_image(param, ndim_image: int = 3) -> Array:
  """A scalar or ``[...]`` parameter shaped to broadcast against ``[..., H, W, C]``."""
  param = jnp.asarray(param, jnp.float32)
  return param.reshape(param.shape + (1,) * ndim_image)


# ----------------------------------------------------------------------------
# Lookup-table ops (exact).


def equalize(image: Array) -> Array:
  """Histogram equalisation per image and channel, as ``PIL.ImageOps.equalize``.

  Per channel with histogram ``h`` of the uint8 levels: if at most one level is
  used, or ``step = (sum(h) - h[last used level]) // 255`` is 0, the channel is
  unchanged; otherwise level ``i`` maps to ``(step // 2 + sum(h[:i])) // step``,
  clipped to 255.

  Args:
    image: ``[..., H, W, C]`` in ``[0, 1]``.

  Returns:
    Same shape, float32 on the uint8 grid.
  """
  _check_image(image)
  u = to_levels(image).astype(jnp.int32)
  *lead, height, width, channels = u.shape
  count = math.prod(lead)
  # One flat histogram for all images and channels: a single scatter-add (a
  # vmapped scatter is several times slower on CPU).
  bins = jnp.arange(count, dtype=jnp.int32).reshape(*lead, 1, 1, 1) * channels + jnp.arange(channels, dtype=jnp.int32)
  bins = bins * 256 + u
  hist = jnp.zeros((count * channels * 256,), jnp.int32).at[bins.reshape(-1)].add(1, mode="promise_in_bounds")
  hist = hist.reshape(count * channels, 256)
  levels = jnp.arange(256, dtype=jnp.int32)
  used = hist > 0
  last = jnp.max(jnp.where(used, levels, -1), axis=-1, keepdims=True)
  h_last = jnp.sum(jnp.where(levels == last, hist, 0), axis=-1, keepdims=True)
  step = jax.lax.div(height * width - h_last, 255)  # all operands >= 0: truncation is floor
  safe_step = jnp.maximum(step, 1)
  lut = jnp.minimum(jax.lax.div(safe_step // 2 + jnp.cumsum(hist, axis=-1) - hist, safe_step), 255)
  keep = (jnp.sum(used, axis=-1, keepdims=True) <= 1) | (step == 0)
  lut = jax.lax.optimization_barrier(jnp.where(keep, levels, lut))  # one table, not one per pixel
  out = jnp.take(lut.reshape(-1), bins, mode="clip")
  return from_levels(out.astype(jnp.float32))


def posterize(image: Array, bits) -> Array:
  """Keeps the ``bits`` most significant bits of each level (``PIL.ImageOps.posterize``).

  Args:
    image: ``[..., H, W, C]`` in ``[0, 1]``.
    bits: int in ``[0, 8]``, a scalar or one per image ``[...]`` (may be traced).

  Returns:
    Same shape, float32 on the uint8 grid.
  """
  _check_image(image)
  quantum = jnp.exp2(8.0 - _per_image(bits))
  return from_levels(jnp.floor(to_levels(image) / quantum) * quantum)


def solarize(image: Array, threshold) -> Array:
  """Inverts levels ``>= threshold`` (``PIL.ImageOps.solarize``; threshold in levels).

  Args:
    image: ``[..., H, W, C]`` in ``[0, 1]``.
    threshold: level in ``[0, 256]``, a scalar or one per image ``[...]`` (may be
      traced); 256 changes nothing.

  Returns:
    Same shape, float32 on the uint8 grid.
  """
  _check_image(image)
  u = to_levels(image)
  return from_levels(jnp.where(u < _per_image(threshold), u, 255.0 - u))


def invert(image: Array) -> Array:
  """``255 - level`` (``PIL.ImageOps.invert``) of ``[..., H, W, C]``."""
  return from_levels(255.0 - to_levels(image))


def mirror(image: Array) -> Array:
  """Horizontal flip (``PIL.ImageOps.mirror``) of ``[..., H, W, C]``."""
  _check_image(image)
  return from_levels(to_levels(image)[..., ::-1, :])


# ----------------------------------------------------------------------------
# Affine ops (Pillow's generic bilinear transform).


def affine(image: Array, matrix) -> Array:
  """``Image.transform(size, AFFINE, matrix, resample=BILINEAR)`` with black fill.

  ``matrix = (a, b, c, d, e, f)`` maps an output pixel centre ``(x + .5, y + .5)``
  to the input point ``(a x' + b y' + c, d x' + e y' + f)``. Outside
  ``[0, W) x [0, H)`` the pixel is black; inside, the value is bilinear in the
  input pixel centres with edge-clamped taps (the lower row falls back to the upper
  one at the bottom edge, as Pillow) and truncated to uint8.

  Args:
    image: ``[..., H, W, C]`` in ``[0, 1]``.
    matrix: ``[6]`` or ``[..., 6]`` (one per image; may be traced).

  Returns:
    Same shape as ``image``, float32 on the uint8 grid.
  """
  _check_image(image)
  u = to_levels(image)
  *lead, height, width, channels = u.shape
  count = math.prod(lead)
  matrix = jnp.broadcast_to(jnp.asarray(matrix, jnp.float32), (*lead, 6)).reshape(count, 6)
  a, b, c, d, e, f = (matrix[:, i, None, None] for i in range(6))
  ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
  xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
  sx = a * xs + b * ys + c
  sy = d * xs + e * ys + f
  inside = (sx >= 0.0) & (sx < width) & (sy >= 0.0) & (sy < height)
  sx, sy = sx - 0.5, sy - 0.5
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  dx, dy = (sx - x0)[..., None], (sy - y0)[..., None]
  # Edge-padded by one pixel, the taps of an inside pixel are one 2 x 2 window at
  # (y0 + 1, x0 + 1): rows and columns clamped to the edge as Pillow does. One gather
  # of windows over all images (a vmapped gather is an order of magnitude slower on
  # CPU, and four single-tap gathers about 2.5x slower).
  y_low = y0.astype(jnp.int32)
  x0 = jnp.clip(x0.astype(jnp.int32), -1, width - 1) + 1
  y0 = jnp.clip(y_low, -1, height - 1) + 1
  padded = jnp.pad(u.reshape(count, height, width, channels), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  rows = padded.reshape(count * (height + 2), (width + 2) * channels)
  start = jnp.stack([jnp.arange(count, dtype=jnp.int32)[:, None, None] * (height + 2) + y0, x0 * channels], axis=-1)
  dims = jax.lax.GatherDimensionNumbers(offset_dims=(1, 2), collapsed_slice_dims=(), start_index_map=(0, 1))
  win = jax.lax.gather(rows, start.reshape(-1, 2), dims, (2, 2 * channels), mode="clip")
  win = win.reshape(count, height, width, 2, 2, channels)
  top = win[..., 0, 0, :] + (win[..., 0, 1, :] - win[..., 0, 0, :]) * dx
  low = win[..., 1, 0, :] + (win[..., 1, 1, :] - win[..., 1, 0, :]) * dx
  low = jnp.where(((y_low + 1) < height)[..., None], low, top)
  value = jnp.floor(top + (low - top) * dy)
  out = jnp.where(inside[..., None], jnp.clip(value, 0.0, 255.0), 0.0)
  return from_levels(out.reshape(u.shape))


def rotate_matrix(degrees, height: int, width: int) -> Array:
  """The inverse affine matrix ``[..., 6]`` of ``Image.rotate(degrees)`` (counter-clockwise, about the centre)."""
  angle = -jnp.asarray(degrees, jnp.float32) * (math.pi / 180.0)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = width / 2.0, height / 2.0
  return jnp.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy], axis=-1)


def _matrix(*entries) -> Array:
  entries = jnp.broadcast_arrays(*(jnp.asarray(v, jnp.float32) for v in entries))
  return jnp.stack(entries, axis=-1)


def shear_x_matrix(shear) -> Array:
  """``(1, shear, 0, 0, 1, 0)``: output ``(x, y)`` samples input ``(x + shear y, y)``."""
  return _matrix(1.0, shear, 0.0, 0.0, 1.0, 0.0)


def shear_y_matrix(shear) -> Array:
  """``(1, 0, 0, shear, 1, 0)``: output ``(x, y)`` samples input ``(x, y + shear x)``."""
  return _matrix(1.0, 0.0, 0.0, shear, 1.0, 0.0)


def translate_matrix(dx, dy) -> Array:
  """``(1, 0, dx, 0, 1, dy)``: output ``(x, y)`` samples input ``(x + dx, y + dy)``."""
  return _matrix(1.0, 0.0, dx, 0.0, 1.0, dy)


def mirror_matrix(width: int, shape=()) -> Array:
  """``(-1, 0, W, 0, 1, 0)``: the horizontal flip as an (exact) affine map."""
  return _matrix(jnp.full(shape, -1.0), 0.0, float(width), 0.0, 1.0, 0.0)


def rotate(image: Array, degrees) -> Array:
  """``Image.rotate(degrees, resample=BILINEAR)``: counter-clockwise about the centre, black corners.

  ``degrees`` is a scalar or one per image ``[...]``; likewise for the shear and
  translate amounts below.
  """
  _check_image(image)
  return affine(image, rotate_matrix(degrees, image.shape[-3], image.shape[-2]))


def shear_x(image: Array, shear) -> Array:
  """The official ``shear_x``: ``transform(AFFINE, (1, shear, 0, 0, 1, 0), BILINEAR)``."""
  return affine(image, shear_x_matrix(shear))


def shear_y(image: Array, shear) -> Array:
  """The official ``shear_y``: ``transform(AFFINE, (1, 0, 0, shear, 1, 0), BILINEAR)``."""
  return affine(image, shear_y_matrix(shear))


def translate_x(image: Array, pixels) -> Array:
  """The official ``translate_x``: content moves left by ``pixels`` (right if negative), black fill."""
  return affine(image, translate_matrix(pixels, 0.0))


def translate_y(image: Array, pixels) -> Array:
  """The official ``translate_y``: content moves up by ``pixels`` (down if negative), black fill."""
  return affine(image, translate_matrix(0.0, pixels))


# ----------------------------------------------------------------------------
# The random op of an IPMix IMG chain step.


def check_severity(severity) -> None:
  """Raises ValueError unless ``0.1 <= severity <= 10`` (the official level range)."""
  if not isinstance(severity, (int, float)) or isinstance(severity, bool) or not 0.1 <= severity <= 10:
    raise ValueError(f"severity must be a number in [0.1, 10], got {severity!r}.")


def random_op(key, image: Array, *, severity: float = 3) -> Array:
  """Applies one op drawn uniformly from ``IPMIX_OPS`` at a random level, per image.

  The official ``augment_input``: ``op ~ U(IPMIX_OPS)``, level ``l ~ U(0.1,
  severity)`` and, for the signed ops, the sign ``-`` with probability 1/2. The
  parameters (docs/algorithms/ipmix.md#image-level-ops) are ``bits = 4 - int(0.4 l)``, ``degrees =
  int(3 l)``, ``threshold = 256 - int(25.6 l)``, ``shear = 0.03 l`` and ``pixels =
  int(l side / 30)`` with ``side`` the image width (x) or height (y); the official
  code hard-codes 32 (CIFAR) or 224 (ImageNet), the image side here.

  Args:
    key: PRNG key.
    image: ``[..., H, W, C]`` in ``[0, 1]``; every image gets its own op and level.
    severity: the official ``aug_severity``, in ``[0.1, 10]``.

  Returns:
    Same shape, float32 on the uint8 grid.

  Raises:
    ValueError: if ``image`` has fewer than 3 dimensions or ``severity`` is out of
      range.

  Example:
    >>> out = jaxmix.image_ops.random_op(key, images)  # [B, H, W, C]
  """
  _check_image(image)
  return random_op_from_uniforms(jax.random.uniform(key, image.shape[:-3] + (3,)), image, severity=severity)


def random_op_from_uniforms(u: Array, image: Array, *, severity: float = 3, active=None, active_rate: float = 1.0) -> Array:
  """``random_op`` with its draws given: ``u [..., 3] = (op, level, sign)`` uniforms in ``[0, 1)``.

  Each op runs only on the images that drew it (``core.apply_to_selected``): the
  lookup-table ops on their images, the histogram of ``equalize`` on its images and
  one bilinear warp, its matrix selected, on the images of the six affine ops.
  ``active`` (bool ``[...]``) limits the op to those images, the others are returned
  unchanged; ``active_rate`` is its expected fraction, which sizes the blocks.
  """
  _check_image(image)
  check_severity(severity)
  *lead, height, width, channels = image.shape
  n = math.prod(lead)
  n_ops = len(IPMIX_OPS)
  op = jnp.minimum(jnp.floor(u[..., 0] * n_ops), n_ops - 1).astype(jnp.int32).reshape(n)
  level = (0.1 + u[..., 1] * (severity - 0.1)).reshape(n)
  sign = jnp.where(u[..., 2] > 0.5, -1.0, 1.0).reshape(n)
  x = image.reshape(n, height, width, channels)
  if active is None:
    return _one_op(x, op, level, sign, jnp.ones((n,), bool)).reshape(image.shape)
  active = jnp.broadcast_to(active, tuple(lead)).reshape(n)
  capacity = core.selection_capacity(n, active_rate)
  return core.apply_to_selected(_one_op, active, capacity, x, op, level, sign, active).reshape(image.shape)


def _one_op(x: Array, op: Array, level: Array, sign: Array, live: Array) -> Array:
  """Op ``op[i]`` at ``level[i]`` with ``sign[i]`` on image ``x[i]`` ``[n, H, W, C]`` where ``live[i]``."""
  n, height, width, _ = x.shape
  n_ops = len(IPMIX_OPS)
  degrees = sign * jnp.floor(level * 30.0 / 10.0)
  shear = sign * level * 0.3 / 10.0
  shift_x = sign * jnp.floor(level * (width / 3.0) / 10.0)
  shift_y = sign * jnp.floor(level * (height / 3.0) / 10.0)
  zero = jnp.zeros_like(level)
  identity = translate_matrix(zero, zero)
  matrices = jnp.stack(
    [
      identity,  # equalize
      identity,  # posterize
      rotate_matrix(degrees, height, width),
      identity,  # solarize
      shear_x_matrix(shear),
      shear_y_matrix(shear),
      translate_matrix(shift_x, zero),
      translate_matrix(zero, shift_y),
      mirror_matrix(width, level.shape),
      identity,  # invert
    ]
  )
  matrix = jnp.take_along_axis(matrices, op[None, :, None], axis=0)[0]
  bits = 4.0 - jnp.floor(level * 4.0 / 10.0)
  threshold = 256.0 - jnp.floor(level * 256.0 / 10.0)
  e = _per_image
  out = jnp.select([e(op) == 1, e(op) == 3, e(op) == 9], [posterize(x, bits), solarize(x, threshold), invert(x)], x)
  out = core.apply_to_selected(equalize, live & (op == 0), core.selection_capacity(n, 1 / n_ops), out)
  is_affine = live & (op != 0) & (op != 1) & (op != 3) & (op != 9)
  return core.apply_to_selected(affine, is_affine, core.selection_capacity(n, 6 / n_ops), out, matrix)
