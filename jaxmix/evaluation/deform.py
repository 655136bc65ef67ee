"""The eight PatchUp "deformed images" test sets (docs/algorithms/evaluation.md#patchup-deformed-test-sets).

PatchUp (Faramarzi et al., 2020, "PatchUp: A Regularization Technique for
Convolutional Neural Networks", ``data_loader.py`` L282-L377) passes every test
image through one torchvision ``RandomAffine`` and reports top-1 accuracy on each
of eight sets:

==============  ==================================================
folder          transform
==============  ==================================================
``rotate_20``   rotation ``~ U(-20, 20)`` degrees
``rotate_40``   rotation ``~ U(-40, 40)`` degrees
``shear_28_6``  x-shear ``~ U(-28.6, 28.6)`` degrees
``rotate_57_3`` **x-shear** ``~ U(-57.3, 57.3)`` degrees (misnamed folder)
``zoom_60``     fixed scale 0.6
``zoom_80``     fixed scale 0.8
``zoom_120``    fixed scale 1.2
``zoom_140``    fixed scale 1.4
==============  ==================================================

The warp is torchvision's PIL path: an inverse affine matrix
(``_get_inverse_affine_matrix``) handed to ``PIL.Image.transform(AFFINE)`` with
nearest sampling (``resample=False``) and fill 0. PIL samples output pixel
``(x, y)`` at input ``floor(M @ (x + 0.5, y + 0.5, 1))`` and leaves it at the fill
value when that falls outside the image; :func:`affine_warp` does that in numpy,
with Pillow's own position arithmetic (16.16 fixed point, or accumulated float64
for a pure scale), so it equals Pillow bit for bit.

Two conventions are implemented:

* ``"torchvision-0.4"`` (default): the version PatchUp pins (``torchvision==0.4.2``).
  Rotation-scale-shear ``RSS = s [[cos a, -sin(a + sh)], [sin a, cos(a + sh)]]``
  about the centre ``(W/2 + 0.5, H/2 + 0.5)``. Its "shear" also scales the y axis
  by ``cos(sh)`` (at 57.3 degrees the image is squashed to 54 % of its height).
* ``"torchvision-0.8"``: current torchvision, ``RSS = R(a) S(s) SHy(sy) SHx(sx)``
  with ``SHx = [[1, -tan sx], [0, 1]]`` (a pure shear) about ``(W/2, H/2)``.

The random parameters are drawn with ``jax.random`` from a seed, so a set is
deterministic; torch's Python ``random`` stream cannot be reproduced, so the draws
differ from the official files (the distributions are the same). Sets are
generated once and cached as ``.npz`` (uint8 images plus the drawn parameters).
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple, Optional, Sequence

import jax
import numpy as np

from jaxmix.evaluation.cache import cached_images, fingerprint

_CACHE_VERSION = 1


class Deformation(NamedTuple):
  """One PatchUp deformed set: ``RandomAffine(degrees, scale=(s, s), shear=sh)``."""

  degrees: float = 0.0
  scale: float = 1.0
  shear: float = 0.0


DEFORMATIONS = {
  "rotate_20": Deformation(degrees=20.0),
  "rotate_40": Deformation(degrees=40.0),
  "shear_28_6": Deformation(shear=28.6),
  "rotate_57_3": Deformation(shear=57.3),  # the official folder name; it is an x-shear
  "zoom_60": Deformation(scale=0.6),
  "zoom_80": Deformation(scale=0.8),
  "zoom_120": Deformation(scale=1.2),
  "zoom_140": Deformation(scale=1.4),
}

CONVENTIONS = ("torchvision-0.4", "torchvision-0.8")


def _check_convention(convention: str) -> None:
  if convention not in CONVENTIONS:
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")


def image_center(height: int, width: int, convention: str = "torchvision-0.4") -> tuple[float, float]:
  """The ``(cx, cy)`` torchvision's PIL path rotates about, in PIL pixel coordinates."""
  _check_convention(convention)
  if convention == "torchvision-0.4":
    return (width * 0.5 + 0.5, height * 0.5 + 0.5)
  return (width * 0.5, height * 0.5)


