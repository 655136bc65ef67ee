"""Input pipelines: CIFAR, SVHN, Tiny-ImageNet, ImageNet, any class folder or tfds data set.

Every split is decoded once into an on-disk, memory-mapped cache
(``jaxmix.training.sources``), so host memory is bounded by the batch, not the data
set, and local folders and zips need no TensorFlow (Pillow decodes). The host side does
per-example work only (gather, random crop with zero padding or ImageNet's
random-resized crop, horizontal flip) in numpy, in background threads, and keeps
images ``uint8``; normalisation runs on device inside the train step
(``jaxmix.normalize``). The pipeline is deterministic: the shuffle order of an epoch
and every example's crop and flip depend only on ``(seed, epoch, position in the
epoch)``, so ``train_batches(..., start_step=s)`` yields exactly the batches an
uninterrupted epoch yields from step ``s`` on (exact resume after preemption), and on
several hosts each host reads only its slice of every global batch.

Recipes (docs/algorithms/recipes.md): the PatchUp / Manifold Mixup / Puzzle Mix lineage uses
``crop_padding=2`` with a flip (SVHN: no flip); Input Mixup, CutMix, Cutout, IPMix and
Puzzle Mix's Tiny-ImageNet use ``crop_padding=4``; the Keras notebooks use neither
(``crop_padding=0, flip=False``) and subtract the per-pixel mean image
(``pixel_mean``); ImageNet uses the random-resized crop (``augment="inception"``).

TensorFlow and tfds are imported lazily, only to read a tfds data set, and are told
never to use an accelerator: ``import jaxmix`` stays TensorFlow-free.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import math
import os
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import jax
import numpy as np

from jaxmix.evaluation.protocols import spread_indices
from jaxmix.ops.core import check_int, normalize
from jaxmix.training import sources

__all__ = (
  "AUGMENTS",
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

AUGMENTS = ("crop_flip", "inception")
"""Training augmentations: pad-and-crop + flip, or ImageNet's random-resized crop + flip."""

_CROP_PCT = 0.875  # ImageNet evaluation: resize to S / 0.875 (256 for 224), centre-crop S


class Split(NamedTuple):
  """One split.

  Attributes:
    images: ``[N, H, W, C]`` uint8 pixels (a read-only memory map for loaded data).
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
    name: canonical dataset name (``"cifar10"``, ``"svhn_cropped"``, ``"folder"``, ...).
    class_names: class names in label order (folder names, sorted, for local data).
    image_size: the model's input size (side of the evaluation images and of the
      training batches).
    augment: the training augmentation of the recipe (one of ``AUGMENTS``).
  """

  train: Split
  valid: Optional[Split]
  test: Split
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  name: str
  class_names: tuple[str, ...] = ()
  image_size: int = 32
  augment: str = "crop_flip"


