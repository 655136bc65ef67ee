"""The result type, label helpers and the eager validation shared by every op."""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class MixResult(NamedTuple):
  """What every mixing op returns (a pytree).

  Attributes:
    images: ``[B, H, W, C]`` mixed batch (features, for hidden-space ops), in the
      dtype of the input.
    labels: ``[B, K]`` float32 soft targets the loss must use.
    lam: ``[B]`` float32 weight of each sample's own (un-permuted) label.
    perm: ``[B]`` int32 partner index of each sample (identity when nothing mixed).
    mask: optional op-specific mask (box ops: ``[B, H, W]`` float32, 1 where the
      pixel is the sample's own; PatchUp: the changed-feature mask; Puzzle Mix:
      the ``[B, n, n]`` label mask).
    loss_scale: optional float32 scalar the train step multiplies the loss by
      (PatchUp's collapsed three-term loss, see ``jaxmix.patchup``). ``None``
      means 1.
    transport: optional Puzzle Mix transport plans.
    objective: optional Puzzle Mix energy ``[B]`` of the returned mask.
  """

  images: Array
  labels: Array
  lam: Array
  perm: Array
  mask: Optional[Array] = None
  loss_scale: Optional[Array] = None
  transport: Any = None
  objective: Optional[Array] = None


def one_hot(labels: Array, num_classes: int, smoothing: float = 0.0) -> Array:
  """Integer labels ``[B]`` -> float32 soft targets ``[B, K]``.

  Uses timm's convention: ``smoothing / K`` off target and
  ``1 - smoothing + smoothing / K`` on target.

  Args:
    labels: ``[B]`` integer class indices.
    num_classes: K, the number of classes.
    smoothing: label smoothing in ``[0, 1]``.

  Returns:
    ``[B, K]`` float32 targets whose rows sum to 1.

  Raises:
    ValueError: if ``num_classes < 1``, ``smoothing`` is outside ``[0, 1]``,
      ``labels`` is not 1-D, or concrete (not traced) labels are outside ``[0, K)``.
  """
  if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  check_prob("smoothing", smoothing)
  if jnp.ndim(labels) != 1:
    raise ValueError(f"labels must be 1-D integer class indices [B], got shape {jnp.shape(labels)}.")
  value = concrete_value(labels)
  if value is not None and value.size and (value.min() < 0 or value.max() >= num_classes):
    bad = value[(value < 0) | (value >= num_classes)]
    raise ValueError(f"labels must lie in [0, {num_classes - 1}] for num_classes={num_classes}, got {bad[:5].tolist()!r}.")
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return hot * (on - off) + off


def normalize(images, mean, std, *, max_value: float = 255.0) -> Array:
  """``(images / max_value - mean) / std`` in float32.

  The one normalisation of the package: the train step applies it on device to the
  uint8 batch, evaluation to host batches, the pixel-space attacks to ``[0, 1]`` images.

  Args:
    images: ``[..., H, W, C]`` uint8 pixels, or floats on the same 0..``max_value`` scale.
    mean: per-channel ``[C]`` or a mean image ``[H, W, C]``, in ``[0, 1]`` units.
    std: per-channel ``[C]``, an image ``[H, W, C]`` or a scalar.
    max_value: the pixel scale (255 for uint8 data; 1 for images already in [0, 1]).

  Returns:
    float32 array of the shape of ``images``.

  Example:
    >>> x = jaxmix.normalize(batch["image"], ds.mean, ds.std)
  """
  x = jnp.asarray(images).astype(jnp.float32) / max_value
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# ----------------------------------------------------------------------------
# Eager validation (Python, before tracing). Values of traced arrays are never
# checked; only static facts are.


def is_static_number(x) -> bool:
  """``x`` is a number known in Python: a Python real or a 0-d concrete array (not traced)."""
  if isinstance(x, numbers.Real):
    return True
  return hasattr(x, "ndim") and x.ndim == 0 and not isinstance(x, jax.core.Tracer)


def is_int(x) -> bool:
  """``x`` is a Python integer (``bool`` excluded)."""
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_int(name: str, value, low: int, *, allow_none: bool = False) -> None:
  """Raises ValueError unless ``value`` is an int ``>= low`` (or None when ``allow_none``)."""
  if value is None and allow_none:
    return
  if not is_int(value) or value < low:
    none = " or None" if allow_none else ""
    raise ValueError(f"{name} must be an int >= {low}{none}, got {value!r}.")


