"""Where images come from: class folders, zips, Tiny-ImageNet, tfds; decoded once to disk.

Every split of every source is decoded once, with Pillow, into an on-disk cache: one
``images.npy`` (``[N, H, W, 3]`` uint8) and one ``labels.npy`` per split, under
``$JAXMIX_CACHE_DIR`` (default ``~/.cache/jaxmix/data``). Loads open ``images.npy``
memory-mapped, so host memory holds the pages a batch touches, not the data set: a
folder of ten times more images needs ten times more disk, not more memory. The cache
entry is keyed by the source (absolute path; size and mtime of every file, or of the
zip) and by the stored size, so it is rebuilt when any of them changes; a build writes
into a temporary directory and renames it, so a killed build or two processes building
at once never leave a partial entry.

Folders and zips need no TensorFlow: Pillow decodes (a JPEG decodes bit for bit as
``tf.io.decode_jpeg(..., dct_method="INTEGER_ACCURATE")`` does). tfds data sets go
through tfds (TensorFlow) once, to fill the same cache.

Layouts read (``data_dir``):

* class folders: ``DIR/train/<class>/<image>`` and ``DIR/test/<class>/<image>`` (or
  ``val/``, ImageNet style), or ``train.zip`` / ``test.zip`` beside each other, or one
  zip holding ``[root/]train/...`` and ``[root/]test/...``; labels follow the sorted
  class names of ``train``.
* Tiny-ImageNet-200 as it unpacks (``DIR`` itself, ``DIR/tiny-imagenet-200/`` or
  ``DIR/tiny-imagenet-200.zip``): ``wnids.txt`` (the 200 classes, in label order),
  ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` labelled by
  ``val/val_annotations.txt``; ``val`` is the test split, as in the Puzzle Mix code.

Sizes: with ``image_size`` None every image of a split must have the same size, which
is kept. With ``image_size=S`` each image is resized (bilinear, antialiased, as
torchvision's ``Resize`` on a PIL image) so that its shorter side is ``resize`` (S by
default) and centre-cropped to ``S x S``.

An image that cannot be decoded is skipped with a warning that counts and names the
skipped files (repeated on every load of the cached split); a split where nothing
decodes is an error.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import json
import os
import shutil
import warnings
import zipfile
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from jaxmix.ops import core

__all__ = (
  "Listing",
  "cache_dir",
  "cached_split",
  "decode",
  "dir_fingerprint",
  "gather_rows",
  "list_class_folders",
  "list_tiny_imagenet",
  "listing_examples",
  "listing_key",
  "load_pictures",
  "take",
)

_FORMAT = 2
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_CHUNK = 256


cache_dir = core.cache_dir  # ``$JAXMIX_CACHE_DIR``, default ``~/.cache/jaxmix/data``


# ----------------------------------------------------------------------------
# Archives: a directory or a zip, read by relative '/'-separated names.


class _Archive:
  """Read access to the files of a directory or a zip."""

  def __init__(self, path: str):
    self.path = os.path.abspath(path)
    self.is_zip = os.path.isfile(self.path)
    self._zip = None
    if self.is_zip:
      try:
        self._zip = zipfile.ZipFile(self.path)
      except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"cannot read zip {self.path!r}: {e}") from e

  def names(self) -> list[str]:
    if self._zip is not None:
      return sorted(n for n in self._zip.namelist() if not n.endswith("/"))
    out = []
    for root, dirs, files in os.walk(self.path):
      dirs.sort()
      rel = os.path.relpath(root, self.path).replace(os.sep, "/")
      out += [f if rel == "." else f"{rel}/{f}" for f in files]
    return sorted(out)

  def read(self, name: str) -> bytes:
    try:
      if self._zip is not None:
        return self._zip.read(name)
      with open(os.path.join(self.path, name), "rb") as f:
        return f.read()
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
      raise ValueError(f"cannot read {name!r} from {self.path!r}: {e}") from e

  def fingerprint(self) -> str:
    """Changes when any file is added, removed, resized or touched."""
    h = hashlib.sha256()
    if self._zip is not None:
      st = os.stat(self.path)
      h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    else:
      for n in self.names():
        st = os.stat(os.path.join(self.path, n))
        h.update(f"{n}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()

  def close(self) -> None:
    if self._zip is not None:
      self._zip.close()


def dir_fingerprint(path: str) -> str:
  """Names, sizes and times of the files under ``path`` (``"none"`` when it does not exist)."""
  if not os.path.isdir(path):
    return "none"
  archive = _Archive(path)
  return archive.fingerprint()


def _is_image(name: str) -> bool:
  parts = name.split("/")
  return parts[0] != "__MACOSX" and not parts[-1].startswith(".") and name.lower().endswith(_IMAGE_EXTS)


class Listing(NamedTuple):
  """One split of a source, before decoding.

  Attributes:
    source: the directory or zip (absolute path).
    members: image names inside it, in example order.
    labels: ``[N]`` int32 label of each member.
    class_names: class names in label order.
    tag: a short name for the cache entry (``"train"``, ``"test"``, ...).
  """

  source: str
  members: tuple[str, ...]
  labels: np.ndarray
  class_names: tuple[str, ...]
  tag: str


# ----------------------------------------------------------------------------
# Class folders


def _split_roots(names: Sequence[str]) -> dict[str, list[str]]:
  """Images grouped by the folder that holds their class folders."""
  roots = collections.defaultdict(list)
  for n in names:
    parts = n.split("/")
    if len(parts) >= 2 and _is_image(n):
      roots["/".join(parts[:-2])].append(n)
  return roots


def _class_listing(source: str, members: list[str], tag: str, class_names: Optional[Sequence[str]] = None) -> Listing:
  classes = [n.split("/")[-2] for n in members]
  names = tuple(sorted(set(classes))) if class_names is None else tuple(class_names)
  index = {c: i for i, c in enumerate(names)}
  unknown = sorted(set(classes) - set(index))
  if unknown:
    raise ValueError(f"{source!r} ({tag}): class folders {unknown[:5]} are not among the training classes {list(names[:5])}...")
  return Listing(source, tuple(members), np.array([index[c] for c in classes], np.int32), names, tag)


def list_class_folders(data_dir: str) -> Optional[tuple[Listing, Listing]]:
  """``(train, test)`` listings of a class-folder directory or zip, or None when it holds none.

  Args:
    data_dir: a directory with ``train/`` and ``test/`` (or ``val/``) class folders or
      ``train.zip`` and ``test.zip`` (or ``val.zip``), or one zip holding both splits.

  Returns:
    The two listings (test labels follow the train classes), or ``None`` when
    ``data_dir`` is a directory without any of those (e.g. a tfds data directory).

  Raises:
    FileNotFoundError: ``data_dir`` does not exist.
    ValueError: a split is missing, a split is not one folder of class folders, or the
      test split has a class the training split has not.
  """
  path = os.path.abspath(os.path.expanduser(data_dir))
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"data_dir {path!r} does not exist. Pass a class-folder dir/zip for offline use; to download through tfds into it, "
      "create it first (mkdir -p), or pass no data_dir to use the tfds default (~/tensorflow_datasets)."
    )
  if os.path.isfile(path):
    if not zipfile.is_zipfile(path):
      raise ValueError(f"data_dir {path!r} is a file but not a zip archive.")
    archive = _Archive(path)
    try:
      roots = _split_roots(archive.names())
    finally:
      archive.close()
    found = {}
    for split in ("train", "test", "val"):
      hits = [r for r in roots if r.split("/")[-1] == split]
      if len(hits) > 1:
        raise ValueError(f"{path!r}: several {split!r} folders of class folders: {hits}.")
      if hits:
        found[split] = (path, roots[hits[0]])
  else:
    found = {}
    for split in ("train", "test", "val"):
      zpath, dpath = os.path.join(path, split + ".zip"), os.path.join(path, split)
      source = zpath if os.path.isfile(zpath) else dpath if os.path.isdir(dpath) else None
      if source is None:
        continue
      archive = _Archive(source)
      try:
        roots = {r: m for r, m in _split_roots(archive.names()).items() if r.split("/")[-1] in ("", split)}
      finally:
        archive.close()
      if len(roots) != 1:
        where = f"{source!r} (split {split!r})"
        raise ValueError(
          f"{where}: expected images in one folder of class folders (<class>/<image>), found roots {sorted(roots) or 'none'}."
        )
      found[split] = (source, next(iter(roots.values())))
    if not found:
      return None
  test_split = "test" if "test" in found else "val"
  missing = [s for s in ("train", test_split) if s not in found]
  if missing:
    raise ValueError(
      f"data_dir {path!r} has {sorted(found)} but no {missing} (expected {missing[0]}.zip or {missing[0]}/ of class folders)."
    )
  train = _class_listing(*found["train"], "train")
  test = _class_listing(*found[test_split], test_split, train.class_names)
  return train, test


# ----------------------------------------------------------------------------
# Tiny-ImageNet-200


def _tiny_root(data_dir: str) -> tuple[str, str]:
  """``(archive path, prefix inside it)`` of a Tiny-ImageNet-200 directory or zip."""
  path = os.path.abspath(os.path.expanduser(data_dir))
  if not os.path.exists(path):
    raise FileNotFoundError(f"data_dir {path!r} does not exist (expected the unpacked tiny-imagenet-200/ or tiny-imagenet-200.zip).")
  for candidate in (path, os.path.join(path, "tiny-imagenet-200.zip")):
    if os.path.isfile(candidate) and zipfile.is_zipfile(candidate):
      archive = _Archive(candidate)
      try:
        hits = [n[: -len("wnids.txt")] for n in archive.names() if n.split("/")[-1] == "wnids.txt"]
      finally:
        archive.close()
      if len(hits) != 1:
        raise ValueError(f"{candidate!r} holds {len(hits)} wnids.txt files; expected the one of tiny-imagenet-200/.")
      return candidate, hits[0]
  for candidate in (path, os.path.join(path, "tiny-imagenet-200")):
    if os.path.isfile(os.path.join(candidate, "wnids.txt")):
      return candidate, ""
  raise ValueError(
    f"{path!r} is not Tiny-ImageNet-200: no wnids.txt in it, in {os.path.join(path, 'tiny-imagenet-200')!r}, "
    "or in tiny-imagenet-200.zip (unpack http://cs231n.stanford.edu/tiny-imagenet-200.zip and pass its folder)."
  )


def list_tiny_imagenet(data_dir: str) -> tuple[Listing, Listing]:
  """``(train, val)`` listings of Tiny-ImageNet-200 as it unpacks.

  Raises:
    FileNotFoundError: ``data_dir`` does not exist.
    ValueError: no ``wnids.txt``; a class of ``wnids.txt`` without training images; a
      training folder that is not in ``wnids.txt``; a val image without an annotation
      or an annotation without its image; an annotation naming an unknown class.
  """
  source, prefix = _tiny_root(data_dir)
  archive = _Archive(source)
  try:
    names = archive.names()
    wnids_file = prefix + "wnids.txt"
    wnids = tuple(w.strip() for w in archive.read(wnids_file).decode().split() if w.strip())
    notes_file = prefix + "val/val_annotations.txt"
    if notes_file not in set(names):
      raise ValueError(f"{source!r}: no {notes_file!r} (the labels of the val images).")
    notes = archive.read(notes_file).decode()
  finally:
    archive.close()
  where = f"{source!r}" + (f" ({prefix.rstrip('/')})" if prefix else "")
  if len(set(wnids)) != len(wnids) or not wnids:
    raise ValueError(f"{where}: wnids.txt must list distinct class ids, found {len(wnids)} entries ({len(set(wnids))} distinct).")
  index = {w: i for i, w in enumerate(wnids)}
  train, train_labels, seen = [], [], set()
  for n in names:
    if not n.startswith(prefix + "train/") or not _is_image(n):
      continue
    parts = n[len(prefix) :].split("/")  # train/<wnid>/images/<file>
    if len(parts) != 4 or parts[2] != "images":
      continue
    if parts[1] not in index:
      raise ValueError(f"{where}: training folder train/{parts[1]} is not a class of wnids.txt.")
    train.append(n)
    train_labels.append(index[parts[1]])
    seen.add(parts[1])
  empty = [w for w in wnids if w not in seen]
  if empty:
    raise ValueError(f"{where}: {len(empty)} classes of wnids.txt have no train/<wnid>/images/*: {empty[:5]}.")
  images = {n[len(prefix) + len("val/images/") :] for n in names if n.startswith(prefix + "val/images/") and _is_image(n)}
  val, val_labels = [], []
  for line_no, line in enumerate(notes.splitlines(), 1):
    fields = line.split("\t")
    if not line.strip():
      continue
    if len(fields) < 2:
      raise ValueError(f"{where}: val/val_annotations.txt line {line_no} is not '<file>\\t<wnid>...': {line!r}.")
    file, wnid = fields[0].strip(), fields[1].strip()
    if wnid not in index:
      raise ValueError(f"{where}: val/val_annotations.txt line {line_no} names class {wnid!r}, not in wnids.txt.")
    if file not in images:
      raise ValueError(f"{where}: val/val_annotations.txt line {line_no} names {file!r}, which is not in val/images/.")
    val.append(prefix + "val/images/" + file)
    val_labels.append(index[wnid])
  unlabelled = sorted(images - {v.split("/")[-1] for v in val})
  if unlabelled:
    raise ValueError(f"{where}: {len(unlabelled)} val images have no line in val/val_annotations.txt, e.g. {unlabelled[:3]}.")
  return (
    Listing(source, tuple(train), np.array(train_labels, np.int32), wnids, "train"),
    Listing(source, tuple(val), np.array(val_labels, np.int32), wnids, "val"),  # the annotation file's order
  )


# ----------------------------------------------------------------------------
# Decoding


def _shorter_side(img, short: int):
  """``img`` resized (bilinear, antialiased) so that its shorter side is ``short``, as torchvision's ``Resize(short)``."""
  from PIL import Image

  w, h = img.size
  size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
  return img if size == (w, h) else img.resize(size, Image.BILINEAR)


