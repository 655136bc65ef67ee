"""Tests of the CIFAR-C corruption generator and loaders (docs/algorithms/evaluation.md#ipmix-robustness-cifar-c-and-pgd)."""

import io
import os
import shutil
import subprocess
import zipfile

import jax
import numpy as np
import pytest
from conftest import CIFAR_DIR
from PIL import Image

from jaxmix.evaluation import corruptions as jc

SEVERITIES = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def cifar():
  """Six real CIFAR-10 test images (uint8 [6, 32, 32, 3])."""
  path = os.path.join(CIFAR_DIR, "test.zip")
  if not os.path.exists(path):
    pytest.skip("CIFAR-10 zips not available")
  with zipfile.ZipFile(path) as z:
    names = sorted(n for n in z.namelist() if n.endswith(".jpg"))[::1667][:6]
    return np.stack([np.asarray(Image.open(io.BytesIO(z.read(n))).convert("RGB")) for n in names])


@pytest.fixture(scope="module")
def all_outputs(cifar):
  """Every corruption at every severity on the same images (computed once)."""
  return {name: [jc.corrupt(jax.random.key(0), cifar, name, severity=s) for s in SEVERITIES] for name in jc.CORRUPTIONS}


def test_the_fifteen_cifar_c_corruptions():
  assert jc.CORRUPTIONS == (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
  )
  assert set(jc.PARAMS) == set(jc.CORRUPTIONS) == set(jc.EXACTNESS)
  assert all(len(v) == 5 for v in jc.PARAMS.values())


def test_shape_dtype_range_and_effect(cifar, all_outputs):
  for name, outs in all_outputs.items():
    for s, out in zip(SEVERITIES, outs, strict=True):
      assert out.shape == cifar.shape and out.dtype == np.uint8, (name, s)
      assert not np.array_equal(out, cifar), (name, s)


# Severity orderings the official parameters do not make monotone: elastic_transform
# trades a large random affine (severity 1) for a local displacement field, glass_blur
# has sigma 0.4 at severity 3 but 0.25 at 4, frost lowers the image weight (c0) while
# raising the frost weight, so the change depends on the image.
NOT_MONOTONE = {"elastic_transform", "glass_blur", "frost"}


def test_severity_increases_the_change(cifar, all_outputs):
  for name, outs in all_outputs.items():
    if name in NOT_MONOTONE:
      continue
    change = [np.abs(o.astype(np.float64) - cifar).mean() for o in outs]
    for a, b in zip(change, change[1:], strict=False):
      assert b >= a - 0.25, (name, np.round(change, 2))
    assert change[-1] > change[0], (name, np.round(change, 2))


def test_contrast_is_the_official_formula(cifar):
  x = cifar / 255.0
  for s, c in zip(SEVERITIES, (0.75, 0.5, 0.4, 0.3, 0.15), strict=True):
    means = x.mean(axis=(1, 2), keepdims=True)
    expect = np.uint8(np.clip((x - means) * c + means, 0, 1) * 255)
    np.testing.assert_array_equal(jc.corrupt(jax.random.key(9), cifar, "contrast", severity=s), expect)


def test_gaussian_and_shot_noise_statistics():
  grey = np.full((4, 32, 32, 3), 128, np.uint8)
  x = 128 / 255.0
  for s, sigma in zip(SEVERITIES, (0.04, 0.06, 0.08, 0.09, 0.10), strict=True):
    out = jc.corrupt(jax.random.key(s), grey, "gaussian_noise", severity=s) / 255.0
    assert out.std() == pytest.approx(sigma, rel=0.04)
    assert out.mean() == pytest.approx(x - 0.5 / 255, abs=0.003)  # uint8 truncation
  for s, c in zip(SEVERITIES, (500, 250, 100, 75, 50), strict=True):
    out = jc.corrupt(jax.random.key(s), grey, "shot_noise", severity=s) / 255.0
    assert out.var() == pytest.approx(x / c, rel=0.1)  # Var(Poisson(x c) / c) = x / c


def test_impulse_noise_amount():
  grey = np.full((4, 32, 32, 3), 128, np.uint8)
  for s, amount in zip(SEVERITIES, (0.01, 0.02, 0.03, 0.05, 0.07), strict=True):
    out = jc.corrupt(jax.random.key(s), grey, "impulse_noise", severity=s)
    salt, pepper = (out == 255).mean(), (out == 0).mean()
    assert salt + pepper == pytest.approx(amount, rel=0.15)
    assert salt == pytest.approx(pepper, rel=0.35)
    assert np.all((out == 0) | (out == 255) | (out == 128))


