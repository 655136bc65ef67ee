"""``jaxmix show``: a PNG grid of every input-space op applied to a few real images.

Reads one image per class for the first ``n`` classes (sorted by name, the first file
of each class) from a folder or a zip in class-folder layout (``<root>/<class>/<file>``,
e.g. ``cifar10/test.zip``), applies each op with a fixed seed and writes a grid: the
originals, then one row per op, each tile captioned with its label weights. Needs
only jax and Pillow (no TensorFlow).

Example:
  jaxmix show --images ~/data/cifar10/test.zip --out gallery.png --n 4 --seed 0
"""

from __future__ import annotations

import argparse
import functools
import importlib
import io
import os
import sys
import zipfile
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

import jaxmix

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Channel statistics of CIFAR-10 (docs/algorithms/recipes.md#preactresnet-and-wrn-lineage): the ops act on normalised
# images as in training, so Cutout's zeros show as the dataset's mean colour.
MEAN = np.array([125.3, 123.0, 113.9], np.float32) / 255
STD = np.array([63.0, 62.1, 66.7], np.float32) / 255

PAD = 8  # between tiles
LABEL_W = 160  # left column with the row names
TITLE_H = 30
CAPTION_H = 34  # two caption lines under each tile
BACKGROUND = (255, 255, 255)
TINT = np.array([255, 40, 40], np.float32)  # Puzzle Mix: where the partner's label weight lies


class Row(NamedTuple):
  """One row of the grid: images in [0, 1] ``[n, H, W, 3]`` and per-tile captions."""

  title: str
  images: np.ndarray
  captions: list
  note: str = ""
  mask: Optional[np.ndarray] = None  # [n, cells, cells] own-label share, drawn over the tiles


class GalleryError(Exception):
  """A user-facing error of ``jaxmix show`` (bad path, unreadable images)."""


# ----------------------------------------------------------------------------
# Reading images


def _class_files(names: Sequence[str]) -> dict:
  """Maps class name -> sorted image file names, from paths ``.../<class>/<file>``."""
  classes = {}
  for name in names:
    parts = name.replace("\\", "/").strip("/").split("/")
    if len(parts) < 2 or not name.lower().endswith(IMAGE_EXTENSIONS) or parts[-1].startswith("."):
      continue
    classes.setdefault(parts[-2], []).append(name)
  return {c: sorted(files) for c, files in sorted(classes.items())}


def load_images(path: str, n: int) -> tuple[np.ndarray, list]:
  """One image per class for the first ``n`` classes of a class-folder zip or directory.

  Args:
    path: a ``.zip`` file or a directory laid out as ``<root>/<class>/<image>``.
    n: number of classes (and images) to read, >= 2.

  Returns:
    ``(images, class_names)``: float32 ``[n, H, W, 3]`` in ``[0, 1]`` (all resized to
    the first image's size) and the ``n`` class names, sorted.

  Raises:
    GalleryError: if the path is missing, not a readable zip or directory, holds fewer
      than ``n`` classes, or an image cannot be decoded.
  """
  if not os.path.exists(path):
    raise GalleryError(f"no such file or directory: {path!r} (give a class-folder zip or directory, e.g. cifar10/test.zip)")
  if os.path.isdir(path):
    names = [os.path.join(root, f) for root, _, files in os.walk(path) for f in files]
    read = lambda name: open(name, "rb").read()  # noqa: E731
    return _decode(_class_files(names), read, n, path)
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise GalleryError(f"{path!r} is neither a directory nor a readable zip file ({e})") from None
  with archive:
    return _decode(_class_files(archive.namelist()), archive.read, n, path)


def _decode(classes: dict, read: Callable[[str], bytes], n: int, path: str) -> tuple[np.ndarray, list]:
  if len(classes) < n:
    raise GalleryError(
      f"{path!r} holds {len(classes)} class folders with images; --n {n} needs at least {n} (layout <root>/<class>/<image>)"
    )
  names = list(classes)[:n]
  images, size = [], None
  for name in names:
    file = classes[name][0]
    try:
      image = Image.open(io.BytesIO(read(file))).convert("RGB")
      image.load()
    except Exception as e:  # PIL raises many types for corrupt files
      raise GalleryError(f"cannot decode image {file!r} in {path!r}: {e}") from None
    size = size or image.size
    if image.size != size:
      image = image.resize(size, Image.BILINEAR)
    images.append(np.asarray(image, np.float32) / 255.0)
  return np.stack(images), names


# ----------------------------------------------------------------------------
# Applying the ops


def _caption(weights: np.ndarray, class_names: Sequence[str]) -> str:
  """'cat 0.73 / dog 0.27': the classes with a visible weight, largest first."""
  order = np.argsort(-weights, kind="stable")
  parts = [f"{class_names[k]} {weights[k]:.2f}" for k in order if weights[k] >= 0.005]
  return " / ".join(parts[:3])


def _image_gradient_saliency(images: jax.Array) -> jax.Array:
  """Puzzle Mix saliency from the image's own spatial gradient magnitude (no model)."""
  gy = jnp.diff(images, axis=1, append=images[:, -1:])
  gx = jnp.diff(images, axis=2, append=images[:, :, -1:])
  return jaxmix.saliency(jnp.sqrt(gx**2 + gy**2))


def _overlay_mask(tile: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Tints each cell of an upscaled uint8 tile by the partner's share ``1 - mask``; draws the grid."""
  height, width, _ = tile.shape
  rows, cols = mask.shape
  up = np.repeat(np.repeat(1.0 - mask, -(-height // rows), axis=0), -(-width // cols), axis=1)[:height, :width, None]
  out = tile * (1 - 0.4 * up) + 0.4 * up * TINT
  for i in range(1, rows):
    out[i * height // rows, :, :] = 255
  for j in range(1, cols):
    out[:, j * width // cols, :] = 255
  return np.round(out).astype(np.uint8)


def build_rows(images: np.ndarray, class_names: Sequence[str], seed: int = 0) -> list:
  """Applies every available op to ``images`` (``[n, H, W, 3]`` in [0, 1]); returns the rows."""
  n = images.shape[0]
  labels = jaxmix.one_hot(jnp.arange(n), n)
  x01 = jnp.asarray(images)
  x = (x01 - MEAN) / STD
  perm = jnp.roll(jnp.arange(n, dtype=jnp.int32), 1)  # partner = the previous image, never itself
  keys = jax.random.split(jax.random.key(seed), 8)

  def row(title, result, note="", normalised=True):
    out = np.asarray(result.images, np.float32)
    out = out * STD + MEAN if normalised else out
    captions = [_caption(np.asarray(result.labels[i]), class_names) for i in range(n)]
    return Row(title, np.clip(out, 0, 1), captions, note)

  rows = [Row("originals", images, [f"{c} 1.00" for c in class_names])]
  mixup = jax.jit(functools.partial(jaxmix.mixup, alpha=1.0, per_sample=True))
  cutmix = jax.jit(functools.partial(jaxmix.cutmix, alpha=1.0, per_sample=True))
  size = max(1, min(16, images.shape[1] // 2))
  cutout = jax.jit(functools.partial(jaxmix.cutout, size=size))
  rows.append(row("mixup", mixup(keys[0], x, labels, perm=perm), "alpha 1, per-sample lam"))
  rows.append(row("cutmix", cutmix(keys[1], x, labels, perm=perm), "alpha 1, per-sample box"))
  rows.append(row("cutout", cutout(keys[2], x, labels), f"size {size}\nhole = mean colour"))
  rows.append(row("patch_augment", jax.jit(jaxmix.patch_augment)(keys[3], x, labels, perm=perm), "min 0.1, max 0.9"))
  if "puzzlemix" in jaxmix.__all__ and "saliency" in jaxmix.__all__:
    blocks = 4 if images.shape[1] % 4 == 0 and images.shape[2] % 4 == 0 else None
    puzzlemix = jax.jit(functools.partial(jaxmix.puzzlemix, block_num=blocks, mean=MEAN, std=STD))
    result = puzzlemix(keys[4], x, labels, _image_gradient_saliency(x01), perm=perm)
    mask = np.asarray(result.mask, np.float32) if result.mask is not None and np.ndim(result.mask) == 3 else None
    grid = f"{blocks}x{blocks} blocks; " if blocks else ""
    rows.append(
      row("puzzlemix", result, f"{grid}red = partner's\nshare per block\nsaliency: image-\ngradient magnitude")._replace(mask=mask)
    )
  if "ipmix" in jaxmix.__all__:
    rows.extend(_ipmix_rows(keys[5], x01, labels, class_names))
  return rows


def _ipmix_rows(key, x01: jax.Array, labels: jax.Array, class_names: Sequence[str]) -> list:
  """IPMix per image with a known mixing picture, and the pictures in the row below."""
  n, height, width, channels = x01.shape
  try:
    pictures = importlib.import_module("jaxmix.fractals").generate(7, n, size=height)
  except (ImportError, AttributeError, ValueError):
    pictures = None
  if pictures is None or pictures.shape[1:] != (height, width, channels):
    result = jaxmix.ipmix(key, x01, labels)
    return [Row("ipmix", np.clip(np.asarray(result.images), 0, 1), [_caption(np.asarray(result.labels[i]), class_names) for i in range(n)])]
  outs, captions = [], []
  ipmix = jax.jit(jaxmix.ipmix)
  for i, k in enumerate(jax.random.split(key, n)):  # one picture per call, so the tile's picture is known
    result = ipmix(k, x01[i : i + 1], labels[i : i + 1], mixing_set=pictures[i : i + 1])
    outs.append(np.asarray(result.images[0], np.float32))
    captions.append(_caption(np.asarray(result.labels[0]), class_names))
  return [
    Row("ipmix", np.clip(np.stack(outs), 0, 1), captions, "[0, 1] pixel space"),
    Row("ipmix picture", np.asarray(pictures), ["mixing picture"] * n, "procedural fractal"),
  ]


# ----------------------------------------------------------------------------
# Drawing


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1
    return ImageFont.load_default()


def default_scale(height: int, width: int) -> int:
  """Nearest-neighbour upscaling factor so that tiles are at least 128 px."""
  return max(1, -(-128 // max(1, min(height, width))))


def layout(n_rows: int, n_cols: int, height: int, width: int, scale: int) -> tuple[int, int]:
  """``(width, height)`` in pixels of a grid of ``n_rows x n_cols`` tiles."""
  tile_w, tile_h = width * scale, height * scale
  return LABEL_W + n_cols * (tile_w + PAD) + PAD, TITLE_H + n_rows * (tile_h + CAPTION_H + PAD) + PAD


def tile_origin(row: int, col: int, height: int, width: int, scale: int) -> tuple[int, int]:
  """Top-left ``(x, y)`` of the image of tile (row, col)."""
  return LABEL_W + PAD + col * (width * scale + PAD), TITLE_H + row * (height * scale + CAPTION_H + PAD)


def render(rows: Sequence[Row], scale: int, title: str = "") -> Image.Image:
  """Draws the rows as one RGB image: row names on the left, captions under the tiles."""
  n, height, width, _ = rows[0].images.shape
  canvas = Image.new("RGB", layout(len(rows), n, height, width, scale), BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  caption_font, label_font, title_font = _font(12), _font(15), _font(16)
  draw.text((PAD, 7), title, fill=(0, 0, 0), font=title_font)
  for r, row in enumerate(rows):
    for c in range(n):
      x0, y0 = tile_origin(r, c, height, width, scale)
      pixels = np.round(np.clip(row.images[c], 0, 1) * 255).astype(np.uint8)
      tile = np.asarray(Image.fromarray(pixels).resize((width * scale, height * scale), Image.NEAREST))
      if row.mask is not None:
        tile = _overlay_mask(tile, row.mask[c])
      canvas.paste(Image.fromarray(tile), (x0, y0))
      _draw_caption(draw, row.captions[c], x0, y0 + height * scale + 2, width * scale, caption_font)
    _, y0 = tile_origin(r, 0, height, width, scale)
    draw.text((PAD, y0 + 4), row.title, fill=(0, 0, 0), font=label_font)
    for i, line in enumerate(row.note.split("\n") if row.note else []):
      draw.text((PAD, y0 + 26 + 15 * i), line, fill=(90, 90, 90), font=caption_font)
  return canvas


def _draw_caption(draw: ImageDraw.ImageDraw, text: str, x: int, y: int, max_width: int, font) -> None:
  """Writes ``text`` under a tile, broken at ' / ' onto a second line if too wide."""
  lines = [text]
  if draw.textlength(text, font=font) > max_width and " / " in text:
    head, _, tail = text.partition(" / ")
    lines = [head + " /", tail]
  for i, line in enumerate(lines[:2]):
    draw.text((x, y + 15 * i), line, fill=(0, 0, 0), font=font)


def write_gallery(images_path: str, out: str, n: int = 4, seed: int = 0, scale: Optional[int] = None) -> tuple[int, int]:
  """Reads the images, applies the ops, writes the PNG; returns its ``(width, height)``."""
  images, class_names = load_images(images_path, n)
  rows = build_rows(images, class_names, seed)
  scale = scale or default_scale(*images.shape[1:3])
  canvas = render(rows, scale, f"jaxmix ops on {os.path.basename(images_path)} (seed {seed}); captions: label weights")
  canvas.save(out, format="PNG")
  return canvas.size


def cli_main(argv=None) -> int:
  """``jaxmix show``: returns the process exit code (0 ok, 2 bad input)."""
  parser = argparse.ArgumentParser(prog="jaxmix show", description="Write a PNG grid of every jaxmix op applied to real images.")
  parser.add_argument("--images", required=True, help="class-folder zip or directory (<root>/<class>/<image>), e.g. cifar10/test.zip")
  parser.add_argument("--out", default="gallery.png", help="output PNG path (default: gallery.png)")
  parser.add_argument("--n", type=int, default=4, help="number of classes / images, one per class (default: 4)")
  parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the ops (default: 0)")
  parser.add_argument("--scale", type=int, default=None, help="nearest-neighbour upscaling (default: tiles of at least 128 px)")
  args = parser.parse_args(argv)
  if args.n < 2:
    parser.error("--n must be at least 2 (the ops mix pairs of images)")
  if args.scale is not None and args.scale < 1:
    parser.error("--scale must be at least 1")
  try:
    size = write_gallery(args.images, args.out, n=args.n, seed=args.seed, scale=args.scale)
  except GalleryError as e:
    print(f"jaxmix show: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out} ({size[0]}x{size[1]} px)")
  return 0