def _centre(length: int, crop: int) -> int:
  """Offset of a centred crop, as torchvision's ``CenterCrop``."""
  return int(round((length - crop) / 2.0))


def _to_size(img, size: Optional[int], resize: Optional[int]):
  """Resize the shorter side to ``resize`` (default ``size``), centre-crop ``size``."""
  if size is None:
    return img
  img = _shorter_side(img, resize or size)
  w, h = img.size
  top, left = _centre(h, size), _centre(w, size)
  return img.crop((left, top, left + size, top + size))


def decode(blob, size: Optional[int] = None, resize: Optional[int] = None) -> np.ndarray:
  """One image as ``[H, W, 3]`` uint8: encoded bytes (any Pillow format) or an array.

  Args:
    blob: the encoded file, or an ``[H, W, C]`` uint8 array (C in 1, 3, 4).
    size: output ``size x size`` (shorter side resized, then centre crop), or None to
      keep the image's size.
    resize: the shorter side before the crop (default ``size``).

  Raises:
    ValueError: the bytes are not an image Pillow can decode.
  """
  from PIL import Image, UnidentifiedImageError

  try:
    if isinstance(blob, np.ndarray):
      img = Image.fromarray(blob[..., 0] if blob.ndim == 3 and blob.shape[-1] == 1 else blob)
    else:
      img = Image.open(io.BytesIO(blob))
    img = _to_size(img.convert("RGB"), size, resize)
    return np.asarray(img, np.uint8)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # Pillow's errors for a bad file
    raise ValueError(str(e) or type(e).__name__) from e


