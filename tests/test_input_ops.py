"""Known answers (docs/algorithms/input_mixing.md), properties and distributions of the input ops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxmix
from jaxmix.ops import input_ops

K = 5


def assert_symmetric_beta(lam, alpha):
  """KS test against Beta(alpha, alpha) on the lower half (see tests/test_core.py: float32 ties at 1)."""
  lam = np.asarray(lam, np.float64)
  lower = lam[lam < 0.5]
  assert stats.binomtest(lower.size, lam.size, 0.5).pvalue > 1e-3
  assert stats.kstest(lower, lambda x: 2 * stats.beta(alpha, alpha).cdf(x)).pvalue > 1e-3


def _distinct(batch, height, width, channels=1, dtype=jnp.float32):
  """Images whose every value is unique: pixel (b, i, j, c) -> b*H*W*C + (i*W + j)*C + c."""
  n = batch * height * width * channels
  return jnp.arange(n, dtype=jnp.float32).reshape(batch, height, width, channels).astype(dtype)


def _labels(batch, num_classes=K, seed=0):
  classes = np.random.default_rng(seed).integers(0, num_classes, batch)
  return jaxmix.one_hot(jnp.asarray(classes), num_classes), classes


def _rect(mask2d):
  """(y1, y2, x1, x2) of the True cells of a 2-D bool mask, asserting they form one rectangle."""
  rows, cols = np.nonzero(mask2d)
  if rows.size == 0:
    return None
  y1, y2, x1, x2 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
  assert rows.size == (y2 - y1) * (x2 - x1), "the cells do not form one axis-aligned rectangle"
  return int(y1), int(y2), int(x1), int(x2)


def _sources(images, mixed, perm):
  """Per pixel: own (image value kept), partner (value of x[perm] there)."""
  x, xm, xp = np.asarray(images), np.asarray(mixed), np.asarray(images)[np.asarray(perm)]
  own = np.all(xm == x, axis=-1)
  partner = np.all(xm == xp, axis=-1)
  return own, partner


# Jitted ops shared across tests (compile once per shape).
_mixup = jax.jit(jaxmix.mixup, static_argnames=("alpha", "per_sample", "prob", "pairing"))
_cutmix = jax.jit(jaxmix.cutmix, static_argnames=("alpha", "per_sample", "prob", "pairing"))
_cutout = jax.jit(jaxmix.cutout, static_argnames=("size", "n_holes", "shared", "prob"))
_patch = jax.jit(jaxmix.patch_augment, static_argnames=("prob", "min_dim", "max_dim", "pairing"))

# ----------------------------------------------------------------------------
# Mixup (docs/algorithms/input_mixing.md#input-mixup)


def test_mixup_lam_one_is_identity_and_lam_zero_is_partner():
  x = _distinct(6, 4, 5, 3)
  y, _ = _labels(6)
  perm = jnp.array([3, 0, 5, 1, 2, 4])
  one = _mixup(jax.random.key(0), x, y, lam=1.0, perm=perm)
  np.testing.assert_array_equal(one.images, x)
  np.testing.assert_array_equal(one.labels, y)
  np.testing.assert_array_equal(one.lam, np.ones(6))
  zero = _mixup(jax.random.key(0), x, y, lam=0.0, perm=perm)
  np.testing.assert_array_equal(zero.images, x[perm])
  np.testing.assert_array_equal(zero.labels, y[perm])
  np.testing.assert_array_equal(zero.perm, perm)


@pytest.mark.parametrize("lam", [0.37, 0.5, 0.91])
def test_mixup_identity_perm_returns_input(lam):
  x = jax.random.normal(jax.random.key(1), (4, 3, 3, 2))
  y = jaxmix.one_hot(jnp.array([0, 1, 2, 3]), 5, smoothing=0.1)
  res = _mixup(jax.random.key(0), x, y, lam=lam, perm=jnp.arange(4))
  np.testing.assert_array_equal(res.images, x)
  np.testing.assert_array_equal(res.labels, y)


def test_mixup_formula_and_label_weights():
  x = jax.random.normal(jax.random.key(1), (16, 4, 4, 3))
  y, classes = _labels(16)
  res = _mixup(jax.random.key(7), x, y)
  lam, perm = np.asarray(res.lam), np.asarray(res.perm)
  assert np.all(lam == lam[0]), "one lam per batch by default"
  np.testing.assert_allclose(res.images, lam[0] * x + (1 - lam[0]) * x[perm], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(res.labels, lam[:, None] * y + (1 - lam[:, None]) * np.asarray(y)[perm], rtol=1e-6)
  np.testing.assert_allclose(res.labels.sum(1), 1.0, rtol=1e-6)
  own = np.asarray(res.labels)[np.arange(16), classes]
  same = classes[perm] == classes
  np.testing.assert_array_equal(own[same], 1.0)
  np.testing.assert_allclose(own[~same], lam[~same], rtol=1e-6)
  assert sorted(perm.tolist()) == list(range(16))


def test_mixup_per_sample_lam_differs_and_mixes_each_sample():
  x = jax.random.normal(jax.random.key(1), (8, 2, 3, 1))
  y, _ = _labels(8)
  res = _mixup(jax.random.key(3), x, y, per_sample=True)
  lam, perm = np.asarray(res.lam), np.asarray(res.perm)
  assert len(np.unique(lam)) == 8
  w = lam[:, None, None, None]
  expect = np.where((perm == np.arange(8))[:, None, None, None], x, w * x + (1 - w) * np.asarray(x)[perm])
  np.testing.assert_allclose(res.images, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lam_is_beta_distributed(alpha):
  x = jnp.zeros((4000, 1, 1, 1))
  y = jnp.full((4000, 2), 0.5)
  lam = np.asarray(_mixup(jax.random.key(11), x, y, alpha=alpha, per_sample=True).lam)
  assert_symmetric_beta(lam, alpha)
  assert abs(lam.mean() - 0.5) < 0.02
  assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.01
  # Per-sample draws are independent: no correlation between neighbours.
  assert stats.pearsonr(lam[:-1], lam[1:]).pvalue > 1e-3


def test_mixup_per_batch_lam_is_beta_over_keys():
  x = jnp.zeros((2, 1, 1, 1))
  y = jnp.full((2, 2), 0.5)
  keys = jax.random.split(jax.random.key(5), 2000)
  lam = np.asarray(jax.jit(jax.vmap(lambda k: jaxmix.mixup(k, x, y, alpha=1.0).lam))(keys))
  assert np.all(lam[:, 0] == lam[:, 1])
  assert_symmetric_beta(lam[:, 0], 1.0)


def test_partner_permutation_is_uniform():
  x = jnp.zeros((6, 1, 1, 1))
  y = jnp.full((6, 2), 0.5)
  keys = jax.random.split(jax.random.key(8), 3000)
  perms = np.asarray(jax.jit(jax.vmap(lambda k: jaxmix.mixup(k, x, y, lam=0.5).perm))(keys))
  assert np.all(np.sort(perms, axis=1) == np.arange(6))
  assert stats.chisquare(np.bincount(perms[:, 0], minlength=6)).pvalue > 1e-3
  assert stats.chisquare(np.bincount(perms[:, 5], minlength=6)).pvalue > 1e-3
  assert np.mean(perms == np.arange(6)) == pytest.approx(1 / 6, abs=0.02)  # fixed points allowed


def test_alpha_zero_means_no_mixing():
  x = _distinct(5, 3, 3, 2)
  y, _ = _labels(5)
  for op in (_mixup, _cutmix):
    res = op(jax.random.key(0), x, y, alpha=0.0)
    np.testing.assert_array_equal(res.images, x)
    np.testing.assert_array_equal(res.labels, y)
    np.testing.assert_array_equal(res.lam, 1.0)
    np.testing.assert_array_equal(res.perm, np.arange(5))


def test_roll_pairing():
  x = _distinct(5, 2, 2)
  y, _ = _labels(5)
  res = _mixup(jax.random.key(0), x, y, lam=0.0, pairing="roll")
  np.testing.assert_array_equal(res.perm, [4, 0, 1, 2, 3])
  np.testing.assert_array_equal(res.images, np.roll(x, 1, axis=0))


# ----------------------------------------------------------------------------
# CutMix (docs/algorithms/input_mixing.md#cutmix)


@pytest.mark.parametrize("lam, side, lam_adj", [(0.75, 16, 0.75), (0.5, 22, 0.52734375), (0.3, 26, 0.33984375)])
def test_cutmix_known_boxes_32(lam, side, lam_adj):
  """docs/algorithms/input_mixing.md#cutmix checks 1-3: per-sample boxes with a fixed nominal lam; interior boxes are side x side."""
  batch = 256
  x = _distinct(batch, 32, 32)
  y, _ = _labels(batch)
  perm = jnp.roll(jnp.arange(batch), 1)
  res = _cutmix(jax.random.key(2), x, y, lam=jnp.full((batch,), lam), perm=perm)
  mask = np.asarray(res.mask)
  interior = 0
  for b in range(batch):
    y1, y2, x1, x2 = _rect(mask[b] == 0)
    assert y2 - y1 <= side and x2 - x1 <= side
    if 0 < y1 and y2 < 32 and 0 < x1 and x2 < 32:
      interior += 1
      assert (y2 - y1, x2 - x1) == (side, side)
      assert res.lam[b] == lam_adj
    assert res.lam[b] == 1 - (y2 - y1) * (x2 - x1) / 1024
  assert interior > 0


