"""IPMix: the docs/algorithms/ipmix.md#ipmix-known-answer-checks known answers, pixel-op identities, sampling, views and the JSD loss."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxmix
from jaxmix.ops import core, fractals

ipmix_module = importlib.import_module("jaxmix.ops.ipmix")

B, H, W, C = 4, 32, 32, 3
LEVELS = jax.random.randint(jax.random.key(10), (B, H, W, C), 0, 256)
X = LEVELS.astype(jnp.float32) / 255.0  # on the uint8 grid, like decoded images
Y = jaxmix.one_hot(jnp.arange(B) % 10, 10)
MIXING_SET = fractals.generate(7, 6, 36)  # a user set, larger than the images: randomly cropped

# Two compiled IPMix functions shared by the tests: the default one (built-in fractal
# set, everything drawn) and one with a user mixing set and the m / chain-depth
# overrides as traced arguments.
_ipmix = jax.jit(jaxmix.ipmix)
_ipmix_forced = jax.jit(lambda key, x, y, m, chain_depth: jaxmix.ipmix(key, x, y, mixing_set=MIXING_SET, m=m, chain_depth=chain_depth))


@pytest.fixture(scope="module")
def default_out():
  return _ipmix(jax.random.key(0), X, Y)


# ----------------------------------------------------------------------------
# docs/algorithms/ipmix.md#ipmix-known-answer-checks known answers.


def test_m_zero_is_identity():
  # Chains of full depth, skip weight m = 0: the output is x exactly.
  out = _ipmix_forced(jax.random.key(1), X, Y, jnp.zeros((B,)), jnp.full((B, 3), 3))
  np.testing.assert_array_equal(np.asarray(out.images), np.asarray(X))
  # The same chains with m = 1 do change the images.
  changed = _ipmix_forced(jax.random.key(1), X, Y, jnp.ones((B,)), jnp.full((B, 3), 3))
  assert np.mean(np.abs(np.asarray(changed.images) - np.asarray(X))) > 0.01


def test_depth_zero_chains_are_identity_for_any_m_and_weights_sum_to_one():
  # All chains the identity: out = (1 - m) x + m (sum_i ws_i) x, which is x exactly
  # when the Dirichlet weights sum to 1 (checked per sample, with m = 1 too).
  m = jnp.asarray([1.0, 0.3, 0.77, 1.0])
  out = _ipmix_forced(jax.random.key(2), X, Y, m, jnp.zeros((B, 3), jnp.int32))
  np.testing.assert_allclose(np.asarray(out.images), np.asarray(X), atol=1e-6)
  single = jaxmix.ipmix(jax.random.key(3), X, Y, mixing_set=MIXING_SET, k=1, depth=0)
  np.testing.assert_allclose(np.asarray(single.images), np.asarray(X), atol=1e-6)


def test_pixel_op_identities():
  x = X[0]
  y = (255.0 - LEVELS[0]) / 255.0  # differs from x everywhere (255 is odd)
  np.testing.assert_allclose(np.asarray(ipmix_module.mix_add(x, y, 1.0, 0.0)), np.asarray(x), atol=1e-6)
  np.testing.assert_allclose(np.asarray(ipmix_module.mix_multiply(x, y, 1.0, 0.0)), np.asarray(x), atol=1e-6)
  # After the uint8 conversion they are exact (the official truncation drops a level
  # for a quarter of the values of add; see _quantize).
  for out in (ipmix_module.mix_add(x, y, 1.0, 0.0), ipmix_module.mix_multiply(x, y, 1.0, 0.0)):
    np.testing.assert_array_equal(np.asarray(ipmix_module._quantize(out)), np.asarray(x))
  key = jax.random.key(4)
  for op in (ipmix_module.mix_random_pixels, ipmix_module.mix_random_elems):
    np.testing.assert_array_equal(np.asarray(op(key, x, y, 1.0)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(op(key, x, y, 0.0)), np.asarray(y))
  # random_pixels keeps whole pixels (all channels together); random_elems does not.
  from_x = np.asarray(ipmix_module.mix_random_pixels(key, x, y, 0.5)) == np.asarray(x)
  assert np.all(from_x.all(-1) | ~from_x.any(-1))
  elems = np.asarray(ipmix_module.mix_random_elems(key, x, y, 0.5)) == np.asarray(x)
  assert np.any(elems.any(-1) & ~elems.all(-1))


def test_add_multiply_formulas_and_clipping_quirk():
  x, y = jnp.asarray([0.2, 0.9]), jnp.asarray([0.6, 0.1])
  np.testing.assert_allclose(
    np.asarray(ipmix_module.mix_add(x, y, 0.5, 0.25)), (0.5 * (2 * np.asarray(x) - 1) + 0.25 * (2 * np.asarray(y) - 1) + 1) / 2, rtol=1e-6
  )
  np.testing.assert_allclose(
    np.asarray(ipmix_module.mix_multiply(x, y, 1.3, -0.4)), (2 * np.asarray(x)) ** 1.3 * (2 * np.asarray(y)) ** -0.4 / 2, rtol=1e-5
  )
  # Out of [0, 1]: clipped before the uint8 conversion (the official code wraps).
  out = ipmix_module._quantize(ipmix_module.mix_add(x, y, 1.9, -0.8))
  raw = np.asarray(ipmix_module.mix_add(x, y, 1.9, -0.8))
  assert raw.min() < 0.0 and raw.max() > 1.0
  np.testing.assert_array_equal(np.asarray(out), np.clip(np.floor(np.clip(raw, 0, 1) * 255 + 1e-3), 0, 255) / 255)


def test_output_range_labels_and_fields(default_out):
  images = np.asarray(default_out.images)
  assert images.shape == (B, H, W, C) and images.dtype == np.float32
  assert images.min() >= 0.0 and images.max() <= 1.0
  assert np.mean(np.abs(images - np.asarray(X))) > 0.01  # something happened
  np.testing.assert_array_equal(np.asarray(default_out.labels), np.asarray(Y))
  np.testing.assert_array_equal(np.asarray(default_out.lam), np.ones(B))
  np.testing.assert_array_equal(np.asarray(default_out.perm), np.arange(B))
  # Off-grid inputs in [0, 1] also give outputs in [0, 1].
  off_grid = _ipmix(jax.random.key(5), jax.random.uniform(jax.random.key(6), (B, H, W, C)), Y)
  assert float(off_grid.images.min()) >= 0.0 and float(off_grid.images.max()) <= 1.0


def test_dtype_preserved():
  out = jaxmix.ipmix(jax.random.key(0), X.astype(jnp.bfloat16), Y, mixing_set=MIXING_SET, depth=0)
  assert out.images.dtype == jnp.bfloat16 and out.labels.dtype == jnp.float32


def test_deterministic_from_key(default_out):
  np.testing.assert_array_equal(np.asarray(_ipmix(jax.random.key(0), X, Y).images), np.asarray(default_out.images))
  assert not np.array_equal(np.asarray(_ipmix(jax.random.key(1), X, Y).images), np.asarray(default_out.images))


def test_vmap_over_keys_equals_loop(default_out):
  keys = jax.random.split(jax.random.key(12), 2)
  mapped = np.asarray(jax.vmap(lambda key: _ipmix(key, X, Y).images)(keys))
  looped = np.stack([np.asarray(_ipmix(key, X, Y).images) for key in keys])
  np.testing.assert_allclose(mapped, looped, atol=1e-6)


# ----------------------------------------------------------------------------
# Patch step and sampling.


_patch_step = jax.jit(ipmix_module._patch_step, static_argnums=(4, 5))


def _patch(u, x, g):
  seeds = jnp.asarray([123, 456], jnp.uint32)
  return np.asarray(_patch_step(jnp.asarray(u, jnp.float32), seeds, x, g, (4, 8, 16, 32), 3.0))


def test_patch_step_jit_equals_eager():
  key_u, key_s = jax.random.split(jax.random.key(11))
  u = jax.random.uniform(key_u, (B, 11))
  seeds = jax.random.bits(key_s, (B, 2), jnp.uint32)
  g = MIXING_SET[:B, :H, :W]
  jitted = np.asarray(_patch_step(u, seeds, X, g, (4, 8, 16, 32), 3.0))
  eager = np.asarray(ipmix_module._patch_step(u, seeds, X, g, (4, 8, 16, 32), 3.0))
  # Fused and unfused float32 may put an add / multiply result on either side of a
  # uint8 level (then the truncation differs by one level): only on rare pixels.
  diff = np.abs(jitted - eager)
  assert diff.max() <= 1.01 / 255 and np.mean(diff > 1e-6) < 0.01
  assert np.mean(jitted != np.asarray(X)) > 0.01


def test_patch_step_boxes():
  x, g = X[0], X[1]
  # u: size, left, top, square?, rect w, rect h, op, coin, u1, u2, tau; op random_pixels with tau = 0 -> g.
  whole = _patch([0.99, 0.5, 0.5, 0.9, 0, 0, 0.6, 0, 0, 0, 0.0], x, g)
  np.testing.assert_array_equal(whole, np.asarray(g))  # P = 32 covers the whole image
  small = _patch([0.0, 0.99, 0.0, 0.9, 0, 0, 0.6, 0, 0, 0, 0.0], x, g)  # 4x4 square at left 28, top 0
  changed = small != np.asarray(x)
  expect = np.zeros((H, W), bool)
  expect[0:4, 28:32] = True
  np.testing.assert_array_equal(small[expect], np.asarray(g)[expect])
  np.testing.assert_array_equal(small[~expect], np.asarray(x)[~expect])
  assert changed.any()
  # A rectangle: P = 16 at left 16, width U{2..16} (16 here), height U{2..16} (2 here).
  rect = _patch([0.6, 0.99, 0.0, 0.1, 0.99, 0.0, 0.6, 0, 0, 0, 0.0], x, g)  # w = 16, h = 2
  expect = np.zeros((H, W), bool)
  expect[0:2, 16:32] = True
  np.testing.assert_array_equal(rect[expect], np.asarray(g)[expect])
  np.testing.assert_array_equal(rect[~expect], np.asarray(x)[~expect])


def test_sample_ab_distribution():
  beta = 3.0
  a, b = jax.vmap(lambda k: ipmix_module.sample_ab(k, beta))(jax.random.split(jax.random.key(8), 4000))
  a, b = np.asarray(a), np.asarray(b)
  first = a < 1.0
  assert abs(first.mean() - 0.5) < 0.04
  assert np.all((b >= 0) == first)  # b >= 0 exactly in the first branch
  assert stats.kstest(a[first], stats.beta(beta, 1).cdf).pvalue > 1e-3
  assert stats.kstest(b[first], stats.beta(1, beta).cdf).pvalue > 1e-3
  assert stats.kstest(a[~first] - 1.0, stats.beta(1, beta).cdf).pvalue > 1e-3
  assert stats.kstest(-b[~first], stats.beta(1, beta).cdf).pvalue > 1e-3
  assert abs(np.corrcoef(a[first], b[first])[0, 1]) < 0.1  # separate draws


def test_hash_uniforms_are_uniform_and_distinct():
  seeds = jax.random.bits(jax.random.key(9), (2, 2), jnp.uint32)
  u = np.asarray(core.hash_uniform(seeds, (64, 64)))
  assert u.shape == (2, 64, 64) and u.min() >= 0.0 and u.max() < 1.0
  assert stats.kstest(u[0].ravel(), "uniform").pvalue > 1e-3
  assert abs(np.corrcoef(u[0].ravel(), u[1].ravel())[0, 1]) < 0.05


def test_mixing_pictures_come_from_the_set():
  same_size = MIXING_SET[:, :H, :W]
  index = jnp.asarray([5, 0, 2, 5])
  pictures = ipmix_module.mixing_pictures(jax.random.key(0), same_size, B, H, W, C, mixing_index=index)
  expect = np.round(np.asarray(same_size)[np.asarray(index)] * 255) / 255
  np.testing.assert_allclose(np.asarray(pictures), expect, atol=1e-7)
  cropped = np.asarray(ipmix_module.mixing_pictures(jax.random.key(1), MIXING_SET, B, H, W, C))
  levels = np.round(np.asarray(MIXING_SET) * 255)
  for picture in np.round(cropped * 255):
    found = any(np.array_equal(levels[i, t : t + H, s : s + W], picture) for i in range(6) for t in range(5) for s in range(5))
    assert found


# ----------------------------------------------------------------------------
# JSD views and loss.


def test_views_share_the_mixing_picture(monkeypatch):
  calls = []

  def spy(key, images, pictures, **kwargs):
    calls.append(pictures.shape)
    return images + jax.random.uniform(key)  # a different shift per view key

  monkeypatch.setattr(ipmix_module, "ipmix_from_pictures", spy)
  views = np.asarray(ipmix_module.ipmix_views(jax.random.key(0), X, mixing_set=MIXING_SET))
  assert views.shape == (2, B, H, W, C)
  assert calls == [(B, H, W, C)]  # traced once, with one set of pictures for every view
  assert not np.allclose(views[0], views[1])  # each view has its own key


def test_views_are_the_per_key_draws_of_ipmix_from_pictures():
  key_pictures, key_views = jax.random.split(jax.random.key(5))
  pictures = ipmix_module.mixing_pictures(key_pictures, MIXING_SET, B, H, W, C)
  expect = [ipmix_module.ipmix_from_pictures(k, X, pictures) for k in jax.random.split(key_views, 3)]
  views = ipmix_module.ipmix_views(jax.random.key(5), X, n_views=3, mixing_set=MIXING_SET)
  np.testing.assert_allclose(np.asarray(views), np.stack(expect), atol=1e-6)


def test_views_are_independent_draws():
  views = jax.jit(jaxmix.ipmix_views)(jax.random.key(0), X)
  views = np.asarray(views)
  assert views.shape == (2, B, H, W, C) and views.min() >= 0.0 and views.max() <= 1.0
  assert not np.array_equal(views[0], views[1])


def _jsd_reference(z_clean, z_views, labels):
  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  probs = [softmax(np.asarray(z, np.float64)) for z in (z_clean, *z_views)]
  mixture = np.clip(sum(probs) / 3, 1e-7, 1)
  kl = sum(np.sum(p * (np.log(p) - np.log(mixture))) / len(p) for p in probs)
  ce = -np.mean(np.sum(labels * np.log(probs[0]), -1))
  return ce + 12 * kl / 3


def test_jsd_loss():
  keys = jax.random.split(jax.random.key(0), 3)
  z = [3.0 * jax.random.normal(k, (8, 10)) for k in keys]
  labels = jaxmix.one_hot(jnp.arange(8), 10)
  got = float(jaxmix.jsd_loss(z[0], (z[1], z[2]), labels))
  np.testing.assert_allclose(got, _jsd_reference(z[0], z[1:], np.asarray(labels)), rtol=1e-5)
  # Identical views: no consistency term, plain CE on the clean logits.
  ce = -np.mean(np.sum(np.asarray(labels) * np.asarray(jax.nn.log_softmax(z[0])), -1))
  np.testing.assert_allclose(float(jaxmix.jsd_loss(z[0], (z[0], z[0]), labels)), ce, rtol=1e-5)
  assert np.isfinite(float(jax.grad(lambda a: jaxmix.jsd_loss(a, (z[1], z[2]), labels))(z[0]).sum()))


# ----------------------------------------------------------------------------
# Registry and validation.


def test_registry_entry():
  method = jaxmix.METHODS["ipmix"]
  assert method.op is jaxmix.ipmix and method.site == "label_preserving"
  assert dict(method.defaults) == {"k": 3, "depth": 3, "beta": 3.0, "severity": 3}


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"k": 0}, "k must"),
    ({"depth": -1}, "depth must"),
    ({"beta": 0.0}, "beta must"),
    ({"severity": 0.0}, "severity must"),
    ({"patch_sizes": (4, 64)}, "patch_sizes"),
    ({"patch_sizes": ()}, "patch_sizes"),
    ({"mixing_set": jnp.zeros((2, 16, 16, 3))}, "mixing_set"),
    ({"chain_depth": 4}, "chain_depth"),
    ({"m": jnp.zeros((3,))}, "m must"),
  ],
)
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxmix.ipmix(jax.random.key(0), X, Y, **{"mixing_set": MIXING_SET, **kwargs})


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="labels"):
    jaxmix.ipmix(jax.random.key(0), X, Y[:2], mixing_set=MIXING_SET)
  with pytest.raises(ValueError, match="images"):
    jaxmix.ipmix(jax.random.key(0), LEVELS, Y, mixing_set=MIXING_SET)
  with pytest.raises(ValueError, match="n_views"):
    jaxmix.ipmix_views(jax.random.key(0), X, n_views=0, mixing_set=MIXING_SET)


def test_overflow_wrap_is_the_official_uint8_cast():
  """``mul(255).byte()`` of an out-of-range value: truncate, modulo 256 (256 -> 0, -3 -> 253)."""
  values = jnp.array([256 / 255, -3 / 255, 0.5, 1.0, 300.4 / 255])
  np.testing.assert_allclose(ipmix_module._quantize(values, "wrap") * 255, [0, 253, 127, 255, 44], atol=1e-4)
  np.testing.assert_allclose(ipmix_module._quantize(values, "clip") * 255, [255, 0, 127, 255, 255], atol=1e-4)
  clip = jaxmix.ipmix(jax.random.key(5), X, Y, mixing_set=MIXING_SET, beta=8.0, overflow="clip").images
  wrap = jaxmix.ipmix(jax.random.key(5), X, Y, mixing_set=MIXING_SET, beta=8.0, overflow="wrap").images
  assert clip.shape == wrap.shape and not np.allclose(clip, wrap)  # same draws, other levels where values overflow
  with pytest.raises(ValueError, match="overflow"):
    jaxmix.ipmix(jax.random.key(5), X, Y, mixing_set=MIXING_SET, overflow="saturate")