def check_key(key, name: str = "key") -> None:
  """Raises TypeError unless ``key`` is a PRNG key (typed, or a raw ``uint32[..., 2]``)."""
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
    return
  if dtype == jnp.uint32 and jnp.shape(key)[-1:] == (2,):
    return
  got = type(key).__name__ + ("" if dtype is None else f" of dtype {dtype} and shape {jnp.shape(key)}")
  raise TypeError(f"{name} must be a PRNG key, e.g. jax.random.key(0) (or a raw uint32[2] jax.random.PRNGKey), got {got}.")


def check_nonneg(name: str, value) -> None:
  """Raises ValueError unless ``value`` is a number >= 0."""
  if not is_static_number(value) or not np.isfinite(value) or value < 0:
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def check_prob(name: str, value) -> None:
  """Raises ValueError unless ``value`` is a probability in [0, 1]."""
  if not is_static_number(value) or not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")


def check_images(images, name: str = "images") -> tuple[int, int, int, int]:
  """Checks a ``[B, H, W, C]`` batch; returns its static shape."""
  shape = jnp.shape(images)
  if len(shape) != 4:
    raise ValueError(f"{name} must be a 4-D batch [B, H, W, C], got shape {tuple(shape)}.")
  if min(shape) < 1:
    raise ValueError(f"{name} must have non-empty dimensions, got shape {tuple(shape)}.")
  if not jnp.issubdtype(jnp.result_type(images), jnp.floating):
    raise ValueError(
      f"{name} must be floating point (float32 or bfloat16), got {jnp.result_type(images)}; convert integer pixels in the input pipeline."
    )
  return tuple(int(s) for s in shape)


def check_labels(labels, batch: int) -> int:
  """Checks ``[B, K]`` soft labels against the batch size; returns K."""
  shape = jnp.shape(labels)
  if len(shape) != 2:
    raise ValueError(f"labels must be soft targets [B, K] (use jaxmix.one_hot for integer labels), got shape {tuple(shape)}.")
  if shape[0] != batch:
    raise ValueError(f"labels batch size {shape[0]} differs from the images' batch size {batch}.")
  return int(shape[1])


