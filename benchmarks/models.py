"""Compile and step time of a model's forward+backward, with and without hidden mixing.

Usage::

  python benchmarks/models.py --arch preactresnet18 --batch 32 --steps 5
  python benchmarks/models.py --methods none,patchup,manifold_mixup,dropblock

For each method it jits one training step (loss, grads and BatchNorm updates of
``model.apply(..., mix=mix_fn, carry=carry)`` with ``jaxmix.hidden_mix``), reports
the first call (trace + compile + one run) and the median and minimum of
``--steps`` further calls with fresh keys (so the sampled site varies; the methods
are timed round-robin), and the ratio of medians to the unmixed step. No persistent compilation cache is used.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import jaxmix
from jaxmix.training import models


def make_step(model, method: str):
  """A jitted ``(variables, x, y, key) -> (loss, grads, batch_stats)`` for ``method``."""

  @jax.jit
  def step(variables, x, y, key):
    def loss_fn(params):
      v = {"params": params, "batch_stats": variables["batch_stats"]}
      if method == "none":
        logits, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
        return jaxmix.bce_on_softmax(logits, y), updates
      mix_fn, carry = jaxmix.hidden_mix(key, y, method=method, **jaxmix.METHODS[method].defaults)
      (logits, carry), updates = model.apply(v, x, train=True, mix=mix_fn, carry=carry, mutable=["batch_stats"])
      return carry.loss_scale * jaxmix.bce_on_softmax(logits, carry.labels), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return loss, grads, updates["batch_stats"]

  return step


def bench(arch: str, batch: int, size: int, steps: int, methods: list[str]) -> dict:
  model = models.get_model(arch, 10)
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  y = jaxmix.one_hot(jax.random.randint(jax.random.key(1), (batch,), 0, 10), 10)
  variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(2))
  step_fns, compile_s, times = {}, {}, {m: [] for m in methods}
  for method in methods:
    step_fns[method] = make_step(model, method)
    t0 = time.perf_counter()
    jax.block_until_ready(step_fns[method](variables, x, y, jax.random.key(3)))
    compile_s[method] = time.perf_counter() - t0
  for i in range(steps):  # round-robin, so load from other processes hits all methods alike
    for method in methods:
      t0 = time.perf_counter()
      jax.block_until_ready(step_fns[method](variables, x, y, jax.random.key(10 + i)))
      times[method].append(time.perf_counter() - t0)
  results = {m: (compile_s[m], statistics.median(times[m]), min(times[m])) for m in methods}
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", default="preactresnet18", choices=models.ARCHS)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--methods", default="none,patchup")
  args = parser.parse_args()
  methods = args.methods.split(",")
  res = bench(args.arch, args.batch, args.size, args.steps, methods)
  print(f"{args.arch}, batch {args.batch}, {args.size}x{args.size}, {jax.devices()[0].platform}, jax {jax.__version__}")
  print(f"{'method':<16}{'first call s':>14}{'median step s':>15}{'min step s':>12}{'ratio (median)':>16}")
  base = res.get("none", next(iter(res.values())))[1]
  for method, (compile_s, median, best) in res.items():
    print(f"{method:<16}{compile_s:>14.2f}{median:>15.3f}{best:>12.3f}{median / base:>16.2f}")


if __name__ == "__main__":
  main()