# ----------------------------------------------------------------------------
# The cache


def _entry_path(name: str, key: dict) -> str:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return os.path.join(cache_dir(), f"{name}-{digest}")


def _open(entry: str):
  """``(images memmap, labels, meta)`` of a finished cache entry, or None."""
  try:
    with open(os.path.join(entry, "meta.json")) as f:
      meta = json.load(f)
    images = np.load(os.path.join(entry, "images.npy"), mmap_mode="r")
    labels = np.load(os.path.join(entry, "labels.npy"))
  except (OSError, ValueError, json.JSONDecodeError):
    return None
  if meta.get("format") != _FORMAT or len(images) != len(labels) or images.ndim != 4:
    return None
  return images, labels.astype(np.int32), meta


def _warn_skipped(where: str, skipped: list, total: int) -> None:
  if skipped:
    shown = "; ".join(f"{n}: {why}" for n, why in skipped[:3])
    warnings.warn(
      f"{where}: skipped {len(skipped)} of {total} files that could not be decoded ({shown}{'; ...' if len(skipped) > 3 else ''}).",
      stacklevel=3,
    )


def cached_split(
  name: str,
  key: dict,
  count: int,
  examples: Callable[[], Iterable[tuple[str, object, int]]],
  *,
  class_names: Sequence[str],
  size: Optional[int] = None,
  resize: Optional[int] = None,
  where: str = "",
  workers: Optional[int] = None,
):
  """Opens a split from the cache, decoding it first when it is not there.

  Args:
    name: a readable prefix of the cache entry.
    key: what identifies the source (path, fingerprint, split); the stored size is
      added to it.
    count: how many examples ``examples()`` yields.
    examples: returns an iterable of ``(name, blob or array, label)``.
    class_names: stored beside the split.
    size: stored ``size x size``, or None to keep the images' size (all equal).
    resize: shorter side before the centre crop (default ``size``).
    where: names the source in errors and warnings.
    workers: decoding threads (default: the CPU count).

  Returns:
    ``(images, labels, class_names)``: ``images`` a read-only memory-mapped
    ``[N, H, W, 3]`` uint8 array.

  Raises:
    ValueError: no image decodes, or (with ``size=None``) images of different sizes.
  """
  entry = _entry_path(name, {**key, "format": _FORMAT, "size": size, "resize": resize})
  found = _open(entry)
  if found is None:
    _build(entry, count, examples, class_names=class_names, size=size, resize=resize, where=where or name, workers=workers)
    found = _open(entry)
    if found is None:
      raise OSError(f"the cache entry {entry!r} could not be read back after writing it (disk full?).")
  images, labels, meta = found
  _warn_skipped(where or name, meta.get("skipped", []), meta.get("count", len(labels)))
  return images, labels, tuple(meta["class_names"])


