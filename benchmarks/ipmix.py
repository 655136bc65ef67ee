"""Time per batch of the whole IPMix transform on this machine (jitted, on device).

Measures, for a batch of ``--batch_size`` (default 128) 32x32x3 images in [0, 1]:

* ``ipmix``: one IPMix view (k=3, depth=3, beta=3, severity 3, patch sizes 4..32)
  with a user mixing set of 256 pictures, and with the built-in fractal set
  (``mixing_set=None``, generated once and cached);
* ``ipmix_views``: the two views of JSD training (what a JSD train step pays);
* the parts: one IMG step (``image_ops.random_op``) and one P step for all ``B * k``
  chains.

Wall time and process CPU time (all threads) of each call are recorded after a
compile-and-warm-up call; the table gives the median and the best of ``--repeats``
calls. The machine may be shared with other jobs: the CPU time is less sensitive to
that than the wall time, and the best wall time is the closest to an idle machine.

Usage:
  python benchmarks/ipmix.py [--batch_size 128] [--repeats 20]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import statistics
import time

import jax
import jax.numpy as jnp

import jaxmix
from jaxmix.ops import fractals, image_ops

ipmix_module = importlib.import_module("jaxmix.ops.ipmix")


def _time(fn, args, repeats: int) -> tuple[float, list[float], list[float]]:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  walls, cpus = [], []
  for i in range(repeats):
    call_args = (jax.random.fold_in(args[0], i), *args[1:])
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*call_args))
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return compile_s, walls, cpus


def _report(name: str, result) -> None:
  compile_s, walls, cpus = result
  ms = lambda v: f"{1000 * v:7.1f}"  # noqa: E731
  print(
    f"{name:<44} compile {compile_s:5.1f}s  wall median {ms(statistics.median(walls))} ms  best {ms(min(walls))} ms"
    f"  cpu median {ms(statistics.median(cpus))} ms"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  batch, k = args.batch_size, 3

  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
  key = jax.random.key(0)
  images = jax.random.randint(jax.random.key(1), (batch, 32, 32, 3), 0, 256).astype(jnp.float32) / 255.0
  labels = jaxmix.one_hot(jnp.arange(batch) % 10, 10)
  mixing_set = fractals.generate(2, 256, 36)

  user_set = jax.jit(lambda key, x, y, s: jaxmix.ipmix(key, x, y, mixing_set=s).images)
  _report(f"ipmix B={batch}, user set [256, 36, 36, 3]", _time(user_set, (key, images, labels, mixing_set), args.repeats))
  built_in = jax.jit(lambda key, x, y: jaxmix.ipmix(key, x, y).images)
  _report(f"ipmix B={batch}, built-in fractals", _time(built_in, (key, images, labels), args.repeats))
  views = jax.jit(lambda key, x, s: jaxmix.ipmix_views(key, x, mixing_set=s))
  _report(f"ipmix_views B={batch}, 2 views (JSD)", _time(views, (key, images, mixing_set), args.repeats))

  chains = jnp.broadcast_to(images[:, None], (batch, k, 32, 32, 3))
  img_step = jax.jit(image_ops.random_op)
  _report(f"  one IMG step, {batch}x{k} chains", _time(img_step, (key, chains), args.repeats))

  @functools.partial(jax.jit)
  def patch_step(key, x, g):
    key_u, key_s = jax.random.split(key)
    u = jax.random.uniform(key_u, x.shape[:2] + (11,))
    seeds = jax.random.bits(key_s, x.shape[:2] + (2,), jnp.uint32)
    return ipmix_module._patch_step(u, seeds, x, g, (4, 8, 16, 32), 3.0)

  pictures = jnp.broadcast_to(mixing_set[:batch, None, :32, :32], chains.shape)
  _report(f"  one P step, {batch}x{k} chains", _time(patch_step, (key, chains, pictures), args.repeats))


if __name__ == "__main__":
  main()
