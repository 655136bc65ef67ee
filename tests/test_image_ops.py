"""The PIL-compatible image ops against Pillow on real CIFAR-10 images, and their identities."""

import functools
import io
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CIFAR_DIR
from PIL import Image, ImageOps

from jaxmix.ops import image_ops

N_IMAGES = 12


@pytest.fixture(scope="module")
def cifar():
  """``N_IMAGES`` real CIFAR-10 test images as PIL images and as a ``[N, 32, 32, 3]`` [0, 1] batch."""
  path = os.path.join(CIFAR_DIR, "test.zip")
  if not os.path.exists(path):
    pytest.skip(f"CIFAR-10 test images not found at {path}")
  with zipfile.ZipFile(path) as archive:
    names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))[:: 10000 // N_IMAGES][:N_IMAGES]
    pil = [Image.open(io.BytesIO(archive.read(n))).convert("RGB") for n in names]
  batch = jnp.asarray(np.stack([np.asarray(p) for p in pil]), jnp.float32) / 255.0
  return pil, batch


def _levels(images) -> np.ndarray:
  out = np.asarray(images) * 255.0
  np.testing.assert_allclose(out, np.round(out), atol=1e-3)  # on the uint8 grid
  return np.round(out).astype(np.int64)


def _vs_pil(cifar, pil_op, jax_op):
  """``(max abs difference in levels, fraction of differing values)`` over the batch."""
  pil, batch = cifar
  ref = np.stack([np.asarray(pil_op(p)) for p in pil]).astype(np.int64)
  got = _levels(jax_op(batch))
  diff = np.abs(ref - got)
  return int(diff.max()), float(np.mean(diff > 0))


def _affine_pil(matrix):
  return lambda p: p.transform(p.size, Image.AFFINE, tuple(matrix), resample=Image.BILINEAR)


EXACT_CASES = {
  "equalize": (ImageOps.equalize, image_ops.equalize),
  "posterize_3": (lambda p: ImageOps.posterize(p, 3), lambda x: image_ops.posterize(x, 3)),
  "posterize_4": (lambda p: ImageOps.posterize(p, 4), lambda x: image_ops.posterize(x, 4)),
  "solarize_180": (lambda p: ImageOps.solarize(p, 180), lambda x: image_ops.solarize(x, 180)),
  "solarize_254": (lambda p: ImageOps.solarize(p, 254), lambda x: image_ops.solarize(x, 254)),
  "invert": (ImageOps.invert, image_ops.invert),
  "mirror": (ImageOps.mirror, image_ops.mirror),
  "translate_x_3": (_affine_pil((1, 0, 3, 0, 1, 0)), lambda x: image_ops.translate_x(x, 3)),
  "translate_x_-2": (_affine_pil((1, 0, -2, 0, 1, 0)), lambda x: image_ops.translate_x(x, -2)),
  "translate_y_-3": (_affine_pil((1, 0, 0, 0, 1, -3)), lambda x: image_ops.translate_y(x, -3)),
  "translate_y_1": (_affine_pil((1, 0, 0, 0, 1, 1)), lambda x: image_ops.translate_y(x, 1)),
}


@pytest.mark.parametrize("name", sorted(EXACT_CASES))
def test_lookup_and_integer_ops_match_pil_exactly(cifar, name):
  pil_op, jax_op = EXACT_CASES[name]
  assert _vs_pil(cifar, pil_op, jax_op) == (0, 0.0)


# The values IPMix draws at severity 3: integer degrees up to 8 and shears up to 0.09.
BILINEAR_CASES = {
  "rotate_8": (lambda p: p.rotate(8, resample=Image.BILINEAR), lambda x: image_ops.rotate(x, 8)),
  "rotate_-5": (lambda p: p.rotate(-5, resample=Image.BILINEAR), lambda x: image_ops.rotate(x, -5)),
  "rotate_1": (lambda p: p.rotate(1, resample=Image.BILINEAR), lambda x: image_ops.rotate(x, 1)),
  "shear_x_0.0713": (_affine_pil((1, 0.0713, 0, 0, 1, 0)), lambda x: image_ops.shear_x(x, 0.0713)),
  "shear_x_-0.0461": (_affine_pil((1, -0.0461, 0, 0, 1, 0)), lambda x: image_ops.shear_x(x, -0.0461)),
  "shear_y_0.0287": (_affine_pil((1, 0, 0, 0.0287, 1, 0)), lambda x: image_ops.shear_y(x, 0.0287)),
  "shear_y_-0.0893": (_affine_pil((1, 0, 0, -0.0893, 1, 0)), lambda x: image_ops.shear_y(x, -0.0893)),
}


@pytest.mark.parametrize("name", sorted(BILINEAR_CASES))
def test_bilinear_ops_match_pil_up_to_float32_truncation(cifar, name):
  # Pillow interpolates in double and truncates; float32 can land on the other side
  # of an integer for a value within rounding of it: at most one level, rarely.
  max_diff, frac = _vs_pil(cifar, *BILINEAR_CASES[name])
  assert max_diff <= 1
  assert frac < 1e-3


@jax.jit
def _identity_cases(x):
  return (
    image_ops.posterize(x, 8),
    image_ops.solarize(x, 256),
    image_ops.invert(image_ops.invert(x)),
    image_ops.mirror(image_ops.mirror(x)),
    image_ops.rotate(x, 0.0),
    image_ops.shear_x(x, 0.0),
    image_ops.shear_y(x, 0.0),
    image_ops.translate_x(x, 0.0),
    image_ops.affine(x, image_ops.translate_matrix(0.0, 0.0)),
  )


def test_identities(cifar):
  _, x = cifar
  x = x[:4]
  for out in _identity_cases(x):
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(image_ops.affine(x, image_ops.mirror_matrix(32))), np.asarray(image_ops.mirror(x)))
  assert np.all(np.asarray(image_ops.solarize(x, 0)) == np.asarray(image_ops.invert(x)))
  assert np.all(np.asarray(image_ops.posterize(x, 0)) == 0.0)
  flat = jnp.full((8, 8, 3), 0.4)  # one level per channel: equalize leaves it unchanged
  np.testing.assert_array_equal(np.asarray(image_ops.equalize(flat)), np.asarray(image_ops.from_levels(image_ops.to_levels(flat))))
  shifted = np.asarray(image_ops.translate_x(x, 3))
  np.testing.assert_array_equal(shifted[:, :, :-3], np.asarray(x)[:, :, 3:])
  assert np.all(shifted[:, :, -3:] == 0.0)


