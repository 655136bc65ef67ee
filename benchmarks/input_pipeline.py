"""Throughput of the host input pipeline on the real CIFAR-10 training set.

Measures, on this machine:

* decode: the 50,000 training JPEGs of ``train.zip``, read once into memory, decoded
  by PIL in a Python loop and by ``tf.io.decode_jpeg`` in a parallel tf.data map (the
  accurate integer IDCT that ``jaxmix.data`` uses, bit-identical to PIL), and a cold
  ``jaxmix.data.load`` (read + decode + cache write) against a warm one (cache hit);
* pipeline: images/s of ``jaxmix.data.train_batches`` over whole epochs (batch 128,
  random crop with zero padding 2 and flip, as the PatchUp lineage), consumed as numpy
  on the host; with ``--device`` also through ``prefetch_to_device`` onto the default
  device.

Each timing is repeated ``--repeats`` times; the table gives every run, the median and
the best. The machine may be shared: read the median, and the spread as the noise.

Usage:
  python benchmarks/input_pipeline.py [--data_dir ~/data/cifar10] [--repeats 3]
      [--epochs 1] [--batch_size 128] [--skip_decode] [--device]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import zipfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "cifar10")


def _report(name: str, times: list[float], count: int) -> None:
  rates = [count / t for t in times]
  runs = ", ".join(f"{t:.2f}s" for t in times)
  median = statistics.median(times)
  print(f"{name:<38} runs [{runs}]  median {median:.2f}s = {count / median:,.0f} img/s  best {max(rates):,.0f} img/s")


def bench_decode(data_dir: str, repeats: int) -> None:
  from PIL import Image

  from jaxmix.training import data

  path = os.path.join(data_dir, "train.zip")
  t = time.perf_counter()
  with zipfile.ZipFile(path) as z:
    names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
    blobs = [z.read(n) for n in names]
  print(f"read {len(blobs)} members of {path}: {time.perf_counter() - t:.2f}s")

  pil, tfd = [], []
  for _ in range(repeats):
    t = time.perf_counter()
    a = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    pil.append(time.perf_counter() - t)
    t = time.perf_counter()
    b = data._decode(blobs, names, path)
    tfd.append(time.perf_counter() - t)
  assert np.array_equal(a, b), "tf decode differs from PIL"
  _report("decode: PIL loop", pil, len(blobs))
  _report("decode: tf.data decode_jpeg (parallel)", tfd, len(blobs))

  cold, warm = [], []
  for _ in range(repeats):
    with tempfile.TemporaryDirectory() as cache:
      os.environ["JAXMIX_CACHE_DIR"] = cache
      t = time.perf_counter()
      data.load("cifar10", data_dir)
      cold.append(time.perf_counter() - t)
      t = time.perf_counter()
      data.load("cifar10", data_dir)
      warm.append(time.perf_counter() - t)
    del os.environ["JAXMIX_CACHE_DIR"]
  _report("load: cold (read+decode+cache, 60k)", cold, 60000)
  _report("load: warm (cache hit, 60k)", warm, 60000)


def bench_pipeline(data_dir: str, repeats: int, epochs: int, batch_size: int, device: bool) -> None:
  from jaxmix.training import data

  ds = data.load("cifar10", data_dir)
  steps = data.steps_per_epoch(ds.train, batch_size)
  # Warm-up: TF import, graph tracing.
  for _ in zip(range(3), data.train_batches(ds.train, batch_size=batch_size, seed=0, epoch=0), strict=False):
    pass
  host, dev = [], []
  for r in range(repeats):
    t = time.perf_counter()
    for e in range(epochs):
      for batch in data.train_batches(ds.train, batch_size=batch_size, seed=r, epoch=e, crop_padding=2, flip=True):
        batch["image"].sum(dtype=np.int64)  # touch the pixels, as a consumer would
    host.append(time.perf_counter() - t)
    if device:
      t = time.perf_counter()
      for e in range(epochs):
        it = data.train_batches(ds.train, batch_size=batch_size, seed=r, epoch=e)
        for batch in data.prefetch_to_device(it, size=2):
          batch["image"].block_until_ready()
      dev.append(time.perf_counter() - t)
  count = epochs * steps * batch_size
  _report(f"train_batches B={batch_size} crop2+flip (host)", host, count)
  if device:
    _report("  + prefetch_to_device (default device)", dev, count)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data_dir", default=DEFAULT_DATA)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--skip_decode", action="store_true")
  parser.add_argument("--device", action="store_true")
  args = parser.parse_args()
  print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}")
  if not args.skip_decode:
    bench_decode(args.data_dir, args.repeats)
  bench_pipeline(args.data_dir, args.repeats, args.epochs, args.batch_size, args.device)
  print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
  main()
