"""Mixing-op time and train-step cost of every registry method, and the input rate.

For the small CPU model (``preactresnet_small``) on real CIFAR-10 batches, in one run:

* the mixing op alone, jitted, on what it sees in training: the normalised batch
  (input ops), [0, 1] pixels (IPMix, one view), a ``[B, 32, 32, 16]`` feature map
  (the ``layer1`` output of ``preactresnet_small``; hidden ops), or the normalised
  batch plus a saliency map (Puzzle Mix; the saliency's backward pass is not in the
  op time but is in the step);
* the jitted data-parallel step (``jaxmix.training.make_train_step``) of each
  method: ms/step, img/s and the ratio to the vanilla step; IPMix twice, with one
  view and CE and with the JSD loss of its recipe (3 forward/backward passes);
* the rate of the input pipeline (``jaxmix.data.train_batches``, numpy crop + flip on
  host threads) on the same batches, to see whether training is input-bound.

Medians over ``--steps`` calls; the steps of all methods are timed round by round and
``ratio`` is the median of the per-round ratios to vanilla. A persistent compilation
cache is not used: ``compile_s`` is a cold trace + lower + compile of the step
(``step.lower(...).compile()``), and ``first_step_s`` the run of its first call after
it. Usage:
  python benchmarks/train_step.py --data_dir ~/data/cifar10 [--batch 128] [--steps 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxmix
from jaxmix.training import data as jdata
from jaxmix.training import models
from jaxmix.training import step as ts

FEATURES = (32, 32, 16)  # layer1 output of preactresnet_small on CIFAR


def _op_inputs(method, batch, ds, key):
  """What the op of ``method`` sees in a train step, and a short description of it."""
  m = jaxmix.METHODS[method]
  x01 = jnp.asarray(batch["image"], jnp.float32) / 255.0
  y = jaxmix.one_hot(jnp.asarray(batch["label"]), 10)
  k_feat, k_grad = jax.random.split(key)
  if m.site == "hidden":
    return (jax.random.normal(k_feat, (x01.shape[0], *FEATURES)), y), "features [B, 32, 32, 16]"
  if m.pixel_space:
    return (x01, y), "pixels [0, 1]"
  x = jdata.normalize(x01, ds.mean, ds.std, max_value=1.0)
  if m.site == "saliency":  # a stand-in for the input gradient (its backward pass is timed in the step)
    return (x, y, jaxmix.saliency(jax.random.normal(k_grad, x.shape))), "normalised + saliency"
  return (x, y), "normalised batch"


def _op_fn(method, ds):
  m = jaxmix.METHODS[method]
  params = inspect.signature(m.op).parameters
  kw = {k: v for k, v in m.defaults.items() if k in params}  # drops hidden_mix-only keys (drop_block_all)
  if m.site == "saliency":
    kw |= {"mean": ds.mean, "std": ds.std}
  if "labels" not in params:  # dropblock: features only
    return jax.jit(lambda key, x, y: m.op(key, x, **kw))
  return jax.jit(lambda key, x, y, *extra: m.op(key, x, y, *extra, **kw))


def _time_op(method, batch, ds, steps):
  """Median ms of the jitted op on one batch (outputs blocked on)."""
  inputs, where = _op_inputs(method, batch, ds, jax.random.key(2))
  fn = _op_fn(method, ds)
  key = jax.random.key(3)
  jax.block_until_ready(fn(key, *inputs))
  times = []
  for i in range(steps):
    k = jax.random.fold_in(key, i)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(k, *inputs))
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times), where


class Built(NamedTuple):
  """A compiled step: ``run_one(i)`` runs and times step ``i`` on batch ``i`` modulo their number."""

  run_one: Callable[[int], float]
  compile_s: float  # trace + lower + XLA compile, cold
  first_step_s: float  # the first run after it


def build_step(model, method, batches, mesh, *, mean, std, jsd=False, num_classes=10) -> Built:
  """The compiled step of ``method`` on host ``batches`` (placed on ``mesh``). Also used by ``benchmarks/gpu.py``."""
  hp = dict(jaxmix.METHODS[method].defaults)
  cfg = ts.StepConfig(method=method, hparams=tuple(sorted(hp.items())), num_classes=num_classes, mean=mean, std=std, jsd=jsd)
  step = ts.make_train_step(model, cfg, mesh)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.AXIS))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  image_shape = tuple(batches[0]["image"].shape[1:])
  init = ts.init_state(model, optax.sgd(0.01, momentum=0.9), jax.random.key(0), image_shape, seed_key=jax.random.key(0))
  state = [jax.device_put(init, replicated)]
  key = jax.random.key_data(jax.random.key(1))
  device_batches = [jax.device_put(b, sharding) for b in batches]
  t0 = time.perf_counter()
  compiled = step.lower(state[0], device_batches[0], key).compile()
  compile_s = time.perf_counter() - t0

  def run_one(i):
    t0 = time.perf_counter()
    state[0], m = compiled(state[0], device_batches[i % len(device_batches)], key)
    jax.block_until_ready(m)
    return time.perf_counter() - t0

  return Built(run_one, compile_s, run_one(0))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10"))
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--methods", nargs="*", default=None)
  p.add_argument("--dtype", default="float32", choices=models.DTYPES, help="the model's compute dtype (bfloat16: mixed precision)")
  p.add_argument("--out", default=None, help="also write the results as JSON")
  args = p.parse_args()

  ds = jdata.load("cifar10", args.data_dir, labels_per_class=500)
  batches = list(jdata.train_batches(ds.train, batch_size=args.batch, seed=0, epoch=0))[: args.steps + 1]
  mesh = jax.make_mesh((jax.device_count(),), (ts.AXIS,))
  model = models.get_model("preactresnet_small", 10, dtype=args.dtype)
  methods = args.methods or list(jaxmix.METHODS)
  if "vanilla" in methods:
    methods.remove("vanilla")
  methods = ["vanilla", *methods]

  cpu = platform.processor() or platform.machine()
  print(f"# {time.strftime('%Y-%m-%d')} | {cpu} | {os.cpu_count()} cores | {jax.device_count()} device(s)")
  print(f"# preactresnet_small ({models.count_params(model):,} params, {args.dtype}), batch {args.batch}, median of {args.steps} steps\n")
  print("| method | op acts on | op ms / batch | step compile s | first step s | ms / step | img/s | step / vanilla |")
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  runs = [(m, m, False) for m in methods] + ([("ipmix + JSD", "ipmix", True)] if "ipmix" in methods else [])
  # Every step is compiled first; then the steps are timed round by round (each method once a
  # round, ``--steps`` rounds), so a change of load on a shared machine hits the method and its
  # vanilla baseline alike: ``ratio`` is the median over rounds of method / vanilla of that round.
  steps = {}
  for label, method, jsd in runs:
    steps[label] = build_step(model, method, batches, mesh, mean=ds.mean, std=ds.std, jsd=jsd)
  times = {label: [] for label in steps}
  labels = list(steps)
  for i in range(1, args.steps + 1):
    # The order rotates every round, so no step always runs after the same one.
    for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
      times[label].append(steps[label].run_one(i))
  rows = {}
  for label, method, _ in runs:
    op_ms, where = _time_op(method, batches[0], ds, args.steps)
    step_s = statistics.median(times[label])
    ratio = statistics.median(t / v for t, v in zip(times[label], times["vanilla"], strict=True))
    rows[label] = {
      "op_ms": op_ms,
      "op_input": where,
      "compile_s": steps[label].compile_s,
      "first_step_s": steps[label].first_step_s,
      "step_ms": 1e3 * step_s,
      "img_per_s": args.batch / step_s,
    }
    rows[label]["ratio"] = ratio
    print(
      f"| {label} | {where} | {op_ms:.2f} | {steps[label].compile_s:.1f} | {steps[label].first_step_s:.2f} "
      f"| {1e3 * step_s:.1f} | {args.batch / step_s:.0f} | {ratio:.2f} |",
      flush=True,
    )

  t0 = time.perf_counter()
  n = 0
  for b in jdata.train_batches(ds.train, batch_size=args.batch, seed=0, epoch=1):
    n += len(b["label"])
  pipe = n / (time.perf_counter() - t0)
  print(f"\ninput pipeline (numpy crop+flip, host): {pipe:,.0f} img/s vs vanilla step {rows['vanilla']['img_per_s']:,.0f} img/s")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(
        {"date": time.strftime("%Y-%m-%d"), "batch": args.batch, "dtype": args.dtype, "methods": rows, "pipeline_img_per_s": pipe},
        f,
        indent=2,
      )


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()
