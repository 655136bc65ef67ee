"""Input pipelines: CIFAR-10/100 and SVHN from tfds or from a local class-folder zip/dir.

The host side does per-example work only (decode, random crop with zero padding,
horizontal flip) and keeps images ``uint8``; normalisation runs on device inside the
train step (``jaxmix.normalize``). The pipeline is deterministic: the shuffle order of an epoch
and every example's crop and flip depend only on ``(seed, epoch, position in the
epoch)``, so ``train_batches(..., start_step=s)`` yields exactly the batches an
uninterrupted epoch yields from step ``s`` on (exact resume after preemption).

Recipes (docs/algorithms/recipes.md): the PatchUp / Manifold Mixup / Puzzle Mix lineage uses
``crop_padding=2`` with a flip (SVHN: no flip); Input Mixup, CutMix, Cutout and IPMix
use ``crop_padding=4``; the Keras notebooks use neither (``crop_padding=0,
flip=False``) and subtract the per-pixel mean image (``pixel_mean``).

TensorFlow and tfds are imported lazily, only by the functions that need them, and are
told never to use an accelerator: ``import jaxmix`` stays TensorFlow-free.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import zipfile
from typing import Iterable, Iterator, NamedTuple, Optional

import jax
import numpy as np

from jaxmix.evaluation.protocols import spread_indices
from jaxmix.ops.core import check_int, normalize

__all__ = (
  "Datasets",
  "Split",
  "eval_batches",
  "load",
  "normalize",
  "pixel_mean",
  "prefetch_to_device",
  "spread_indices",
  "steps_per_epoch",
  "train_batches",
)

_CACHE_FORMAT = 1
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_SPLITS = ("train", "test")


class Split(NamedTuple):
  """One split held in host memory.

  Attributes:
    images: ``[N, H, W, C]`` uint8 pixels.
    labels: ``[N]`` int32 class indices.
  """

  images: np.ndarray
  labels: np.ndarray


class Datasets(NamedTuple):
  """What ``load`` returns.

  Attributes:
    train: the training split (a class-balanced subset when asked for).
    valid: the held-out validation split taken from the training set, or ``None``
      when ``valid_labels_per_class == 0``.
    test: the test split.
    num_classes: K.
    mean: per-channel mean in ``[0, 1]`` units (docs/algorithms/recipes.md#preactresnet-and-wrn-lineage).
    std: per-channel std in ``[0, 1]`` units.
    name: canonical dataset name (``"cifar10"``, ``"cifar100"``, ``"svhn_cropped"``).
    class_names: class names in label order (folder names, sorted, for local data).
  """

  train: Split
  valid: Optional[Split]
  test: Split
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  name: str
  class_names: tuple[str, ...] = ()


class _Spec(NamedTuple):
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]


_DATASETS = {
  "cifar10": _Spec(10, tuple(x / 255 for x in (125.3, 123.0, 113.9)), tuple(x / 255 for x in (63.0, 62.1, 66.7))),
  "cifar100": _Spec(100, tuple(x / 255 for x in (129.3, 124.1, 112.4)), tuple(x / 255 for x in (68.2, 65.4, 70.4))),
  "svhn_cropped": _Spec(10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
_ALIASES = {"svhn": "svhn_cropped"}
# Class names of the known data sets, to catch a folder of one passed as another.
_CLASS_NAMES = {
  "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
  "svhn_cropped": tuple(str(d) for d in range(10)),
}


# ----------------------------------------------------------------------------
# Counter-based randomness (SplitMix64). Host-side choices (subsets, shuffles,
# crop offsets, flips) are pure functions of integers, independent of library
# versions and of any global RNG state.

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MASK64 = (1 << 64) - 1
_TAG_SUBSET, _TAG_SHUFFLE, _TAG_AUGMENT = 1, 2, 3


def _fmix64(z: np.ndarray) -> np.ndarray:
  """The SplitMix64 output function (a bijection of uint64), on a uint64 array."""
  with np.errstate(over="ignore"):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _stream_key(*words: int) -> np.ndarray:
  """Folds integers into one uint64 key (shape ``[1]``)."""
  key = np.zeros(1, np.uint64)
  for w in words:
    with np.errstate(over="ignore"):
      key = _fmix64(key ^ _fmix64(np.array([int(w) & _MASK64], np.uint64) + _GAMMA))
  return key


def _stream(key: np.ndarray, start: int, stop: int) -> np.ndarray:
  """Outputs ``start .. stop-1`` of the SplitMix64 sequence seeded with ``key``."""
  i = np.arange(start + 1, stop + 1, dtype=np.uint64)
  with np.errstate(over="ignore"):
    return _fmix64(key + i * _GAMMA)


def _permutation(n: int, *words: int) -> np.ndarray:
  """A permutation of ``range(n)`` (int64) determined by ``words``."""
  return np.argsort(_stream(_stream_key(*words), 0, n), kind="stable")


# ----------------------------------------------------------------------------
# Validation


def _canonical_name(dataset: str) -> str:
  name = _ALIASES.get(str(dataset).lower(), str(dataset).lower())
  if name not in _DATASETS:
    names = ", ".join(sorted((*_DATASETS, *_ALIASES)))
    raise ValueError(f"Unknown dataset {dataset!r}; expected one of: {names}.")
  return name


def _check_split(split: Split) -> int:
  if not isinstance(split, Split) and not (isinstance(split, tuple) and len(split) == 2):
    raise ValueError(f"split must be a jaxmix.data.Split(images, labels), got {type(split).__name__}.")
  images, labels = split
  if np.ndim(images) != 4 or np.ndim(labels) != 1 or len(images) != len(labels):
    raise ValueError(f"split must hold images [N, H, W, C] and labels [N], got shapes {np.shape(images)} and {np.shape(labels)}.")
  return len(labels)


# ----------------------------------------------------------------------------
# Loading


def load(
  dataset: str,
  data_dir: Optional[str] = None,
  *,
  labels_per_class: Optional[int] = None,
  valid_labels_per_class: int = 0,
  seed: int = 0,
  download: bool = False,
) -> Datasets:
  """Loads a dataset into host memory, with PatchUp's class-balanced subsets.

  ``data_dir`` in class-folder layout is read offline: a directory holding
  ``train.zip``/``test.zip`` or ``train/``/``test/`` (each ``<class>/<image>``), or one
  zip holding ``[root/]train/<class>/<image>`` and ``[root/]test/<class>/<image>``.
  Labels follow the sorted class-folder names. Decoding matches PIL bit for bit (TF's
  accurate integer IDCT) and the decoded arrays are cached under
  ``$JAXMIX_CACHE_DIR`` (default ``~/.cache/jaxmix/data``), keyed by the absolute path,
  size and mtime of each source, so the next load skips decoding. Any other
  ``data_dir`` (or ``None``) goes through ``tfds.load(dataset, data_dir=data_dir)``,
  which downloads on a machine with network.

  Subsets follow PatchUp's ``load_data_subset``: one shuffle of the training indices
  (determined by ``seed``), then per class the first ``valid_labels_per_class``
  indices go to validation and the next ``labels_per_class`` to training. A class with
  fewer examples gives what it has, as in PatchUp (CIFAR-10 5000/500 trains on 45,000
  images). With ``labels_per_class=None`` every remaining example trains; with neither
  option the full training set is returned in its stored order.

  Args:
    dataset: ``"cifar10"``, ``"cifar100"`` or ``"svhn_cropped"`` (alias ``"svhn"``).
    data_dir: a local class-folder dir or zip, a tfds data dir, or ``None``.
    labels_per_class: training examples per class, or ``None`` for all.
    valid_labels_per_class: validation examples per class (0: no validation split).
    seed: seed of the subset selection.
    download: let tfds download a data set that ``data_dir`` (or the tfds default
      directory) does not hold; otherwise that is an immediate ``FileNotFoundError``.

  Returns:
    A ``Datasets`` with uint8 ``[N, H, W, C]`` images and int32 labels.

  Raises:
    ValueError: unknown dataset, bad subset sizes, a corrupt zip or image, a layout
      that is not class folders, or a class count that does not match ``dataset``.
    FileNotFoundError: ``data_dir`` does not exist.

  Example:
    >>> ds = jaxmix.data.load("cifar10", "~/data/cifar10", labels_per_class=100)
    >>> ds.train.images.shape
    (1000, 32, 32, 3)
  """
  name = _canonical_name(dataset)
  spec = _DATASETS[name]
  check_int("labels_per_class", labels_per_class, 1, allow_none=True)
  check_int("valid_labels_per_class", valid_labels_per_class, 0)
  check_int("seed", seed, -(1 << 63))

  sources = None
  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
    sources = _local_sources(data_dir)
  if sources is not None:
    (train, train_classes), (test, test_classes) = (_load_local(src, sub) for src, sub in sources)
    if train_classes != test_classes:
      raise ValueError(f"{data_dir!r}: train classes {train_classes} differ from test classes {test_classes}.")
    if len(train_classes) != spec.num_classes:
      raise ValueError(f"{data_dir!r} holds {len(train_classes)} class folders, but {name} has {spec.num_classes} classes.")
    for other, names in _CLASS_NAMES.items():
      if other != name and tuple(train_classes) == names:
        raise ValueError(f"{data_dir!r} holds the classes of {other} ({', '.join(names[:3])}, ...), not of {name}; pass --dataset {other}.")
    class_names = train_classes
  else:
    train, test, class_names = _load_tfds(name, data_dir, download)

  valid = None
  if labels_per_class is not None or valid_labels_per_class > 0:
    train_idx, valid_idx = _subset_indices(train.labels, spec.num_classes, labels_per_class, valid_labels_per_class, seed)
    if valid_labels_per_class > 0:
      valid = Split(train.images[valid_idx], train.labels[valid_idx])
    train = Split(train.images[train_idx], train.labels[train_idx])
  return Datasets(train, valid, test, spec.num_classes, spec.mean, spec.std, name, tuple(class_names))


def _subset_indices(labels: np.ndarray, num_classes: int, n_train: Optional[int], n_valid: int, seed: int):
  """PatchUp's ``get_sampler``: ``(train_idx, valid_idx)``, each class-major, int64."""
  order = _permutation(len(labels), seed, _TAG_SUBSET)
  shuffled = np.asarray(labels)[order]
  train, valid = [], []
  for c in range(num_classes):
    idx = order[shuffled == c]
    stop = None if n_train is None else n_valid + n_train
    if len(idx) <= n_valid:
      raise ValueError(f"class {c} has {len(idx)} training examples, so valid_labels_per_class={n_valid} leaves none to train on.")
    valid.append(idx[:n_valid])
    train.append(idx[n_valid:stop])
  return np.concatenate(train), np.concatenate(valid)


def _local_sources(path: str):
  """``[(source, subdir), (source, subdir)]`` for train and test, or None for tfds.

  ``source`` is a zip file or a directory; ``subdir`` the split's root inside it
  (``None``: find the single root holding class folders).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"data_dir {path!r} does not exist. Pass a class-folder dir/zip for offline use; to download through tfds into it, "
      "create it first (mkdir -p), or pass no data_dir to use the tfds default (~/tensorflow_datasets)."
    )
  if os.path.isfile(path):
    if not zipfile.is_zipfile(path):
      raise ValueError(f"data_dir {path!r} is a file but not a zip archive.")
    return [(path, split) for split in _SPLITS]
  found = {}
  for split in _SPLITS:
    zpath, dpath = os.path.join(path, split + ".zip"), os.path.join(path, split)
    if os.path.isfile(zpath):
      found[split] = (zpath, None)
    elif os.path.isdir(dpath):
      found[split] = (dpath, None)
  if not found:
    return None  # a tfds data dir
  if len(found) != len(_SPLITS):
    missing = [s for s in _SPLITS if s not in found]
    raise ValueError(f"data_dir {path!r} has {sorted(found)} but no {missing} (expected {missing[0]}.zip or {missing[0]}/).")
  return [found[s] for s in _SPLITS]


def _list_members(source: str) -> list[str]:
  """Image paths inside a zip or directory, '/'-separated, relative, sorted."""
  if os.path.isdir(source):
    out = []
    for root, dirs, files in os.walk(source):
      dirs.sort()
      rel = os.path.relpath(root, source).replace(os.sep, "/")
      out += [f if rel == "." else f"{rel}/{f}" for f in files]
  else:
    try:
      with zipfile.ZipFile(source) as z:
        out = [n for n in z.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as e:
      raise ValueError(f"cannot read zip {source!r}: {e}") from e
  keep = []
  for n in out:
    parts = n.split("/")
    if parts[0] == "__MACOSX" or parts[-1].startswith(".") or not n.lower().endswith(_IMAGE_EXTS):
      continue
    keep.append(n)
  return sorted(keep)


def _class_layout(source: str, members: list[str], split: Optional[str]):
  """Picks the split's members; returns ``(members, class_of_each, class_names)``."""
  roots = collections.defaultdict(list)
  for n in members:
    parts = n.split("/")
    if len(parts) >= 2:
      roots["/".join(parts[:-2])].append(n)
  if split is not None:
    roots = {r: m for r, m in roots.items() if r.split("/")[-1] == split}
  where = f"{source!r}" + (f" (split {split!r})" if split else "")
  if len(roots) != 1:
    found = sorted(roots) or "none"
    raise ValueError(f"{where}: expected images in one folder of class folders (<class>/<image>), found roots {found}.")
  (chosen,) = roots.values()
  classes = [n.split("/")[-2] for n in chosen]
  return chosen, classes, sorted(set(classes))


def _source_fingerprint(source: str) -> dict:
  if os.path.isdir(source):
    h = hashlib.sha256()
    for root, dirs, files in os.walk(source):
      dirs.sort()
      for f in sorted(files):
        st = os.stat(os.path.join(root, f))
        h.update(f"{os.path.relpath(os.path.join(root, f), source)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return {"dir": h.hexdigest()}
  st = os.stat(source)
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cache_dir() -> str:
  return os.environ.get("JAXMIX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxmix", "data")


def _load_local(source: str, split: Optional[str]) -> tuple[Split, list[str]]:
  """Decodes (or reads from the cache) one split of a local class-folder source."""
  source = os.path.abspath(source)
  key = json.dumps([_CACHE_FORMAT, source, split, _source_fingerprint(source)])
  digest = hashlib.sha256(key.encode()).hexdigest()[:20]
  cache = os.path.join(_cache_dir(), f"{os.path.basename(source)}{'-' + split if split else ''}-{digest}.npz")
  if os.path.exists(cache):
    try:
      with np.load(cache) as f:
        return Split(f["images"], f["labels"]), [str(c) for c in f["classes"]]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
      pass  # a damaged cache entry is rebuilt below
  members, classes, class_names = _class_layout(source, _list_members(source), split)
  blobs = _read_members(source, members)
  images = _decode(blobs, members, source)
  index = {c: i for i, c in enumerate(class_names)}
  labels = np.array([index[c] for c in classes], np.int32)
  try:
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = f"{cache}.{os.getpid()}.tmp.npz"
    np.savez(tmp, images=images, labels=labels, classes=np.array(class_names))
    os.replace(tmp, cache)  # atomic: concurrent loaders never see a partial file
  except OSError:
    pass  # caching is an optimisation only
  return Split(images, labels), class_names


def _read_members(source: str, members: list[str]) -> list[bytes]:
  if os.path.isdir(source):
    out = []
    for n in members:
      with open(os.path.join(source, n), "rb") as f:
        out.append(f.read())
    return out
  try:
    with zipfile.ZipFile(source) as z:
      return [z.read(n) for n in members]
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise ValueError(f"cannot read zip {source!r}: {e}") from e


def _tf():
  """Imports TensorFlow, hidden from every accelerator (JAX owns them)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf

  global _TF_READY
  if not _TF_READY:
    for kind in ("GPU", "TPU"):
      try:
        tf.config.set_visible_devices([], kind)
      except (RuntimeError, ValueError):
        pass  # already initialised, or no such device type
    _TF_READY = True
  return tf


_TF_READY = False


def _decode_one(tf, blob):
  """JPEG with the accurate integer IDCT (bit-identical to PIL/torchvision); others as is."""
  return tf.cond(
    tf.io.is_jpeg(blob),
    lambda: tf.io.decode_jpeg(blob, channels=3, dct_method="INTEGER_ACCURATE"),
    lambda: tf.io.decode_image(blob, channels=3, expand_animations=False),
  )


def _decode(blobs: list[bytes], members: list[str], source: str) -> np.ndarray:
  """``[N, H, W, 3]`` uint8 from encoded images; parallel tf.data decode."""
  tf = _tf()
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(blobs, tf.string))
  ds = ds.map(lambda b: _decode_one(tf, b), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(4096)
  try:
    return np.concatenate([x.numpy() for x in ds])
  except (tf.errors.OpError, ValueError):
    pass
  # Slow path, only to name the culprit: an undecodable image or a size mismatch.
  shape = None
  for blob, name in zip(blobs, members, strict=True):
    try:
      img = _decode_one(tf, tf.constant(blob)).numpy()
    except tf.errors.OpError as e:
      raise ValueError(f"cannot decode image {name!r} in {source!r}: {e.message}") from e
    if shape is None:
      shape = img.shape
    elif img.shape != shape:
      raise ValueError(f"image {name!r} in {source!r} has shape {img.shape}, others {shape}; all images must share one size.")
  raise ValueError(f"cannot decode the images of {source!r}.")


def _load_tfds(name: str, data_dir: Optional[str], download: bool):
  tf = _tf()
  import tensorflow_datasets as tfds

  try:
    (train, test), info = tfds.load(name, split=list(_SPLITS), data_dir=data_dir, as_supervised=True, with_info=True, download=download)
  except AssertionError as e:  # tfds's "could not find data" when download=False
    if download:
      raise
    where = repr(data_dir) if data_dir else "the tfds default directory (~/tensorflow_datasets)"
    raise FileNotFoundError(
      f"{where} holds neither class folders (train/ and test/, or train.zip and test.zip) nor a prepared tfds {name!r}. "
      "Point --data_dir at a class-folder directory or zip, or pass --download to let tfds download it (needs network)."
    ) from e
  except Exception as e:
    if hasattr(e, "add_note"):
      e.add_note(f"jaxmix: tfds.load({name!r}, data_dir={data_dir!r}) failed; offline, pass a class-folder dir or zip as data_dir.")
    raise

  def to_split(ds) -> Split:
    images, labels = [], []
    for x, y in ds.batch(8192).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
      images.append(x)
      labels.append(y)
    return Split(np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32))

  names = tuple(info.features["label"].names) if "label" in info.features else ()
  return to_split(train), to_split(test), names


def pixel_mean(split: Split) -> np.ndarray:
  """The per-pixel mean image ``[H, W, C]`` float32 in ``[0, 1]`` units.

  The Keras notebooks of Patch Augmentation (docs/algorithms/recipes.md#keras-resnet20v1-and-resnet29v2) subtract this image
  of the training set: ``normalize(images, pixel_mean(ds.train), 1.0)``.
  """
  _check_split(split)
  total = np.zeros(split.images.shape[1:], np.float64)
  for i in range(0, len(split.images), 8192):
    total += split.images[i : i + 8192].sum(0, dtype=np.float64)
  return (total / (255.0 * len(split.images))).astype(np.float32)


# ----------------------------------------------------------------------------
# Batches


def steps_per_epoch(split: Split, batch_size: int) -> int:
  """Number of full batches of an epoch (``train_batches`` drops the remainder)."""
  check_int("batch_size", batch_size, 1)
  return _check_split(split) // batch_size


def _epoch_plan(n: int, batch_size: int, seed: int, epoch: int, crop_padding: int):
  """The epoch's example order and per-position crop offsets and flips, ``[steps*B]`` each."""
  steps = n // batch_size
  order = _permutation(n, seed, epoch, _TAG_SHUFFLE)[: steps * batch_size]
  bits = _stream(_stream_key(seed, epoch, _TAG_AUGMENT), 0, steps * batch_size)
  span = np.uint64(2 * crop_padding + 1)
  dy = ((bits >> np.uint64(32)) % span).astype(np.int32)
  dx = (((bits >> np.uint64(1)) & np.uint64(0x7FFFFFFF)) % span).astype(np.int32)
  flip = (bits & np.uint64(1)).astype(bool)
  return order, dy, dx, flip


def train_batches(
  split: Split,
  *,
  batch_size: int,
  seed: int,
  epoch: int,
  start_step: int = 0,
  crop_padding: int = 2,
  flip: bool = True,
  num_shards: int = 1,
  shard_index: int = 0,
) -> Iterator[dict]:
  """Shuffled, augmented training batches of one epoch, deterministic and resumable.

  The example order is a permutation determined by ``(seed, epoch)``; the example at
  position ``p`` of the epoch gets a random crop (zero padding ``crop_padding`` on each
  side, offsets uniform in ``[0, 2 * crop_padding]``, as torchvision's
  ``RandomCrop(H, padding)``) and a horizontal flip with probability 1/2, both drawn
  from ``(seed, epoch, p)`` only. Hence ``start_step=s`` yields exactly batches
  ``s, s+1, ...`` of the uninterrupted epoch. The remainder is dropped. Gathering,
  cropping and flipping run batched in a tf.data graph with parallel map and prefetch.

  Randomness comes from a counter-based hash (SplitMix64) of those integers, not from
  TF's stateless ops, so results do not depend on the TensorFlow version.

  Args:
    split: the images and labels to draw from.
    batch_size: global batch size B.
    seed: the run's data seed.
    epoch: epoch number (changes the order and the augmentation).
    start_step: first batch to yield, in ``[0, steps_per_epoch]``.
    crop_padding: zero padding of the random crop; 0 disables cropping.
    flip: random horizontal flips (False for SVHN).
    num_shards: number of hosts sharing each global batch (multi-host).
    shard_index: this host's slice ``[shard_index * B / num_shards, ...)`` of every batch.

  Yields:
    ``{"image": uint8 [B / num_shards, H, W, C], "label": int32 [B / num_shards]}``.

  Raises:
    ValueError: on a bad argument (named, with the allowed range).

  Example:
    >>> for batch in train_batches(ds.train, batch_size=128, seed=0, epoch=3):
    ...   state, metrics = train_step(state, batch, key)
  """
  n = _check_split(split)
  check_int("batch_size", batch_size, 1)
  check_int("epoch", epoch, 0)
  check_int("crop_padding", crop_padding, 0)
  check_int("num_shards", num_shards, 1)
  check_int("seed", seed, -(1 << 63))
  steps = n // batch_size
  check_int("start_step", start_step, 0)
  if start_step > steps:
    raise ValueError(f"start_step must be in [0, {steps}] (steps per epoch), got {start_step}.")
  if batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} must be divisible by num_shards {num_shards}.")
  check_int("shard_index", shard_index, 0)
  if shard_index >= num_shards:
    raise ValueError(f"shard_index must be in [0, {num_shards - 1}], got {shard_index}.")
  if start_step == steps:
    return iter(())
  order, dy, dx, flips = _epoch_plan(n, batch_size, seed, epoch, crop_padding)
  local = batch_size // num_shards
  cols = slice(shard_index * local, (shard_index + 1) * local)
  plan = [a.reshape(steps, batch_size)[start_step:, cols] for a in (order, dy, dx, flips)]
  return _augment_pipeline(split, plan, crop_padding, bool(flip))


def _augment_pipeline(split: Split, plan, pad: int, flip: bool) -> Iterator[dict]:
  tf = _tf()
  images = tf.convert_to_tensor(split.images)
  labels = tf.convert_to_tensor(np.asarray(split.labels, np.int32))
  _, height, width, _ = split.images.shape

  def make(idx, dy, dx, fl):
    x, y = tf.gather(images, idx), tf.gather(labels, idx)
    if pad:
      x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
      x = tf.gather(x, dy[:, None] + tf.range(height)[None, :], axis=1, batch_dims=1)
    else:
      dx = tf.zeros_like(dx)
    j = tf.range(width)[None, :]
    if flip:
      j = tf.where(fl[:, None], width - 1 - j, j)
    if pad or flip:
      x = tf.gather(x, dx[:, None] + j, axis=2, batch_dims=1)
    return {"image": x, "label": y}

  ds = tf.data.Dataset.from_tensor_slices(tuple(plan))
  ds = ds.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
  yield from ds.as_numpy_iterator()


def eval_batches(split: Split, *, batch_size: int) -> Iterator[dict]:
  """Batches of a split in order, the last one zero-padded to ``batch_size``.

  Every batch has the same shape, so the eval step compiles once; ``mask`` marks the
  real examples (weight metrics by it).

  Args:
    split: the images and labels.
    batch_size: B.

  Yields:
    ``{"image": uint8 [B, H, W, C], "label": int32 [B], "mask": bool [B]}``.
  """
  n = _check_split(split)
  check_int("batch_size", batch_size, 1)
  return _eval_generator(np.asarray(split.images), np.asarray(split.labels, np.int32), n, batch_size)


def _eval_generator(images, labels, n, batch_size):
  for start in range(0, n, batch_size):
    x, y = images[start : start + batch_size], labels[start : start + batch_size]
    real = len(y)
    mask = np.arange(batch_size) < real
    if real < batch_size:
      x = np.concatenate([x, np.zeros((batch_size - real, *x.shape[1:]), x.dtype)])
      y = np.concatenate([y, np.zeros(batch_size - real, np.int32)])
    yield {"image": x, "label": y, "mask": mask}


def _batch_shards(sharding) -> Optional[int]:
  """How many ways ``sharding`` splits the leading (batch) axis on this host."""
  spec = getattr(sharding, "spec", None)
  mesh = getattr(sharding, "mesh", None)
  if spec is None or mesh is None:
    return len(sharding.addressable_devices)
  if len(spec) == 0 or spec[0] is None:
    return 1
  axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  total = int(np.prod([mesh.shape[a] for a in axes]))
  return max(1, total // jax.process_count())


def prefetch_to_device(iterator: Iterable, size: int = 2, sharding=None) -> Iterator:
  """Puts batches on device(s) ``size`` steps ahead of their use.

  Args:
    iterator: host batches (pytrees of numpy arrays with a leading batch axis).
    size: how many batches to keep in flight (>= 1).
    sharding: ``None`` (default device) or a ``jax.sharding.Sharding``, e.g.
      ``NamedSharding(Mesh(jax.devices(), ("data",)), PartitionSpec("data"))``. On
      several hosts each host passes its local slice and the result is the global
      array (``jax.make_array_from_process_local_data``).

  Yields:
    The same pytrees as ``jax.Array``s.

  Raises:
    ValueError: ``size < 1`` or a batch not divisible by the device count of
      ``sharding``.
  """
  check_int("size", size, 1)
  shards = None if sharding is None else _batch_shards(sharding)

  def put(batch):
    if sharding is None:
      return jax.device_put(batch)
    for leaf in jax.tree.leaves(batch):
      b = np.shape(leaf)[0] if np.ndim(leaf) else None
      if b is None or b % shards:
        raise ValueError(f"batch size {b} must be divisible by the {shards} devices the sharding splits the batch over.")
    if jax.process_count() > 1:
      return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return jax.device_put(batch, sharding)

  return _prefetch(iter(iterator), size, put)


def _prefetch(it, size, put):
  queue = collections.deque(put(b) for b in itertools.islice(it, size))
  while queue:
    yield queue.popleft()
    for b in itertools.islice(it, 1):
      queue.append(put(b))
