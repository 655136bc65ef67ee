"""Input pipeline throughput against the train step it feeds, at 32, 64 and 224 pixels.

For each recipe, on this machine, in one run:

* pipeline: images/s of ``jaxmix.data.train_batches`` over a memory-mapped uint8 split
  (the layout ``jaxmix.data.load`` returns), consumed as numpy on the host: 32x32 with
  crop padding 2 + flip (CIFAR, PatchUp lineage), 64x64 with padding 4 + flip
  (Tiny-ImageNet, Puzzle Mix), and ImageNet's random-resized crop to 224 from images
  kept at 256;
* step: images/s of the jitted vanilla train step of the recipe's model on the same
  batch size (``preactresnet18``, ``preactresnet18_64``, ``resnet50``), after compiling;
* the ratio pipeline / step: above 1 the step, not the input, sets the pace (the target
  is 3).

With ``--decode`` it also times the one-off cost of a cold ``jaxmix.data.load`` of the
CIFAR-10 zips (read + Pillow decode + cache write) against a warm one (cache hit).
The images are random bytes (the pipeline's cost does not depend on them); the machine
may be shared: read the median.

Usage:
  python benchmarks/input_pipeline.py [--sizes 32 64 224] [--repeats 3] [--workers 2] [--decode] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "cifar10")

# size -> (stored side, images, batch, model, pipeline kwargs, timed steps)
RECIPES = {
  32: (32, 10000, 128, "preactresnet18", {"crop_padding": 2}, 3),
  64: (64, 4000, 128, "preactresnet18_64", {"crop_padding": 4}, 2),
  224: (256, 600, 32, "resnet50", {"random_resized_crop": 224}, 2),
}


def _split(side: int, n: int, work: str):
  from numpy.lib.format import open_memmap

  from jaxmix.training import data

  path = os.path.join(work, f"images{side}.npy")
  out = open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, side, side, 3))
  rng = np.random.default_rng(0)
  for i in range(0, n, 500):
    out[i : i + 500] = rng.integers(0, 256, (min(500, n - i), side, side, 3), dtype=np.uint8)
  out.flush()
  del out
  return data.Split(np.load(path, mmap_mode="r"), (np.arange(n) % 10).astype(np.int32))


def pipeline_rate(split, batch: int, kwargs: dict, repeats: int, workers: int, max_batches: int) -> list[float]:
  from jaxmix.training import data

  rates = []
  for r in range(repeats):
    it = data.train_batches(split, batch_size=batch, seed=r, epoch=0, workers=workers, **kwargs)
    t, n = time.perf_counter(), 0
    for b in it:
      b["image"].sum(dtype=np.int64)  # touch the pixels, as a consumer would
      n += len(b["label"])
      if n >= max_batches * batch:
        break
    rates.append(n / (time.perf_counter() - t))
  return rates


def step_rate(arch: str, side: int, batch: int, steps: int, repeats: int) -> tuple[list[float], float]:
  import jax

  from jaxmix import training as jtrain
  from jaxmix.training import models
  from jaxmix.training import step as ts

  cfg = jtrain.TrainConfig(arch=arch, batch_size=batch, train="vanilla")
  model = models.get_model(arch, 10)
  mesh = jax.make_mesh((1,), (ts.AXIS,), devices=jax.devices()[:1])
  state = ts.init_state(model, jtrain.make_optimizer(cfg, 100), jax.random.key(0), (side, side, 3), seed_key=jax.random.key(0))
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  step = ts.make_train_step(model, jtrain.config.step_config(cfg, 10, mean, std), mesh, per_device_batch=batch)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.AXIS))
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  rng = np.random.default_rng(0)
  b = {"image": rng.integers(0, 256, (batch, side, side, 3), dtype=np.uint8), "label": (np.arange(batch) % 10).astype(np.int32)}
  b = jax.device_put(b, sharding)
  key = np.array(jax.device_get(state.rng))
  t = time.perf_counter()
  state, metrics = step(state, b, key)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  rates = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, b, key)
    jax.block_until_ready(metrics)
    rates.append(steps * batch / (time.perf_counter() - t))
  return rates, compile_s


def decode_times(data_dir: str, repeats: int) -> dict:
  from jaxmix.training import data

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
  return {"cold_s": cold, "warm_s": warm, "images": 60000}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224], choices=sorted(RECIPES))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--workers", type=int, default=2, help="train_batches threads")
  p.add_argument("--decode", action="store_true", help="also time a cold and a warm load of the CIFAR-10 zips")
  p.add_argument("--data_dir", default=DEFAULT_DATA)
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args(argv)
  print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}", flush=True)
  results = {"machine": f"{os.uname().nodename}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"), "recipes": []}
  with tempfile.TemporaryDirectory() as work:
    for size in args.sizes:
      side, n, batch, arch, kwargs, steps = RECIPES[size]
      split = _split(side, n, work)
      pipe = pipeline_rate(split, batch, kwargs, args.repeats, args.workers, max_batches=min(n // batch, 40))
      step, compile_s = step_rate(arch, size, batch, steps, args.repeats)
      row = {
        "size": size,
        "batch": batch,
        "model": arch,
        "pipeline_img_s": statistics.median(pipe),
        "step_img_s": statistics.median(step),
        "ratio": statistics.median(pipe) / statistics.median(step),
        "compile_s": compile_s,
        "pipeline_runs": pipe,
        "step_runs": step,
      }
      results["recipes"].append(row)
      print(
        f"{size:>4}px B={batch:<4} {arch:<18} pipeline {row['pipeline_img_s']:>9,.0f} img/s   step {row['step_img_s']:>7,.1f} img/s"
        f"   ratio {row['ratio']:,.1f}   (compile {compile_s:.1f} s)",
        flush=True,
      )
  if args.decode:
    results["decode"] = decode_times(args.data_dir, args.repeats)
    d = results["decode"]
    print(f"load CIFAR-10 zips (60k): cold {statistics.median(d['cold_s']):.1f} s, warm {statistics.median(d['warm_s']):.2f} s")
  print("\n| input | model, batch | pipeline img/s | train step img/s | pipeline / step |\n| --- | --- | --- | --- | --- |")
  for r in results["recipes"]:
    print(
      f"| {r['size']}x{r['size']} | {r['model']}, {r['batch']} | {r['pipeline_img_s']:,.0f} | {r['step_img_s']:,.1f} | {r['ratio']:,.1f} |"
    )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
  print(f"load average after: {os.getloadavg()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
