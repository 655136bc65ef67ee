"""Hidden-space ops: PatchUp, DropBlock and Manifold Mixup (docs/algorithms/hidden_mixing.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxmix
from jaxmix.ops import hidden_ops, hook

B, S, C, K = 3, 16, 4, 5
H = jax.random.normal(jax.random.key(0), (B, S, S, C))
Y = jaxmix.one_hot(jnp.array([0, 1, 4]), K)
PERM = jnp.array([1, 2, 0])


def _seeds(points, size=S, channels=C):
  seeds = np.zeros((1, size, size, channels), np.float32)
  for i, j, c in points:
    seeds[0, i, j, c] = 1.0
  return jnp.asarray(seeds)


def _expected_changed_fraction(gamma, size=32, bs=7):
  """Exact E[changed fraction]: 1 - (1 - gamma_adj)^(seeds whose block covers the position)."""
  g = gamma * size**2 / (bs**2 * (size - bs + 1) ** 2)
  idx = np.arange(size)
  cover = np.minimum(idx + bs // 2, size - 1) - np.maximum(idx - bs // 2, 0) + 1
  n = cover[:, None] * cover[None, :]
  return float(np.mean(1.0 - (1.0 - g) ** n))


# ----------------------------------------------------------------------------
# PatchUp known answers (docs/algorithms/hidden_mixing.md#patchup checks 1-4).


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_patchup_single_interior_seed_gives_7x7_block_in_one_channel(mode):
  res = jaxmix.patchup(jax.random.key(1), H, Y, mode=mode, seeds=_seeds([(8, 7, 2)]), perm=PERM, lam=0.25, prob=1.0)
  expected = np.zeros((S, S, C), np.float32)
  expected[5:12, 4:11, 2] = 1.0
  for b in range(B):
    np.testing.assert_array_equal(res.mask[b], expected)
  inside = expected[None] > 0
  partner = H[PERM] if mode == "hard" else 0.25 * H + 0.75 * H[PERM]
  np.testing.assert_allclose(res.images, np.where(inside, partner, H), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.where(inside, 0, res.images), np.where(inside, 0, H))  # untouched bit for bit
  p_chg = 49 / (S * S * C)
  own = 1 - p_chg if mode == "hard" else 1 - p_chg + p_chg * 0.25
  np.testing.assert_allclose(res.lam, own, rtol=1e-6)


def test_patchup_corner_seed_gives_4x4_block():
  res = jaxmix.patchup(jax.random.key(1), H, Y, mode="hard", seeds=_seeds([(0, 0, 0)]), perm=PERM)
  expected = np.zeros((S, S), np.float32)
  expected[:4, :4] = 1.0
  np.testing.assert_array_equal(res.mask[1, ..., 0], expected)
  assert float(res.mask[..., 1:].sum()) == 0.0


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_patchup_gamma_zero_is_identity(mode):
  res = jaxmix.patchup(jax.random.key(2), H, Y, mode=mode, gamma=0.0, prob=1.0)
  np.testing.assert_array_equal(res.images, H)
  np.testing.assert_array_equal(res.labels, Y)  # t_rw = y
  np.testing.assert_array_equal(res.lam, np.ones(B))  # p_keep = 1
  assert float(res.loss_scale) == 2.0  # loss = 2 BCE(P, y)


def test_patchup_all_seeds_hard_gives_partner():
  ones = jnp.ones((1, S, S, C))
  res = jaxmix.patchup(jax.random.key(3), H, Y, mode="hard", seeds=ones, perm=PERM)
  np.testing.assert_array_equal(res.images, H[PERM])
  np.testing.assert_array_equal(res.labels, Y[PERM])
  np.testing.assert_array_equal(res.lam, np.zeros(B))
  soft = jaxmix.patchup(jax.random.key(3), H, Y, mode="soft", seeds=ones, perm=PERM, lam=0.3)
  np.testing.assert_allclose(soft.images, 0.3 * H + 0.7 * H[PERM], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(soft.labels, 0.3 * Y + 0.7 * Y[PERM], rtol=1e-6)


def test_patchup_gamma_adj_value():
  assert hidden_ops.patchup_gamma_adj(0.75, 32, 32, 7) == pytest.approx(768 / 33124, rel=1e-12)
  assert hidden_ops.patchup_gamma_adj(0.75, 32, 32, 7) == pytest.approx(0.0231856, abs=1e-7)


def test_patchup_changed_fraction():
  feats = jnp.zeros((1, 32, 32, 16))
  labels = jnp.ones((1, 1))

  @jax.jit
  def draw(keys):  # both gammas in one compile
    one = lambda k, g: jaxmix.patchup(k, feats, labels, mode="hard", gamma=g, prob=1.0).mask  # noqa: E731
    return [jax.vmap(lambda k, g=g: one(k, g))(keys) for g in (0.75, 0.5)]

  for (gamma, spec), masks in zip([(0.75, 0.636), (0.5, 0.491)], draw(jax.random.split(jax.random.key(4), 200)), strict=True):
    exact = _expected_changed_fraction(gamma)
    assert exact == pytest.approx(spec, abs=6e-4)  # the spec's rounded figures
    per_map = np.asarray(masks).mean(axis=(1, 2, 3))  # [200, 16] independent channel maps
    mean, se = per_map.mean(), per_map.std(ddof=1) / np.sqrt(per_map.size)
    assert abs(mean - exact) < 4 * se, (gamma, mean, exact, se)
    assert se < 0.004


def test_patchup_mask_shared_across_batch_independent_per_channel():
  res = jaxmix.patchup(jax.random.key(5), H, Y, mode="soft", gamma=0.5)
  mask = np.asarray(res.mask)
  assert (mask == mask[:1]).all()
  assert not all((mask[0, ..., c] == mask[0, ..., 0]).all() for c in range(1, C))
  per = jaxmix.patchup(jax.random.key(5), H, Y, mode="soft", gamma=0.5, per_sample=True, lam=0.35, perm=PERM)
  per_mask = np.asarray(per.mask)
  assert not (per_mask == per_mask[:1]).all()
  own = 1 - per_mask.mean(axis=(1, 2, 3))[:, None]
  t_b = 0.35 * np.asarray(Y) + 0.65 * np.asarray(Y)[np.asarray(PERM)]
  np.testing.assert_allclose(per.labels, own * np.asarray(Y) + (1 - own) * t_b, rtol=1e-5, atol=1e-7)


def _softmax(logits):
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _bce(p, t):
  p = np.clip(p, 1e-300, 1.0)
  return -np.mean(t * np.maximum(np.log(p), -100) + (1 - t) * np.maximum(np.log1p(-np.minimum(p, 1 - 1e-16)), -100))


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_patchup_collapsed_loss_equals_official_three_terms(mode, loss):
  res = jaxmix.patchup(jax.random.key(6), H, Y, mode=mode, gamma=0.75, lam=0.35, perm=PERM)
  logits = jax.random.normal(jax.random.key(7), (B, K)) * 3
  y, yp = np.asarray(Y, np.float64), np.asarray(Y, np.float64)[np.asarray(PERM)]
  p_chg = float(np.asarray(res.mask)[0].mean())
  portion = 1 - p_chg
  t_b = 0.35 * y + 0.65 * yp if mode == "soft" else yp
  t_rw = portion * y + p_chg * t_b
  p = _softmax(logits)
  if loss == "bce":
    f, ours = _bce, jaxmix.bce_on_softmax
  else:
    f, ours = (lambda p, t: -np.mean(np.sum(t * np.log(p), axis=1))), jaxmix.softmax_cross_entropy
  official = portion * f(p, y) + (1 - portion) * f(p, t_b) + f(p, t_rw)
  assert 0.05 < p_chg < 0.95
  np.testing.assert_allclose(float(res.loss_scale) * float(ours(logits, res.labels)), official, rtol=2e-5)


@pytest.mark.parametrize("bug", [False, True])
def test_patchup_layer0_cutmix_collapsed_loss(bug):
  x = jax.random.normal(jax.random.key(8), (B, 8, 8, 3))
  mix_fn, carry = hook.hidden_mix(jax.random.key(9), Y, method="patchup", layer=0, perm=PERM, wrn_target_bug=bug)
  out, carry = mix_fn("input", x, carry)
  pasted = np.asarray(jnp.any(out != x, axis=-1))  # the CutMix box (x is continuous noise)
  assert pasted.any() and (pasted == pasted[:1]).all()  # one box for the whole batch
  np.testing.assert_array_equal(out, np.where(pasted[..., None], x[PERM], x))
  portion = 1 - float(pasted[0].mean())
  np.testing.assert_allclose(carry.lam, 0.5 * (portion + 1) if bug else portion, rtol=1e-6)
  y, yp = np.asarray(Y, np.float64), np.asarray(Y, np.float64)[np.asarray(PERM)]
  t_rw = y if bug else portion * y + (1 - portion) * yp
  logits = jax.random.normal(jax.random.key(10), (B, K))
  p = _softmax(logits)
  official = portion * _bce(p, y) + (1 - portion) * _bce(p, yp) + _bce(p, t_rw)
  assert float(carry.loss_scale) == 2.0
  np.testing.assert_allclose(2.0 * float(jaxmix.bce_on_softmax(logits, carry.labels)), official, rtol=2e-5)
  # The other sites do nothing when layer 0 is drawn.
  h2, carry2 = mix_fn("conv1", H, carry)
  np.testing.assert_array_equal(h2, H)
  np.testing.assert_array_equal(carry2.labels, carry.labels)


def test_patchup_prob_and_lam_distribution():
  ones = jnp.ones((1, 4, 4, 1))
  feats, labels = jnp.zeros((2, 4, 4, 1)), jaxmix.one_hot(jnp.array([0, 1]), 2)
  keys = jax.random.split(jax.random.key(11), 2000)

  def draw(key, **kw):
    res = jaxmix.patchup(key, feats, labels, mode="soft", block_size=1, seeds=ones, perm=jnp.array([1, 0]), **kw)
    return res.lam[0], res.loss_scale

  @jax.jit
  def draws(keys):
    lam, scale = jax.vmap(lambda k: draw(k, prob=0.7))(keys)
    return lam, scale, jax.vmap(lambda k: draw(k, prob=1.0, alpha=1.0, use_alpha=True)[0])(keys)

  lam, scale, lam_u = (np.asarray(a) for a in draws(keys))
  applied = scale == 2.0
  assert set(np.unique(scale)) <= {1.0, 2.0}
  assert abs(applied.mean() - 0.7) < 5 * np.sqrt(0.21 / keys.shape[0])
  assert (lam[~applied] == 1.0).all()  # a skipped batch is not mixed
  assert stats.kstest(lam[applied], stats.beta(2, 2).cdf).pvalue > 1e-3  # Beta(2, 2) hard-coded
  assert stats.kstest(lam_u, stats.uniform.cdf).pvalue > 1e-3  # use_alpha honours alpha (Beta(1, 1))
  # alpha is ignored unless use_alpha=True.
  assert float(draw(keys[0], prob=1.0, alpha=1.0)[0]) == float(draw(keys[0], prob=1.0)[0])


def test_patchup_skipped_batch_is_identity():
  res = jaxmix.patchup(jax.random.key(12), H, Y, mode="hard", prob=0.0)
  np.testing.assert_array_equal(res.images, H)
  np.testing.assert_array_equal(res.labels, Y)
  assert float(res.loss_scale) == 1.0


def test_patchup_jit_equals_eager_and_deterministic():
  f = lambda k, h: jaxmix.patchup(k, h, Y, mode="soft")  # noqa: E731
  a, b, c = f(jax.random.key(13), H), f(jax.random.key(13), H), jax.jit(f)(jax.random.key(13), H)
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.mask, c.mask)
  np.testing.assert_allclose(a.images, c.images, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(a.labels, c.labels, rtol=1e-6)


def test_patchup_grad_finite_and_dtype():
  g = jax.grad(lambda h: jnp.sum(jaxmix.patchup(jax.random.key(14), h, Y, mode="soft").images ** 2))(H)
  assert np.isfinite(np.asarray(g)).all()
  res = jaxmix.patchup(jax.random.key(14), H.astype(jnp.bfloat16), Y, mode="hard")
  assert res.images.dtype == jnp.bfloat16 and res.labels.dtype == jnp.float32


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"block_size": 6}, "block_size"),
    ({"block_size": 17}, "block_size"),
    ({"mode": "medium"}, "mode"),
    ({"gamma": -0.1}, "gamma"),
    ({"prob": 2.0}, "prob"),
    ({"alpha": -1.0}, "alpha"),
    ({"seeds": jnp.ones((2, S, S, C))}, "seeds"),
    ({"perm": jnp.array([0, 1])}, "perm"),
  ],
)
def test_patchup_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxmix.patchup(jax.random.key(0), H, Y, **kwargs)


# ----------------------------------------------------------------------------
# DropBlock (docs/algorithms/hidden_mixing.md#dropblock checks).


def test_dropblock_gamma_value():
  assert hidden_ops.dropblock_gamma(0.9, 32, 32, 7) == pytest.approx(0.0030914, abs=1e-7)


@pytest.mark.parametrize("variant", ["patchup", "paper"])
def test_dropblock_keep_one_is_identity(variant):
  np.testing.assert_array_equal(jaxmix.dropblock(jax.random.key(0), H, keep_prob=1.0, variant=variant), H)


def test_dropblock_single_seed_drops_exact_square_and_rescales():
  seeds = np.zeros((B, S, S, C), np.float32)
  seeds[1, 8, 8, 3] = 1.0
  out = np.asarray(jaxmix.dropblock(jax.random.key(0), jnp.ones((B, S, S, C)), seeds=jnp.asarray(seeds)))
  dropped = out == 0
  expected = np.zeros_like(dropped)
  expected[1, 5:12, 5:12, 3] = True
  np.testing.assert_array_equal(dropped, expected)
  total = B * S * S * C
  np.testing.assert_allclose(out[~dropped], total / (total - 49), rtol=1e-6)
  assert out.mean() == pytest.approx(1.0, rel=1e-6)  # constant x: mean preserved


def test_dropblock_block1_is_bernoulli_dropout():
  x = jnp.ones((8, 16, 16, 8))
  out = np.asarray(jaxmix.dropblock(jax.random.key(1), x, block_size=1, keep_prob=0.8))
  kept = out > 0
  assert abs(kept.mean() - 0.8) < 5 * np.sqrt(0.16 / kept.size)
  np.testing.assert_allclose(out[kept], 1.0 / kept.mean(), rtol=1e-5)
  assert out.mean() == pytest.approx(1.0, rel=1e-5)


def test_dropblock_independent_per_sample_and_channel():
  out = np.asarray(jaxmix.dropblock(jax.random.key(2), jnp.ones((4, 16, 16, 4)), block_size=3, keep_prob=0.5))
  masks = (out == 0).reshape(4, -1, 4)
  assert not (masks == masks[:1]).all() and not (masks == masks[..., :1]).all()


def test_dropblock_paper_variant_valid_centres_only():
  x = jnp.ones((1, S, S, 1))
  border = np.zeros((1, S, S, 1), np.float32)
  border[0, 2, 2, 0] = 1.0  # bs = 7: rows/cols < 3 are not valid centres
  np.testing.assert_array_equal(jaxmix.dropblock(jax.random.key(0), x, seeds=jnp.asarray(border), variant="paper"), x)
  np.testing.assert_array_equal(jaxmix.dropblock(jax.random.key(0), x, seeds=jnp.asarray(border), variant="patchup")[0, :6, :6, 0], 0)
  valid = np.zeros_like(border)
  valid[0, 3, 3, 0] = 1.0
  out = np.asarray(jaxmix.dropblock(jax.random.key(0), x, seeds=jnp.asarray(valid), variant="paper"))
  assert (out[0, :7, :7, 0] == 0).all() and (out == 0).sum() == 49
  # With bs = S only the centre is a valid seed, so a sample loses all or nothing.
  tiny = jnp.ones((64, 7, 7, 1))
  out = np.asarray(jaxmix.dropblock(jax.random.key(3), tiny, block_size=7, keep_prob=0.5, variant="paper"))
  per = (out == 0).reshape(64, -1).mean(1)
  assert set(np.unique(per)) <= {0.0, 1.0}  # only the centre is valid: all or nothing


@pytest.mark.parametrize("height, width, bh, bw", [(32, 32, 7, 7), (16, 12, 3, 5), (8, 8, 4, 2), (5, 9, 5, 1), (32, 7, 6, 7)])
def test_packed_block_mask_equals_the_window_max(height, width, bh, bw):
  """The bit-packed form (maps up to 32 rows) is the dense "SAME" window max, odd and even blocks."""
  seeds = jax.random.bernoulli(jax.random.key(height * 100 + bh), 0.05, (3, height, width, 4))
  dropped, count = hidden_ops._packed_block_mask(seeds, bh, bw)
  want = hidden_ops.block_mask(seeds, (bh, bw))
  np.testing.assert_array_equal(np.asarray(dropped, np.float32), want)
  assert float(count) == float(want.sum())


def test_dropblock_drop_rate_per_position_is_the_exact_one():
  """PatchUp variant, S = 32, bs = 7, keep 0.9: a position is dropped with probability
  1 - (1 - gamma)^(seeds whose block covers it), independently over 4,096 maps; the row
  and column profiles each match within 5 sigma."""
  out = np.asarray(jaxmix.dropblock(jax.random.key(11), jnp.ones((256, 32, 32, 16)), block_size=7, keep_prob=0.9))
  dropped = (out == 0).transpose(0, 3, 1, 2).reshape(-1, 32, 32)  # 4,096 independent maps
  g = float(hidden_ops.dropblock_gamma(0.9, 32, 32, 7))
  idx = np.arange(32)
  cover = np.minimum(idx + 3, 31) - np.maximum(idx - 3, 0) + 1
  p = 1.0 - (1.0 - g) ** (cover[:, None] * cover[None, :])
  for axis in (1, 2):  # the row profile (mean over columns) and the column profile, per map
    per_map = dropped.mean(axis=3 - axis)
    z = (per_map.mean(axis=0) - p.mean(axis=2 - axis)) / (per_map.std(axis=0) / np.sqrt(len(per_map)))
    assert np.all(np.abs(z) < 5), z
  assert abs(dropped.mean() - p.mean()) < 0.002  # 0.0955 expected


def test_dropblock_seeds_are_independent_bernoulli():
  """block_size 1 shows the seeds: the rate, and no correlation between neighbours or samples."""
  out = np.asarray(jaxmix.dropblock(jax.random.key(5), jnp.ones((64, 32, 32, 16)), block_size=1, keep_prob=0.97))
  seeds = (out == 0).astype(np.float64)
  n = seeds.size
  assert abs(seeds.mean() - 0.03) < 5 * np.sqrt(0.03 * 0.97 / n)
  for a, b in (
    (seeds[:, 1:], seeds[:, :-1]),  # rows
    (seeds[:, :, 1:], seeds[:, :, :-1]),  # columns
    (seeds[..., 1:], seeds[..., :-1]),  # channels
    (seeds[1:], seeds[:-1]),  # samples
  ):
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(a.size)


def test_dropblock_all_dropped_gives_zeros_not_nan():
  out = jaxmix.dropblock(jax.random.key(0), H, seeds=jnp.ones_like(H))
  np.testing.assert_array_equal(out, jnp.zeros_like(H))


def test_dropblock_schedule_and_traced_keep_prob():
  vals = [float(jaxmix.dropblock_schedule(s, 100, keep_prob=0.9)) for s in (0, 50, 100, 200)]
  np.testing.assert_allclose(vals, [1.0, 0.95, 0.9, 0.9], rtol=1e-6)
  f = jax.jit(lambda k, step: jaxmix.dropblock(k, H, block_size=3, keep_prob=jaxmix.dropblock_schedule(step, 10)))
  np.testing.assert_array_equal(f(jax.random.key(1), 0), H)
  assert (np.asarray(f(jax.random.key(1), 10)) == 0).any()


@pytest.mark.parametrize("kwargs", [{"keep_prob": 1.5}, {"block_size": 4}, {"variant": "tf"}, {"block_size": 0, "variant": "paper"}])
def test_dropblock_validation(kwargs):
  with pytest.raises(ValueError):
    jaxmix.dropblock(jax.random.key(0), H, **kwargs)


# ----------------------------------------------------------------------------
# Manifold Mixup op.


def test_manifold_mixup_known_answers():
  one = jaxmix.manifold_mixup(jax.random.key(0), H, Y, lam=1.0, perm=PERM)
  np.testing.assert_array_equal(one.images, H)
  np.testing.assert_array_equal(one.labels, Y)
  zero = jaxmix.manifold_mixup(jax.random.key(0), H, Y, lam=0.0, perm=PERM)
  np.testing.assert_array_equal(zero.images, H[PERM])
  np.testing.assert_array_equal(zero.labels, Y[PERM])
  flat = jaxmix.manifold_mixup(jax.random.key(1), H.reshape(B, -1), Y)
  np.testing.assert_allclose(flat.labels.sum(1), 1.0, rtol=1e-6)
  assert flat.images.shape == (B, S * S * C)
  lam = [float(jaxmix.manifold_mixup(jax.random.key(i), H, Y, alpha=2.0).lam[0]) for i in range(3)]
  assert all(0 < v < 1 for v in lam) and len(set(lam)) == 3
  np.testing.assert_array_equal(jaxmix.manifold_mixup(jax.random.key(2), H, Y, alpha=0.0).images, H)
  with pytest.raises(ValueError, match="alpha"):
    jaxmix.manifold_mixup(jax.random.key(0), H, Y, alpha=-1.0)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_sample_lam_exact_special_cases(alpha):
  lam = jax.jit(jax.vmap(lambda k: hidden_ops.sample_lam(k, alpha)))(jax.random.split(jax.random.key(20), 3000))
  assert stats.kstest(np.asarray(lam), stats.beta(alpha, alpha).cdf).pvalue > 1e-3
  assert float(hidden_ops.sample_lam(jax.random.key(0), 0.0)) == 1.0


def test_ops_vmap_equals_loop_and_jit_equals_eager():
  keys = jax.random.split(jax.random.key(21), 2)
  op = lambda k: jaxmix.patchup(k, H, Y, mode="soft", gamma=0.5).images  # noqa: E731  (vmap over keys of a batch op)
  np.testing.assert_allclose(jax.jit(jax.vmap(op))(keys), jnp.stack([op(k) for k in keys]), rtol=1e-6, atol=1e-6)
  x = jnp.ones((4, 16, 16, 4))
  drop = lambda k: jaxmix.dropblock(k, x, block_size=3, keep_prob=0.5)  # noqa: E731
  np.testing.assert_allclose(jax.jit(drop)(keys[0]), drop(keys[0]), rtol=1e-6)
  np.testing.assert_array_equal(drop(keys[0]), drop(keys[0]))
