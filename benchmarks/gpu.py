"""One accelerator benchmark: train-step throughput of every method, compile times, input ops vs timm.

Runs on whatever device JAX finds first (GPU, TPU or CPU) with only jax, flax, optax,
orbax and chex installed (no TensorFlow; the batches are synthetic uint8 images). It
measures, on one device:

* the jitted train step (``jaxmix.training.make_train_step``) of every registry method
  for PreActResNet-18 at batch 128 on 32x32 images, in float32 and in bfloat16, and of
  vanilla, mixup, cutmix and Puzzle Mix for ResNet-50 at 224x224 in bfloat16: img/s,
  the ratio to the vanilla step of the same model and dtype (the steps of a group are
  timed round by round, the ratio is the median of the per-round ratios), and each
  step's compile time (cold, no persistent cache);
* the input ops (mixup, cutmix) at (128, 32, 32, 3) and (64, 224, 224, 3) against
  timm's ``Mixup`` in batch mode on the same device, when torch and timm are installed.

It stops adding cases once ``--budget_s`` is spent (those are listed as skipped), so a
run ends in about that time; the default fits in 8 minutes on one H100. It writes one
JSON file to OUT_DIR (``gpu_<device>.json``) and prints a Markdown table.

Usage:
  python benchmarks/gpu.py OUT_DIR [--steps 20] [--budget_s 420]
  python benchmarks/gpu.py OUT_DIR --tiny      # a small CPU check of the script itself
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxmix
from jaxmix.training import models
from jaxmix.training import step as ts

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ops import fresh_batches, load_timm_mixup  # noqa: E402  (the sibling benchmarks, not installed modules)
from train_step import build_step  # noqa: E402

NUM_CLASSES = 10
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # synthetic batches: any normalisation will do
BF16_LARGE_METHODS = ("vanilla", "mixup", "cutmix", "puzzlemix")


def _groups(tiny: bool) -> list:
  """``(model name, arch, image side, batch, dtype, methods)`` in the order they run."""
  if tiny:
    return [
      ("preactresnet_small", "preactresnet_small", 32, 8, "float32", ("vanilla", "mixup")),
      ("preactresnet_small", "preactresnet_small", 32, 8, "bfloat16", ("vanilla",)),
    ]
  methods = tuple(jaxmix.METHODS)
  return [
    ("PreActResNet-18", "preactresnet18", 32, 128, "float32", methods),
    ("PreActResNet-18", "preactresnet18", 32, 128, "bfloat16", methods),
    ("ResNet-50", "resnet50", 224, 128, "bfloat16", BF16_LARGE_METHODS),
  ]


def train_steps(tiny: bool, steps: int, deadline: float) -> tuple[list, list]:
  """Rows of the train-step table, and the cases skipped for time."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (ts.AXIS,))
  rows, skipped = [], []
  for name, arch, side, batch, dtype, methods in _groups(tiny):
    model = models.get_model(arch, NUM_CLASSES, dtype=dtype)
    rng = np.random.default_rng(0)
    host_batch = {
      "image": rng.integers(0, 256, (batch, side, side, 3), dtype=np.uint8),
      "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
    }
    built = {}
    for method in methods:
      if time.perf_counter() > deadline:
        skipped.append(f"{name} {dtype} {method}")
        continue
      built[method] = build_step(model, method, [host_batch], mesh, mean=MEAN, std=STD, num_classes=NUM_CLASSES)
    if "vanilla" not in built:
      continue
    times = {m: [] for m in built}
    for _ in range(steps):
      for method, b in built.items():
        times[method].append(b.run_one(0))
    for method, b in built.items():
      ms = 1e3 * statistics.median(times[method])
      ratio = statistics.median(t / v for t, v in zip(times[method], times["vanilla"], strict=True))
      rows.append(
        {
          "model": name,
          "image": side,
          "batch": batch,
          "dtype": dtype,
          "method": method,
          "compile_s": round(b.compile_s, 2),
          "ms": round(ms, 3),
          "img_per_s": round(batch / (ms / 1e3), 1),
          "ratio": round(ratio, 3),
        }
      )
    del built
  return rows, skipped


