"""``mixup_cutmix``: timm's ``Mixup`` switching, per batch, pair and sample."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxmix

B, H, W, K = 64, 16, 12, 10
X = jax.random.uniform(jax.random.key(1), (B, H, W, 3))
Y = jaxmix.one_hot(jnp.arange(B) % K, K)
FLIP = np.arange(B)[::-1]


@functools.partial(jax.jit, static_argnames=("mode", "mixup_alpha", "cutmix_alpha", "prob", "switch_prob", "correct_lam", "cutmix_minmax"))
def _mix(key, x, y, **kw):
  return jaxmix.mixup_cutmix(key, x, y, **kw)


def _box_sides(mask):
  """Rows and columns of the pasted box of each sample (0 where nothing was pasted)."""
  pasted = np.asarray(mask) < 0.5
  return pasted.any(axis=2).sum(axis=1), pasted.any(axis=1).sum(axis=1)


def test_batch_mode_mixup_is_one_lambda_with_the_flipped_batch():
  res = _mix(jax.random.key(0), X, Y, mode="batch", mixup_alpha=1.0, cutmix_alpha=0.0)
  lam = float(res.lam[0])
  np.testing.assert_allclose(res.lam, lam)
  np.testing.assert_allclose(res.images, lam * X + (1 - lam) * X[FLIP], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(res.labels, lam * Y + (1 - lam) * Y[FLIP], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(res.perm, FLIP)


def test_batch_mode_cutmix_pastes_one_box_and_lam_is_the_kept_area():
  res = _mix(jax.random.key(3), X, Y, mode="batch", mixup_alpha=0.0, cutmix_alpha=1.0)
  mask = np.asarray(res.mask)
  assert (mask == mask[0]).all()  # one box for the batch
  np.testing.assert_allclose(res.lam, mask.mean(axis=(1, 2)), rtol=1e-6)
  own = mask[..., None] > 0.5
  np.testing.assert_array_equal(np.asarray(res.images), np.where(own, X, X[FLIP]))
  np.testing.assert_allclose(res.labels.sum(-1), 1.0, rtol=1e-6)


def test_pair_mode_pairs_swap_one_box_and_share_lambda():
  res = _mix(jax.random.key(5), X, Y, mode="pair", mixup_alpha=0.0, cutmix_alpha=1.0)
  perm = np.asarray(res.perm)
  mixed = perm != np.arange(B)
  np.testing.assert_array_equal(perm[perm], np.arange(B))  # an involution
  np.testing.assert_allclose(np.asarray(res.lam), np.asarray(res.lam)[FLIP])
  mask = np.asarray(res.mask)
  np.testing.assert_array_equal(mask, mask[FLIP])
  img = np.asarray(res.images)
  own = mask[..., None] > 0.5
  np.testing.assert_array_equal(img, np.where(own, X, X[FLIP]))
  assert mixed.all()


def test_elem_mode_draws_per_sample_and_switches_with_switch_prob():
  n, share, lams_m, lams_c = 0, [], [], []
  for seed in range(40):
    res = _mix(jax.random.key(seed), X, Y, mode="elem", mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.3, correct_lam=False)
    cut = np.asarray(res.mask).min(axis=(1, 2)) < 0.5
    # A zero-area box (lam near 1) also counts as CutMix in timm; it cannot be seen here, so
    # compare on samples whose lambda is below 0.9 (the box has at least one pixel then).
    lam = np.asarray(res.lam)
    visible = lam < 0.9
    share.append(cut[visible].mean())
    lams_c.extend(lam[cut])
    lams_m.extend(lam[~cut & (np.asarray(res.perm) != np.arange(B))])
    n += B
  assert abs(np.mean(share) - 0.3) < 0.05
  # correct_lam=False keeps the drawn lambda: Beta(1, 1) for CutMix ...
  assert (
    stats.kstest(np.asarray(lams_c)[np.asarray(lams_c) < 0.9], lambda v: stats.beta.cdf(v, 1, 1) / stats.beta.cdf(0.9, 1, 1)).pvalue > 0.01
  )
  # ... and Beta(0.8, 0.8) for Mixup.
  assert stats.kstest(lams_m, stats.beta(0.8, 0.8).cdf).pvalue > 0.01


def test_prob_zero_and_zero_alphas_mix_nothing():
  for kw in ({"prob": 0.0, "mixup_alpha": 1.0, "cutmix_alpha": 1.0}, {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}):
    res = jaxmix.mixup_cutmix(jax.random.key(0), X, Y, mode="elem", **kw)
    np.testing.assert_array_equal(res.images, X)
    np.testing.assert_array_equal(res.labels, Y)
    np.testing.assert_array_equal(res.perm, np.arange(B))
    np.testing.assert_array_equal(res.lam, 1.0)


def test_minmax_box_sides_and_placement():
  lo, hi = 0.25, 0.75
  sides_h, sides_w = [], []
  for seed in range(20):
    res = _mix(jax.random.key(seed), X, Y, mode="elem", mixup_alpha=0.0, cutmix_alpha=1.0, cutmix_minmax=(lo, hi))
    h, w = _box_sides(res.mask)
    np.testing.assert_allclose(res.lam, 1 - h * w / (H * W), rtol=1e-6)
    sides_h.extend(h)
    sides_w.extend(w)
  assert set(sides_h) == set(range(int(lo * H), int(hi * H)))  # [4, 12): timm's randint
  assert set(sides_w) == set(range(int(lo * W), int(hi * W)))


def test_correct_lam_false_keeps_the_drawn_lambda_where_the_box_is_clipped():
  key = jax.random.key(11)
  exact = _mix(key, X, Y, mode="elem", mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=True)
  drawn = _mix(key, X, Y, mode="elem", mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False)
  np.testing.assert_array_equal(exact.images, drawn.images)  # the same boxes
  np.testing.assert_allclose(exact.lam, np.asarray(exact.mask).mean(axis=(1, 2)), rtol=1e-6)
  assert not np.allclose(exact.lam, drawn.lam)


def test_lam_and_perm_overrides():
  perm = np.roll(np.arange(B), 1)
  res = jaxmix.mixup_cutmix(jax.random.key(0), X, Y, mode="batch", mixup_alpha=1.0, lam=0.25, perm=perm)
  np.testing.assert_allclose(res.images, 0.25 * X + 0.75 * X[perm], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="involution"):
    jaxmix.mixup_cutmix(jax.random.key(0), X, Y, mode="pair", perm=perm)


def test_jit_equals_eager_and_same_key_same_output():
  kw = dict(mode="elem", mixup_alpha=0.8, cutmix_alpha=1.0)
  eager = jaxmix.mixup_cutmix(jax.random.key(4), X, Y, **kw)
  jitted = _mix(jax.random.key(4), X, Y, **kw)
  np.testing.assert_allclose(eager.images, jitted.images, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(eager.perm, jitted.perm)
  other = _mix(jax.random.key(5), X, Y, **kw)
  assert not np.allclose(other.images, jitted.images)


@pytest.mark.parametrize(
  "kw, message",
  [
    ({"mode": "row"}, "mode"),
    ({"mixup_alpha": -1.0}, "mixup_alpha"),
    ({"switch_prob": 2.0}, "switch_prob"),
    ({"cutmix_minmax": (0.8, 0.2)}, "cutmix_minmax"),
  ],
)
def test_bad_arguments(kw, message):
  with pytest.raises(ValueError, match=message):
    jaxmix.mixup_cutmix(jax.random.key(0), X, Y, **kw)
  with pytest.raises(ValueError, match="even"):
    jaxmix.mixup_cutmix(jax.random.key(0), X[:3], Y[:3], mode="pair")


def test_registered_with_timm_flags():
  from jaxmix.training import config

  argv = ["--train", "mixup_cutmix", "--mixup_alpha", "0.8", "--cutmix_alpha", "1.0", "--cutmix_minmax", "0.2", "0.8"]
  argv += ["--mix_prob", "0.9", "--switch_prob", "0.4", "--mix_mode", "elem", "--no_correct_lam", "--mixup_off_epoch", "3"]
  cfg, _ = config.parse_args(argv)
  assert cfg.hparams == {
    "mixup_alpha": 0.8,
    "cutmix_alpha": 1.0,
    "cutmix_minmax": (0.2, 0.8),
    "prob": 0.9,
    "switch_prob": 0.4,
    "mode": "elem",
    "correct_lam": False,
  }
  assert cfg.mixup_off_epoch == 3
  step = config.step_config(cfg, 10, (0.5,) * 3, (0.2,) * 3)
  hash(step)  # hashable: it keys the compiled step


def test_box_side_is_int_side_sqrt_one_minus_lam_as_timm():
  """timm 1.0: rows ``c - s // 2 .. c + (s + 1) // 2``, so an odd side stays odd (5 x 4 here)."""
  lam = 1 - (5.5 / 16) ** 2  # int(16 * 0.34375) = 5 rows, int(12 * 0.34375) = 4 columns
  sides = set()
  for seed in range(30):
    res = jaxmix.mixup_cutmix(jax.random.key(seed), X, Y, mode="elem", mixup_alpha=0.0, cutmix_alpha=1.0, lam=lam)
    sides |= set(zip(*_box_sides(res.mask), strict=True))
  assert max(h for h, _ in sides) == 5 and max(w for _, w in sides) == 4
  assert (5, 4) in sides and all(h <= 5 and w <= 4 for h, w in sides)
