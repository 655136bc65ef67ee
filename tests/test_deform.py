"""Tests of the PatchUp deformed test sets (docs/algorithms/evaluation.md#patchup-deformed-test-sets)."""

import math
import os

import jax
import numpy as np
import pytest
from PIL import Image

from jaxmix.evaluation import deform

H = W = 32


def _random_images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def _warp(img, angle=0.0, scale=1.0, shear=0.0, convention="torchvision-0.4"):
  m = deform.inverse_affine_matrix(deform.image_center(H, W, convention), angle, (0, 0), scale, shear, convention=convention)
  return deform.affine_warp(img[None], m)[0]


@pytest.mark.parametrize("convention", deform.CONVENTIONS)
def test_warp_matches_pil_transform_bit_for_bit(convention):
  """affine_warp == PIL.Image.transform(AFFINE, NEAREST, fillcolor=0) for rotations, shears and zooms."""
  rng = np.random.default_rng(1)
  images = _random_images(60, seed=2)
  for i, img in enumerate(images):
    angle = rng.uniform(-45, 45) if i % 3 else 0.0
    shear = rng.uniform(-57.3, 57.3) if i % 2 else 0.0
    scale = [0.6, 0.8, 1.0, 1.2, 1.4][i % 5]
    m = deform.inverse_affine_matrix(deform.image_center(H, W, convention), angle, (0, 0), scale, shear, convention=convention)
    ref = np.asarray(Image.fromarray(img).transform((W, H), Image.AFFINE, tuple(m), Image.NEAREST, fillcolor=0))
    np.testing.assert_array_equal(deform.affine_warp(img[None], m)[0], ref)


def test_legacy_inverse_matrix_is_torchvision_04_formula():
  """M^-1 = C RSS^-1 C^-1 with RSS = s [[cos a, -sin(a+sh)], [sin a, cos(a+sh)]], centre (W/2+.5, H/2+.5)."""
  a, sh, s = math.radians(17.0), math.radians(23.0), 1.3
  rss = s * np.array([[math.cos(a), -math.sin(a + sh)], [math.sin(a), math.cos(a + sh)]])
  inv = np.linalg.inv(rss)
  c = np.array([16.5, 16.5])
  expect = np.concatenate([inv, (c - inv @ c)[:, None]], axis=1).reshape(-1)
  got = deform.inverse_affine_matrix((16.5, 16.5), 17.0, (0, 0), 1.3, 23.0)
  np.testing.assert_allclose(got, expect, atol=1e-12)
  assert deform.image_center(H, W) == (16.5, 16.5)
  assert deform.image_center(H, W, "torchvision-0.8") == (16.0, 16.0)


def test_modern_inverse_matrix_is_pure_shear():
  got = deform.inverse_affine_matrix((16.0, 16.0), 0.0, (0, 0), 1.0, 30.0, convention="torchvision-0.8")
  t = math.tan(math.radians(30.0))
  np.testing.assert_allclose(got, [1, t, -16 * t, 0, 1, 0], atol=1e-12)


@pytest.mark.parametrize("convention", deform.CONVENTIONS)
def test_zoom_half_of_centred_square(convention):
  img = np.zeros((H, W, 3), np.uint8)
  img[8:24, 8:24] = 255
  out = _warp(img, scale=0.5, convention=convention)
  expect = np.zeros_like(img)
  expect[12:20, 12:20] = 255
  np.testing.assert_array_equal(out, expect)


def test_zoom_sets_shrink_and_enlarge():
  img = np.zeros((H, W, 3), np.uint8)
  img[8:24, 8:24] = 255
  areas = {s: int((_warp(img, scale=s)[..., 0] > 0).sum()) for s in (0.6, 0.8, 1.2, 1.4)}
  for s, area in areas.items():
    assert abs(area - (16 * s) ** 2) <= 4 * 16 * s + 4, (s, area)  # within a one-pixel rim


def test_rotate_90_of_asymmetric_pattern():
  img = np.arange(H * W * 3, dtype=np.int64).reshape(H, W, 3) % 251
  img = img.astype(np.uint8)
  clockwise = np.rot90(img, -1)
  # torchvision >= 0.8 (centre W/2): exactly a quarter turn.
  np.testing.assert_array_equal(_warp(img, angle=90.0, convention="torchvision-0.8"), clockwise)
  # torchvision 0.4 (centre W/2 + 0.5): the same turn, one column to the right, zero fill.
  legacy = _warp(img, angle=90.0)
  np.testing.assert_array_equal(legacy[:, 1:], clockwise[:, :-1])
  assert not legacy[:, 0].any()