def concrete_value(x):
  """``x`` as a numpy array if its value is known in Python, else ``None`` (traced)."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except (TypeError, jax.errors.TracerArrayConversionError):
    return None


def check_lam_perm(lam, perm, batch: int) -> None:
  """Checks the ``lam`` / ``perm`` overrides.

  Shapes are always checked; values only when they are known in Python (not traced
  inside ``jax.jit``): ``lam`` must lie in ``[0, 1]`` and ``perm`` in ``[0, B)``.
  """
  if lam is not None:
    shape = jnp.shape(lam)
    if shape not in ((), (batch,)):
      raise ValueError(f"lam must be a scalar or have shape ({batch},), got shape {shape}.")
    value = concrete_value(lam)
    if value is not None and not (np.all(value >= 0.0) and np.all(value <= 1.0)):
      raise ValueError(f"lam must lie in [0, 1], got {value.tolist()!r}.")
  if perm is not None:
    shape = jnp.shape(perm)
    if shape != (batch,):
      raise ValueError(f"perm must have shape ({batch},), got shape {shape}.")
    if not jnp.issubdtype(jnp.result_type(perm), jnp.integer):
      raise ValueError(f"perm must be an integer array, got dtype {jnp.result_type(perm)}.")
    value = concrete_value(perm)
    if value is not None and not (np.all(value >= 0) and np.all(value < batch)):
      raise ValueError(f"perm values must lie in [0, {batch - 1}] (partner indices), got {value.tolist()!r}.")


# ----------------------------------------------------------------------------
# Sampling helpers shared by the pair-mixing ops.


def sample_perm(key, batch: int, pairing: str = "permutation") -> Array:
  """The partner index of each sample.

  Args:
    key: PRNG key.
    batch: B.
    pairing: ``"permutation"`` (one uniformly random permutation per batch, as the
      official code; fixed points allowed) or ``"roll"`` (partner ``b - 1`` mod B,
      the cheap flip/roll pairing of timm and big_vision; no randomness).

  Returns:
    ``[B]`` int32 partner indices.
  """
  if pairing == "permutation":
    return jax.random.permutation(key, batch).astype(jnp.int32)
  if pairing == "roll":
    return jnp.roll(jnp.arange(batch, dtype=jnp.int32), 1)
  raise ValueError(f"pairing must be 'permutation' or 'roll', got {pairing!r}.")


def sample_beta(key, alpha: float, shape=()) -> Array:
  """lam ~ Beta(alpha, alpha) in float32; ``alpha == 0`` gives lam = 1 (no mixing).

  ``alpha == 1`` (the default of Mixup and CutMix) draws ``U[0, 1)``, which is
  Beta(1, 1) exactly and skips the rejection loop of ``jax.random.beta`` (about
  0.25 ms for 128 per-sample draws on a 2-core CPU).
  """
  if alpha == 0:
    return jnp.ones(shape, jnp.float32)
  if alpha == 1:
    return jax.random.uniform(key, shape, jnp.float32)
  return jax.random.beta(key, alpha, alpha, shape, dtype=jnp.float32)


def resolve_lam_perm(key, batch: int, *, alpha, per_sample: bool, lam, perm, pairing="permutation"):
  """Samples (or takes the overrides of) lam and perm.

  Returns:
    ``(lam, perm)`` with lam float32 of shape ``[B]`` if per-sample (or a ``[B]``
    override), else ``[]``; perm int32 ``[B]``.
  """
  key_lam, key_perm = jax.random.split(key)
  if lam is None:
    lam = sample_beta(key_lam, alpha, (batch,) if per_sample else ())
  lam = jnp.asarray(lam, jnp.float32)
  perm = sample_perm(key_perm, batch, pairing) if perm is None else jnp.asarray(perm, jnp.int32)
  return lam, perm


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
  """Threefry-2x32 (20 rounds), unrolled: the hash behind ``jax.random`` (Salmon et al., 2011)."""
  rotl = lambda v, d: (v << jnp.uint32(d)) | (v >> jnp.uint32(32 - d))  # noqa: E731
  ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in _THREEFRY_ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = x1 ^ rotl(x2, r)
    x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x1, x2


def random_words(key, count: int) -> Array:
  """``jax.random.bits(key, (count,), jnp.uint32)``, bit for bit, cheaper on CPU.

  On CPU, JAX lowers Threefry as a rolled 5-step loop (to compile faster), whose
  per-iteration kernels cost ~40 us for 128 words on a 2-core machine, more than
  mixing a CIFAR batch. For a threefry key (the default) in JAX's default
  partitionable mode, this computes the same words from the same counters with the
  rounds unrolled, which XLA fuses into one kernel; any other key or mode takes
  ``jax.random.bits``.
  """
  dtype = getattr(key, "dtype", None)
  typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
  impl = str(jax.random.key_impl(key)) if typed else str(jax.config.jax_default_prng_impl)
  batched = jnp.shape(key) if typed else jnp.shape(key)[:-1]
  if "threefry2x32" not in impl or not jax.config.jax_threefry_partitionable or batched:
    return jax.random.bits(key, (count,), jnp.uint32)
  data = jax.random.key_data(key) if typed else jnp.asarray(key, jnp.uint32)
  counters = jnp.arange(count, dtype=jnp.uint32)  # jax.random's counters: (high, low) = (0, i)
  b1, b2 = _threefry2x32(data[0], data[1], jnp.zeros_like(counters), counters)
  return b1 ^ b2


class Words:
  """All the random numbers of one op call, drawn at once (``random_words``: the words of ``jax.random.bits``).

  On a 2-core CPU every ``jax.random`` call (split, uniform, randint, permutation)
  becomes its own small kernels, and at CIFAR size their launch cost outweighs the
  mixing itself (mixup: 30 fused kernels -> 9, cutmix: 55 -> 10). An op therefore
  counts the 32-bit words it needs (static), draws them at once and takes them in
  order; the derived draws below are exact or within 2^-32 of the ideal, except the
  packed permutation's ties (below 2.4e-4 per draw, see ``permutation``).

  Example:
    >>> words = core.Words(key, 1 + 2 * batch)
    >>> lam = words.uniform(())
    >>> perm = words.permutation(batch)
  """

  def __init__(self, key, count: int):
    self._words = random_words(key, max(int(count), 1))
    self._next = 0
    self._key = key

  def take(self, shape) -> Array:
    """The next ``prod(shape)`` words as uint32 of ``shape``."""
    n = int(np.prod(shape, dtype=np.int64))
    if self._next + n > self._words.shape[0]:
      raise ValueError(f"Words: {self._next + n} words taken but only {self._words.shape[0]} drawn.")
    out = self._words[self._next : self._next + n].reshape(shape)
    self._next += n
    return out

  def uniform(self, shape) -> Array:
    """float32 ``U[0, 1)`` with 23 random mantissa bits (as ``jax.random.uniform``)."""
    bits = self.take(shape)
    return jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0

  def randint(self, shape, low, high) -> Array:
    """int32 ``U{low .. high - 1}``: ``floor(word * n / 2^32)`` for ``n = high - low <= 2^16``.

    Computed exactly in 32-bit arithmetic; the bins differ by at most one word out of
    ``2^32 / n``, a bias below ``n / 2^32``. ``high`` may be a traced array.
    """
    bits = self.take(shape)
    n = jnp.asarray(high, jnp.uint32) - jnp.asarray(low, jnp.uint32)
    hi, lo = bits >> 16, bits & jnp.uint32(0xFFFF)
    value = (hi * n + ((lo * n) >> 16)) >> 16
    return jnp.asarray(low, jnp.int32) + value.astype(jnp.int32)

  def permutation(self, batch: int) -> Array:
    """A uniformly random permutation of ``range(batch)``: the argsort of ``batch`` words.

    The same construction as ``jax.random.permutation`` with one sorting round; ties
    keep index order. Up to 128 rows, the index is packed into the low bits of its word
    and one array is sorted (XLA's CPU sort of 128 words and their indices costs ~25 us,
    of one array ~3 us): the order of the remaining high bits, ties (probability below
    ``batch^2 / 2^26``, 2.4e-4 at 128) in index order, which is the argsort of the
    words unless such a tie occurs.
    """
    words = self.take((batch,))
    bits = max(1, (batch - 1).bit_length())
    if bits > 7:  # more ties than 2^-12 per draw: sort the indices along
      return jnp.argsort(words).astype(jnp.int32)
    low = jnp.uint32((1 << bits) - 1)
    keyed = (words & ~low) | jnp.arange(batch, dtype=jnp.uint32)
    return (jnp.sort(keyed) & low).astype(jnp.int32)

  def beta(self, alpha: float, shape) -> Array:
    """lam ~ Beta(alpha, alpha) as ``sample_beta``; ``alpha == 1`` uses the words."""
    if alpha == 1:
      return self.uniform(shape)
    return sample_beta(jax.random.fold_in(self._key, 1), alpha, shape)


def beta_words(alpha: float, shape) -> int:
  """The number of ``Words`` that ``Words.beta(alpha, shape)`` takes."""
  return int(np.prod(shape, dtype=np.int64)) if alpha == 1 else 0


def cache_dir() -> str:
  """Where jaxmix keeps what it computes once per machine: ``$JAXMIX_CACHE_DIR``, default
  ``~/.cache/jaxmix/data`` (decoded data sets, the built-in IPMix fractals)."""
  return os.environ.get("JAXMIX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxmix", "data")


def fmix32(h: Array) -> Array:
  """The murmur3 32-bit finaliser on uint32 (a bijective avalanche mixer)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def hash_uniform(seeds: Array, shape: tuple[int, ...]) -> Array:
  """Uniforms ``[..., *shape]`` in ``[0, 1)`` (24 bits) from uint32 seeds ``[..., 2]``.

  Hashes the element index (within ``shape``) with two rounds of the murmur3
  finaliser keyed by the seeds, which come from ``jax.random``. For ops that need a
  uniform per pixel or per feature-map element (IPMix's pixel masks, DropBlock's
  seeds): on CPU threefry costs about 10-100x more than this hash and dominated
  those ops. Each ``[..., 2]`` seed pair gives an independent field, so a batch
  passes one pair per sample and ``prod(shape)`` stays below ``2**32``.
  """
  index = jnp.arange(int(np.prod(shape)), dtype=jnp.uint32).reshape(shape)
  expand = lambda v: v.reshape(v.shape + (1,) * len(shape))  # noqa: E731
  h = fmix32(fmix32(index ^ expand(seeds[..., 0])) + expand(seeds[..., 1]))
  return (h >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def selection_capacity(n: int, rate: float, sigmas: float = 5.0) -> int:
  """Rows to process per block for a selection of expected ``rate * n`` of ``n`` rows.

  The binomial mean plus ``sigmas`` standard deviations (at least 1, at most ``n``):
  one block covers the selection but for a rare draw, which takes another block.
  """
  mean = n * rate
  return int(min(n, max(1, math.ceil(mean + sigmas * math.sqrt(mean * (1.0 - rate)) + 1))))


def apply_to_selected(fn, selected: Array, capacity: int, images: Array, *params: Array) -> Array:
  """``images`` with ``fn`` applied to the rows where ``selected`` is True, the rest unchanged.

  ``fn(rows, *param_rows) -> rows`` maps ``[n, ...]`` images (and their ``[n, ...]``
  parameters) to ``[n, ...]`` results, row by row. It runs on blocks of ``capacity``
  gathered rows, as many blocks as the selection needs (a ``while`` loop with a
  traced trip count, so shapes stay static): an op that a random draw gives to a few
  rows of a batch costs those rows, not the batch. With ``capacity`` from
  :func:`selection_capacity` one block almost always suffices. The result is
  the dense ``where(selected, fn(images), images)``, row for row.

  Args:
    fn: the row-wise op.
    selected: ``[N]`` bool.
    capacity: rows per block, ``1 <= capacity <= N``.
    images: ``[N, ...]``.
    *params: ``[N, ...]`` arrays gathered with the rows.
  """
  n = images.shape[0]
  order = jnp.nonzero(selected, size=n, fill_value=n)[0].astype(jnp.int32)
  order = jnp.concatenate([order, jnp.full((capacity,), n, jnp.int32)])
  blocks = (jnp.sum(selected, dtype=jnp.int32) + capacity - 1) // capacity

  def block(i, out):
    rows = jax.lax.dynamic_slice(order, (i * capacity,), (capacity,))
    take = lambda a: jnp.take(a, rows, axis=0, mode="fill", fill_value=0)  # noqa: E731  (zero rows past the selection, dropped below)
    return out.at[rows].set(fn(take(images), *map(take, params)).astype(out.dtype), mode="drop")

  return jax.lax.fori_loop(0, blocks, block, images)


def paste(inside: Array, source: Array, target: Array) -> Array:
  """``jnp.where(inside[..., None], source, target)`` on images, written as arithmetic.

  ``m * source + (1 - m) * target`` with ``m`` the 0/1 mask ``inside`` (``[B, H, W]``,
  or anything that broadcasts to it), in the images' dtype. For finite pixels this is the
  select exactly: ``1 * a + 0 * b == a`` (only a ``-0.0`` pixel can come back as
  ``+0.0``, which compares equal); an infinite or NaN pixel in the image not taken
  makes a NaN. The select itself is the slow form on XLA:CPU: with a predicate that
  varies over H and W and is broadcast over batch and channels it runs at 1.5-1.7x the
  memory bound of a (128, 32, 32, 3) batch, this form at 1.0-1.1x
  (``benchmarks/ops.py``).
  """
  dtype = jnp.result_type(source, target)
  m = jnp.asarray(inside, dtype)[..., None]
  return m * source.astype(dtype) + (1 - m) * target.astype(dtype)


def mix_labels(labels: Array, perm: Array, lam: Array) -> Array:
  """``lam * y + (1 - lam) * y[perm]`` with ``lam`` of shape ``[B]``, in float32.

  Entries where ``y[perm]`` equals ``y`` (a fixed point of ``perm``, a partner of the
  same class) are returned exactly, without float round-off.
  """
  labels = jnp.asarray(labels, jnp.float32)
  lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), labels.shape[:1])[:, None]
  partner = labels[perm]
  return jnp.where(partner == labels, labels, lam * labels + (1.0 - lam) * partner)


def identity_result(images: Array, labels: Array) -> MixResult:
  """A MixResult that changes nothing (lam = 1, perm = identity)."""
  batch = images.shape[0]
  return MixResult(
    images=images,
    labels=jnp.asarray(labels, jnp.float32),
    lam=jnp.ones((batch,), jnp.float32),
    perm=jnp.arange(batch, dtype=jnp.int32),
  )