def test_batched_params_equal_per_image_calls(cifar):
  _, x = cifar
  x = x[:4]
  rotate = jax.jit(image_ops.rotate)
  degrees = jnp.asarray([-8.0, -2.0, 3.0, 7.0])
  batched = np.asarray(rotate(x, degrees))
  for i in range(4):
    np.testing.assert_array_equal(batched[i], np.asarray(rotate(x[i], degrees[i])))
  bits = jnp.asarray([1, 3, 4, 8])
  looped = np.stack([np.asarray(image_ops.posterize(x[i], bits[i])) for i in range(4)])
  np.testing.assert_array_equal(np.asarray(jax.vmap(image_ops.posterize)(x, bits)), looped)
  equalize = jax.jit(image_ops.equalize)
  np.testing.assert_array_equal(np.asarray(equalize(x)), np.stack([np.asarray(equalize(xi)) for xi in x]))


_random_op_u = jax.jit(image_ops.random_op_from_uniforms, static_argnames="severity")


def test_random_op_parameter_mapping(cifar):
  """``u = (op, level, sign)`` selects the named op with the docs/algorithms/ipmix.md#image-level-ops parameter."""
  _, x = cifar
  x = x[:2]
  severity = 3.0
  u_level, level = 0.7, 0.1 + 0.7 * (severity - 0.1)  # level 2.13
  expected = {
    "equalize": image_ops.equalize(x),
    "posterize": image_ops.posterize(x, 4 - int(level * 4 / 10)),
    "rotate": image_ops.rotate(x, -int(level * 30 / 10)),
    "solarize": image_ops.solarize(x, 256 - int(level * 256 / 10)),
    "shear_x": image_ops.shear_x(x, -level * 0.3 / 10),
    "shear_y": image_ops.shear_y(x, -level * 0.3 / 10),
    "translate_x": image_ops.translate_x(x, -int(level * (32 / 3) / 10)),
    "translate_y": image_ops.translate_y(x, -int(level * (32 / 3) / 10)),
    "mirror": image_ops.mirror(x),
    "invert": image_ops.invert(x),
  }
  for i, name in enumerate(image_ops.IPMIX_OPS):
    u = jnp.asarray([(i + 0.5) / len(image_ops.IPMIX_OPS), u_level, 0.9])  # sign: u > 0.5 -> negative
    got = _random_op_u(jnp.broadcast_to(u, (2, 3)), x, severity=severity)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected[name]), atol=1.5 / 255, err_msg=name)
    assert np.mean(np.asarray(got) != np.asarray(expected[name])) < 1e-3, name


def test_random_op_jit_equals_eager_and_is_deterministic(cifar):
  _, x = cifar
  x = x[:4]
  key = jax.random.key(3)
  eager = np.asarray(image_ops.random_op(key, x))
  jitted = np.asarray(jax.jit(image_ops.random_op)(key, x))
  assert np.mean(np.abs(eager - jitted) > 1e-6) < 1e-3
  np.testing.assert_array_equal(eager, np.asarray(image_ops.random_op(key, x)))
  _levels(jitted)


def test_random_op_on_active_images_is_the_dense_op_where_active(cifar):
  """Only the active images change, each exactly as the op on the whole batch changes it,
  whether the active images fit one block (rate 0.5) or need several (rate 0.05)."""
  _, x = cifar
  x = jnp.broadcast_to(x[:8, None], (8, 3, *x.shape[1:]))  # [B, k, H, W, C] chains
  u = jax.random.uniform(jax.random.key(4), (8, 3, 3))
  active = jax.random.uniform(jax.random.key(5), (8, 3)) < 0.5
  dense = _random_op_u(u, x)
  for rate in (0.5, 0.05):
    got = jax.jit(functools.partial(image_ops.random_op_from_uniforms, active_rate=rate))(u, x, active=active)
    np.testing.assert_array_equal(np.asarray(got), np.where(np.asarray(active)[..., None, None, None], dense, x))


@pytest.mark.parametrize("severity", [0.0, 11, "3"])
def test_bad_severity_raises(severity):
  with pytest.raises(ValueError, match="severity"):
    image_ops.random_op(jax.random.key(0), jnp.zeros((4, 4, 3)), severity=severity)


def test_bad_rank_raises():
  with pytest.raises(ValueError, match="image"):
    image_ops.equalize(jnp.zeros((4, 4)))