def _build(entry, count, examples, *, class_names, size, resize, where, workers) -> None:
  from numpy.lib.format import open_memmap

  parent = os.path.dirname(entry)
  os.makedirs(parent, exist_ok=True)
  tmp = f"{entry}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  out, labels, skipped, cursor, shape = None, np.zeros(count, np.int32), [], 0, None
  workers = workers or min(8, os.cpu_count() or 1)
  try:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for chunk in _chunks(iter(examples()), _CHUNK):

        def one(item):
          n, blob, _ = item
          if isinstance(blob, Exception):
            return (n, str(blob))
          try:
            return decode(blob, size, resize)
          except ValueError as e:
            return (n, str(e))

        for (n, _, label), img in zip(chunk, pool.map(one, chunk), strict=True):
          if isinstance(img, tuple):
            skipped.append(img)
            continue
          if shape is None:
            shape = img.shape
            out = open_memmap(os.path.join(tmp, "images.npy"), mode="w+", dtype=np.uint8, shape=(count, *shape))
          elif img.shape != shape:
            raise ValueError(
              f"{where}: image {n!r} has shape {img.shape}, others {shape}; "
              "all images must share one size (pass --image_size to resize them)."
            )
          if cursor >= count:
            raise ValueError(f"{where}: more examples than the {count} announced.")
          out[cursor] = img
          labels[cursor] = label
          cursor += 1
    if cursor == 0:
      shown = "; ".join(f"{n}: {why}" for n, why in skipped[:3])
      raise ValueError(f"{where}: none of its {count} images could be decoded ({shown or 'no images'}).")
    out.flush()
    if cursor < count:  # skipped files: keep the first `cursor` rows
      del out
      full = np.load(os.path.join(tmp, "images.npy"), mmap_mode="r")
      kept = open_memmap(os.path.join(tmp, "kept.npy"), mode="w+", dtype=np.uint8, shape=(cursor, *shape))
      for i in range(0, cursor, 4096):
        kept[i : i + 4096] = full[i : min(cursor, i + 4096)]
      kept.flush()
      del kept, full
      os.replace(os.path.join(tmp, "kept.npy"), os.path.join(tmp, "images.npy"))
    else:
      del out
    np.save(os.path.join(tmp, "labels.npy"), labels[:cursor])
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump({"format": _FORMAT, "class_names": list(class_names), "count": count, "skipped": skipped, "source": where}, f)
    try:
      os.rename(tmp, entry)  # atomic; another process that finished first wins
    except OSError:
      if _open(entry) is None:
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _chunks(it: Iterator, n: int) -> Iterator[list]:
  while True:
    chunk = [x for _, x in zip(range(n), it, strict=False)]
    if not chunk:
      return
    yield chunk


