"""Puzzle Mix on device: time per batch, energy gap to the exact optimum, transport, step ratio.

Sections (all on real CIFAR-10 test images, saliency from the input gradients of a
``preactresnet_small`` at initialisation, in BN inference mode):

1. ``time``: time per batch of the whole ``jaxmix.puzzlemix`` (saliency given,
   so excluded) for B=64 and B=100 at 32x32 and B=64 at 64x64 (images upsampled),
   per block count and for the per-batch random draw (``block_num=None``; a new
   key per call, so the branch changes). Cases are interleaved round by round,
   so load from other processes hits them alike; median and min over all calls.
   The official code (gco + its transport, serial CPU) takes about 11 / 13 / 78 /
   1,090 ms per batch of 64 at 2 / 4 / 8 / 16 blocks on this machine (issue 5).
2. ``gap``: the energy of the returned mask against the exact optimum of the same
   float energy: brute force on 2x2 and 3x3 grids with 3 labels and 4x4 with 2
   labels, and an LP of the convex piecewise-linear extension (exact, integral
   optimum; HiGHS) on 4x4, 8x8 and 16x16 with 3 labels. Baselines: checkerboard
   ICM from the unary argmin (8 sweeps), and the relaxation without the ICM polish.
   Also the authors' normalised score ``err / (err_random + err)``.
3. ``transport``: the plan of ``_transport_plan`` against the dense official rule
   (numpy, float32) on the solver's masks, the ``inexact`` flag rate, and the
   masked cost against ``scipy.optimize.linear_sum_assignment``.
4. ``step``: train-step time of ``jaxmix.training.step`` for ``puzzlemix`` over
   ``vanilla`` (batch 64, 32x32, ``preactresnet_small``, one CPU device).

Usage:
  python benchmarks/puzzlemix.py [--sections time,gap,transport,step] [--rounds 5] [--data_dir DIR]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import io
import itertools
import os
import statistics
import sys
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

import jaxmix

pm = importlib.import_module("jaxmix.ops.puzzlemix")
# The hyper-parameters of jaxmix.puzzlemix with their defaults (what ``pm._puzzlemix`` takes as ``hp``).
HPARAMS = {
  name: p.default
  for name, p in inspect.signature(jaxmix.puzzlemix).parameters.items()
  if p.kind is p.KEYWORD_ONLY and name not in ("block_num", "mean", "std", "lam", "perm")
}

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10")
MEAN = np.array([125.3, 123.0, 113.9], np.float32) / 255
STD = np.array([63.0, 62.1, 66.7], np.float32) / 255
OFFICIAL_MS = {2: 11.0, 4: 13.0, 8: 78.0, 16: 1090.0}


def load_cifar(count: int, data_dir: str = DEFAULT_DATA) -> tuple[np.ndarray, np.ndarray]:
  """The first ``count`` test JPEGs (sorted names) of ``data_dir/test.zip`` as float [0, 1] images and labels."""
  from PIL import Image

  path = os.path.join(os.path.expanduser(data_dir), "test.zip")
  if not os.path.isfile(path):
    raise SystemExit(f"--data_dir: no CIFAR-10 test.zip (class-folder JPEGs) at {path}")
  with zipfile.ZipFile(path) as zf:
    names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
    classes = sorted({n.split("/")[-2] for n in names})
    rng = np.random.default_rng(0)
    pick = rng.choice(len(names), count, replace=False)
    images = [np.asarray(Image.open(io.BytesIO(zf.read(names[i]))).convert("RGB"), np.float32) / 255 for i in pick]
    labels = [classes.index(names[i].split("/")[-2]) for i in pick]
  return np.stack(images), np.asarray(labels, np.int32)


def saliency_of(images01: np.ndarray, labels: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """Normalised images and the saliency of a freshly initialised small PreActResNet."""
  model = jaxmix.models.get_model("preactresnet_small", num_classes=10)
  x = jnp.asarray((images01 - MEAN) / STD)
  variables = model.init(jax.random.key(0), x[:1], train=False)

  @jax.jit
  def grads(x, y):
    loss = lambda v: jnp.mean(jaxmix.softmax_cross_entropy(model.apply(variables, v, train=False), jaxmix.one_hot(y, 10)))  # noqa: E731
    return jax.grad(loss)(x)

  return x, jaxmix.saliency(grads(x, jnp.asarray(labels)))


def _upsample2(a: jax.Array) -> jax.Array:
  return jnp.repeat(jnp.repeat(a, 2, axis=1), 2, axis=2)


# ----------------------------------------------------------------------------
# 1. Time per batch.


def section_time(images01, labels, rounds: int, t_size: int) -> None:
  x_all, sal_all = saliency_of(images01, labels)
  y_all = jaxmix.one_hot(jnp.asarray(labels), 10)
  shapes = {"B=64 32x32": (64, False), "B=100 32x32": (100, False), "B=64 64x64": (64, True)}
  cases = {}
  for shape_name, (b, big) in shapes.items():
    x, y, s = x_all[:b], y_all[:b], sal_all[:b]
    if big:
      x, s = _upsample2(x), _upsample2(s)
    for blocks in (2, 4, 8, 16, None):
      fn = jax.jit(lambda k, x, y, s, blocks=blocks: jaxmix.puzzlemix(k, x, y, s, block_num=blocks, t_size=t_size, mean=MEAN, std=STD))
      cases[(shape_name, blocks)] = (fn, (x, y, s))
  for fn, args in cases.values():  # compile
    jax.block_until_ready(fn(jax.random.key(0), *args))
  times = {c: [] for c in cases}
  calls = 0
  for r in range(rounds):
    for case, (fn, args) in cases.items():
      for i in range(8):
        key = jax.random.key(1000 * r + i)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(key, *args).images)
        times[case].append(time.perf_counter() - t0)
        calls += 1
  print(f"\n## time per batch (ms), t_size={t_size}: median / min over {rounds * 8} calls per case")
  print("(random draw: mean / min over its calls, whose block counts vary)")
  print("| shape | n=2 | n=4 | n=8 | n=16 | mean over n (medians) | random draw | official mean / ours |")
  print("|---|---|---|---|---|---|---|---|")
  for shape_name in shapes:
    med = {blk: 1e3 * statistics.median(times[(shape_name, blk)]) for blk in (2, 4, 8, 16)}
    low = {blk: 1e3 * min(times[(shape_name, blk)]) for blk in (2, 4, 8, 16, None)}
    mean_n = statistics.mean(med.values())
    cells = " | ".join(f"{med[b]:.1f} / {low[b]:.1f}" for b in (2, 4, 8, 16))
    draw = f"{1e3 * statistics.mean(times[(shape_name, None)]):.1f} / {low[None]:.1f}"
    speedup = statistics.mean(OFFICIAL_MS.values()) / mean_n
    print(f"| {shape_name} | {cells} | {mean_n:.1f} | {draw} | {speedup:.0f}x |")


# ----------------------------------------------------------------------------
# 2. Energy gap.


def _problems(images01, sal, n: int, n_labels: int, seed: int):
  rng = np.random.default_rng(seed)
  b = images01.shape[0]
  perm = jnp.asarray(rng.permutation(b))
  lam = jnp.asarray(rng.beta(1.0, 1.0, b).astype(np.float32))
  side = images01.shape[1]
  if side % n:  # 3x3 grids: crop to 30x30
    side = side - side % n
  x = jnp.asarray(images01[:, :side, :side])
  s = sal[:, :side, :side]
  geo = pm._Geometry(side, side, n, 4, -1)
  sb = pm._block_saliency(s, n)
  u1, u0, wv, wh = pm._mask_terms(sb, sb[perm], x, x[perm], geo, 1.2, 0.5)
  return pm._unary_table(u1, u0, lam, 0.2, n_labels), wv, wh


def _brute(unary, wv, wh, n_labels):
  n = unary.shape[1]
  labs = np.array(list(itertools.product(range(n_labels), repeat=n * n)), np.int32).reshape(-1, n, n)
  energy = jax.jit(lambda lab, u, a, b: pm._energy(lab[:, None], u, a, b, n_labels).min(0))
  best = np.full(unary.shape[0], np.inf)
  for i in range(0, len(labs), 2048):
    best = np.minimum(best, np.asarray(energy(jnp.asarray(labs[i : i + 2048]), unary, wv, wh)))
  return best


def _lp_optimum(unary, wv, wh) -> float:
  """Exact optimum via the LP of the piecewise-linear extension (convex unary, w >= 0)."""
  from scipy.optimize import linprog
  from scipy.sparse import coo_matrix

  u = np.asarray(unary, np.float64)
  n, m1 = u.shape[0], u.shape[-1] - 1
  slopes = np.diff(u.reshape(n * n, -1), axis=1)
  edges = [(r * n + c, (r + 1) * n + c, float(wv[r, c])) for r in range(n - 1) for c in range(n)]
  edges += [(r * n + c, r * n + c + 1, float(wh[r, c])) for r in range(n) for c in range(n - 1)]
  nv = n * n * m1
  rows, cols, vals, rhs = [], [], [], []
  k_row = 0
  for e, (p, q, w) in enumerate(edges):
    for k in range(1, m1 + 1):
      for sgn in (1.0, -1.0):  # t_e >= w/M^2 ((2k-1) (+-d) - k(k-1))
        a = w / m1**2 * (2 * k - 1) * sgn
        for j in range(m1):
          rows += [k_row, k_row]
          cols += [p * m1 + j, q * m1 + j]
          vals += [a, -a]
        rows.append(k_row)
        cols.append(nv + e)
        vals.append(-1.0)
        rhs.append(w / m1**2 * k * (k - 1))
        k_row += 1
  a_ub = coo_matrix((vals, (rows, cols)), shape=(k_row, nv + len(edges)))
  cost = np.concatenate([slopes.reshape(-1), np.ones(len(edges))])
  res = linprog(cost, A_ub=a_ub, b_ub=np.asarray(rhs), bounds=[(0, 1)] * nv + [(None, None)] * len(edges), method="highs")
  return res.fun + u.reshape(n * n, -1)[:, 0].sum()


def _convex(unary) -> np.ndarray:
  return np.all(np.diff(np.asarray(unary), 2, axis=-1) >= -1e-7, axis=(1, 2, 3))


def section_gap(images01, labels, count: int) -> None:
  _, sal = saliency_of(images01[:count], labels[:count])
  imgs = images01[:count]
  solvers = {
    "ours (PD + rounding + ICM)": lambda u, a, b, m: pm._solve_mask(u, a, b, m),
    "PD + rounding, no ICM": lambda u, a, b, m: pm._best_rounding(pm._relaxation(u, a, b, pm._PD_ITERS), u, a, b, m),
    "ICM from unary argmin (8 sweeps)": lambda u, a, b, m: pm._icm(jnp.argmin(u, -1).astype(jnp.int32), u, a, b, m, 8),
  }
  print(f"\n## energy gap to the exact optimum, {count} CIFAR problems per grid (gap = (E - E*) / |E*|)")
  print("| grid | labels | reference | solver | mean gap | 95th pct | max | within 2% | exact (<1e-6) | err/(err_rand+err) |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for n, m, ref in ((2, 3, "brute"), (3, 3, "brute"), (4, 2, "brute"), (4, 3, "LP"), (8, 3, "LP"), (16, 3, "LP")):
    unary, wv, wh = _problems(imgs, sal, n, m, seed=n * 10 + m)
    if ref == "brute":
      best = _brute(unary, wv, wh, m)
      keep = np.ones(count, bool)
    else:
      keep = _convex(unary)
      best = np.array([_lp_optimum(unary[k], np.asarray(wv[k]), np.asarray(wh[k])) if keep[k] else np.nan for k in range(count)])
    rng = np.random.default_rng(n)
    rand_lab = jnp.asarray(rng.integers(0, m, size=(count, n, n)), jnp.int32)
    e_rand = np.asarray(pm._energy(rand_lab, unary, wv, wh, m))
    for name, solve in solvers.items():
      lab = jax.jit(solve, static_argnums=3)(unary, wv, wh, m)
      e = np.asarray(pm._energy(lab, unary, wv, wh, m))
      gap = ((e - best) / np.maximum(np.abs(best), 1e-9))[keep]
      err = np.maximum(e - best, 0.0)[keep]
      err_rand = np.maximum(e_rand - best, 0.0)[keep]
      score = np.mean(np.where(err_rand + err > 1e-9, err / np.maximum(err_rand + err, 1e-9), 0.0))
      print(
        f"| {n}x{n} | {m} | {ref} ({keep.sum()}) | {name} | {gap.mean():.2e} | {np.percentile(gap, 95):.2e} | {gap.max():.2e} | "
        f"{np.mean(gap <= 0.02):.3f} | {np.mean(gap <= 1e-6):.3f} | {score:.2e} |"
      )


# ----------------------------------------------------------------------------
# 3. Transport against the dense official rule and linear_sum_assignment.


def _official_plan(z, s, t_eps, t):
  n = t * t
  r, c = np.divmod(np.arange(n), t)
  cm = (((r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2).astype(np.float32)) / np.float32(max(t - 1, 1) ** 2)
  cost0 = np.float32(t_eps) * cm - s.reshape(-1, 1).astype(np.float32) * z.reshape(1, -1).astype(np.float32)
  cost = cost0.copy()
  for _ in range(t):
    plan = np.zeros_like(cost)
    plan[np.arange(n), np.argmin(cost, -1)] = 1
    win = np.zeros_like(cost)
    win[np.argmin(plan * cost, 0), np.arange(n)] = 1
    win *= plan
    cost += (1 - win) * plan
  dest = -np.ones(n, np.int64)
  src, dst = np.nonzero(win)
  dest[dst] = src
  return dest, cost0


def section_transport(images01, labels, count: int) -> None:
  from scipy.optimize import linear_sum_assignment

  x, sal = saliency_of(images01[:count], labels[:count])
  y = jaxmix.one_hot(jnp.asarray(labels[:count]), 10)
  print(f"\n## transport: our plan vs the dense official rule, {count} CIFAR samples x 2 images per setting")
  print("| blocks n | t_size | grid T | plans identical | inexact flag | masked cost / LSA optimum (mean) | heuristic < LSA |")
  print("|---|---|---|---|---|---|---|")
  for blocks, t_size in ((4, -1), (8, -1), (16, -1), (2, 4), (8, 4)):
    fn = jax.jit(
      lambda k, x, y, s, blocks=blocks, t_size=t_size: pm._puzzlemix(
        k, x, y, s, block_num=blocks, hp={**HPARAMS, "t_size": t_size}, mean=MEAN, std=STD, lam=None, perm=None, with_flags=True
      )
    )
    res, flag = fn(jax.random.key(blocks), x, y, sal)
    t = int(np.sqrt(res.transport[0].shape[1]))
    mask_t = np.asarray(pm._upsample(res.mask, t, t)).reshape(count, -1)
    s_t = np.asarray(pm._block_saliency(sal, t)).reshape(count, -1)
    perm = np.asarray(res.perm)
    same, ratios, beaten = 0, [], 0
    for k in range(count):
      for plan, z, s in ((res.transport[0][k], mask_t[k] > 0, s_t[k]), (res.transport[1][k], mask_t[k] < 1, s_t[perm[k]])):
        ref, cost0 = _official_plan(z, s, 0.8, t)
        same += np.array_equal(np.asarray(plan), ref)
        masked = cost0 * z[None, :]
        rows, cols = linear_sum_assignment(masked)
        won = ref >= 0
        heur = masked[ref[won], np.arange(t * t)[won]].sum()
        opt = masked[rows, cols].sum()
        beaten += heur < opt - 1e-6
        ratios.append(heur / opt if opt < 0 else np.nan)
    print(
      f"| {blocks} | {t_size} | {t} | {same}/{2 * count} | {int(np.asarray(flag).sum())}/{count} | {np.nanmean(ratios):.3f} | {beaten} |"
    )


# ----------------------------------------------------------------------------
# 4. Train-step ratio.


def section_step(images01, labels, rounds: int) -> None:
  import optax
  from jax.sharding import Mesh

  from jaxmix.training import step as ts

  model = jaxmix.models.get_model("preactresnet_small", num_classes=10)
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  batch = {"image": jnp.asarray(np.round(images01[:64] * 255).astype(np.uint8)), "label": jnp.asarray(labels[:64])}
  steps = {}
  for method, hparams in (("vanilla", ()), ("puzzlemix", ()), ("puzzlemix", (("t_size", 4),)), ("mixup", (("alpha", 1.0),))):
    cfg = ts.StepConfig(method=method, hparams=hparams, num_classes=10, mean=tuple(MEAN.tolist()), std=tuple(STD.tolist()))
    state = ts.init_state(model, optax.sgd(0.1, 0.9), jax.random.key(0), (32, 32, 3), seed_key=jax.random.key(1))
    step = ts.make_train_step(model, cfg, mesh)
    state, _ = step(state, batch, jax.random.key(2))  # compile
    jax.block_until_ready(state)
    steps[f"{method} {dict(hparams) or ''}".strip()] = [step, state]
  times = {name: [] for name in steps}
  for r in range(rounds):
    for name, entry in steps.items():
      step, state = entry
      for i in range(5):
        t0 = time.perf_counter()
        state, metrics = step(state, batch, jax.random.key(10 * r + i))
        jax.block_until_ready(metrics)
        times[name].append(time.perf_counter() - t0)
      entry[1] = state
  base = statistics.median(times["vanilla"])
  print(f"\n## train step, preactresnet_small, batch 64 of 32x32, 1 CPU device ({rounds * 5} steps per case, interleaved)")
  print("| method | median ms | min ms | ratio to vanilla (median) |")
  print("|---|---|---|---|")
  for name, ts_ in times.items():
    print(f"| {name} | {1e3 * statistics.median(ts_):.1f} | {1e3 * min(ts_):.1f} | {statistics.median(ts_) / base:.2f} |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sections", default="time,gap,transport,step")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--gap-count", type=int, default=64)
  parser.add_argument("--t-size", type=int, default=-1)
  parser.add_argument("--data_dir", default=DEFAULT_DATA, help="folder with the CIFAR-10 test.zip (default: ../shared/data/cifar10)")
  args = parser.parse_args(argv)
  sections = args.sections.split(",")
  images01, labels = load_cifar(128, args.data_dir)
  print(
    f"# Puzzle Mix benchmark  jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
  )
  if "time" in sections:
    section_time(images01, labels, args.rounds, args.t_size)
  if "gap" in sections:
    section_gap(images01, labels, args.gap_count)
  if "transport" in sections:
    section_transport(images01, labels, 32)
  if "step" in sections:
    section_step(images01, labels, args.rounds)
  print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
  sys.stdout.flush()


if __name__ == "__main__":
  main()
