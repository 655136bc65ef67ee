"""Time per batch of the input-space ops, next to a memory-copy and a timm baseline.

Each op is jitted once; a call is timed from dispatch to ``block_until_ready`` of its
outputs (``images`` and ``labels``, what a train step consumes; ``--full`` returns the
whole ``MixResult``, masks included). Every call reads a fresh batch, as a training loop
does: call t (of any case) reads batch t mod n of n distinct batches (64 MB or more),
so no call finds its batch in the CPU's caches, not even when the previous call was
another case's. Calls are interleaved (one call of every case in turn), so load from
other processes on a shared machine hits all cases alike; the table gives the median
over all calls.

Baselines measured in the same run:

* ``bound: a + b`` and ``bound: 0.3 a + 0.7 b``: jitted elementwise ops on two batches,
  which read two batches and write one, the memory traffic of an op that mixes a batch
  with its partner; the faster of the two is the bound of the ``x bound`` column.
* ``bound: images + labels``: ``0.3 a + 0.7 b`` and the same on two label arrays in one
  call, the two outputs an op returns: the least work a standalone op call can do.
* ``bound: x[perm]``: a jitted gather of a permuted batch (reads one, writes one).
* ``floor: jitted call``: one jitted call with the op's arguments that computes almost
  nothing (the dispatch cost a standalone op cannot go below).
* timm (optional, ``pip install torch==2.13.0`` then ``pip install --no-deps timm``,
  see benchmarks/README.md): ``timm.data.mixup.Mixup`` in batch and elem mode on
  the same batches in NCHW, with ``torch.set_num_threads(2)``. timm mixes in place.

Usage:
  python benchmarks/ops.py [--rounds 15] [--shapes small,large] [--no-timm] [--full]
                           [--ops mixup,cutmix]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxmix

SHAPES = {"small": (128, 32, 32, 3), "large": (64, 224, 224, 3)}
CALLS = {"small": 40, "large": 4}  # calls per case per round
MIN_BYTES = 64 << 20  # the distinct batches together: more than a server CPU's last-level cache
NUM_CLASSES = 10

OPS = {
  "mixup": functools.partial(jaxmix.mixup, alpha=1.0),
  "mixup per_sample": functools.partial(jaxmix.mixup, alpha=1.0, per_sample=True),
  "cutmix": functools.partial(jaxmix.cutmix, alpha=1.0),
  "cutmix per_sample": functools.partial(jaxmix.cutmix, alpha=1.0, per_sample=True),
  "cutout": functools.partial(jaxmix.cutout, size=16),
  "cutout shared": functools.partial(jaxmix.cutout, size=16, shared=True),
  "patch_augment": jaxmix.patch_augment,
}


def fresh_batches(shape) -> int:
  """How many distinct batches of ``shape`` (float32) to cycle through: 64 MB or more, at least 2.

  Also used by ``benchmarks/gpu.py`` (64 MB is more than the 50 MB L2 of an H100 or H200).
  """
  return max(2, -(-MIN_BYTES // (4 * int(np.prod(shape)))))


def _jax_cases(shape, full: bool, ops: dict):
  batch = shape[0]
  n = fresh_batches(shape)
  rng = np.random.default_rng(0)
  images = [jax.device_put(rng.standard_normal(shape, dtype=np.float32)) for _ in range(n)]
  others = [jax.device_put(rng.standard_normal(shape, dtype=np.float32)) for _ in range(n)]  # the bounds' second batch
  labels = [jaxmix.one_hot(jnp.asarray(rng.integers(0, NUM_CLASSES, batch)), NUM_CLASSES) for _ in range(n)]
  perm = jax.device_put(rng.permutation(batch).astype(np.int32))
  keys = [jax.random.key(i) for i in range(16)]
  pair = lambda i: (images[i % n], others[i % n])  # noqa: E731

  cases = {
    "bound: a + b": (jax.jit(lambda a, b: a + b), pair),
    "bound: 0.3 a + 0.7 b": (jax.jit(lambda a, b: 0.3 * a + 0.7 * b), pair),
    "bound: images + labels": (
      jax.jit(lambda a, b, y, z: (0.3 * a + 0.7 * b, 0.3 * y + 0.7 * z)),
      lambda i: (*pair(i), labels[i % n], labels[(i + 1) % n]),  # labels: 5 KB, cache-resident either way
    ),
    "bound: x[perm]": (jax.jit(lambda a, p: a[p]), lambda i: (images[i % n], perm)),
    # The runtime's floor for an op called on its own: one jitted call with the op's
    # arguments that computes (almost) nothing.
    "floor: jitted call": (jax.jit(lambda k, x, y: (x[0, 0, 0], y[0])), lambda i: (keys[i % len(keys)], images[i % n], labels[i % n])),
  }
  for name, op in ops.items():
    if full:
      fn = jax.jit(op)
    else:
      fn = jax.jit(lambda k, x, y, op=op: (lambda r: (r.images, r.labels))(op(k, x, y)))
    cases[name] = (fn, lambda i: (keys[i % len(keys)], images[i % n], labels[i % n]))
  return cases


def load_timm_mixup():
  """timm's mixup module, loaded by path: ``import timm`` needs torchvision, it does not."""
  try:
    import torch
  except ImportError:
    return None, None
  spec = importlib.util.find_spec("timm")
  if spec is None or not spec.submodule_search_locations:
    return None, None
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "mixup.py")
  module_spec = importlib.util.spec_from_file_location("_timm_mixup", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return torch, module


def _timm_cases(shape, ops: dict):
  torch, timm_mixup = load_timm_mixup()
  if torch is None:
    return {}
  torch.set_num_threads(2)
  np.random.seed(0)  # noqa: NPY002 (timm draws from numpy's global RNG)
  batch, height, width, channels = shape
  data = np.random.default_rng(0)
  xs = [torch.from_numpy(data.standard_normal((batch, channels, height, width), dtype=np.float32)) for _ in range(fresh_batches(shape))]
  target = torch.from_numpy(np.random.default_rng(1).integers(0, NUM_CLASSES, batch))
  cases = {}
  for mode in ("batch", "elem"):
    for name, kw in (("mixup", {"mixup_alpha": 1.0, "cutmix_alpha": 0.0}), ("cutmix", {"mixup_alpha": 0.0, "cutmix_alpha": 1.0})):
      if name not in ops:
        continue
      mixer = timm_mixup.Mixup(**kw, mode=mode, label_smoothing=0.0, num_classes=NUM_CLASSES)
      cases[f"timm {name} ({mode})"] = (lambda i, mixer=mixer: mixer(xs[i % len(xs)], target), None)
  return cases


def _run_once(fn, make_args, i):
  """Seconds for call ``i``: a jitted case on ``make_args(i)``, or a timm case ``fn(i)`` (``make_args`` None)."""
  args = None if make_args is None else make_args(i)
  start = time.perf_counter()
  if args is None:
    fn(i)
  else:
    jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def measure(shape, rounds: int, calls: int, use_timm: bool, full: bool, ops: dict = OPS):
  cases = _jax_cases(shape, full, ops)
  if use_timm:
    cases.update(_timm_cases(shape, ops))
  times = {name: [] for name in cases}
  for fn, make_args in cases.values():  # compile and warm up
    for i in range(3):
      _run_once(fn, make_args, i)
  # Call t (counting every call of every case) reads batch t mod n: consecutive calls,
  # of one case or of the next, read different batches, and a batch comes round again
  # only after n calls, when 64 MB or more have been read since.
  t = 0
  for _ in range(rounds):
    for _ in range(calls):
      for name, (fn, make_args) in cases.items():
        times[name].append(_run_once(fn, make_args, t))
        t += 1
  return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def _table(shape, ms):
  # The memory bound of an op that reads two batches and writes one: the faster of the
  # two-input elementwise baselines (XLA:CPU's plain ``a + b`` is often the slower one).
  copy = min(ms["bound: a + b"], ms["bound: 0.3 a + 0.7 b"])
  rows = [f"### {shape} float32", "", "| case | ms / batch | x bound | x timm batch mode |", "|---|---:|---:|---:|"]
  for name, value in ms.items():
    base = name.split(" ")[0]
    timm = ms.get(f"timm {base} (batch)")
    ratio = f"{value / timm:.2f}" if timm and not name.startswith("timm") else ""
    rows.append(f"| {name} | {value:.4f} | {value / copy:.2f} | {ratio} |")
  checks = []
  for op in ("mixup", "cutmix"):
    if op not in ms:
      continue
    if f"{op} per_sample" in ms:
      checks.append(f"{op}: per_sample / per-batch = {ms[f'{op} per_sample'] / ms[op]:.2f} (goal <= 1.1)")
    if f"timm {op} (batch)" in ms:
      checks.append(f"{op}: jaxmix / timm batch = {ms[op] / ms[f'timm {op} (batch)']:.2f} (goal <= 0.5)")
    checks.append(f"{op}: jaxmix / bound = {ms[op] / copy:.2f} (goal at 224: <= 2)")
    # A standalone call must at least read two batches and write its two outputs.
    floor = max(ms["bound: images + labels"], ms["floor: jitted call"])
    checks.append(f"{op}: jaxmix / runtime floor (max of images + labels bound and jitted call) = {ms[op] / floor:.2f} (goal <= 1.2)")
  return "\n".join(rows + [""] + [f"- {c}" for c in checks])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--shapes", default="small,large", help="comma-separated subset of: " + ", ".join(SHAPES))
  parser.add_argument("--no-timm", action="store_true", help="skip the timm baseline even if torch and timm are installed")
  parser.add_argument("--full", action="store_true", help="return the whole MixResult (masks included) from the jitted op")
  parser.add_argument(
    "--ops", default=None, help="comma-separated subset of the op cases (" + ", ".join(OPS) + "); the bounds and the floor always run"
  )
  args = parser.parse_args(argv)
  names = list(OPS) if args.ops is None else [name.strip() for name in args.ops.split(",")]
  unknown = sorted(set(names) - set(OPS))
  if unknown:
    parser.error(f"--ops: unknown case(s) {unknown}; choose from: {', '.join(OPS)}")
  ops = {name: OPS[name] for name in OPS if name in names}
  shapes = args.shapes.split(",")
  bad_shapes = sorted(set(shapes) - set(SHAPES))
  if bad_shapes:
    parser.error(f"--shapes: unknown shape(s) {bad_shapes}; choose from: {', '.join(SHAPES)}")
  print(
    f"# jaxmix input-op benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
    f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
    f"load average {os.getloadavg()[0]:.2f}, rounds {args.rounds}, outputs {'full MixResult' if args.full else 'images + labels'}, "
    f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}\n"
  )
  for shape_name in shapes:
    shape = SHAPES[shape_name]
    ms = measure(shape, args.rounds, CALLS[shape_name], not args.no_timm, args.full, ops)
    print(_table(shape, ms), "\n", flush=True)


if __name__ == "__main__":
  main()
