"""The on-disk cache of generated test sets (deformed and corrupted copies of a test set).

A set is stored as ``<cache_dir>/<prefix>_<name>_<fingerprint>.npz`` with its images
under ``images``; the fingerprint covers the source images, the generator's settings
and a format version, so a changed test set or setting never reads a stale file.
Files are written to a temporary name and renamed, so a killed run leaves no partial file.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Optional

import numpy as np

__all__ = ("cached_images", "fingerprint")


def fingerprint(images: np.ndarray, *parts, version: int = 1) -> str:
  """A 16-hex-digit digest of ``images`` (bytes, shape, dtype), ``version`` and ``parts``."""
  digest = hashlib.sha1(np.ascontiguousarray(images).tobytes())
  digest.update(repr((images.shape, str(images.dtype), version) + parts).encode())
  return digest.hexdigest()[:16]


def cached_images(path: Optional[str], build: Callable[[], tuple[np.ndarray, dict]]) -> np.ndarray:
  """The ``images`` stored at ``path``, or ``build() -> (images, extra arrays)`` saved there first.

  ``path=None`` builds without caching.
  """
  if path and os.path.exists(path):
    with np.load(path) as data:
      return data["images"]
  images, extra = build()
  if path:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, images=images, **extra)
    os.replace(tmp, path)
  return images