def test_cutmix_box_rule_matches_reference():
  """The clovaai rand_bbox (float64 numpy) for every centre, including clipped boxes."""
  for lam in (0.0, 0.1, 0.42, 0.75, 0.9, 0.999, 1.0):
    for height, width in ((32, 32), (12, 20)):
      cut_h, cut_w = int(height * np.sqrt(1 - lam)), int(width * np.sqrt(1 - lam))
      key = jax.random.key(int(lam * 1000))
      y1, y2, x1, x2 = (np.asarray(a) for a in input_ops.cutmix_box(key, jnp.full((256,), lam), height, width))
      cy, cx = np.where(y1 == 0, y2 - cut_h // 2, y1 + cut_h // 2), np.where(x1 == 0, x2 - cut_w // 2, x1 + cut_w // 2)
      if cut_h // 2 < height / 2 and cut_w // 2 < width / 2:  # centres recoverable
        np.testing.assert_array_equal(y1, np.clip(cy - cut_h // 2, 0, height))
        np.testing.assert_array_equal(y2, np.clip(cy + cut_h // 2, 0, height))
        np.testing.assert_array_equal(x1, np.clip(cx - cut_w // 2, 0, width))
        np.testing.assert_array_equal(x2, np.clip(cx + cut_w // 2, 0, width))
        assert cy.min() >= 0 and cy.max() < height and cx.min() >= 0 and cx.max() < width
      else:
        assert np.all(y2 - y1 <= 2 * (cut_h // 2)) and np.all(x2 - x1 <= 2 * (cut_w // 2))


@pytest.mark.parametrize("per_sample", [False, True])
def test_cutmix_partner_pixels_form_one_box_of_area_one_minus_lam(per_sample):
  """docs/algorithms/input_mixing.md#cutmix check 4, on non-square images with an odd batch."""
  batch, height, width = 7, 12, 20
  x = _distinct(batch, height, width, 2)
  y, _ = _labels(batch)
  res = _cutmix(jax.random.key(4), x, y, per_sample=per_sample)
  own, partner = _sources(x, res.images, res.perm)
  assert np.all(own | partner)
  boxes = []
  for b in range(batch):
    pasted = np.asarray(res.mask[b]) == 0
    area = np.float32(pasted.sum())
    assert res.lam[b] == pytest.approx(1 - area / (height * width), abs=1e-7)
    if res.perm[b] == b:  # a fixed point (or nothing pasted) keeps the image
      np.testing.assert_array_equal(res.images[b], x[b])
      continue
    np.testing.assert_array_equal(partner[b], pasted)
    boxes.append(_rect(partner[b]))
    assert 1 - res.lam[b] == pytest.approx(partner[b].mean(), abs=1e-7)
  np.testing.assert_allclose(res.labels, res.lam[:, None] * y + (1 - res.lam[:, None]) * y[res.perm], rtol=1e-6)
  if not per_sample:
    assert len(set(boxes)) <= 1 and np.all(res.mask == res.mask[0]), "one box for the whole batch"
    assert np.all(res.lam == res.lam[0])


def test_cutmix_lam_one_and_tiny_boxes_are_no_ops():
  x = _distinct(4, 8, 8)
  y, _ = _labels(4)
  for lam in (1.0, 0.99):  # cut = 0 and cut = floor(8 * 0.1) = 0
    res = _cutmix(jax.random.key(0), x, y, lam=lam)
    np.testing.assert_array_equal(res.images, x)
    np.testing.assert_array_equal(res.labels, y)
    np.testing.assert_array_equal(res.lam, 1.0)
    np.testing.assert_array_equal(res.perm, np.arange(4))


def test_cutmix_lam_zero_centred_box_covers_everything():
  """lam = 0 covers the full image only when the centre is the image centre."""
  x = _distinct(64, 4, 4)
  y, _ = _labels(64)
  res = _cutmix(jax.random.key(9), x, y, lam=jnp.zeros(64), perm=jnp.roll(jnp.arange(64), 1))
  full = np.asarray(res.lam) == 0
  assert full.any() and not full.all()
  np.testing.assert_array_equal(np.asarray(res.images)[full], np.asarray(x)[np.roll(np.arange(64), 1)][full])


def test_cutmix_box_centres_are_uniform():
  batch, side = 4096, 16
  lam = 1 - (4 / side) ** 2  # cut = 4, half = 2: the centre is recoverable from the clipped box
  y1, y2, x1, x2 = (np.asarray(a) for a in input_ops.cutmix_box(jax.random.key(21), jnp.full((batch,), lam), side, side))
  assert np.all(np.maximum(y2 - y1, x2 - x1) <= 4)
  cy, cx = np.where(y1 == 0, y2 - 2, y1 + 2), np.where(x1 == 0, x2 - 2, x1 + 2)
  for c in (cy, cx):
    counts = np.bincount(c, minlength=side)
    assert counts.size == side
    assert stats.chisquare(counts).pvalue > 1e-3
  assert abs(stats.pearsonr(cy, cx).statistic) < 0.05


# ----------------------------------------------------------------------------
# Cutout (docs/algorithms/input_mixing.md#cutout)


def test_cutout_box_known_answers():
  assert [int(v) for v in input_ops.cutout_box(16, 16, 32, 32, 16)] == [8, 24, 8, 24]
  assert [int(v) for v in input_ops.cutout_box(0, 0, 32, 32, 16)] == [0, 8, 0, 8]
  assert [int(v) for v in input_ops.cutout_box(31, 31, 32, 32, 16)] == [23, 32, 23, 32]
  # Odd L: official (L - 1) wide; PatchUp copy exactly L wide inside the image.
  assert [int(v) for v in input_ops.cutout_box(10, 12, 32, 32, 5)] == [8, 12, 10, 14]
  assert [int(v) for v in input_ops.cutout_box(10, 12, 32, 32, 5, exact_size=True)] == [7, 12, 9, 14]
  assert [int(v) for v in input_ops.cutout_box(0, 0, 32, 32, 5, exact_size=True)] == [0, 2, 0, 2]


@pytest.mark.parametrize("shared", [False, True])
def test_cutout_zeroes_one_clipped_square_per_image(shared):
  batch, height, width, size = 64, 32, 32, 16
  x = _distinct(batch, height, width, 3) + 1.0  # no zeros in the input
  y, _ = _labels(batch)
  res = _cutout(jax.random.key(3), x, y, size=size, shared=shared)
  np.testing.assert_array_equal(res.labels, y)
  np.testing.assert_array_equal(res.lam, 1.0)
  np.testing.assert_array_equal(res.perm, np.arange(batch))
  zero = np.all(np.asarray(res.images) == 0, axis=-1)
  assert np.all(np.any(np.asarray(res.images) == 0, axis=-1) == zero), "the hole covers all channels"
  np.testing.assert_array_equal(np.asarray(res.images)[~zero], np.asarray(x)[~zero])
  np.testing.assert_array_equal(np.asarray(res.mask) == 0, zero)
  full = 0
  for b in range(batch):
    y1, y2, x1, x2 = _rect(zero[b])
    assert y2 - y1 <= size and x2 - x1 <= size
    if 0 < y1 and y2 < height and 0 < x1 and x2 < width:
      assert (y2 - y1, x2 - x1) == (size, size)
      full += 1
  assert full > 0 or shared  # a shared hole may be clipped
  if shared:
    assert np.all(zero == zero[0])
  else:
    assert len({zero[b].tobytes() for b in range(batch)}) > batch // 2


def test_cutout_odd_size_rules():
  x = jnp.ones((1, 16, 16, 1))
  y, _ = _labels(1)
  keys = jax.random.split(jax.random.key(1), 64)
  for shared, width in ((False, 4), (True, 5)):
    holes = np.asarray(jax.vmap(lambda k, shared=shared: _cutout(k, x, y, size=5, shared=shared).mask[0])(keys)) == 0
    spans = {_rect(h)[1] - _rect(h)[0] for h in holes}
    assert max(spans) == width


def test_cutout_size_zero_and_prob_zero_are_identity():
  x = _distinct(3, 6, 6, 2)
  y, _ = _labels(3)
  for kwargs in ({"size": 0}, {"size": 4, "prob": 0.0}):
    res = _cutout(jax.random.key(0), x, y, **kwargs)
    np.testing.assert_array_equal(res.images, x)
    np.testing.assert_array_equal(res.labels, y)


def test_cutout_hole_centres_are_uniform():
  batch, side = 4096, 16
  x = jnp.ones((batch, side, side, 1))
  y = jnp.ones((batch, 1))
  holes = np.asarray(_cutout(jax.random.key(8), x, y, size=4).mask) == 0
  y1 = holes.any(axis=2).argmax(axis=1)
  y2 = side - holes.any(axis=2)[:, ::-1].argmax(axis=1)
  cy = np.where(y1 == 0, y2 - 2, y1 + 2)
  assert stats.chisquare(np.bincount(cy, minlength=side)).pvalue > 1e-3


# ----------------------------------------------------------------------------
# Patch Augmentation (docs/algorithms/input_mixing.md#patch-augmentation)


def test_patch_augment_prob_zero_is_identity():
  x = _distinct(5, 8, 8, 3)
  y, _ = _labels(5)
  res = _patch(jax.random.key(0), x, y, prob=0.0)
  np.testing.assert_array_equal(res.images, x)
  np.testing.assert_array_equal(res.labels, y)
  np.testing.assert_array_equal(res.lam, 1.0)
  np.testing.assert_array_equal(res.perm, np.arange(5))


def test_patch_augment_16x16_patch_is_a_bit_exact_crop():
  batch = 32
  x = _distinct(batch, 32, 32, 3)
  y, _ = _labels(batch)
  perm = jnp.roll(jnp.arange(batch), 3)
  res = _patch(jax.random.key(5), x, y, lam=0.75, perm=perm)
  np.testing.assert_array_equal(res.lam, 0.75)
  np.testing.assert_allclose(res.labels, 0.75 * y + 0.25 * y[perm], rtol=1e-6)
  offsets = set()
  for b in range(batch):
    d0, d1_, e0, e1 = _rect(np.asarray(res.mask[b]) == 0)
    assert (d1_ - d0, e1 - e0) == (16, 16)
    assert 0 <= d0 <= 31 - 16 and 0 <= e0 <= 31 - 16
    patch = np.asarray(res.images[b, d0:d1_, e0:e1])
    # Locate the crop in the partner: its top-left value gives the source corner.
    flat = int(patch[0, 0, 0]) - int(perm[b]) * 32 * 32 * 3
    s0, s1 = divmod(flat // 3, 32)
    assert 0 <= s0 <= 31 - 16 and 0 <= s1 <= 31 - 16
    np.testing.assert_array_equal(patch, x[perm[b], s0 : s0 + 16, s1 : s1 + 16])
    outside = np.asarray(res.mask[b]) == 1
    np.testing.assert_array_equal(np.asarray(res.images[b])[outside], np.asarray(x[b])[outside])
    offsets.add((s0 - d0, s1 - e0))
  assert len(offsets) > 1, "source and destination are drawn independently"


def test_patch_augment_same_class_partner_keeps_label():
  x = _distinct(6, 8, 8)
  y = jaxmix.one_hot(jnp.array([1, 1, 2, 2, 3, 3]), 4, smoothing=0.2)
  res = _patch(jax.random.key(1), x, y, perm=jnp.array([1, 0, 3, 2, 5, 4]))
  np.testing.assert_array_equal(res.labels, y)
  assert np.all(res.lam < 1)


def test_patch_augment_default_sizes_and_corners():
  """docs/algorithms/input_mixing.md check 4 with the class defaults: sizes uniform on [3, 29], corners in [0, 31 - size]."""
  batch = 2048
  x = _distinct(batch, 32, 32)
  y = jnp.ones((batch, 1))
  perm = jnp.roll(jnp.arange(batch), 1)
  res = _patch(jax.random.key(13), x, y, perm=perm)
  mask = np.asarray(res.mask) == 0
  rows, cols = mask.any(axis=2), mask.any(axis=1)
  ph, pw = rows.sum(1), cols.sum(1)
  d0, d1 = rows.argmax(1), cols.argmax(1)
  assert np.all(mask.sum((1, 2)) == ph * pw)
  np.testing.assert_array_equal(res.lam, (1 - ph * pw / 1024).astype(np.float32))
  assert ph.min() == 3 and ph.max() == 29 and pw.min() == 3 and pw.max() == 29
  assert np.all(d0 <= 31 - ph) and np.all(d1 <= 31 - pw)
  top_left = np.asarray(res.images)[np.arange(batch), d0, d1, 0].astype(np.int64) - np.asarray(perm) * 1024
  s0, s1 = top_left // 32, top_left % 32
  assert s0.min() == 0 and s1.min() == 0 and np.all(s0 <= 31 - ph) and np.all(s1 <= 31 - pw)
  assert not np.any(mask[:, 31, :]) and not np.any(mask[:, :, 31]), "the last row / column is never pasted"
  for size in (ph, pw):
    assert stats.chisquare(np.bincount(size - 3, minlength=27)).pvalue > 1e-3
  assert abs(stats.pearsonr(ph, pw).statistic) < 0.1


def test_patch_augment_notebook_settings_and_prob():
  batch = 1024
  x = jnp.zeros((batch, 32, 32, 1))
  y = jnp.ones((batch, 1))
  res = _patch(jax.random.key(2), x, y, prob=0.9, min_dim=0.3, max_dim=0.8)
  area = 1024 * (1 - np.asarray(res.lam))
  applied = area > 0
  assert stats.binomtest(int(applied.sum()), batch, 0.9).pvalue > 1e-3
  np.testing.assert_array_equal(np.asarray(res.perm)[~applied], np.arange(batch)[~applied])
  mask = np.asarray(res.mask) == 0
  ph = mask.any(axis=2).sum(1)[applied]
  assert ph.min() == 10 and ph.max() == 26


def test_patch_augment_lam_zero_pastes_the_whole_partner():
  x = _distinct(4, 6, 6, 2)
  y, _ = _labels(4)
  perm = jnp.array([1, 2, 3, 0])
  res = _patch(jax.random.key(0), x, y, lam=0.0, perm=perm)
  np.testing.assert_array_equal(res.images, x[perm])
  np.testing.assert_array_equal(res.lam, 0.0)


# ----------------------------------------------------------------------------
# Properties shared by every op


def _ops():
  return {
    "mixup": functools.partial(jaxmix.mixup, alpha=1.0),
    "mixup_ps": functools.partial(jaxmix.mixup, alpha=1.0, per_sample=True),
    "cutmix": functools.partial(jaxmix.cutmix, alpha=1.0, prob=0.7),
    "cutmix_ps": functools.partial(jaxmix.cutmix, alpha=1.0, per_sample=True),
    "cutout": functools.partial(jaxmix.cutout, size=3, n_holes=2),
    "cutout_shared": functools.partial(jaxmix.cutout, size=3, shared=True),
    "patch_augment": functools.partial(jaxmix.patch_augment, prob=0.8, min_dim=0.2, max_dim=0.7),
    "vanilla": jaxmix.vanilla,
  }


OPS = _ops()
JOPS = {name: jax.jit(op) for name, op in OPS.items()}
_X = jax.random.normal(jax.random.key(42), (5, 6, 8, 3))
_Y, _ = _labels(5)


# Ops compared eagerly against jit (eager runs compile every primitive, so not all variants).
EAGER = ("mixup", "cutmix_ps", "cutout", "patch_augment", "vanilla")


@pytest.mark.parametrize("name", sorted(OPS))
def test_result_contract_determinism_and_jit(name):
  key = jax.random.key(17)
  jitted = JOPS[name](key, _X, _Y)
  again = JOPS[name](key, _X, _Y)
  eager = OPS[name](key, _X, _Y) if name in EAGER else again
  assert eager.images.shape == _X.shape and eager.images.dtype == _X.dtype
  assert eager.labels.shape == _Y.shape and eager.labels.dtype == jnp.float32
  assert eager.lam.shape == (5,) and eager.lam.dtype == jnp.float32
  assert eager.perm.shape == (5,) and eager.perm.dtype == jnp.int32
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(a, b)  # same key, same output, bit for bit
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(eager.perm, jitted.perm)
  np.testing.assert_array_equal(eager.lam, jitted.lam)
  if eager.mask is not None:
    np.testing.assert_array_equal(eager.mask, jitted.mask)
  np.testing.assert_allclose(eager.labels.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(eager.labels, eager.lam[:, None] * _Y + (1 - eager.lam[:, None]) * _Y[eager.perm], rtol=1e-6, atol=1e-7)
  assert np.all(np.isfinite(eager.images))


@pytest.mark.parametrize("name", ["mixup", "patch_augment"])
def test_keys_typed_and_raw_agree_and_differ_between_seeds(name):
  op = JOPS[name]
  typed = op(jax.random.key(3), _X, _Y)
  raw = op(jax.random.PRNGKey(3), _X, _Y)
  np.testing.assert_array_equal(typed.images, raw.images)
  other = op(jax.random.key(4), _X, _Y)
  assert not np.array_equal(typed.images, other.images)


@pytest.mark.parametrize("name", ["mixup_ps", "cutmix", "patch_augment", "cutout"])
def test_vmap_equals_loop(name):
  op = JOPS[name]
  keys = jax.random.split(jax.random.key(0), 3)
  xs = jnp.stack([_X, _X * 2, -_X])
  ys = jnp.stack([_Y, _Y[::-1], _Y])
  batched = jax.jit(jax.vmap(OPS[name]))(keys, xs, ys)
  for i in range(3):
    single = op(keys[i], xs[i], ys[i])
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(batched), strict=True):
      np.testing.assert_allclose(b[i], a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["mixup", "cutmix", "cutout", "patch_augment"])
def test_bfloat16_is_preserved(name):
  x = _X.astype(jnp.bfloat16)
  res = JOPS[name](jax.random.key(1), x, _Y)
  assert res.images.dtype == jnp.bfloat16 and res.labels.dtype == jnp.float32
  if name in ("cutmix", "cutout"):  # these copy pixels in place, bit-exactly
    own, partner = _sources(x, res.images, res.perm)
    assert np.all(own | partner | (np.asarray(res.images, np.float32) == 0).all(-1))


def test_mixup_bfloat16_values():
  x = _X.astype(jnp.bfloat16)
  res = _mixup(jax.random.key(1), x, _Y, lam=0.3)
  p = np.asarray(res.perm)
  xf = np.asarray(x, np.float32)
  expect = np.where((p == np.arange(5))[:, None, None, None], xf, 0.3 * xf + 0.7 * xf[p])
  np.testing.assert_allclose(np.asarray(res.images, np.float32), expect, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", ["mixup", "cutmix_ps", "patch_augment", "cutout"])
def test_batch_of_one(name):
  x, y = _X[:1], _Y[:1]
  res = JOPS[name](jax.random.key(0), x, y)
  np.testing.assert_array_equal(res.perm, [0])
  np.testing.assert_array_equal(res.labels, y)
  if name in ("mixup", "cutmix_ps"):  # pasting a sample into itself at the same place changes nothing
    np.testing.assert_array_equal(res.images, x)
  assert np.all(np.isfinite(res.images))


def test_overrides_may_be_traced():
  @jax.jit
  def f(key, x, y, lam, perm):
    return jaxmix.mixup(key, x, y, lam=lam, perm=perm), jaxmix.cutmix(key, x, y, lam=lam, perm=perm)

  perm = jnp.array([4, 3, 2, 1, 0])
  mixed, cut = f(jax.random.key(0), _X, _Y, jnp.float32(0.25), perm)
  np.testing.assert_allclose(mixed.images, 0.25 * _X + 0.75 * _X[perm], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(mixed.lam, 0.25)
  assert np.all(cut.lam >= 0.25)


def test_grad_through_mixup_is_finite():
  g = jax.jit(jax.grad(lambda x: jnp.sum(jaxmix.mixup(jax.random.key(0), x, _Y).images ** 2)))(_X)
  assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------------
# Eager validation (the API conventions)


def _raises(match, fn, *args, **kwargs):
  with pytest.raises(ValueError, match=match):
    fn(*args, **kwargs)


@pytest.mark.parametrize("op", [jaxmix.mixup, jaxmix.cutmix])
def test_pair_op_validation(op):
  key = jax.random.key(0)
  _raises("alpha", op, key, _X, _Y, alpha=-0.1)
  _raises("prob", op, key, _X, _Y, prob=1.5)
  _raises("4-D", op, key, _X[0], _Y)
  _raises("batch size", op, key, _X, _Y[:4])
  _raises("floating", op, key, _X.astype(jnp.int32), _Y)
  _raises("lam", op, key, _X, _Y, lam=1.5)
  _raises("lam", op, key, _X, _Y, lam=jnp.array([0.5, 0.5, 0.5, 0.5, -0.5]))
  _raises("lam", op, key, _X, _Y, lam=jnp.ones(4))
  _raises("perm", op, key, _X, _Y, perm=jnp.arange(4))
  _raises("perm", op, key, _X, _Y, perm=jnp.arange(5.0))
  _raises(r"perm values", op, key, _X, _Y, perm=jnp.array([0, 1, 2, 3, 5]))
  _raises("pairing", op, key, _X, _Y, pairing="shuffle")


def test_cutout_validation():
  key = jax.random.key(0)
  _raises(r"size must be an int in \[0, 8\]", jaxmix.cutout, key, _X, _Y, size=9)
  _raises("size", jaxmix.cutout, key, _X, _Y, size=-1)
  _raises("size", jaxmix.cutout, key, _X, _Y, size=2.5)
  _raises("n_holes", jaxmix.cutout, key, _X, _Y, size=2, n_holes=0)
  _raises("prob", jaxmix.cutout, key, _X, _Y, size=2, prob=-0.1)
  _raises("batch size", jaxmix.cutout, key, _X, _Y[:2], size=2)


def test_patch_augment_validation():
  key = jax.random.key(0)
  x = jnp.zeros((2, 32, 32, 3))
  y = jnp.ones((2, 1))
  _raises("max_dim", jaxmix.patch_augment, key, x, y, max_dim=1.0)
  _raises("min_dim", jaxmix.patch_augment, key, x, y, min_dim=0.5, max_dim=0.4)
  _raises("min_dim", jaxmix.patch_augment, key, x, y, min_dim=-0.1)
  _raises("prob", jaxmix.patch_augment, key, x, y, prob=2.0)
  _raises("lam", jaxmix.patch_augment, key, x, y, lam=-1.0)
  res = _patch(key, x, y, max_dim=0.97)  # round(0.97 * 32) = 31, the largest allowed side
  assert res.images.shape == x.shape
