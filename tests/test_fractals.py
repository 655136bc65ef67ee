"""The procedural IFS fractal mixing set: deterministic, colourful, not trivial."""

import jax
import numpy as np
import pytest

from jaxmix.ops import fractals

N = 8
SIZE = 36  # the size of the built-in set for 32x32 images: one compilation serves both


@pytest.fixture(scope="module")
def pictures():
  return np.asarray(fractals.generate(0, N, SIZE))


def test_shape_range_and_determinism(pictures):
  assert pictures.shape == (N, SIZE, SIZE, 3)
  assert pictures.dtype == np.float32
  assert pictures.min() >= 0.0 and pictures.max() <= 1.0
  np.testing.assert_array_equal(pictures, np.asarray(fractals.generate(0, N, SIZE)))
  np.testing.assert_array_equal(pictures, np.asarray(fractals.generate(jax.random.key(0), N, SIZE)))
  np.testing.assert_array_equal(pictures[:3], np.asarray(fractals.generate(0, 3, SIZE)))  # a prefix, whatever n
  other = np.asarray(fractals.generate(1, N, SIZE))
  assert np.mean(np.abs(other - pictures)) > 0.05


def test_pictures_are_not_trivial(pictures):
  lit = pictures.max(-1) > 0.05
  coverage = lit.mean((1, 2))
  assert np.all(coverage > 0.02) and np.all(coverage < 0.95), coverage  # neither empty nor a flat fill
  assert np.all(pictures.std((1, 2, 3)) > 0.05)
  # Colourful: on lit pixels the channels differ (grey would give chroma 0).
  chroma = (pictures.max(-1) - pictures.min(-1))[lit]
  assert chroma.mean() > 0.15
  # Distinct hues across pictures, and no two pictures alike.
  mean_colour = np.stack([pictures[i][lit[i]].mean(0) for i in range(N)])
  assert mean_colour.std(0).mean() > 0.05
  diffs = [np.abs(pictures[i] - pictures[j]).mean() for i in range(N) for j in range(i)]
  assert min(diffs) > 0.02


def test_default_mixing_set_is_cached_uint8(pictures):
  first = fractals.default_mixing_set(SIZE)
  assert first is fractals.default_mixing_set(SIZE)
  assert first.shape == (fractals.DEFAULT_COUNT, SIZE, SIZE, 3) and first.dtype == np.uint8


def test_the_shipped_set_is_what_generate_draws():
  # The 36-pixel set ships with the package (it is loaded, not generated); it must be
  # the generated one. A newer JAX may round a few levels differently: at most one
  # level on a handful of values.
  shipped = fractals.default_mixing_set(SIZE)
  generated = np.round(np.asarray(fractals.generate(fractals.DEFAULT_SEED, fractals.DEFAULT_COUNT, SIZE)) * 255)
  diff = np.abs(shipped.astype(np.int32) - generated.astype(np.int32))
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-4, (diff.max(), np.mean(diff > 0))


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"size": 4}, {"n_points": 0}])
def test_bad_arguments_raise(kwargs):
  args = {"n": 2, "size": 32, **kwargs}
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    fractals.generate(0, **args)


def test_default_mixing_set_is_kept_on_disk_for_the_next_process(tmp_path, monkeypatch):
  """Generated once, saved under $JAXMIX_CACHE_DIR, loaded (not regenerated) by the next
  process; a damaged file is regenerated."""
  from jaxmix.ops import fractals as fr

  calls = []

  def fake_generate(seed, n, size):
    calls.append(size)
    return np.linspace(0.0, 1.0, n * size * size * 3, dtype=np.float32).reshape(n, size, size, 3)

  monkeypatch.setenv("JAXMIX_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(fr, "generate", fake_generate)
  make = fr.default_mixing_set.__wrapped__  # without the in-process cache: a new process
  first = make(12)
  assert calls == [12] and first.dtype == np.uint8 and first.shape == (fr.DEFAULT_COUNT, 12, 12, 3)
  (path,) = tmp_path.iterdir()
  np.testing.assert_array_equal(make(12), first)
  assert calls == [12]  # read back, not generated
  path.write_bytes(b"not an npy file")
  np.testing.assert_array_equal(make(12), first)
  assert calls == [12, 12]  # damaged: generated again
