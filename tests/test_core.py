"""MixResult, one_hot, the eager validators and the shared samplers of jaxmix.core."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxmix
from jaxmix.ops import core


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_one_hot_follows_timm_convention(smoothing):
  labels = jnp.array([0, 3, 2, 3])
  hot = jaxmix.one_hot(labels, 4, smoothing=smoothing)
  assert hot.shape == (4, 4) and hot.dtype == jnp.float32
  expect = np.full((4, 4), smoothing / 4, np.float32)
  expect[np.arange(4), np.asarray(labels)] = 1 - smoothing + smoothing / 4
  np.testing.assert_allclose(hot, expect, rtol=1e-6)
  np.testing.assert_allclose(hot.sum(1), 1.0, rtol=1e-6)


def test_one_hot_validation():
  with pytest.raises(ValueError, match="smoothing"):
    jaxmix.one_hot(jnp.arange(3), 3, smoothing=1.5)
  with pytest.raises(ValueError, match="num_classes"):
    jaxmix.one_hot(jnp.arange(3), 0)
  with pytest.raises(ValueError, match="1-D"):
    jaxmix.one_hot(jnp.zeros((2, 3), jnp.int32), 3)


def test_one_hot_in_jit():
  hot = jax.jit(lambda y: jaxmix.one_hot(y, 5, smoothing=0.2))(jnp.array([4, 0]))
  np.testing.assert_allclose(hot[0], [0.04, 0.04, 0.04, 0.04, 0.84], rtol=1e-6)


def test_mixresult_is_a_pytree_through_jit():
  res = core.identity_result(jnp.ones((2, 3, 3, 1)), jnp.eye(2))
  out = jax.jit(lambda r: jax.tree.map(lambda a: a * 2, r))(res)
  assert isinstance(out, jaxmix.MixResult)
  np.testing.assert_array_equal(out.lam, [2.0, 2.0])
  assert out.mask is None and out.loss_scale is None
  np.testing.assert_array_equal(res.perm, [0, 1])
  assert res.perm.dtype == jnp.int32 and res.lam.dtype == jnp.float32


def test_mix_labels_formula_and_exact_on_equal_rows():
  y = jaxmix.one_hot(jnp.array([0, 1, 1, 2]), 3, smoothing=0.3)
  perm = jnp.array([1, 2, 0, 3])
  lam = jnp.array([0.3, 0.6, 0.9, 0.1])
  mixed = core.mix_labels(y, perm, lam)
  np.testing.assert_allclose(mixed, lam[:, None] * y + (1 - lam[:, None]) * y[perm], rtol=1e-6)
  np.testing.assert_array_equal(mixed[1], y[1])  # partner of the same class
  np.testing.assert_array_equal(mixed[3], y[3])  # fixed point
  np.testing.assert_allclose(core.mix_labels(y, perm, 0.25), 0.25 * y + 0.75 * y[perm], rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_paste_is_the_select_bit_for_bit_on_finite_pixels(dtype):
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((3, 5, 6, 2)) * 100, dtype) for _ in range(2))
  inside = jnp.asarray(rng.random((3, 5, 6)) < 0.5)
  out = jax.jit(core.paste)(inside, a, b)
  assert out.dtype == dtype
  as_bits = lambda x: np.asarray(jax.lax.bitcast_convert_type(x, jnp.uint16 if dtype == jnp.bfloat16 else jnp.uint32))  # noqa: E731
  np.testing.assert_array_equal(as_bits(out), as_bits(jnp.where(inside[..., None], a, b)))
  # A [H, W] mask broadcasts over the batch; -0.0 may come back as +0.0 (equal as numbers).
  shared = core.paste(inside[0], -jnp.zeros_like(a), b)
  np.testing.assert_array_equal(shared, jnp.where(inside[0][None, ..., None], 0.0, b))


def test_validators():
  core.check_nonneg("alpha", 0.0)
  core.check_prob("prob", 1)
  for bad in (-1e-3, float("nan"), float("inf"), "1", None):
    with pytest.raises(ValueError, match="alpha"):
      core.check_nonneg("alpha", bad)
  for bad in (-0.1, 1.01, float("nan")):
    with pytest.raises(ValueError, match=r"prob must be a probability in \[0, 1\]"):
      core.check_prob("prob", bad)
  assert core.check_images(jnp.zeros((2, 3, 4, 1), jnp.bfloat16)) == (2, 3, 4, 1)
  with pytest.raises(ValueError, match="4-D"):
    core.check_images(jnp.zeros((3, 4, 1)))
  with pytest.raises(ValueError, match="non-empty"):
    core.check_images(jnp.zeros((0, 3, 4, 1)))
  with pytest.raises(ValueError, match="floating"):
    core.check_images(jnp.zeros((1, 3, 4, 1), jnp.uint8))
  assert core.check_labels(jnp.zeros((2, 7)), 2) == 7
  with pytest.raises(ValueError, match=r"\[B, K\]"):
    core.check_labels(jnp.zeros((2,)), 2)
  with pytest.raises(ValueError, match="batch size 3 differs"):
    core.check_labels(jnp.zeros((3, 7)), 2)


def test_check_lam_perm():
  core.check_lam_perm(0.5, np.array([1, 0]), 2)
  core.check_lam_perm(np.array([0.0, 1.0]), None, 2)
  with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
    core.check_lam_perm(np.array([0.5, 1.5]), None, 2)
  with pytest.raises(ValueError, match=r"shape \(2,\)"):
    core.check_lam_perm(np.zeros(3), None, 2)
  with pytest.raises(ValueError, match="integer"):
    core.check_lam_perm(None, np.array([0.0, 1.0]), 2)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    core.check_lam_perm(None, np.array([0, 2]), 2)

  @jax.jit
  def traced(lam, perm):  # values of traced overrides are not checked, shapes are
    core.check_lam_perm(lam, perm, 2)
    return lam

  np.testing.assert_array_equal(traced(jnp.float32(2.0), jnp.array([0, 5])), 2.0)


def test_sample_perm():
  perm = core.sample_perm(jax.random.key(0), 50)
  assert perm.dtype == jnp.int32 and sorted(np.asarray(perm).tolist()) == list(range(50))
  np.testing.assert_array_equal(core.sample_perm(jax.random.key(0), 4, "roll"), [3, 0, 1, 2])
  with pytest.raises(ValueError, match="pairing"):
    core.sample_perm(jax.random.key(0), 4, "flip")


def test_permutation_is_uniform():
  """Position of element 0 under 3000 random permutations of 6 is uniform; fixed points allowed."""
  keys = jax.random.split(jax.random.key(3), 3000)
  perms = np.asarray(jax.jit(jax.vmap(lambda k: core.sample_perm(k, 6)))(keys))
  assert stats.chisquare(np.bincount(perms[:, 0], minlength=6)).pvalue > 1e-3
  assert np.mean(perms == np.arange(6)) == pytest.approx(1 / 6, abs=0.02)


def assert_symmetric_beta(lam, alpha):
  """KS test of float32 samples against Beta(alpha, alpha).

  For small alpha a large share of the mass lies within float32 resolution of 1 and
  rounds to exactly 1.0; those ties break the KS test. The distribution is symmetric,
  so test the lower half (full float32 resolution) against ``2 * cdf`` and the share
  below 1/2 against 1/2.
  """
  lam = np.asarray(lam, np.float64)
  lower = lam[lam < 0.5]
  assert stats.binomtest(lower.size, lam.size, 0.5).pvalue > 1e-3
  assert stats.kstest(lower, lambda x: 2 * stats.beta(alpha, alpha).cdf(x)).pvalue > 1e-3


@functools.lru_cache(maxsize=None)
def _beta_samples(alpha):
  return np.asarray(jax.jit(lambda k: core.sample_beta(k, alpha, (5000,)))(jax.random.key(1)))


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_sample_beta_matches_scipy(alpha):
  lam = _beta_samples(alpha)
  assert lam.dtype == np.float32 and np.all((lam >= 0) & (lam <= 1))
  assert_symmetric_beta(lam, alpha)


def test_beta_check_can_fail():
  """The helper above rejects a wrong concentration."""
  for alpha, wrong in ((0.2, 0.3), (1.0, 1.3)):
    with pytest.raises(AssertionError):
      assert_symmetric_beta(_beta_samples(alpha), wrong)


def test_sample_beta_alpha_zero_is_one():
  np.testing.assert_array_equal(core.sample_beta(jax.random.key(0), 0.0, (3,)), np.ones(3))


def test_resolve_lam_perm_shapes_and_overrides():
  lam, perm = core.resolve_lam_perm(jax.random.key(0), 4, alpha=1.0, per_sample=False, lam=None, perm=None)
  assert lam.shape == () and perm.shape == (4,)
  lam, _ = core.resolve_lam_perm(jax.random.key(0), 4, alpha=1.0, per_sample=True, lam=None, perm=None)
  assert lam.shape == (4,) and len(np.unique(lam)) == 4
  lam, perm = core.resolve_lam_perm(jax.random.key(0), 4, alpha=1.0, per_sample=True, lam=0.3, perm=[3, 2, 1, 0])
  assert lam.dtype == jnp.float32 and float(lam) == pytest.approx(0.3)
  np.testing.assert_array_equal(perm, [3, 2, 1, 0])
  assert perm.dtype == jnp.int32


def test_words_draws_match_their_formulas():
  key = jax.random.key(6)
  words = core.Words(key, 3 * 4000 + 50)
  raw = np.asarray(jax.random.bits(key, (3 * 4000 + 50,), jnp.uint32)).astype(np.uint64)
  u = np.asarray(words.uniform((4000,)))
  assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
  np.testing.assert_array_equal(u, (raw[:4000] >> 9).astype(np.float64) / 2**23)
  r = np.asarray(words.randint((4000,), 3, 227))
  np.testing.assert_array_equal(r, 3 + ((raw[4000:8000] * 224) >> 32))
  small = np.asarray(words.randint((4000,), 0, 7))
  assert stats.chisquare(np.bincount(small, minlength=7)).pvalue > 1e-3
  perm = np.asarray(words.permutation(50))
  assert perm.dtype == np.int32 and sorted(perm.tolist()) == list(range(50))
  np.testing.assert_array_equal(perm, np.argsort(raw[-50:], kind="stable"))
  with pytest.raises(ValueError, match="words taken"):
    words.take((1,))


@pytest.mark.parametrize("batch", [4, 100, 128, 200])
def test_words_permutation_is_the_order_of_its_words(batch):
  # Up to 128 rows: the order of the words' high bits, ties in index order (the packed
  # sort); above, the stable argsort of the words.
  keys = jax.random.split(jax.random.key(11), 64)
  perms = jax.jit(jax.vmap(lambda k: core.Words(k, batch).permutation(batch)))(keys)
  raw = np.asarray(jax.vmap(lambda k: jax.random.bits(k, (batch,), jnp.uint32))(keys))
  shift = max(1, (batch - 1).bit_length())
  for p, w in zip(np.asarray(perms), raw, strict=True):
    want = np.lexsort((np.arange(batch), w >> shift)) if shift <= 7 else np.argsort(w, kind="stable")
    np.testing.assert_array_equal(p, want)
  if batch == 4:  # uniform over the 24 permutations
    many = np.asarray(jax.jit(jax.vmap(lambda k: core.Words(k, 4).permutation(4)))(jax.random.split(jax.random.key(1), 24_000)))
    codes = many @ np.array([64, 16, 4, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize(
  "key",
  [jax.random.key(0), jax.random.split(jax.random.key(5))[1], jax.random.fold_in(jax.random.key(7), 3), jax.random.PRNGKey(2**31 + 9)],
)
def test_random_words_are_jax_random_bits(key):
  # The unrolled Threefry against JAX's own (a rolled loop on CPU), eager and jitted.
  for n in (1, 129, 1000):
    want = np.asarray(jax.random.bits(key, (n,), jnp.uint32))
    np.testing.assert_array_equal(core.random_words(key, n), want)
    np.testing.assert_array_equal(jax.jit(core.random_words, static_argnums=1)(key, n), want)


def test_random_words_of_other_keys_fall_back_to_jax_random():
  for key in (jax.random.key(3, impl="rbg"), jax.random.key(3, impl="unsafe_rbg")):
    np.testing.assert_array_equal(core.random_words(key, 7), jax.random.bits(key, (7,), jnp.uint32))


@pytest.mark.parametrize("rate, capacity", [(0.3, 4), (0.9, 3), (0.0, 2), (1.0, 16)])
def test_apply_to_selected_is_the_dense_where_in_any_number_of_blocks(rate, capacity):
  """Row for row the dense ``where(selected, fn(x, p), x)``, whether the selection fits one
  block, needs several (more rows than ``capacity``) or is empty."""
  x = jax.random.normal(jax.random.key(0), (16, 3, 2))
  p = jnp.arange(16, dtype=jnp.float32)
  selected = jax.random.uniform(jax.random.key(1), (16,)) < rate
  fn = lambda rows, q: rows * 2.0 + q[:, None, None]  # noqa: E731
  got = jax.jit(lambda x, s, p: core.apply_to_selected(fn, s, capacity, x, p))(x, selected, p)
  np.testing.assert_array_equal(got, jnp.where(selected[:, None, None], fn(x, p), x))


def test_selection_capacity_covers_the_draw():
  assert core.selection_capacity(384, 0.375) == 193  # ceil(144 + 5 sqrt(144 * 0.625) + 1)
  assert core.selection_capacity(10, 1.0) == 10
  assert core.selection_capacity(1000, 0.0) == 1
  # For 1,000 binomial draws, a block is too small about as often as 5 sigmas allow (never here).
  counts = np.random.default_rng(0).binomial(384, 0.375, 1000)
  assert counts.max() <= core.selection_capacity(384, 0.375)