def test_pixelate_sizes_and_jpeg_quality_via_pil(cifar):
  for s, size, quality in zip(SEVERITIES, (30, 28, 27, 24, 20), (80, 65, 58, 50, 40), strict=True):
    pix = jc.corrupt(jax.random.key(0), cifar, "pixelate", severity=s)
    jpg = jc.corrupt(jax.random.key(0), cifar, "jpeg_compression", severity=s)
    for i, img in enumerate(cifar):
      im = Image.fromarray(img)
      expect = np.asarray(im.resize((size, size), Image.BOX).resize((32, 32), Image.BOX))
      np.testing.assert_array_equal(pix[i], expect)
      buf = io.BytesIO()
      im.save(buf, "JPEG", quality=quality)
      np.testing.assert_array_equal(jpg[i], np.asarray(Image.open(buf)))


def test_brightness_is_an_hsv_value_shift(cifar):
  from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

  x = cifar / 255.0
  np.testing.assert_allclose(jc._rgb2hsv(x), rgb_to_hsv(x), atol=1e-12)
  for s, c in zip(SEVERITIES, (0.05, 0.1, 0.15, 0.2, 0.3), strict=True):
    hsv = rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    expect = np.clip(hsv_to_rgb(hsv), 0, 1) * 255
    got = jc.corrupt(jax.random.key(0), cifar, "brightness", severity=s)
    assert np.abs(got.astype(int) - np.uint8(expect).astype(int)).max() <= 1  # float rounding at truncation


def test_zoom_matches_scipy_and_defocus_kernel():
  from scipy import ndimage

  x = np.random.default_rng(0).random((2, 30, 30, 3)).astype(np.float32)
  for z in (1.01, 1.13, 1.25, 1.75, 2.25):
    np.testing.assert_allclose(jc._zoom2d_linear(x, z), ndimage.zoom(x, (1, z, z, 1), order=1), atol=1e-6)
  for radius, blur in jc.PARAMS["defocus_blur"]:
    k = jc._disk(radius, blur)
    assert k.shape == (17, 17)
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-7)