def listing_examples(listing: Listing) -> Callable[[], Iterator[tuple[str, bytes, int]]]:
  """The ``examples`` callable of ``cached_split`` for a listing (reads sequentially)."""

  def gen():
    archive = _Archive(listing.source)
    try:
      for n, y in zip(listing.members, listing.labels, strict=True):
        try:
          blob = archive.read(n)
        except ValueError as e:
          blob = e  # unreadable: skipped and reported with the undecodable ones
        yield n, blob, int(y)
    finally:
      archive.close()

  return gen


def listing_key(listing: Listing) -> dict:
  """What identifies a listing's content (path, file fingerprint, members)."""
  archive = _Archive(listing.source)
  try:
    fp = archive.fingerprint()
  finally:
    archive.close()
  members = hashlib.sha256("\n".join(listing.members).encode() + listing.labels.tobytes()).hexdigest()
  return {"source": listing.source, "fingerprint": fp, "members": members, "tag": listing.tag}


# ----------------------------------------------------------------------------
# Mixing pictures (IPMix's --mixing-set)


def load_pictures(path: str, short_side: int) -> list[np.ndarray]:
  """Every picture under a directory or zip, its shorter side resized to ``short_side``.

  IPMix's mixing set: the official code reads it with ``ImageFolder`` and
  ``Resize(36)``; here any folder of pictures works (subfolders are walked, their names
  ignored). Pictures keep their aspect ratio (the crop to the image size is drawn per
  example, by ``train_batches``); undecodable files are skipped with a warning.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: it holds no decodable picture, or ``short_side`` < 1.
  """
  from PIL import Image

  if not isinstance(short_side, int) or short_side < 1:
    raise ValueError(f"short_side must be a positive int, got {short_side!r}.")
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"mixing set {path!r} does not exist (a folder or zip of pictures).")
  if os.path.isfile(path) and not zipfile.is_zipfile(path):
    raise ValueError(f"mixing set {path!r} is a file but not a zip archive; pass a folder or zip of pictures.")
  archive = _Archive(path)
  out, skipped = [], []
  try:
    names = [n for n in archive.names() if _is_image(n)]

    def one(n):
      try:
        return np.asarray(_shorter_side(Image.open(io.BytesIO(archive.read(n))).convert("RGB"), short_side), np.uint8)
      except (OSError, ValueError, SyntaxError) as e:
        return (n, str(e))

    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
      for img in pool.map(one, names):
        (skipped if isinstance(img, tuple) else out).append(img)
  finally:
    archive.close()
  if not out:
    raise ValueError(f"mixing set {path!r} holds no picture that decodes ({len(names)} image files, {len(skipped)} skipped).")
  _warn_skipped(f"mixing set {path!r}", skipped, len(names))
  return out


