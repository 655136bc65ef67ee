"""Train-step cost of every registry method relative to vanilla, and the input rate.

For the small CPU model (``preactresnet_small``) on real CIFAR-10 batches, times the
jitted data-parallel step (``jaxmix.train_step.make_train_step``) of each method in
one run, prints ms/step, img/s and the ratio to the vanilla step, then the rate of the
tf.data input pipeline (``jaxmix.data.train_batches``) on the same batches, so you can
see whether training is input-bound.

Usage:
  python benchmarks/train_step.py --data_dir ../shared/data/cifar10 [--batch 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np
import optax

import jaxmix
from jaxmix import data as jdata
from jaxmix import models
from jaxmix import train_step as ts


def _time_step(model, method, batches, args, mesh, sharding, replicated, ds):
  hp = dict(jaxmix.METHODS[method].defaults)
  cfg = ts.StepConfig(
    method=method,
    hparams=tuple(sorted(hp.items())),
    num_classes=10,
    mean=ds.mean,
    std=ds.std,
    jsd=method == "ipmix" and args.jsd,
  )
  step = ts.make_train_step(model, cfg, mesh)
  state = ts.init_state(model, optax.sgd(0.01, momentum=0.9), jax.random.key(0), (32, 32, 3), seed_key=jax.random.key(0))
  state = jax.device_put(state, replicated)
  key = jax.random.key_data(jax.random.key(1))
  t0 = time.perf_counter()
  state, m = step(state, jax.device_put(batches[0], sharding), key)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for b in batches[1 : args.steps + 1]:
    b = jax.device_put(b, sharding)
    t0 = time.perf_counter()
    state, m = step(state, b, key)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10"))
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--methods", nargs="*", default=None)
  p.add_argument("--jsd", action="store_true", help="time IPMix with the JSD loss (3 forward passes)")
  p.add_argument("--out", default=None, help="also write the results as JSON")
  args = p.parse_args()

  ds = jdata.load("cifar10", args.data_dir, labels_per_class=500)
  batches = list(jdata.train_batches(ds.train, batch_size=args.batch, seed=0, epoch=0))[: args.steps + 1]
  mesh = jax.make_mesh((jax.device_count(),), (ts.AXIS,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.AXIS))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  model = models.get_model("preactresnet_small", 10)
  methods = args.methods or list(jaxmix.METHODS)
  if "vanilla" in methods:
    methods.remove("vanilla")
  methods = ["vanilla", *methods]

  cpu = platform.processor() or platform.machine()
  print(f"# {time.strftime('%Y-%m-%d')} | {cpu} | {os.cpu_count()} cores | {jax.device_count()} device(s)")
  print(f"# preactresnet_small ({models.count_params(model):,} params), batch {args.batch}, median of {args.steps} steps\n")
  print("| method | compile s | ms/step | img/s | step / vanilla |")
  print("|---|---:|---:|---:|---:|")
  rows = {}
  for method in methods:
    compile_s, step_s = _time_step(model, method, batches, args, mesh, sharding, replicated, ds)
    rows[method] = {"compile_s": compile_s, "step_ms": 1e3 * step_s, "img_per_s": args.batch / step_s}
    ratio = step_s / (rows["vanilla"]["step_ms"] / 1e3)
    rows[method]["ratio"] = ratio
    print(f"| {method} | {compile_s:.1f} | {1e3 * step_s:.1f} | {args.batch / step_s:.0f} | {ratio:.2f} |", flush=True)

  t0 = time.perf_counter()
  n = 0
  for b in jdata.train_batches(ds.train, batch_size=args.batch, seed=0, epoch=1):
    n += len(b["label"])
  pipe = n / (time.perf_counter() - t0)
  print(f"\ninput pipeline (tf.data crop+flip, host): {pipe:,.0f} img/s vs vanilla step {rows['vanilla']['img_per_s']:,.0f} img/s")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"date": time.strftime("%Y-%m-%d"), "batch": args.batch, "methods": rows, "pipeline_img_per_s": pipe}, f, indent=2)


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()