def _median_ms(fn, calls: int, sync=lambda: None) -> float:
  fn()
  sync()
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    fn()
    sync()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def input_ops(tiny: bool, calls: int) -> list:
  """Rows of the input-op table: jaxmix (jitted, on the JAX device) and timm batch mode (on torch's).

  As ``benchmarks/ops.py``, every call reads a fresh batch: both cycle through
  ``fresh_batches(shape)`` distinct batches (or one per call, if fewer), more than the
  device's cache holds.
  """
  torch, timm_mixup = load_timm_mixup()
  shapes = [(8, 32, 32, 3)] if tiny else [(128, 32, 32, 3), (64, 224, 224, 3)]
  rows = []
  for shape in shapes:
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(shape, dtype=np.float32) for _ in range(min(fresh_batches(shape), calls + 1))]
    xs = [jax.device_put(x) for x in host]
    y = jaxmix.one_hot(jnp.asarray(rng.integers(0, NUM_CLASSES, shape[0])), NUM_CLASSES)
    for op in ("mixup", "cutmix"):
      fn = jax.jit(lambda k, x, y, op=op: (lambda r: (r.images, r.labels))(getattr(jaxmix, op)(k, x, y, alpha=1.0)))
      args = iter([(jax.random.key(i), xs[i % len(xs)]) for i in range(calls + 1)])
      ms = _median_ms(lambda fn=fn, args=args, y=y: jax.block_until_ready(fn(*next(args), y)), calls)
      row = {"shape": list(shape), "op": op, "jaxmix_ms": round(ms, 4), "timm_batch_ms": None, "ratio": None, "timm_device": None}
      if torch is not None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        xts = [torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device) for x in host]
        yt = torch.from_numpy(rng.integers(0, NUM_CLASSES, shape[0])).to(device)
        kw = {"mixup_alpha": 1.0, "cutmix_alpha": 0.0} if op == "mixup" else {"mixup_alpha": 0.0, "cutmix_alpha": 1.0}
        mixer = timm_mixup.Mixup(**kw, mode="batch", label_smoothing=0.0, num_classes=NUM_CLASSES)
        batches = iter([xts[i % len(xts)] for i in range(calls + 1)])
        timm_ms = _median_ms(lambda mixer=mixer, batches=batches, yt=yt: mixer(next(batches), yt), calls, sync)
        row.update(timm_batch_ms=round(timm_ms, 4), ratio=round(ms / timm_ms, 3), timm_device=device)
      rows.append(row)
  return rows


def markdown(result: dict) -> str:
  lines = [
    f"### {result['device']} ({result['platform']}), jax {result['jax']}, {result['date']}",
    "",
    "| model | image | batch | dtype | method | img/s | step / vanilla | compile s |",
    "|---|---:|---:|---|---|---:|---:|---:|",
  ]
  for r in result["train_step"]:
    head = f"| {r['model']} | {r['image']} | {r['batch']} | {r['dtype']} | {r['method']}"
    lines.append(f"{head} | {r['img_per_s']:,.0f} | {r['ratio']:.2f} | {r['compile_s']:.1f} |")
  lines += ["", "| input op | shape | jaxmix ms | timm batch ms | jaxmix / timm |", "|---|---|---:|---:|---:|"]
  for r in result["input_ops"]:
    timm = "-" if r["timm_batch_ms"] is None else f"{r['timm_batch_ms']:.3f} ({r['timm_device']})"
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
    lines.append(f"| {r['op']} | {tuple(r['shape'])} | {r['jaxmix_ms']:.3f} | {timm} | {ratio} |")
  if result["skipped"]:
    lines += ["", f"Skipped for the time budget: {', '.join(result['skipped'])}."]
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("out_dir", help="directory for the JSON result")
  p.add_argument("--steps", type=int, default=20, help="timed rounds per train-step group")
  p.add_argument("--calls", type=int, default=50, help="timed calls per input op")
  p.add_argument("--budget_s", type=float, default=420.0, help="stop adding train-step cases after this many seconds")
  p.add_argument("--tiny", action="store_true", help="a small CPU-sized run (checks the script, not the hardware)")
  args = p.parse_args(argv)
  if args.steps < 1 or args.calls < 1:
    p.error("--steps and --calls must be >= 1")
  start = time.perf_counter()
  device = jax.devices()[0]
  steps = 2 if args.tiny else args.steps
  rows, skipped = train_steps(args.tiny, steps, start + args.budget_s)
  result = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    "device": getattr(device, "device_kind", str(device)),
    "platform": device.platform,
    "jax": jax.__version__,
    "tiny": args.tiny,
    "steps": steps,
    "train_step": rows,
    "input_ops": input_ops(args.tiny, 5 if args.tiny else args.calls),
    "skipped": skipped,
  }
  result["total_s"] = round(time.perf_counter() - start, 1)
  os.makedirs(args.out_dir, exist_ok=True)
  slug = re.sub(r"[^a-z0-9]+", "_", result["device"].lower()).strip("_") or "device"
  path = os.path.join(args.out_dir, f"gpu_{slug}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(markdown(result))
  print(f"\nwrote {path} ({result['total_s']} s)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