# ----------------------------------------------------------------------------
# Subsets


def gather_rows(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """``images[idx]`` as a new uint8 array, read in sorted order (sequential pages of a memory map)."""
  order = np.argsort(idx, kind="stable")
  out = np.empty((len(idx), *images.shape[1:]), np.uint8)
  out[order] = images[idx[order]]
  return out


def take(images: np.ndarray, idx: np.ndarray, crop: Optional[int] = None) -> np.ndarray:
  """Rows ``idx`` of ``images`` (optionally centre-cropped to ``crop x crop``).

  A memory-mapped ``images`` gives a memory-mapped subset, written once to the cache
  beside it (keyed by the rows), so a subset of a large split stays off the heap; an
  in-memory array gives an in-memory subset.
  """
  idx = np.asarray(idx, np.int64)

  def cut(x):
    if crop is None:
      return x
    top, left = _centre(x.shape[1], crop), _centre(x.shape[2], crop)
    return x[:, top : top + crop, left : left + crop]

  if not isinstance(images, np.memmap) or not getattr(images, "filename", None):
    return np.ascontiguousarray(cut(images[idx]))
  from numpy.lib.format import open_memmap

  base = os.path.dirname(images.filename)
  digest = hashlib.sha256(idx.tobytes() + repr(crop).encode() + repr(images.shape).encode()).hexdigest()[:16]
  path = os.path.join(base, f"subset-{digest}.npy")
  try:
    found = np.load(path, mmap_mode="r")
    if len(found) == len(idx):
      return found
  except (OSError, ValueError):
    pass
  h, w = images.shape[1:3] if crop is None else (crop, crop)
  tmp = f"{path}.tmp-{os.getpid()}.npy"
  out = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(idx), h, w, images.shape[3]))
  for i in range(0, len(idx), 4096):
    part = idx[i : i + 4096]
    out[i : i + len(part)] = cut(gather_rows(images, part))
  out.flush()
  del out
  os.replace(tmp, path)
  return np.load(path, mmap_mode="r")