def inverse_affine_matrix(
  center: Sequence[float],
  angle: float,
  translate: Sequence[float] = (0.0, 0.0),
  scale: float = 1.0,
  shear: float = 0.0,
  *,
  convention: str = "torchvision-0.4",
) -> np.ndarray:
  """torchvision's ``_get_inverse_affine_matrix``: output -> input pixel coordinates.

  Args:
    center: ``(cx, cy)`` the transform keeps fixed.
    angle: rotation in degrees.
    translate: ``(tx, ty)`` in pixels.
    scale: isotropic scale (> 0).
    shear: x-shear in degrees.
    convention: ``"torchvision-0.4"`` (PatchUp's pinned version) or
      ``"torchvision-0.8"`` (current); see the module docstring.

  Returns:
    ``[6]`` float64 ``(a, b, c, d, e, f)``: input ``x = a x' + b y' + c``,
    ``y = d x' + e y' + f`` (PIL's ``Image.AFFINE`` data).

  Raises:
    ValueError: for an unknown convention or ``scale <= 0``.
  """
  _check_convention(convention)
  if not scale > 0:
    raise ValueError(f"scale must be > 0, got {scale!r}.")
  cx, cy = float(center[0]), float(center[1])
  tx, ty = float(translate[0]), float(translate[1])
  a = math.radians(angle)
  sh = math.radians(shear)
  if convention == "torchvision-0.4":
    d = math.cos(a + sh) * math.cos(a) + math.sin(a + sh) * math.sin(a)
    m = [math.cos(a + sh), math.sin(a + sh), 0.0, -math.sin(a), math.cos(a), 0.0]
    m = [v / (scale * d) for v in m]
  else:
    # RSS = R(a) S(s) SHx(sh) (sy = 0): [[cos a, -cos a tan sh - sin a], [sin a, -sin a tan sh + cos a]].
    r00 = math.cos(a)
    r01 = -math.cos(a) * math.tan(sh) - math.sin(a)
    r10 = math.sin(a)
    r11 = -math.sin(a) * math.tan(sh) + math.cos(a)
    m = [r11 / scale, -r01 / scale, 0.0, -r10 / scale, r00 / scale, 0.0]  # det(RSS / s) = 1
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
  m[2] += cx
  m[5] += cy
  return np.asarray(m, np.float64)