def test_shear_45_of_vertical_line():
  img = np.zeros((H, W, 3), np.uint8)
  img[:, 16] = 255
  # Current torchvision: a pure shear, x_in = x + (y + 0.5 - 16): the line becomes x = 31 - y.
  modern = _warp(img, shear=45.0, convention="torchvision-0.8")[..., 0] > 0
  np.testing.assert_array_equal(modern, np.fliplr(np.eye(H, dtype=bool)))
  # torchvision 0.4: x_in = x + y - 15.5, y_in = (y - 16) sqrt(2) + 16.5 -> x = 32 - y on rows 5..26.
  legacy = _warp(img, shear=45.0)[..., 0] > 0
  expect = np.zeros((H, W), bool)
  for y in range(5, 27):
    expect[y, 32 - y] = True
  np.testing.assert_array_equal(legacy, expect)


def test_sample_params_match_the_eight_sets():
  key = jax.random.key(0)
  n = 2000
  for spec in deform.DEFORMATIONS.values():
    p = deform.sample_params(key, spec, n)
    assert np.all(np.abs(p["angle"]) <= spec.degrees)
    assert np.all(np.abs(p["shear"]) <= spec.shear)
    np.testing.assert_array_equal(p["scale"], spec.scale)
    if spec.degrees:
      assert p["angle"].std() > spec.degrees / 2  # spread over U(-d, d): std d / sqrt(3)
  # The misnamed folder is an x-shear of 57.3 degrees, not a rotation.
  assert deform.DEFORMATIONS["rotate_57_3"] == deform.Deformation(degrees=0.0, scale=1.0, shear=57.3)
  assert deform.DEFORMATIONS["shear_28_6"].shear == 28.6
  assert set(deform.DEFORMATIONS) == {"rotate_20", "rotate_40", "shear_28_6", "rotate_57_3", "zoom_60", "zoom_80", "zoom_120", "zoom_140"}


def test_deform_is_deterministic_and_label_free():
  images = _random_images(16)
  a, pa = deform.deform(jax.random.key(3), images, "rotate_40")
  b, pb = deform.deform(jax.random.key(3), images, "rotate_40")
  c, _ = deform.deform(jax.random.key(4), images, "rotate_40")
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(pa["angle"], pb["angle"])
  assert not np.array_equal(a, c)
  assert a.shape == images.shape and a.dtype == np.uint8
  # Each image is warped with its own drawn angle.
  for i in (0, 7):
    np.testing.assert_array_equal(a[i], _warp(images[i], angle=pa["angle"][i]))


def test_deformed_sets_cached(tmp_path, monkeypatch):
  images = _random_images(8)
  first = deform.deformed_test_sets(images, seed=5, cache_dir=str(tmp_path))
  assert list(first) == list(deform.DEFORMATIONS)
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".npz")]) == 8

  def boom(*a, **k):
    raise AssertionError("regenerated instead of loading the cache")

  monkeypatch.setattr(deform, "deform", boom)
  second = deform.deformed_test_sets(images, seed=5, cache_dir=str(tmp_path))
  for name in first:
    np.testing.assert_array_equal(first[name], second[name])
  monkeypatch.undo()
  # A subset gives the same set as the full call; another seed gives another set.
  only = deform.deformed_test_sets(images, names=["zoom_60", "rotate_20"], seed=5)
  np.testing.assert_array_equal(only["rotate_20"], first["rotate_20"])
  other = deform.deformed_test_sets(images, names=["rotate_20"], seed=6)
  assert not np.array_equal(other["rotate_20"], first["rotate_20"])


def test_bad_arguments():
  with pytest.raises(ValueError, match="name"):
    deform.deform(jax.random.key(0), _random_images(2), "rotate_90")
  with pytest.raises(ValueError, match="convention"):
    deform.image_center(32, 32, "torchvision-0.5")
  with pytest.raises(ValueError, match="scale"):
    deform.inverse_affine_matrix((16, 16), 0.0, (0, 0), 0.0, 0.0)
  with pytest.raises(ValueError, match="4-D"):
    deform.deform(jax.random.key(0), _random_images(2)[0], "zoom_60")