def test_motion_blur_kernel_and_impulse_response():
  w, off = jc.motion_blur_kernel(6, 2.0, 0.0)
  assert len(w) == 13 and w.sum() == pytest.approx(1.0)
  assert np.all(np.diff(w) < 0)  # one-sided Gaussian, heaviest at the pixel itself
  np.testing.assert_array_equal(off, np.stack([np.arange(13), np.zeros(13)], -1))
  _, off90 = jc.motion_blur_kernel(6, 2.0, 90.0)
  np.testing.assert_array_equal(off90, np.stack([np.zeros(13), np.arange(13)], -1))
  # A white dot spreads along -x with the kernel weights (rounded to 8 bits).
  img = np.zeros((1, 32, 32, 3), np.uint8)
  img[0, 10, 20] = 255
  out = jc._motion_blur_uint8(img, 6, 2.0, np.array([0.0]))
  np.testing.assert_array_equal(out[0, 10, 20 - np.arange(13), 0], (np.floor(255 * 257 * w + 0.5) // 257).astype(np.uint8))
  assert out[0, 9].max() == 0 and out[0, 11].max() == 0
  flat = np.full((1, 32, 32, 3), 77, np.uint8)
  np.testing.assert_array_equal(jc._motion_blur_uint8(flat, 9, 2.5, np.array([33.0])), flat)


def _imagemagick():
  for exe in ("convert-im6.q16", "magick", "convert"):
    path = shutil.which(exe)
    if path:
      out = subprocess.run([path, "-version"], capture_output=True, text=True)
      if "ImageMagick" in out.stdout:
        return path
  return None


_MOTION_CASES = ((6, 1, 20.0), (9, 2.5, -40.0), (12, 6, -100.0), (14, 12, -135.0))
_IMAGEMAGICK_REFERENCE = os.path.join(os.path.dirname(__file__), "data", "imagemagick_motion_blur.npz")


def _motion_inputs(cifar):
  grey = (np.arange(32 * 32).reshape(32, 32, 1) * 7 % 256).astype(np.uint8)
  return [cifar[0], cifar[1], grey, cifar[2]]


def _imagemagick_motion_blur(exe, img, radius, sigma, angle, tmp_path):
  mode = "RGB" if img.shape[-1] == 3 else "L"
  Image.fromarray(img if mode == "RGB" else img[..., 0], mode).save(tmp_path / "in.png")
  subprocess.run([exe, str(tmp_path / "in.png"), "-motion-blur", f"{radius}x{sigma}+{angle}", str(tmp_path / "out.png")], check=True)
  return np.asarray(Image.open(tmp_path / "out.png").convert(mode)).reshape(img.shape)


def test_motion_blur_equals_imagemagick_reference_outputs():
  """Against ImageMagick 6's ``-motion-blur`` outputs committed with their inputs (runs everywhere)."""
  with np.load(_IMAGEMAGICK_REFERENCE) as ref:
    for i, (radius, sigma, angle) in enumerate(_MOTION_CASES):
      img, expected = ref[f"input_{i}"], ref[f"output_{i}"]
      np.testing.assert_array_equal(jc._motion_blur_uint8(img[None], radius, sigma, np.array([angle]))[0], expected)


@pytest.mark.skipif(_imagemagick() is None, reason="ImageMagick is not installed")
def test_motion_blur_equals_imagemagick(cifar, tmp_path):
  """Against a live ImageMagick, where one is installed (and keeps the committed references honest)."""
  exe = _imagemagick()
  with np.load(_IMAGEMAGICK_REFERENCE) as committed:
    for i, (img, (radius, sigma, angle)) in enumerate(zip(_motion_inputs(cifar), _MOTION_CASES, strict=True)):
      ref = _imagemagick_motion_blur(exe, img, radius, sigma, angle, tmp_path)
      np.testing.assert_array_equal(jc._motion_blur_uint8(img[None], radius, sigma, np.array([angle]))[0], ref)
      np.testing.assert_array_equal(committed[f"input_{i}"], img)
      np.testing.assert_array_equal(committed[f"output_{i}"], ref)


def test_opencv_warp_emulation_and_affine_solve(cifar):
  x = cifar[:2].astype(np.float32) / 255
  ident = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (2, 1, 1))
  np.testing.assert_array_equal(jc._cv2_affine_remap_reflect101(x, ident), x)
  shift = np.tile(np.array([[1.0, 0, 3], [0, 1.0, 0]]), (2, 1, 1))  # dst(x) = src(x - 3), reflect_101 border
  out = jc._cv2_affine_remap_reflect101(x, shift)
  np.testing.assert_array_equal(out[:, :, 3:], x[:, :, :-3])
  np.testing.assert_array_equal(out[:, :, :3], x[:, :, [3, 2, 1]])
  src = np.array([[26.0, 26.0], [26.0, 6.0], [6.0, 6.0]])
  m = np.array([[1.1, 0.2, -3.0], [-0.1, 0.9, 2.0]])
  dst = src @ m[:, :2].T + m[:, 2]
  np.testing.assert_allclose(jc._solve_affine(src, dst), m, atol=1e-9)


def test_fog_plasma_in_unit_range():
  m = jc._plasma_fractal(jax.random.key(0), 3, 32, 2.0)
  assert m.shape == (3, 32, 32)
  np.testing.assert_allclose(m.min(axis=(1, 2)), 0.0)
  np.testing.assert_allclose(m.max(axis=(1, 2)), 1.0)
  assert not np.array_equal(m[0], m[1])


def test_same_key_same_output_and_frost_textures(cifar):
  a = jc.corrupt(jax.random.key(1), cifar, "snow", severity=3)
  b = jc.corrupt(jax.random.key(1), cifar, "snow", severity=3)
  c = jc.corrupt(jax.random.key(2), cifar, "snow", severity=3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # User-supplied frost photographs replace the procedural texture: 1 * x + 0.2 * crop.
  photo = np.full((200, 220, 3), 100, np.uint8)
  out = jc.corrupt(jax.random.key(0), cifar, "frost", severity=1, frost_textures=[photo])
  np.testing.assert_array_equal(out, np.uint8(np.clip(cifar.astype(np.float64) + 0.2 * 100, 0, 255)))


def test_bad_arguments(cifar):
  with pytest.raises(ValueError, match="corruption"):
    jc.corrupt(jax.random.key(0), cifar, "spatter", severity=1)
  with pytest.raises(ValueError, match="severity"):
    jc.corrupt(jax.random.key(0), cifar, "contrast", severity=6)
  with pytest.raises(ValueError, match="uint8"):
    jc.corrupt(jax.random.key(0), cifar.astype(np.float32), "contrast", severity=1)


def test_corrupted_sets_cache(cifar, tmp_path, monkeypatch):
  first = jc.corrupted_test_sets(cifar[:3], names=["fog", "contrast"], seed=1, cache_dir=str(tmp_path))
  assert first["fog"].shape == (5, 3, 32, 32, 3)
  monkeypatch.setattr(jc, "corrupt", lambda *a, **k: (_ for _ in ()).throw(AssertionError("not cached")))
  again = jc.corrupted_test_sets(cifar[:3], names=["contrast", "fog"], seed=1, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again["fog"], first["fog"])
  monkeypatch.undo()
  only = jc.corrupted_test_sets(cifar[:3], names=["fog"], seed=1)
  np.testing.assert_array_equal(only["fog"], first["fog"])


def test_load_cifar_c_folder(tmp_path):
  rng = np.random.default_rng(0)
  per = 4
  data = rng.integers(0, 256, (5 * per, 32, 32, 3), dtype=np.uint8)
  labels = np.tile(np.arange(per), 5).astype(np.uint8)
  np.save(tmp_path / "fog.npy", data)
  np.save(tmp_path / "gaussian_noise.npy", data[::-1])
  np.save(tmp_path / "labels.npy", labels)
  sets, lab = jc.load_cifar_c(str(tmp_path))
  assert list(sets) == ["gaussian_noise", "fog"]  # CIFAR-C order, only the present ones
  assert sets["fog"].shape == (5, per, 32, 32, 3) and lab.shape == (5, per)
  np.testing.assert_array_equal(sets["fog"][2], data[2 * per : 3 * per])
  sub, lab2 = jc.load_cifar_c(str(tmp_path), names=["fog"], max_examples=2)
  np.testing.assert_array_equal(sub["fog"][4], data[4 * per : 4 * per + 2])
  np.testing.assert_array_equal(lab2, np.tile(np.arange(2), (5, 1)))
  with pytest.raises(FileNotFoundError):
    jc.load_cifar_c(str(tmp_path), names=["snow"])
  os.remove(tmp_path / "labels.npy")
  with pytest.raises(FileNotFoundError, match="labels"):
    jc.load_cifar_c(str(tmp_path))


def _opencv_version():
  cv2 = pytest.importorskip("cv2")
  return cv2, tuple(int(p) for p in cv2.__version__.split(".")[:2])


def test_matches_opencv_and_scikit_image(cifar):
  """Bit-exact against the libraries make_cifar_c.py calls (runs where they are installed)."""
  cv2, version = _opencv_version()
  skimage = pytest.importorskip("skimage")
  from skimage.filters import gaussian

  x = cifar / 255.0
  # defocus_blur: the disk of make_cifar_c.py and cv2.filter2D.
  for s, (radius, blur) in enumerate(jc.PARAMS["defocus_blur"], 1):
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    disk = cv2.GaussianBlur(disk / disk.sum(), ksize=(3, 3), sigmaX=blur)
    ref = [np.stack([cv2.filter2D(img[:, :, d], -1, disk) for d in range(3)], -1) for img in x]
    np.testing.assert_array_equal(jc.corrupt(jax.random.key(0), cifar, "defocus_blur", severity=s), np.uint8(np.clip(ref, 0, 1) * 255))
  # brightness: scikit-image's HSV round trip.
  for s, c in enumerate(jc.PARAMS["brightness"], 1):
    hsv = skimage.color.rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    ref = np.uint8(np.clip(skimage.color.hsv2rgb(hsv), 0, 1) * 255)
    np.testing.assert_array_equal(jc.corrupt(jax.random.key(0), cifar, "brightness", severity=s), ref)
  # glass_blur: scikit-image gaussian and the official (view-copying) swap loop, same shifts.
  for s, (sigma, delta, iters) in enumerate(jc.PARAMS["glass_blur"], 1):
    key = jax.random.key(s)
    positions = [(h, w) for h in range(32 - delta, delta, -1) for w in range(32 - delta, delta, -1)]
    shifts = jc._randint(key, (iters, len(positions), len(cifar), 2), -delta, delta)
    ref = []
    for b, img in enumerate(cifar):
      g = np.uint8(gaussian(img / 255.0, sigma=sigma, channel_axis=-1) * 255)
      for i in range(iters):
        for p, (h, w) in enumerate(positions):
          dx, dy = shifts[i, p, b]
          g[h, w], g[h + dy, w + dx] = g[h + dy, w + dx], g[h, w]
      ref.append(np.uint8(np.clip(gaussian(g / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255))
    np.testing.assert_array_equal(jc.corrupt(key, cifar, "glass_blur", severity=s), np.stack(ref))
  # snow's grey level: cv2.cvtColor on float32.
  xf = x.astype(np.float32)
  np.testing.assert_array_equal(jc._cv2_rgb2gray_f32(xf), np.stack([cv2.cvtColor(v, cv2.COLOR_RGB2GRAY) for v in xf]))
  # elastic_transform's warp: OpenCV <= 4.10 fixed-point warpAffine (OpenCV 5 changed its arithmetic).
  if version <= (4, 10):
    rng = np.random.default_rng(0)
    pts1 = np.float32([[26, 26], [26, 6], [6, 6]])
    mats = [cv2.getAffineTransform(pts1, pts1 + rng.uniform(-2.56, 2.56, (3, 2)).astype(np.float32)) for _ in cifar]
    ref = np.stack([cv2.warpAffine(v, m, (32, 32), borderMode=cv2.BORDER_REFLECT_101) for v, m in zip(xf, mats, strict=True)])
    np.testing.assert_array_equal(jc._cv2_affine_remap_reflect101(xf, np.stack(mats)), ref)
