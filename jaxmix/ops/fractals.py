"""Procedural IFS fractal pictures: the offline default mixing set of IPMix.

The official IPMix (and PixMix) mixing set is a folder of downloaded fractal
pictures (docs/algorithms/ipmix.md#defaults-and-the-jsd-loss). jaxmix cannot download it, so ``generate`` draws
colourful iterated-function-system (IFS) fractals on a black background
procedurally, deterministically from a seed. This is a deviation from the
official setup: the pictures are in the same spirit (fractal-style, unlabelled,
synthetic) but they are not the same pictures.

Each fractal: 2 to 4 contractive affine maps ``p -> A_i p + b_i`` with ``A_i =
R(theta) diag(s1, s2) R(phi)`` (a random reflection of one axis in half of the
maps) whose singular values are rescaled so that the "sigma factor" ``sum_i (s1_i +
2 s2_i)`` lies in ``[(5 + n) / 2, (6 + n) / 2]`` (the rule of Anderson & Farrell,
"Improving Fractal Pre-training", WACV 2022, which avoids dust and blobs), each map
picked with probability proportional to ``|det A_i|``. The chaos game runs many
walkers in parallel; every walker carries a colour that moves halfway towards the
picked map's colour at each step, so regions of the attractor get smoothly varying
hues. The points are splatted on the pixel grid (the attractor's bounding box,
aspect kept, with a small margin); the brightness of a pixel grows with the log of
its hit count.
"""

from __future__ import annotations

import functools
import math
import numbers
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.ops import core
from jaxmix.ops.core import Array

_MAX_MAPS = 4
_BURN_IN = 16


def _as_key(key_or_seed):
  if isinstance(key_or_seed, numbers.Integral):
    return jax.random.key(int(key_or_seed))
  if not jnp.issubdtype(jnp.result_type(key_or_seed), jax.dtypes.prng_key):
    return jax.random.wrap_key_data(key_or_seed)  # a raw uint32 key
  return key_or_seed


def _rotation(angle: Array) -> Array:
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  return jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)