class _Spec(NamedTuple):
  num_classes: Optional[int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_size: Optional[int] = None  # None: the files' own size
  augment: str = "crop_flip"


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)
_DATASETS = {
  "cifar10": _Spec(10, tuple(x / 255 for x in (125.3, 123.0, 113.9)), tuple(x / 255 for x in (63.0, 62.1, 66.7))),
  "cifar100": _Spec(100, tuple(x / 255 for x in (129.3, 124.1, 112.4)), tuple(x / 255 for x in (68.2, 65.4, 70.4))),
  "svhn_cropped": _Spec(10, _HALF, _HALF),
  "tiny-imagenet-200": _Spec(200, _HALF, _HALF, 64),  # Puzzle Mix's Tiny-ImageNet recipe
  "imagenet2012": _Spec(1000, _IMAGENET_MEAN, _IMAGENET_STD, 224, "inception"),
  "folder": _Spec(None, _IMAGENET_MEAN, _IMAGENET_STD),
}
_GENERIC = _Spec(None, _IMAGENET_MEAN, _IMAGENET_STD)  # tfds:NAME
_ALIASES = {"svhn": "svhn_cropped", "tiny-imagenet": "tiny-imagenet-200", "tiny_imagenet": "tiny-imagenet-200", "imagenet": "imagenet2012"}
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
_TAG_SUBSET, _TAG_SHUFFLE, _TAG_AUGMENT, _TAG_RESIZED_CROP, _TAG_MIXING = 1, 2, 3, 4, 5


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
  raw = str(dataset)
  if raw.lower().startswith("tfds:"):
    if not raw[5:]:
      raise ValueError("--dataset tfds:NAME needs a tfds data set name after 'tfds:' (e.g. tfds:imagenette).")
    return "tfds:" + raw[5:]
  name = _ALIASES.get(raw.lower(), raw.lower())
  if name not in _DATASETS:
    names = ", ".join(sorted((*_DATASETS, *_ALIASES)))
    raise ValueError(f"Unknown dataset {dataset!r}; expected one of: {names}, or tfds:NAME for any tfds image data set.")
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
  image_size: Optional[int] = None,
  augment: Optional[str] = None,
) -> Datasets:
  """Opens a dataset, decoded once into an on-disk cache, with PatchUp's class-balanced subsets.

  Every split is decoded once (Pillow; no TensorFlow for local data) into a
  memory-mapped array under ``$JAXMIX_CACHE_DIR`` (default ``~/.cache/jaxmix/data``),
  keyed by the source and its files' sizes and times (``jaxmix.training.sources``), so
  host memory is bounded by what a batch touches, not by the data set. Sources:

  * ``data_dir`` in class-folder layout, offline: a directory holding ``train/`` and
    ``test/`` (or ``val/``) class folders, or ``train.zip``/``test.zip``, or one zip
    holding both; labels follow the sorted class-folder names.
  * ``dataset="tiny-imagenet-200"``: ``data_dir`` as Tiny-ImageNet-200 unpacks
    (``wnids.txt``, ``train/<wnid>/images``, ``val/images`` + ``val_annotations.txt``),
    or its zip; ``val`` is the test split.
  * any other ``data_dir`` (or ``None``): ``tfds.load(dataset, data_dir=data_dir)``,
    read once through tfds (downloads with ``download=True``). ``tfds:NAME`` names any
    tfds image-classification data set.

  Subsets follow PatchUp's ``load_data_subset``: one shuffle of the training indices
  (determined by ``seed``), then per class the first ``valid_labels_per_class``
  indices go to validation and the next ``labels_per_class`` to training. A class with
  fewer examples gives what it has, as in PatchUp (CIFAR-10 5000/500 trains on 45,000
  images). With ``labels_per_class=None`` every remaining example trains; with neither
  option the full training set is returned in its stored order.

  Args:
    dataset: ``cifar10``, ``cifar100``, ``svhn_cropped`` (``svhn``),
      ``tiny-imagenet-200``, ``imagenet2012`` (``imagenet``), ``folder`` (any class
      folders; classes counted from them) or ``tfds:NAME``.
    data_dir: a local class-folder dir or zip, Tiny-ImageNet's folder, a tfds data
      dir, or ``None``.
    labels_per_class: training examples per class, or ``None`` for all.
    valid_labels_per_class: validation examples per class (0: no validation split).
    seed: seed of the subset selection.
    download: let tfds download a data set that ``data_dir`` (or the tfds default
      directory) does not hold; otherwise that is an immediate ``FileNotFoundError``.
    image_size: the model's input size S (default: the data set's, e.g. 224 for
      ImageNet; for ``folder`` and ``tfds:NAME`` the files' own size, which must then be
      one size). Images are resized (shorter side) and centre-cropped to it.
    augment: ``"crop_flip"`` (pad-and-crop + flip; images stored at S) or
      ``"inception"`` (ImageNet's random-resized crop: training images stored at
      ``S / 0.875`` for the crop, evaluation images resized to ``S / 0.875`` and
      centre-cropped to S). Default: the data set's recipe (inception for ImageNet).

  Returns:
    A ``Datasets`` with uint8 ``[N, H, W, C]`` images (read-only memory maps) and
    int32 labels.

  Raises:
    ValueError: unknown dataset, bad subset sizes, a corrupt zip, a layout that is not
      class folders (or not Tiny-ImageNet), a class count that does not match
      ``dataset``, images of different sizes without ``image_size``.
    FileNotFoundError: ``data_dir`` does not exist.

  Example:
    >>> ds = jaxmix.data.load("cifar10", "~/data/cifar10", labels_per_class=100)
    >>> ds.train.images.shape
    (1000, 32, 32, 3)
  """
  name = _canonical_name(dataset)
  spec = _DATASETS.get(name, _GENERIC)
  check_int("labels_per_class", labels_per_class, 1, allow_none=True)
  check_int("valid_labels_per_class", valid_labels_per_class, 0)
  check_int("seed", seed, -(1 << 63))
  check_int("image_size", image_size, 8, allow_none=True)
  augment = augment or spec.augment
  if augment not in AUGMENTS:
    raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}.")
  size = image_size or spec.image_size
  if augment == "inception" and size is None:
    raise ValueError(f"augment='inception' needs an image_size for {name} (e.g. 224).")
  big = None if size is None or augment != "inception" else int(round(size / _CROP_PCT))
  stored = {"train": (big or size, big), "test": (size, big)}  # (size, resize) of each split

  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  if name == "tiny-imagenet-200":
    if data_dir is None:
      raise ValueError("tiny-imagenet-200 is read offline: pass --data_dir, the unpacked tiny-imagenet-200/ folder or its zip.")
    listings = sources.list_tiny_imagenet(data_dir)
  elif data_dir is not None:
    listings = sources.list_class_folders(data_dir)
    if listings is None and name == "folder":
      raise ValueError(f"data_dir {data_dir!r} holds no train/ and test/ (or val/) class folders or zips; --dataset folder needs them.")
  elif name == "folder":
    raise ValueError("--dataset folder needs --data_dir: a directory or zip of train/ and test/ (or val/) class folders.")
  else:
    listings = None

  if listings is not None:
    splits = []
    for listing, which in zip(listings, ("train", "test"), strict=True):
      sz, rs = stored[which]
      images, labels, class_names = sources.cached_split(
        f"{os.path.basename(listing.source)}-{listing.tag}",
        sources.listing_key(listing),
        len(listing.members),
        sources.listing_examples(listing),
        class_names=listing.class_names,
        size=sz,
        resize=rs,
        where=f"{listing.source!r} ({listing.tag})",
      )
      splits.append(Split(images, labels))
    train, test = splits
    class_names = listings[0].class_names
    num_classes = len(class_names)
    if spec.num_classes is not None and num_classes != spec.num_classes:
      raise ValueError(f"{data_dir!r} holds {num_classes} class folders, but {name} has {spec.num_classes} classes.")
    for other, names in _CLASS_NAMES.items():
      if other != name and name != "folder" and tuple(class_names) == names:
        raise ValueError(f"{data_dir!r} holds the classes of {other} ({', '.join(names[:3])}, ...), not of {name}; pass --dataset {other}.")
  else:
    train, test, class_names = _load_tfds(name.removeprefix("tfds:"), data_dir, download, stored)
    num_classes = spec.num_classes or len(class_names) or int(max(train.labels.max(), test.labels.max())) + 1

  valid = None
  if labels_per_class is not None or valid_labels_per_class > 0:
    train_idx, valid_idx = _subset_indices(train.labels, num_classes, labels_per_class, valid_labels_per_class, seed)
    if valid_labels_per_class > 0:
      valid = Split(sources.take(train.images, valid_idx, crop=size if big else None), train.labels[valid_idx])
    train = Split(sources.take(train.images, train_idx), train.labels[train_idx])
  return Datasets(train, valid, test, num_classes, spec.mean, spec.std, name, tuple(class_names), int(test.images.shape[1]), augment)


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