def _pil_source_coords(m: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Integer input coordinates ``[N, H, W]`` PIL's nearest affine transform reads.

  Mirrors Pillow's ``Geometry.c``: a pure scale (``b == d == 0``) uses
  ``ImagingScaleAffine`` (float64 positions accumulated pixel by pixel, truncated);
  anything else uses ``affine_fixed`` (16.16 fixed point, ``FIX(v) =
  floor(v * 65536 + 0.5)``, ``>> 16``), or direct float64 positions when a corner
  leaves the fixed-point range.
  """
  n = m.shape[0]
  us = np.empty((n, height, width), np.int64)
  vs = np.empty((n, height, width), np.int64)
  cols = np.arange(width, dtype=np.int64)
  rows = np.arange(height, dtype=np.int64)
  for i in range(n):
    a = m[i]
    if a[1] == 0 and a[3] == 0:
      xo = np.cumsum(np.concatenate([[a[2] + a[0] * 0.5], np.full(width - 1, a[0])]))
      yo = np.cumsum(np.concatenate([[a[5] + a[4] * 0.5], np.full(height - 1, a[4])]))
      us[i] = np.where(xo < 0, -1, np.floor(xo)).astype(np.int64)[None, :]
      vs[i] = np.where(yo < 0, -1, np.floor(yo)).astype(np.int64)[:, None]
      continue
    corners = [(0, 0), (width, height), (0, height), (width, 0)]
    fixed = all(abs(x * a[0] + y * a[1] + a[2]) < 32768.0 and abs(x * a[3] + y * a[4] + a[5]) < 32768.0 for x, y in corners)
    if fixed:
      fix = lambda v: int(np.floor(v * 65536.0 + 0.5))  # noqa: E731
      a0, a1, a3, a4 = fix(a[0]), fix(a[1]), fix(a[3]), fix(a[4])
      a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5)
      a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5)
      us[i] = (a2 + rows[:, None] * a1 + cols[None, :] * a0) >> 16
      vs[i] = (a5 + rows[:, None] * a4 + cols[None, :] * a3) >> 16
    else:
      xs, ys = cols[None, :] + 0.5, rows[:, None] + 0.5
      us[i] = np.floor(a[0] * xs + a[1] * ys + a[2]).astype(np.int64)
      vs[i] = np.floor(a[3] * xs + a[4] * ys + a[5]).astype(np.int64)
  return us, vs


def affine_warp(images: np.ndarray, matrices: np.ndarray, *, fill: int = 0) -> np.ndarray:
  """Nearest-neighbour inverse-mapped affine warp, as ``PIL.Image.transform(AFFINE, NEAREST)``.

  Output pixel ``(x, y)`` takes input pixel ``floor(M @ (x + 0.5, y + 0.5, 1))``, or
  ``fill`` where that lies outside the image. The positions are computed as Pillow
  computes them (see :func:`_pil_source_coords`), so the result equals Pillow's
  bit for bit, including pixels whose position falls exactly on a boundary.

  Args:
    images: ``[N, H, W, C]`` (or ``[N, H, W]``) array of any dtype.
    matrices: ``[N, 6]`` or ``[6]`` inverse matrices (:func:`inverse_affine_matrix`).
    fill: value of pixels that map outside the input.

  Returns:
    The warped images, same shape and dtype.

  Raises:
    ValueError: if ``images`` is not 3-D or 4-D.
  """
  images = np.asarray(images)
  if images.ndim not in (3, 4):
    raise ValueError(f"images must be [N, H, W, C] or [N, H, W], got shape {images.shape}.")
  n, h, w = images.shape[:3]
  m = np.broadcast_to(np.asarray(matrices, np.float64).reshape(-1, 6), (n, 6))
  ui, vi = _pil_source_coords(m, h, w)
  inside = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
  src = images[np.arange(n)[:, None, None], np.clip(vi, 0, h - 1), np.clip(ui, 0, w - 1)]
  mask = inside if images.ndim == 3 else inside[..., None]
  return np.where(mask, src, np.asarray(fill, images.dtype)).astype(images.dtype)


def sample_params(key, deformation: Deformation, n: int) -> dict:
  """Draws ``RandomAffine`` parameters for ``n`` images (angle, scale, shear in degrees).

  Like torchvision 0.4's ``get_params``: ``angle ~ U(-degrees, degrees)``,
  ``shear ~ U(-shear, shear)``, ``scale`` fixed (the sets use ``scale=(s, s)``).
  """
  key_angle, key_shear = jax.random.split(key)
  angle = np.zeros(n, np.float64)
  shear = np.zeros(n, np.float64)
  if deformation.degrees:
    angle = np.asarray(jax.random.uniform(key_angle, (n,), minval=-deformation.degrees, maxval=deformation.degrees), np.float64)
  if deformation.shear:
    shear = np.asarray(jax.random.uniform(key_shear, (n,), minval=-deformation.shear, maxval=deformation.shear), np.float64)
  return {"angle": angle, "scale": np.full(n, deformation.scale, np.float64), "shear": shear}


def deform(key, images: np.ndarray, name: str, *, convention: str = "torchvision-0.4") -> tuple[np.ndarray, dict]:
  """Applies one PatchUp deformation (a fresh random affine per image).

  Args:
    key: PRNG key (the parameters are a deterministic function of it).
    images: ``[N, H, W, C]`` uint8 (or any dtype) images.
    name: one of :data:`DEFORMATIONS`.
    convention: see the module docstring.

  Returns:
    ``(warped [N, H, W, C], params)`` with ``params`` the drawn ``angle``,
    ``scale`` and ``shear`` arrays ``[N]``.

  Raises:
    ValueError: for an unknown name or convention, or a non-4-D batch.

  Example:
    >>> out, params = deform(jax.random.key(0), test_uint8, "zoom_60")
  """
  if name not in DEFORMATIONS:
    raise ValueError(f"name must be one of {sorted(DEFORMATIONS)}, got {name!r}.")
  _check_convention(convention)
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be a 4-D batch [N, H, W, C], got shape {images.shape}.")
  n, h, w = images.shape[:3]
  params = sample_params(key, DEFORMATIONS[name], n)
  center = image_center(h, w, convention)
  matrices = (
    np.stack(
      [
        inverse_affine_matrix(center, a, (0.0, 0.0), s, sh, convention=convention)
        for a, s, sh in zip(params["angle"], params["scale"], params["shear"], strict=True)
      ]
    )
    if n
    else np.zeros((0, 6))
  )
  return affine_warp(images, matrices), params


def deformed_test_sets(
  images: np.ndarray,
  *,
  names: Optional[Sequence[str]] = None,
  seed: int = 0,
  cache_dir: Optional[str] = None,
  convention: str = "torchvision-0.4",
) -> dict:
  """Builds (or loads from ``cache_dir``) the PatchUp deformed test sets.

  Set ``name`` uses ``jax.random.fold_in(jax.random.key(seed), i)`` with ``i`` its
  index in :data:`DEFORMATIONS`, so each set is the same whichever subset is asked.
  The labels are those of ``images`` (the transforms are label preserving).

  Args:
    images: ``[N, H, W, C]`` uint8 clean test images.
    names: subset of :data:`DEFORMATIONS` (default all eight, in order).
    seed: integer seed.
    cache_dir: directory for ``deformed_<name>_<fingerprint>.npz`` files; the
      fingerprint covers the image bytes, the seed and the convention, so a second
      call with the same inputs only loads the files. ``None`` disables caching.
    convention: see the module docstring.

  Returns:
    ``{name: uint8 [N, H, W, C]}`` in the order of ``names``.
  """
  names = list(DEFORMATIONS) if names is None else list(names)
  for name in names:
    if name not in DEFORMATIONS:
      raise ValueError(f"names must be a subset of {sorted(DEFORMATIONS)}, got {name!r}.")
  _check_convention(convention)
  images = np.asarray(images)
  fp = fingerprint(images, int(seed), convention, version=_CACHE_VERSION) if cache_dir else None
  out = {}
  for name in names:
    key = jax.random.fold_in(jax.random.key(int(seed)), list(DEFORMATIONS).index(name))
    build = functools.partial(deform, key, images, name, convention=convention)
    out[name] = cached_images(os.path.join(cache_dir, f"deformed_{name}_{fp}.npz") if cache_dir else None, build)
  return out