def _hsv_to_rgb(h: Array, s: Array, v: Array) -> Array:
  k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0]) + h[..., None] * 6.0, 6.0)
  return v[..., None] - v[..., None] * s[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def _system(key) -> tuple[Array, Array, Array, Array]:
  """One random IFS: maps ``A [4, 2, 2]``, ``b [4, 2]``, log-probabilities ``[4]``, colours ``[4, 3]``."""
  keys = jax.random.split(key, 8)
  n_maps = jax.random.randint(keys[0], (), 2, _MAX_MAPS + 1)
  active = jnp.arange(_MAX_MAPS) < n_maps
  raw = jax.random.uniform(keys[1], (_MAX_MAPS, 2), minval=0.2, maxval=1.0)
  s1, s2 = jnp.max(raw, -1), jnp.min(raw, -1)
  target = 0.5 * (5.0 + n_maps) + 0.5 * jax.random.uniform(keys[2])
  scale = target / jnp.sum(jnp.where(active, s1 + 2.0 * s2, 0.0))
  s1, s2 = jnp.minimum(s1 * scale, 0.98), jnp.minimum(s2 * scale, 0.98)
  theta = jax.random.uniform(keys[3], (_MAX_MAPS,), maxval=2.0 * math.pi)
  phi = jax.random.uniform(keys[4], (_MAX_MAPS,), maxval=2.0 * math.pi)
  flip = jnp.where(jax.random.bernoulli(keys[5], 0.5, (_MAX_MAPS,)), -1.0, 1.0)
  diag = jnp.stack([jnp.stack([s1, jnp.zeros_like(s1)], -1), jnp.stack([jnp.zeros_like(s2), s2 * flip], -1)], -2)
  maps = _rotation(theta) @ diag @ _rotation(phi)
  shifts = jax.random.uniform(keys[6], (_MAX_MAPS, 2), minval=-1.0, maxval=1.0)
  logp = jnp.where(active, jnp.log(s1 * s2), -jnp.inf)
  key_hue, key_sat, key_val = jax.random.split(keys[7], 3)
  hue = jax.random.uniform(key_hue) + jnp.arange(_MAX_MAPS) / _MAX_MAPS + jax.random.uniform(key_hue, (_MAX_MAPS,), maxval=0.2)
  sat = jax.random.uniform(key_sat, (_MAX_MAPS,), minval=0.6, maxval=1.0)
  val = jax.random.uniform(key_val, (_MAX_MAPS,), minval=0.75, maxval=1.0)
  return maps, shifts, logp, _hsv_to_rgb(jnp.mod(hue, 1.0), sat, val)


def _chaos_game(key, maps, shifts, logp, colours, walkers: int, steps: int) -> tuple[Array, Array]:
  """Points ``[walkers * steps, 2]`` and colours ``[walkers * steps, 3]`` of the attractor."""
  key_start, key_walk = jax.random.split(key)
  start = jax.random.uniform(key_start, (walkers, 2), minval=-1.0, maxval=1.0)

  def step(carry, step_key):
    points, colour = carry
    pick = jax.random.categorical(step_key, logp, shape=(walkers,))
    points = jnp.einsum("wij,wj->wi", maps[pick], points) + shifts[pick]
    colour = 0.5 * (colour + colours[pick])
    return (points, colour), (points, colour)

  carry = (start, jnp.full((walkers, 3), 0.5))
  _, (points, colour) = jax.lax.scan(step, carry, jax.random.split(key_walk, steps + _BURN_IN))
  return points[_BURN_IN:].reshape(-1, 2), colour[_BURN_IN:].reshape(-1, 3)


def _render(points: Array, colours: Array, size: int) -> Array:
  """Splats the points on a ``[size, size, 3]`` black canvas, brightness ~ log hit count."""
  lo, hi = jnp.min(points, 0), jnp.max(points, 0)
  extent = jnp.maximum(jnp.max(hi - lo), 1e-6)
  margin = 0.04 * size
  pixels = (points - 0.5 * (lo + hi)) / extent * (size - 2.0 * margin) + 0.5 * size
  ij = jnp.clip(jnp.floor(pixels).astype(jnp.int32), 0, size - 1)
  flat = ij[:, 1] * size + ij[:, 0]
  count = jax.ops.segment_sum(jnp.ones_like(flat, jnp.float32), flat, size * size)
  colour_sum = jax.ops.segment_sum(colours, flat, size * size)
  mean_colour = colour_sum / jnp.maximum(count, 1.0)[:, None]
  brightness = jnp.log1p(count) / jnp.log1p(jnp.max(count))
  brightness = jnp.clip(1.6 * jnp.sqrt(brightness), 0.0, 1.0)
  return (mean_colour * brightness[:, None]).reshape(size, size, 3)


_CHUNK = 16


@functools.partial(jax.jit, static_argnums=(1, 2))
def _generate_chunk(keys: Array, size: int, n_points: int) -> Array:
  """``_CHUNK`` pictures, one per key (compiled once per size, whatever the count)."""
  walkers = 256
  steps = max(1, -(-n_points // walkers))

  def one(k):
    key_system, key_walk = jax.random.split(k)
    maps, shifts, logp, colours = _system(key_system)
    points, colour = _chaos_game(key_walk, maps, shifts, logp, colours, walkers, steps)
    return _render(points, colour, size)

  return jax.vmap(one)(keys)


def generate(key_or_seed, n: int, size: int = 32, *, n_points: int | None = None) -> Array:
  """``n`` colourful IFS fractal pictures, deterministic from the seed.

  A procedural stand-in for the official IPMix / PixMix fractal mixing set (a
  documented deviation: the official set is downloaded, see the module docstring).

  Args:
    key_or_seed: a PRNG key or an int seed.
    n: number of pictures, >= 1.
    size: side of the square pictures in pixels, >= 8.
    n_points: chaos-game points per picture; default ``8 * size**2``.

  Returns:
    ``[n, size, size, 3]`` float32 in ``[0, 1]`` (black background).

  Raises:
    ValueError: if ``n < 1``, ``size < 8`` or ``n_points < 1``.

  Example:
    >>> pictures = jaxmix.fractals.generate(0, 16, size=32)
  """
  if not isinstance(n, numbers.Integral) or n < 1:
    raise ValueError(f"n must be an int >= 1, got {n!r}.")
  if not isinstance(size, numbers.Integral) or size < 8:
    raise ValueError(f"size must be an int >= 8, got {size!r}.")
  if n_points is None:
    n_points = 8 * size * size
  if not isinstance(n_points, numbers.Integral) or n_points < 1:
    raise ValueError(f"n_points must be an int >= 1, got {n_points!r}.")
  with jax.ensure_compile_time_eval():  # concrete keys even inside a jit trace (a concrete seed)
    keys = jax.random.split(_as_key(key_or_seed), -(-n // _CHUNK) * _CHUNK)
  starts = range(0, keys.shape[0], _CHUNK)
  if isinstance(keys, jax.core.Tracer):  # a traced key: generate inside the caller's graph
    return jnp.concatenate([_generate_chunk(keys[i : i + _CHUNK], int(size), int(n_points)) for i in starts])[:n]
  # Concrete keys: run the compiled chunk directly, so that a call made while tracing
  # (the built-in mixing set is first needed inside a jitted IPMix) still runs now,
  # compiled, and returns concrete pictures.
  compiled = _compiled_chunk(int(size), int(n_points), keys.dtype)
  with jax.ensure_compile_time_eval():
    return jnp.concatenate([compiled(keys[i : i + _CHUNK]) for i in starts])[:n]


@functools.lru_cache(maxsize=16)
def _compiled_chunk(size: int, n_points: int, key_dtype):
  return _generate_chunk.lower(jax.ShapeDtypeStruct((_CHUNK,), key_dtype), size, n_points).compile()


#: Size of the built-in mixing set (pictures) and its seed.
DEFAULT_COUNT = 256
DEFAULT_SEED = 0


@functools.lru_cache(maxsize=8)
def default_mixing_set(size: int) -> np.ndarray:
  """The cached built-in mixing set: ``DEFAULT_COUNT`` fractals of side ``size``, as uint8 levels.

  Generated once per size (also when first needed inside a ``jit`` trace) and kept
  on the host as a ``[N, size, size, 3]`` uint8 array, so a jitted IPMix embeds it
  as a 1 MB constant (at size 36) rather than regenerating it; also saved under
  ``core.cache_dir()`` (``$JAXMIX_CACHE_DIR``), so later processes load it instead of
  generating it again. The set for 32x32 images (side 36) ships with jaxmix, so a new
  machine (a Colab session) does not spend the ~4 s of compiling and running
  ``generate`` before its first IPMix step.
  """
  name = f"fractals-seed{DEFAULT_SEED}-n{DEFAULT_COUNT}-side{size}"
  shipped = os.path.join(os.path.dirname(__file__), name + ".npz")
  if os.path.exists(shipped):  # np.round(generate(DEFAULT_SEED, DEFAULT_COUNT, size) * 255) as uint8
    with np.load(shipped) as f:
      return f["levels"]
  path = os.path.join(core.cache_dir(), name + ".npy")
  try:
    cached = np.load(path)
    if cached.shape == (DEFAULT_COUNT, size, size, 3) and cached.dtype == np.uint8:
      return cached
  except (OSError, ValueError):  # absent or unreadable: generate it again
    pass
  pictures = np.asarray(generate(DEFAULT_SEED, DEFAULT_COUNT, size))
  levels = np.round(pictures * 255.0).astype(np.uint8)
  try:  # kept for the next process (generating takes ~10 s on a 2-core CPU); atomic
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, levels)
    os.replace(tmp, path)
  except OSError:
    pass
  return levels