def _load_tfds(name: str, data_dir: Optional[str], download: bool, stored: dict):
  """Train and test splits of a tfds data set, read once through tfds into the cache."""
  try:
    tf = _tf()
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
      f"reading tfds data set {name!r} needs TensorFlow and tfds (pip install 'jaxmix[data]'); "
      "class folders, zips and Tiny-ImageNet (--data_dir) need neither."
    ) from e

  def open_split(split):
    try:
      return tfds.load(name, split=split, data_dir=data_dir, as_supervised=True, with_info=True, download=download, shuffle_files=False)
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

  ds, info = open_split("train")
  splits = list(info.splits)
  test_split = "validation" if name == "imagenet2012" or (splits and "test" not in splits) else "test"
  names = tuple(getattr(info.features["label"], "names", ())) if "label" in info.features else ()
  files = sources.dir_fingerprint(str(info.data_dir))
  out = []
  for split, which in (("train", "train"), (test_split, "test")):
    if split != "train":
      ds, _ = open_split(split)
    count = int(ds.cardinality())
    if count < 0:
      count = int(ds.reduce(0, lambda n, _: n + 1))

    def examples(ds=ds, split=split):
      for i, (x, y) in enumerate(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE))):
        yield f"{split}[{i}]", x, int(y)

    key = {"tfds": name, "version": str(info.version), "data_dir": str(info.data_dir), "files": files, "split": split, "count": count}
    sz, rs = stored[which]
    images, labels, _ = sources.cached_split(
      f"tfds-{name}-{split}", key, count, examples, class_names=names, size=sz, resize=rs, where=f"tfds {name!r} ({split})"
    )
    out.append(Split(images, labels))
  return out[0], out[1], names


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
  random_resized_crop: Optional[int] = None,
  mixing_pictures: Optional[Sequence[np.ndarray]] = None,
  workers: int = 2,
) -> Iterator[dict]:
  """Shuffled, augmented training batches of one epoch, deterministic and resumable.

  The example order is a permutation determined by ``(seed, epoch)``; the example at
  position ``p`` of the epoch gets a random crop (zero padding ``crop_padding`` on each
  side, offsets uniform in ``[0, 2 * crop_padding]``, as torchvision's
  ``RandomCrop(H, padding)``) or, with ``random_resized_crop=S``, torchvision's
  ``RandomResizedCrop(S)`` (scale (0.08, 1), ratio (3/4, 4/3), ten tries then a centre
  crop; bilinear, antialiased), and a horizontal flip with probability 1/2, all drawn
  from ``(seed, epoch, p)`` only. Hence ``start_step=s`` yields exactly batches
  ``s, s+1, ...`` of the uninterrupted epoch. The remainder is dropped. Batches are
  assembled in numpy by ``workers`` background threads, a few batches ahead; a
  memory-mapped split is read only where the batch's rows lie.

  Randomness comes from a counter-based hash (SplitMix64) of those integers, so
  results depend on no library version and on no global RNG state.

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
    random_resized_crop: output side S of ImageNet's random-resized crop (replaces the
      padded crop), or None.
    mixing_pictures: IPMix's mixing set (``jaxmix.training.sources.load_pictures``):
      each example also gets one of these pictures, drawn uniformly, randomly cropped
      to the batch's ``H x W`` (the official ``RandomCrop(32)`` after ``Resize(36)``),
      as ``batch["mixing"]``; drawn from ``(seed, epoch, position)`` like the rest.
    workers: threads assembling batches (>= 1).

  Yields:
    ``{"image": uint8 [B / num_shards, H, W, C], "label": int32 [B / num_shards]}``,
    plus ``"mixing"`` (uint8, the shape of ``"image"``) with ``mixing_pictures``.

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
  check_int("random_resized_crop", random_resized_crop, 1, allow_none=True)
  check_int("workers", workers, 1)
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
  pad = 0 if random_resized_crop else crop_padding
  order, dy, dx, flips = _epoch_plan(n, batch_size, seed, epoch, pad)
  local = batch_size // num_shards
  cols = slice(shard_index * local, (shard_index + 1) * local)
  positions = np.arange(steps * batch_size, dtype=np.int64)
  plan = [a.reshape(steps, batch_size)[start_step:, cols] for a in (order, dy, dx, flips, positions)]
  labels = np.asarray(split.labels, np.int32)
  rrc_key = _stream_key(seed, epoch, _TAG_RESIZED_CROP)
  out_side = random_resized_crop or split.images.shape[1]
  if mixing_pictures is not None:
    if not len(mixing_pictures):
      raise ValueError("mixing_pictures is empty.")
    small = [p.shape[:2] for p in mixing_pictures if p.shape[0] < out_side or p.shape[1] < out_side]
    if small:
      raise ValueError(f"mixing pictures must be at least {out_side}x{out_side} (the batch's size); found {small[0]}.")
  mixing_key = _stream_key(seed, epoch, _TAG_MIXING)

  def make(i: int) -> dict:
    idx, y, x, fl, pos = (a[i] for a in plan)
    images = sources.gather_rows(split.images, idx)
    if random_resized_crop:
      images = _resized_crops(images, _crop_uniforms(rrc_key, pos), random_resized_crop)
    elif pad:
      images = _pad_crops(images, y, x, pad)
    if flip:
      images = np.where(fl[:, None, None, None], images[:, :, ::-1], images)
    batch = {"image": np.ascontiguousarray(images), "label": labels[idx]}
    if mixing_pictures is not None:
      batch["mixing"] = _mixing_crops(mixing_pictures, mixing_key, pos, images.shape[1], images.shape[2])
    return batch

  return _ordered(make, len(plan[0]), workers)


def _pad_crops(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, pad: int) -> np.ndarray:
  """Each image zero-padded by ``pad`` and cropped back at offsets ``(dy, dx)``."""
  _, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return np.stack([padded[b, y : y + h, x : x + w] for b, (y, x) in enumerate(zip(dy, dx, strict=True))])


def _mixing_crops(pictures, key: np.ndarray, positions: np.ndarray, height: int, width: int) -> np.ndarray:
  """Per position: a uniform picture index, then a uniform ``height x width`` crop of it."""
  out = np.empty((len(positions), height, width, 3), np.uint8)
  for b, p in enumerate(positions):
    which, top, left = _stream(key, int(p) * 3, int(p) * 3 + 3)
    pic = pictures[int(which % np.uint64(len(pictures)))]
    top = int(top % np.uint64(pic.shape[0] - height + 1))
    left = int(left % np.uint64(pic.shape[1] - width + 1))
    out[b] = pic[top : top + height, left : left + width]
  return out


_RRC_TRIES = 10
_RRC_SCALE, _RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def _crop_uniforms(key: np.ndarray, positions: np.ndarray) -> np.ndarray:
  """``[B, 10, 4]`` uniforms in [0, 1) of each position's random-resized crop."""
  per = _RRC_TRIES * 4
  bits = np.stack([_stream(key, int(p) * per, (int(p) + 1) * per) for p in positions])
  return ((bits >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(len(positions), _RRC_TRIES, 4)


def _crop_box(height: int, width: int, u: np.ndarray) -> tuple[int, int, int, int]:
  """torchvision's ``RandomResizedCrop.get_params`` driven by uniforms ``u [10, 4]``."""
  area = height * width
  lo, hi = math.log(_RRC_RATIO[0]), math.log(_RRC_RATIO[1])
  for us, ur, ui, uj in u:
    target = area * (_RRC_SCALE[0] + (_RRC_SCALE[1] - _RRC_SCALE[0]) * us)
    ratio = math.exp(lo + (hi - lo) * ur)
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      return int(ui * (height - h + 1)), int(uj * (width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < _RRC_RATIO[0]:
    w, h = width, int(round(width / _RRC_RATIO[0]))
  elif in_ratio > _RRC_RATIO[1]:
    h, w = height, int(round(height * _RRC_RATIO[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _resized_crops(images: np.ndarray, u: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image

  out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
  for b, img in enumerate(images):
    i, j, h, w = _crop_box(img.shape[0], img.shape[1], u[b])
    crop = Image.fromarray(np.ascontiguousarray(img[i : i + h, j : j + w]))
    out[b] = np.asarray(crop.resize((size, size), Image.BILINEAR))
  return out


def _ordered(make: Callable[[int], dict], count: int, workers: int, depth: int = 4) -> Iterator[dict]:
  """``make(0), make(1), ...`` computed by ``workers`` threads, at most ``depth`` ahead."""
  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="jaxmix-input")
  try:
    queue = collections.deque(pool.submit(make, i) for i in range(min(depth, count)))
    nxt = len(queue)
    while queue:
      batch = queue.popleft().result()
      if nxt < count:
        queue.append(pool.submit(make, nxt))
        nxt += 1
      yield batch
  finally:
    pool.shutdown(wait=False, cancel_futures=True)


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
