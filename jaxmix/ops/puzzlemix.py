"""Puzzle Mix without graph cuts, entirely on device.

Kim, Choo & Song, "Puzzle Mix: Exploiting Saliency and Local Statistics for
Optimal Mixup", ICML 2020 (official code: ``snu-mllab/PuzzleMix``).

The official code solves a multi-label graph cut per sample on the host with the
``gco`` C++ library and then runs a greedy transport auction on dense
``[B, T^2, T^2]`` tensors. Here every step is a jit/vmap-clean JAX computation:

* the mask energy of the official code (docs/algorithms/puzzlemix.md#unary-saliency-terms) is minimised
  by a convex relaxation solved with a fixed number of primal-dual iterations,
  rounded at the best threshold and polished by checkerboard ICM (see
  ``_solve_mask`` for why this solver and how close it gets to the optimum);
* the transport (docs/algorithms/puzzlemix.md#transport) reproduces the official auction plan, but from short
  per-source lists instead of dense cost matrices (see ``_transport_plan`` for
  the argument);
* the block count drawn per batch from {2, 4, 8, 16} is embedded in the finest
  grid, so one program serves every count (``_Embedding``) and nothing recompiles.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.ops import core
from jaxmix.ops.core import Array, MixResult

_BLOCK_CHOICES = (2, 4, 8, 16)
_PD_ITERS = 32  # primal-dual iterations of the relaxation (fixed)
_ICM_SWEEPS = 4  # checkerboard ICM sweeps after rounding (fixed)
_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# ----------------------------------------------------------------------------
# Saliency.


def saliency(grads_wrt_images: Array) -> Array:
  """Pixel saliency of Puzzle Mix from input gradients.

  ``S[b, h, w] = sqrt(mean_c g[b, h, w, c]^2)`` (docs/algorithms/puzzlemix.md#per-batch-control-flow step 3): the
  l2 norm over channels divided by ``sqrt(C)``.

  Args:
    grads_wrt_images: ``[B, H, W, C]`` gradient of the (clean) loss with respect
      to the normalised input images.

  Returns:
    ``[B, H, W]`` float32 non-negative saliency.

  Raises:
    ValueError: if the gradients are not a 4-D batch.

  Example:
    >>> g = jax.grad(loss_wrt_images)(x)
    >>> s = jaxmix.saliency(g)
  """
  shape = jnp.shape(grads_wrt_images)
  if len(shape) != 4:
    raise ValueError(f"grads_wrt_images must be a 4-D batch [B, H, W, C], got shape {tuple(shape)}.")
  g = jnp.asarray(grads_wrt_images, jnp.float32)
  return jnp.sqrt(jnp.mean(g * g, axis=-1))


# ----------------------------------------------------------------------------
# Static geometry.


def _largest_divisor_at_most(n: int, cap: int) -> int:
  return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


class _Geometry:
  """Static sizes of one block count: blocks, smoothness pooling, transport grid."""

  def __init__(self, height: int, width: int, n: int, neigh_size: int, t_size: int):
    self.n = n
    self.bh, self.bw = height // n, width // n
    # Official: ns = min(neigh_size, block), k = block // ns. Deviation (only when
    # the block side is not a multiple of ns, never for power-of-two sides): ns is
    # the largest divisor of the block side <= neigh_size, so the pooled rows stay
    # aligned with the block edges.
    self.nh = _largest_divisor_at_most(self.bh, neigh_size)
    self.nw = _largest_divisor_at_most(self.bw, neigh_size)
    self.kh, self.kw = self.bh // self.nh, self.bw // self.nw
    # Transport grid (the official code uses the width).
    if t_size == -1:
      t_grid = n
    else:
      t = min(t_size, self.bw)
      t_grid = width // t if t < self.bw else n
    if height % t_grid or width % t_grid or t_grid % n:
      raise ValueError(
        f"t_size={t_size} gives a {t_grid}x{t_grid} transport grid that does not tile the {height}x{width} image "
        f"as a refinement of the {n}x{n} block grid; use t_size=-1 or a divisor of the block size."
      )
    self.t = t_grid


def _allowed_blocks(height: int, width: int) -> tuple[int, ...]:
  return tuple(n for n in _BLOCK_CHOICES if height % n == 0 and width % n == 0)


# ----------------------------------------------------------------------------
# Energy (docs/algorithms/puzzlemix.md#unary-saliency-terms).


def _pool(x: Array, ph: int, pw: int) -> Array:
  """Average pooling of ``[B, H, W, ...]`` over non-overlapping ``ph x pw`` windows."""
  b, h, w = x.shape[:3]
  return x.reshape(b, h // ph, ph, w // pw, pw, *x.shape[3:]).mean(axis=(2, 4))


def _block_saliency(sal: Array, n: int) -> Array:
  """``[B, H, W]`` -> ``[B, n, n]`` block saliency normalised to sum 1 per image.

  Deviation: an all-zero saliency map gives uniform blocks (the official code
  divides by zero).
  """
  _, h, w = sal.shape
  pooled = _pool(sal, h // n, w // n)
  total = jnp.sum(pooled, axis=(1, 2), keepdims=True)
  return jnp.where(total > 0, pooled / jnp.where(total > 0, total, 1.0), 1.0 / (n * n))


def _edge_terms(p1: Array, p2: Array, geo: _Geometry) -> tuple[Array, Array]:
  """Data-smoothness tables ``D[a, b]`` of the vertical and horizontal block edges.

  Args:
    p1, p2: ``[B, n*kh, n*kw, C]`` pooled pixel images of label 1 (own) and label
      0 (partner).
    geo: the block geometry.

  Returns:
    ``(dv, dh)``: ``[B, 2, 2, n-1, n]`` and ``[B, 2, 2, n, n-1]``; entry
    ``[:, a, b]`` uses the image of label ``a`` for the top/left block and the
    image of label ``b`` for the bottom/right block, and compares the last pooled
    row (column) of the first with the first pooled row (column) of the second,
    averaged over the channels and along the shared edge.
  """
  b = p1.shape[0]
  n, kh, kw = geo.n, geo.kh, geo.kw
  both = jnp.stack([p2, p1], axis=1)  # [B, 2, ...]: label 0 -> partner, 1 -> own
  last_row = both[:, :, kh - 1 :: kh][:, :, :-1]  # [B, 2, n-1, n*kw, C]
  first_row = both[:, :, ::kh][:, :, 1:]
  dv = jnp.mean(jnp.abs(last_row[:, :, None] - first_row[:, None]), axis=-1)  # [B, 2, 2, n-1, n*kw]
  dv = dv.reshape(b, 2, 2, n - 1, n, kw).mean(-1)
  last_col = both[:, :, :, kw - 1 :: kw][:, :, :, :-1]  # [B, 2, n*kh, n-1, C]
  first_col = both[:, :, :, ::kw][:, :, :, 1:]
  dh = jnp.mean(jnp.abs(last_col[:, :, None] - first_col[:, None]), axis=-1)  # [B, 2, 2, n*kh, n-1]
  dh = dh.reshape(b, 2, 2, n, kh, n - 1).mean(-2)
  return dv, dh


def _shift_in(d: Array, axis: int, first: bool) -> Array:
  """Pads the edge array ``d`` to the ``n x n`` site grid: edge e -> its first site
  (``first=True``: the top/left one) or its second site."""
  pad = [(0, 0)] * d.ndim
  pad[axis] = (0, 1) if first else (1, 0)
  return jnp.pad(d, pad)


def _mask_terms(s: Array, s_partner: Array, pix1: Array, pix2: Array, geo: _Geometry, beta: float, gamma: float):
  """Unary costs and edge weights of the re-parametrised energy (docs/algorithms/puzzlemix.md#data-smoothness-terms, (c)).

  Returns:
    ``(u1, u0, wv, wh)``: ``[B, n, n]`` costs of z = 1 and z = 0, and the edge
    weights ``[B, n-1, n]`` (vertical edges) and ``[B, n, n-1]`` (horizontal).
  """
  beta_n = beta / (16.0 * geo.n)
  dv, dh = _edge_terms(_pool(pix1, geo.nh, geo.nw), _pool(pix2, geo.nh, geo.nw), geo)
  u1, u0 = s_partner, s
  for d, axis in ((beta_n * gamma * dv, 1), (beta_n * gamma * dh, 2)):
    u1 = u1 + _shift_in((d[:, 1, 0] + d[:, 1, 1]) / 2, axis, True) + _shift_in((d[:, 0, 1] + d[:, 1, 1]) / 2, axis, False)
    u0 = u0 + _shift_in((d[:, 0, 1] + d[:, 0, 0]) / 2, axis, True) + _shift_in((d[:, 1, 0] + d[:, 0, 0]) / 2, axis, False)
  wv = beta_n + beta_n * gamma * (dv[:, 1, 0] + dv[:, 0, 1] - dv[:, 1, 1] - dv[:, 0, 0]) / 2
  wh = beta_n + beta_n * gamma * (dh[:, 1, 0] + dh[:, 0, 1] - dh[:, 1, 1] - dh[:, 0, 0]) / 2
  return u1, u0, wv, wh


def _neg_log_prior(lam: Array, n_labels: int) -> Array:
  """``-log(Binomial(l; m-1, lam) + 1e-8)`` for label indices ``l = 0..m-1`` (z = l/(m-1)).

  Args:
    lam: ``[B]`` prior mean.
    n_labels: m.

  Returns:
    ``[B, m]`` float32.
  """
  m1 = n_labels - 1
  ls = np.arange(n_labels, dtype=np.float32)
  comb = np.array([math.comb(m1, k) for k in range(n_labels)], np.float32)
  lam = lam[:, None]
  return -jnp.log(comb * lam**ls * (1.0 - lam) ** (m1 - ls) + 1e-8)


def _unary_table(u1: Array, u0: Array, lam: Array, eta: float, n_labels: int) -> Array:
  """``U[b, r, c, l] = z_l u1 + (1 - z_l) u0 + (eta / n^2) prior_l`` with ``z_l = l / (m - 1)``."""
  n = u1.shape[-1]
  z = jnp.linspace(0.0, 1.0, n_labels, dtype=jnp.float32)
  prior = (eta / (n * n)) * _neg_log_prior(lam, n_labels)  # [B, m]
  return z * u1[..., None] + (1.0 - z) * u0[..., None] + prior[:, None, None, :]


def _energy(labels: Array, unary: Array, wv: Array, wh: Array, n_labels: int) -> Array:
  """The float energy of docs/algorithms/puzzlemix.md#multi-label-energy-and-the-official-solver of integer label maps.

  Args:
    labels: ``[..., B, n, n]`` int label indices (z = l / (m - 1)); leading
      dimensions broadcast (the brute force evaluates many labelings at once).
    unary: ``[B, n, n, m]``.
    wv: ``[B, n-1, n]`` vertical edge weights.
    wh: ``[B, n, n-1]`` horizontal edge weights.
    n_labels: m.

  Returns:
    ``[..., B]`` float32 energies.
  """
  z = labels.astype(jnp.float32) / (n_labels - 1)
  e_unary = jnp.sum(jnp.where(labels[..., None] == jnp.arange(n_labels), unary, 0.0), axis=(-3, -2, -1))
  e_v = jnp.sum(wv * (z[..., :-1, :] - z[..., 1:, :]) ** 2, axis=(-2, -1))
  e_h = jnp.sum(wh * (z[..., :, :-1] - z[..., :, 1:]) ** 2, axis=(-2, -1))
  return e_unary + e_v + e_h


# ----------------------------------------------------------------------------
# Mask solver.


def _neighbour_sums(z: Array, wv: Array, wh: Array) -> tuple[Array, Array]:
  """``(sum_q w_pq, sum_q w_pq z_q)`` over the 4-neighbours q of every site p."""
  w_up, w_down = _shift_in(wv, 1, False), _shift_in(wv, 1, True)
  w_left, w_right = _shift_in(wh, 2, False), _shift_in(wh, 2, True)
  wz = w_up * _shift_in(z[:, :-1], 1, False) + w_down * _shift_in(z[:, 1:], 1, True)
  wz = wz + w_left * _shift_in(z[:, :, :-1], 2, False) + w_right * _shift_in(z[:, :, 1:], 2, True)
  return w_up + w_down + w_left + w_right, wz


def _icm(labels: Array, unary: Array, wv: Array, wh: Array, n_labels: int, sweeps: int) -> Array:
  """Checkerboard ICM: exact single-site minimisation, black then white sites."""
  n = labels.shape[-1]
  zl = jnp.linspace(0.0, 1.0, n_labels, dtype=jnp.float32)
  rows, cols = np.indices((n, n))
  colours = [jnp.asarray((rows + cols) % 2 == c) for c in (0, 1)]

  def half(lab, colour):
    wsum, wz = _neighbour_sums(lab.astype(jnp.float32) / (n_labels - 1), wv, wh)
    local = unary + wsum[..., None] * zl**2 - 2.0 * wz[..., None] * zl
    return jnp.where(colour, jnp.argmin(local, axis=-1).astype(lab.dtype), lab)

  return jax.lax.fori_loop(0, sweeps, lambda _, lab: half(half(lab, colours[0]), colours[1]), labels)


def _prox_piecewise_linear(v: Array, values: Array, step: Array) -> Array:
  """``argmin_{x in [0, M]} f(x) + (x - v)^2 / (2 step)`` for ``f`` interpolating ``values``.

  ``values[..., k]`` is ``f(k)``; each linear piece is minimised in closed form
  and the best piece wins (exact for any piecewise-linear f, convex or not).
  """
  best_x = best_obj = None
  for k in range(values.shape[-1] - 1):
    slope = values[..., k + 1] - values[..., k]
    x = jnp.clip(v - step * slope, k, k + 1)
    obj = values[..., k] + slope * (x - k) + (x - v) ** 2 / (2.0 * step)
    if best_x is None:
      best_x, best_obj = x, obj
    else:
      best_x, best_obj = jnp.where(obj < best_obj, x, best_x), jnp.minimum(obj, best_obj)
  return best_x


def _prox_dual_edge(u: Array, weight: Array, sigma: float, m1: int) -> Array:
  """``prox_{sigma g*}(u)`` of the relaxed edge term ``g(d) = weight / M^2 interp(d^2)``.

  Moreau: ``prox_{sigma g*}(u) = u - sigma prox_{g / sigma}(u / sigma)``; ``g`` is
  even and piecewise linear with slopes ``weight (2k - 1) / M^2`` on ``[k-1, k]``
  (the last slope continues beyond M).
  """
  t = jnp.abs(u) / sigma
  scale = weight / (m1 * m1)
  best_d = best_obj = None
  acc = jnp.zeros_like(t)  # g(k - 1)
  for k in range(1, m1 + 1):
    slope = scale * (2 * k - 1)
    d = jnp.clip(t - slope / sigma, k - 1, k if k < m1 else jnp.inf)
    obj = (acc + slope * (d - (k - 1))) / sigma + (d - t) ** 2 / 2.0
    if best_d is None:
      best_d, best_obj = d, obj
    else:
      best_d, best_obj = jnp.where(obj < best_obj, d, best_d), jnp.minimum(obj, best_obj)
    acc = acc + slope
  return u - sigma * jnp.sign(u) * best_d


def _step_sizes(n: int) -> np.ndarray:
  """Primal step ``1 / degree`` of every site of the ``n x n`` grid."""
  rows, cols = np.indices((n, n))
  degree = (rows > 0).astype(np.float32) + (rows < n - 1) + (cols > 0) + (cols < n - 1)
  return (1.0 / np.maximum(degree, 1.0)).astype(np.float32)


def _relaxation(unary: Array, wv: Array, wh: Array, iters: int, tau=None, sites=None) -> Array:
  """Primal-dual (Chambolle-Pock, diagonally preconditioned) on the convex relaxation.

  Minimises ``sum_p f_p(x_p) + sum_e g_e(x_p - x_q)`` over ``x in [0, M]^(n x n)``
  where ``f_p`` and ``g_e`` linearly interpolate the discrete unary and pairwise
  costs between integer labels. Returns the continuous ``x`` ``[B, n, n]``.

  ``tau`` (the step sizes) and ``sites`` (the number of sites) default to those of
  the whole grid; a smaller grid embedded in it (zero costs and weights outside)
  passes its own, and its sites then follow exactly its own iterations.
  """
  b, n, _, m = unary.shape
  scale = float(n * n) if sites is None else sites  # brings the unary slopes to O(1)
  unary, wv, wh = unary * scale, wv * scale, wh * scale
  tau = jnp.asarray(_step_sizes(n) if tau is None else tau)
  sigma = 0.5
  x0 = jnp.argmin(unary, axis=-1).astype(jnp.float32)

  def body(_, state):
    x, xbar, yv, yh = state
    yv = _prox_dual_edge(yv + sigma * (xbar[:, :-1, :] - xbar[:, 1:, :]), wv, sigma, m - 1)
    yh = _prox_dual_edge(yh + sigma * (xbar[:, :, :-1] - xbar[:, :, 1:]), wh, sigma, m - 1)
    kty = _shift_in(yv, 1, True) - _shift_in(yv, 1, False) + _shift_in(yh, 2, True) - _shift_in(yh, 2, False)
    x_new = _prox_piecewise_linear(x - tau * kty, unary, tau)
    return x_new, 2.0 * x_new - x, yv, yh

  x, _, _, _ = jax.lax.fori_loop(0, iters, body, (x0, x0, jnp.zeros_like(wv), jnp.zeros_like(wh)))
  return x


def _best_rounding(x: Array, unary: Array, wv: Array, wh: Array, n_labels: int) -> Array:
  """Rounds ``x`` at several thresholds (one per sample for all sites); keeps the best."""
  lower = jnp.floor(x)
  frac = x - lower

  def body(i, state):
    best, best_e = state
    cand = jnp.clip(lower + (frac > jnp.asarray(_THRESHOLDS, jnp.float32)[i]), 0, n_labels - 1).astype(jnp.int32)
    e = _energy(cand, unary, wv, wh, n_labels)
    better = e < best_e
    return jnp.where(better[:, None, None], cand, best), jnp.where(better, e, best_e)

  init = (jnp.zeros(x.shape, jnp.int32), jnp.full(x.shape[:1], jnp.inf, jnp.float32))
  return jax.lax.fori_loop(0, len(_THRESHOLDS), body, init)[0]


def _solve_mask(unary: Array, wv: Array, wh: Array, n_labels: int, tau=None, sites=None) -> Array:
  """Minimises the multi-label mask energy; returns ``[B, n, n]`` int32 label indices.

  The energy: docs/algorithms/puzzlemix.md#multi-label-energy-and-the-official-solver.

  Why this solver: the unary terms are convex in the label index (a linear
  saliency term plus ``-log Binomial``, convex in the index) and the pairwise
  terms ``w (z_p - z_q)^2`` with ``w >= 0`` are convex in the label difference.
  The piecewise-linear extension of the energy is then convex and equals the
  average, over a uniform threshold, of the energies of the threshold roundings
  (Ishikawa's construction): rounding an exact relaxed minimiser at any threshold
  is optimal, and the best rounding of any point is no worse than its relaxed
  energy. The solver runs a fixed number of diagonally preconditioned
  primal-dual iterations on the relaxation, keeps the best of nine threshold
  roundings per sample and finishes with checkerboard ICM sweeps (which only
  lower the energy). Measured on 64 CIFAR problems per grid against the exact
  optimum (benchmarks/puzzlemix.py; brute force on 2x2 and 3x3 with 3 labels and
  4x4 with 2 labels, an LP on 4x4, 8x8 and 16x16 with 3 labels), the relative gap
  is at most 1.4e-3 (mean 0 to 8e-5; exact on 69 % to 100 % of the problems),
  while checkerboard ICM alone averages 1.2e-2 on 4x4 binary (84 % within 2 %)
  and 1.6e-2 on 16x16 (64 % within 2 %).

  ``tau`` and ``sites``: see ``_relaxation`` (a smaller grid embedded in this one).
  """
  if unary.shape[1] == 1:
    return jnp.argmin(unary, axis=-1).astype(jnp.int32)
  x = _relaxation(unary, wv, wh, _PD_ITERS, tau, sites)
  labels = _best_rounding(x, unary, wv, wh, n_labels)
  return _icm(labels, unary, wv, wh, n_labels, _ICM_SWEEPS)


# ----------------------------------------------------------------------------
# Transport (docs/algorithms/puzzlemix.md#transport).


@functools.lru_cache(maxsize=None)
def _transport_tables(t: int, t_eps: float, size: Optional[int] = None):
  """Static tables of the ``t x t`` transport grid, embedded top-left in a ``size x size`` one.

  Returns:
    ``(sorted_cost, order, budget)``: for every source cell i, the destination
    cells sorted by ``(fl32(t_eps) * C[i, j], j)`` and those costs, and a proven
    upper bound on the number of (source, destination) pairs with
    ``t_eps * C[i, j] < s_i`` when the saliency sums to 1. Embedded
    (``size > t``), cells are numbered ``r * size + c``; the cells outside the
    ``t x t`` corner cost ``inf`` (they are never reached) and come last.
  """
  if size is not None and size != t:
    cost_t, order_t, budget = _transport_tables(t, t_eps)
    cells = size * size
    emb = (np.arange(t * t) // t) * size + np.arange(t * t) % t  # compact -> embedded cell
    outside = np.setdiff1d(np.arange(cells), emb)
    sorted_cost = np.full((cells, cells), np.inf, np.float32)
    order = np.broadcast_to(np.arange(cells, dtype=np.int32), (cells, cells)).copy()
    sorted_cost[emb, : t * t] = cost_t
    order[emb] = np.concatenate([emb[order_t], np.broadcast_to(outside, (t * t, outside.size))], axis=1)
    return sorted_cost, order, budget
  n = t * t
  r, c = np.divmod(np.arange(n), t)
  d2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
  cost = d2.astype(np.float32) / np.float32(max(t - 1, 1) ** 2)
  xi_cost = np.float32(t_eps) * cost
  order = np.lexsort((np.broadcast_to(np.arange(n), (n, n)), xi_cost), axis=-1)
  sorted_cost = np.take_along_axis(xi_cost, order, axis=-1)
  budget = _prefix_budget(sorted_cost) if t_eps > 0 else n * n
  return sorted_cost, order.astype(np.int32), budget


def _prefix_budget(sorted_cost: np.ndarray, mass: float = 1.0 + 1e-4) -> int:
  """Upper bound on ``sum_i #{r : sorted_cost[i, r] < s_i}`` over ``s >= 0``, ``sum s <= mass``.

  Row i reaches ``k + 1`` cells once ``s_i > sorted_cost[i, k]``. Replacing each
  row's step function by its concave majorant gives a fractional knapsack whose
  greedy optimum (steepest hull segments first) bounds the integer one. ``mass``
  leaves room for the float rounding of the normalised saliency.
  """
  n = sorted_cost.shape[0]
  segments = []
  for row in sorted_cost.astype(np.float64):
    xs = np.unique(row)  # xs[0] = 0: the own cell
    ys = np.searchsorted(row, xs, side="right").astype(np.float64)  # cells reached just above x
    hull = []
    for k in range(len(xs)):
      while len(hull) >= 2 and (ys[hull[-1]] - ys[hull[-2]]) * (xs[k] - xs[hull[-2]]) <= (ys[k] - ys[hull[-2]]) * (
        xs[hull[-1]] - xs[hull[-2]]
      ):
        hull.pop()
      hull.append(k)
    segments += [((ys[b] - ys[a]) / (xs[b] - xs[a]), xs[b] - xs[a]) for a, b in zip(hull[:-1], hull[1:], strict=True)]
  total, left = float(n), mass
  for slope, width in sorted(segments, key=lambda seg: -seg[0]):
    take = min(width, left)
    total, left = total + slope * take, left - take
    if left <= 0:
      break
  return int(min(n * n, math.ceil(total) + 1))


def _scan(x: Array, op: Callable[[Array, Array], Array], identity, reverse: bool = False) -> Array:
  """Inclusive scan of ``op`` along axis 1 of ``[G, L]``: Hillis-Steele doubling in a loop.

  ``ceil(log2 L)`` rounds of ``x = op(x, x shifted by 2^k)``. In a ``fori_loop`` the
  whole scan is a handful of kernels (``lax.associative_scan`` unrolls to about 40,
  and each kernel costs compile time; XLA:CPU's ``cumsum`` is quadratic in L).
  """
  length = x.shape[1]
  idx = jnp.arange(length)

  def body(k, x):
    s = jnp.left_shift(1, k)
    if reverse:
      return op(x, jnp.where(idx < length - s, jnp.roll(x, -s, axis=1), identity))
    return op(x, jnp.where(idx >= s, jnp.roll(x, s, axis=1), identity))

  return jax.lax.fori_loop(0, max(length - 1, 0).bit_length(), body, x)


def _cumsum(x: Array) -> Array:
  """Inclusive cumulative sum along axis 1."""
  return _scan(x, jnp.add, 0)


def _rows_take(a: Array, idx: Array) -> Array:
  """``a[g, idx[g, k]]`` for ``a`` ``[G, L]`` and ``idx`` ``[G, K]`` in range (a flat gather)."""
  g, length = a.shape
  return jnp.take(a.reshape(-1), idx + (jnp.arange(g, dtype=idx.dtype) * length)[:, None], mode="clip")


def _transport_plan(dest_mask: Array, sal: Array, t: int, t_eps: float) -> tuple[Array, Array]:
  """``_auction`` on the static tables of the ``t x t`` grid (see there)."""
  sorted_cost, order, budget = _transport_tables(t, float(t_eps))
  return _auction(dest_mask, sal, sorted_cost, order, budget, t)


def _auction(dest_mask: Array, sal: Array, sorted_cost, order, budget: int, rounds) -> tuple[Array, Array]:
  """The official greedy transport plan, computed from short per-source lists.

  Official rule (``mask_transport``): ``cost[i, j] = t_eps C[i, j] - s_i [z_j > 0]``;
  ``t`` rounds of: every source row claims its argmin (first index on ties);
  every column goes to the argmin over rows of ``plan * cost``, where
  non-claimants count 0 (first index on ties); losers get ``cost += 1``. The
  plan of the last round is returned.

  Why short lists reproduce it: (1) a negative entry costs more than -1
  (``s_i < 1``), so once it loses it is positive for good; a row therefore claims
  its negative entries in ``(cost, index)`` order, one step per loss, and at most
  ``t`` of them are ever reached. (2) A claim of cost >= 0 by a row other than
  row 0 never wins and never changes who wins: when row 0 does not claim that
  column it is a 0-valued non-claimant with the lowest index, and when it claims
  it with cost <= 0 only its own or a more negative claim can win. So rows >= 1
  without negative entries left drop out, and row 0 keeps its 0-cost own cell
  (unmasked, or zero saliency) after its negatives. (3) The negative entries of
  row i are the destinations among ``{j : t_eps C[i, j] < s_i}``, a prefix of a
  static per-row distance order; with the saliency summing to 1 the prefixes of
  all rows together are shorter than the static budget of
  ``_transport_tables``. Not covered: row 0 running out of non-positive
  entries (flagged as ``inexact``; even then the plans agreed with the dense
  rule in our checks, and on CIFAR masks the flag never fired) and exact float
  ties ``t_eps C[0, j] == s_0``. The rounds stop early at the auction's fixed
  point, which returns the same plan as running all ``t`` rounds.

  Args:
    dest_mask: ``[G, t*t]`` bool, the destinations (mask value > 0).
    sal: ``[G, t*t]`` float32 source saliency (non-negative, summing to 1).
    sorted_cost, order, budget: the tables of ``_transport_tables`` (``sorted_cost``
      and ``order`` may be traced, when the grid is drawn per batch).
    rounds: the number of auction rounds, the grid side ``t`` (may be traced).

  Returns:
    ``(dest, inexact)``: ``[G, t*t]`` int32, the source cell each destination
    receives (-1 for none), and ``[G]`` bool, True where row 0 ran out of
    non-positive entries.
  """
  sal = jax.lax.stop_gradient(sal)  # the plan is discrete; keeps reverse-mode AD away from the while loop
  g, n = sal.shape
  sorted_cost = jnp.asarray(sorted_cost)
  ii = jnp.arange(n, dtype=jnp.int32)[None, :]
  gpos = jnp.arange(g, dtype=jnp.int32)[:, None]

  # Prefix length of every row: #{j : fl(t_eps C[i, j]) < s_i}, and the flat list
  # of all (row, rank) pairs of all prefixes.
  length = jax.vmap(lambda s_row: jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="left"))(sorted_cost, s_row))(sal)
  length = length.astype(jnp.int32)
  ends = _cumsum(length)
  offs = ends - length
  total = jnp.minimum(ends[:, -1:], budget)
  q = jnp.arange(budget, dtype=jnp.int32)[None, :]
  marks = jnp.zeros((g * (budget + 1),), jnp.int32).at[(jnp.minimum(offs, budget) + gpos * (budget + 1)).reshape(-1)].add(1)
  row = jnp.clip(_cumsum(marks.reshape(g, budget + 1)[:, :budget]) - 1, 0, n - 1)
  row_off = _rows_take(offs, row)
  flat = row * n + jnp.clip(q - row_off, 0, n - 1)
  col = jnp.take(jnp.asarray(order).reshape(-1), flat, mode="clip")
  val = jnp.take(sorted_cost.reshape(-1), flat, mode="clip") - _rows_take(sal, row)
  neg = (q < total) & _rows_take(dest_mask, col)
  # A row's pointer walks its negative entries: nxt[q] is the first one at or after
  # flat position q (budget if none); the row is exhausted once it leaves its prefix.
  nxt = _scan(jnp.where(neg, q, budget), jnp.minimum, budget, reverse=True)
  nxt = jnp.concatenate([nxt, jnp.full((g, 1), budget, jnp.int32)], axis=1)
  ends = jnp.minimum(ends, budget)
  start = _rows_take(nxt, jnp.minimum(offs, budget))
  # Row 0's own cell costs exactly 0 when it is no destination or has no saliency.
  zero0 = jnp.logical_not(dest_mask[:, 0]) | (sal[:, 0] == 0)

  def claims(ptr, own0_lost):
    alive = ptr < ends
    idx = jnp.minimum(ptr, budget - 1)
    own0 = zero0 & ~alive[:, 0] & ~own0_lost
    alive = alive.at[:, 0].set(alive[:, 0] | own0)
    cj = _rows_take(col, idx)
    cv = _rows_take(val, idx)  # inf past a row's prefix in an embedded grid, hence a set, not a product
    cj = jnp.where(alive, cj.at[:, 0].set(jnp.where(own0, 0, cj[:, 0])), n)  # n: dump column
    cv = jnp.where(alive, cv.at[:, 0].set(jnp.where(own0, 0.0, cv[:, 0])), jnp.inf)
    flat_col = (cj + gpos * (n + 1)).reshape(-1)
    colmin = jnp.full((g * (n + 1),), jnp.inf, jnp.float32).at[flat_col].min(cv.reshape(-1))
    best = alive & (cv == jnp.take(colmin, flat_col).reshape(g, n))
    colidx = jnp.full((g * (n + 1),), n, jnp.int32).at[flat_col].min(jnp.where(best, ii, n).reshape(-1))
    win = best & (jnp.take(colidx, flat_col).reshape(g, n) == ii) & ((cv < 0) | (ii == 0))
    return alive, win, cj, own0

  def body(state):
    r, _, ptr, own0_lost, dead0, _, _ = state
    alive, win, cj, own0 = claims(ptr, own0_lost)
    lost = alive & ~win
    step = lost.at[:, 0].set(lost[:, 0] & ~own0)  # row 0's own-cell claim has no pointer
    ptr = jnp.where(step, _rows_take(nxt, jnp.minimum(ptr + 1, budget)), ptr)
    return r + 1, jnp.any(lost), ptr, own0_lost | (lost[:, 0] & own0), dead0 | ~alive[:, 0], win, cj

  # `rounds` rounds, stopping early at a fixed point: a round without a loss leaves
  # every pointer, hence every later round, unchanged (same plan as `rounds` rounds).
  no = jnp.zeros((g,), bool)
  init = (jnp.int32(0), jnp.bool_(True), start, no, no, start < 0, jnp.zeros((g, n), jnp.int32))
  _, _, _, _, dead0, win, cj = jax.lax.while_loop(lambda st: (st[0] < rounds) & st[1], body, init)
  target = jnp.where(win, cj + gpos * n, g * n).reshape(-1)
  dest = jnp.full((g * n,), -1, jnp.int32).at[target].set(jnp.broadcast_to(ii, (g, n)).reshape(-1), mode="drop")
  return dest.reshape(g, n), dead0


def _to_cells(x: Array, t: int) -> Array:
  """``[B, H, W, C]`` -> ``[B, t*t, H/t, W/t, C]`` (row-major cells)."""
  b, h, w, c = x.shape
  return x.reshape(b, t, h // t, t, w // t, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, t * t, h // t, w // t, c)


def _from_cells(cells: Array, t: int) -> Array:
  b, _, ch, cw, c = cells.shape
  return cells.reshape(b, t, t, ch, cw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, t * ch, t * cw, c)


def _apply_transport(x: Array, dest: Array, t: int) -> Array:
  """Destination cell j receives source cell ``dest[j]``, or zeros where ``dest[j] < 0``."""
  cells = _to_cells(x, t)
  moved = jnp.take_along_axis(cells, jnp.maximum(dest, 0)[:, :, None, None, None], axis=1)
  return _from_cells(jnp.where((dest >= 0)[:, :, None, None, None], moved, 0.0), t)


def _refine_plan(dest: Array, t, fine: int, stride: Optional[int] = None) -> Array:
  """The same image transport as a ``t x t`` plan, expressed on a ``fine x fine`` grid.

  ``dest`` numbers its cells ``r * stride + c`` (``stride=t``: a compact ``t x t``
  plan; ``stride=fine``: a plan embedded in the fine grid, when ``t`` is traced).
  """
  stride = t if stride is None else stride
  if isinstance(t, int) and fine == t:
    return dest
  f = fine // t
  rr, cc = np.divmod(np.arange(fine * fine), fine)
  src = jnp.take(dest, (rr // f) * stride + cc // f, axis=1)
  fine_src = ((src // stride) * f + (rr % f)) * fine + (src % stride) * f + cc % f
  return jnp.where(src >= 0, fine_src, -1).astype(jnp.int32)


def _upsample(mask: Array, rows: int, cols: int) -> Array:
  """Nearest upsampling of ``[B, n, n]`` to ``[B, rows, cols]`` (multiples of n)."""
  n = mask.shape[-1]
  return jnp.repeat(jnp.repeat(mask, rows // n, axis=1), cols // n, axis=2)


def _pad_to(x: Array, *sides: int) -> Array:
  """Zero-pads the trailing axes of ``x`` (after the batch axis) to ``sides``."""
  pad = [(0, 0)] + [(0, side - size) for side, size in zip(sides, x.shape[1:], strict=False)]
  return jnp.pad(x, pad + [(0, 0)] * (x.ndim - len(pad)))


# ----------------------------------------------------------------------------
# All block counts in one program.


class _Embedding:
  """The block counts one call may draw, each embedded top-left in the finest grid.

  The solver and the transport run once, on the finest grid (``N x N`` mask
  sites, ``T x T`` transport cells), for whichever block count was drawn: the
  sites and edges outside the drawn ``n x n`` corner have zero costs and weights,
  and then take no part (``_relaxation``), and the transport tables of the drawn
  grid cost ``inf`` outside it (``_transport_tables``). Only the energy terms,
  which pool at block-dependent sizes, are computed per block count (in a
  ``lax.switch``). One program for every block count compiles in about the time
  of the finest alone; the four branches of a switch over the whole op took
  four times that.
  """

  def __init__(self, geos: list[_Geometry], height: int, width: int, transport: bool, t_eps: float):
    self.geos = geos
    self.N = big_n = max(g.n for g in geos)
    self.T = big_t = max(g.t for g in geos)

    def stack(fn, dtype=np.int32):
      return np.stack([np.asarray(fn(g), dtype) for g in geos])

    def corner(size, side, fill):
      return lambda g: np.pad(np.full((size(g), size(g)), fill), (0, side - size(g)))

    self.n = stack(lambda g: g.n)
    self.t = stack(lambda g: g.t)
    self.sites = stack(lambda g: g.n * g.n, np.float32)
    self.tau = stack(lambda g: np.pad(_step_sizes(g.n), (0, big_n - g.n), constant_values=1.0), np.float32)
    self.site = stack(corner(lambda g: g.n, big_n, True), bool)
    self.cell = stack(corner(lambda g: g.t, big_t, True), bool)
    # Nearest-upsampling indices (into the embedded n x n labels) of the finest
    # grid, the transport grid and the pixels.
    self.to_finest = stack(lambda g: np.arange(big_n) * g.n // big_n)
    self.to_cells = stack(lambda g: np.minimum(np.arange(big_t) * g.n // g.t, g.n - 1))
    self.to_rows = stack(lambda g: np.arange(height) * g.n // height)
    self.to_cols = stack(lambda g: np.arange(width) * g.n // width)
    if transport:
      tables = [_transport_tables(g.t, float(t_eps), big_t) for g in geos]
      self.sorted_cost = np.stack([tab[0] for tab in tables])
      self.order = np.stack([tab[1] for tab in tables])
      self.budget = max(tab[2] for tab in tables)

  def pick(self, table: np.ndarray, idx):
    """The entry of ``table`` for the drawn block count (static with one)."""
    return table[0] if len(self.geos) == 1 else jnp.asarray(table)[idx]


def _take2(x: Array, rows, cols) -> Array:
  """``x[:, rows][:, :, cols]`` for ``[B, n, n]`` maps (nearest upsampling indices)."""
  if isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray):  # one block count: static
    return _upsample(x, rows.size, cols.size)
  return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


def _mix(emb: _Embedding, idx, sal, lam_b, perm, pix1, x1, x2, hp, force_own: bool):
  """Puzzle Mix for the block count ``emb.geos[idx]``.

  Returns:
    ``(mixed [B, H, W, C] float32, ratio [B], labels [B, N, N] int32 on the
    finest grid, dest1 [B, T^2], dest2 [B, T^2] on the finest transport grid,
    objective [B], inexact [B])``.
  """
  m, big_n, big_t = hp["n_labels"], emb.N, emb.T
  b, h, w, _ = x1.shape

  def terms(geo):
    def run(_):
      s = _block_saliency(sal, geo.n)
      u1, u0, wv, wh = _mask_terms(s, s[perm], pix1, pix1[perm], geo, hp["beta"], hp["gamma"])
      unary = _unary_table(u1, u0, lam_b, hp["eta"], m)
      s_t = s if geo.t == geo.n else _block_saliency(sal, geo.t)
      return _pad_to(unary, big_n, big_n), _pad_to(wv, big_n - 1, big_n), _pad_to(wh, big_n, big_n - 1), _pad_to(s_t, big_t, big_t)

    return run

  if len(emb.geos) == 1:
    unary, wv, wh, s_t = terms(emb.geos[0])(None)
  else:
    unary, wv, wh, s_t = jax.lax.switch(idx, [terms(g) for g in emb.geos], None)
  site = emb.pick(emb.site, idx)
  if force_own:
    labels = jnp.where(site, m - 1, 0).astype(jnp.int32) * jnp.ones((b, 1, 1), jnp.int32)
  else:
    labels = _solve_mask(unary, wv, wh, m, emb.pick(emb.tau, idx), emb.pick(emb.sites, idx))
  objective = _energy(labels, unary, wv, wh, m)
  mask = labels.astype(jnp.float32) / (m - 1)
  dest1 = dest2 = jnp.broadcast_to(jnp.arange(big_t * big_t, dtype=jnp.int32), (b, big_t * big_t))
  inexact = jnp.zeros((b,), bool)
  if hp["transport"] and not force_own:
    to_cells, cell = emb.pick(emb.to_cells, idx), emb.pick(emb.cell, idx)
    mask_t = _take2(mask, to_cells, to_cells)
    dest_mask = jnp.concatenate([(mask_t > 0) & cell, (mask_t < 1) & cell]).reshape(2 * b, big_t * big_t)
    dest, flag = _auction(
      dest_mask,
      jnp.concatenate([s_t, s_t[perm]]).reshape(2 * b, big_t * big_t),
      emb.pick(emb.sorted_cost, idx),
      emb.pick(emb.order, idx),
      emb.budget,
      emb.pick(emb.t, idx),
    )
    if len(emb.geos) > 1:  # the drawn grid's plan, on the finest transport grid
      dest = _refine_plan(dest, emb.pick(emb.t, idx), big_t, stride=big_t)
    dest1, dest2 = dest[:b], dest[b:]
    inexact = flag[:b] | flag[b:]
    x1 = _apply_transport(x1, dest1, big_t)
    x2 = _apply_transport(x2, dest2, big_t)
  big = _take2(mask, emb.pick(emb.to_rows, idx), emb.pick(emb.to_cols, idx))[..., None]
  mixed = big * x1 + (1.0 - big) * x2
  finest = emb.pick(emb.to_finest, idx)
  ratio = jnp.sum(mask, axis=(1, 2)) / emb.pick(emb.sites, idx)
  return mixed, ratio, _take2(labels, finest, finest), dest1, dest2, objective, inexact


# ----------------------------------------------------------------------------
# Public op.


def _channel_vector(name: str, value, channels: int) -> Optional[Array]:
  if value is None:
    return None
  size = int(np.size(value)) if not isinstance(value, jax.Array) else int(value.size)
  if size not in (1, channels):
    raise ValueError(f"{name} must be a scalar or have length {channels} (the number of channels), got shape {np.shape(value)}.")
  return jnp.asarray(value, jnp.float32).reshape(-1)


def _validate(images, labels, sal, block_num, hp, lam, perm):
  batch, height, width, _ = core.check_images(images)
  core.check_labels(labels, batch)
  core.check_lam_perm(lam, perm, batch)
  if tuple(jnp.shape(sal)) != (batch, height, width):
    raise ValueError(f"saliency must have shape (B, H, W) = {(batch, height, width)} (see jaxmix.saliency), got {jnp.shape(sal)}.")
  for name in ("alpha", "beta", "gamma", "eta", "t_eps"):
    core.check_nonneg(name, hp[name])
  core.check_int("neigh_size", hp["neigh_size"], 1)
  core.check_int("n_labels", hp["n_labels"], 2)
  if not isinstance(hp["transport"], (bool, np.bool_)):
    raise ValueError(f"transport must be a bool, got {hp['transport']!r}.")
  t_size = hp["t_size"]
  if isinstance(t_size, bool) or not isinstance(t_size, numbers.Integral) or (t_size != -1 and t_size < 1):
    raise ValueError(f"t_size must be -1 (transport on the mask grid) or an int >= 1, got {t_size!r}.")
  if block_num is None:
    blocks = _allowed_blocks(height, width)
    if not blocks:
      raise ValueError(f"block_num=None draws from {_BLOCK_CHOICES}, but none divides the {height}x{width} image; pass block_num.")
  else:
    core.check_int("block_num", block_num, 1)
    if height % block_num or width % block_num:
      raise ValueError(f"block_num must divide the image height and width ({height}x{width}), got {block_num}.")
    blocks = (int(block_num),)
  geos = [_Geometry(height, width, n, int(hp["neigh_size"]), int(t_size)) for n in blocks]
  finest, finest_t = max(g.n for g in geos), max(g.t for g in geos)
  if any(finest % g.n or finest_t % g.t for g in geos):
    raise ValueError(f"with block_num=None the transport grids {[g.t for g in geos]} must divide each other; pass block_num or t_size=-1.")
  return batch, geos


def _puzzlemix(key, images, labels, sal, *, block_num, hp, mean, std, lam, perm, noise=None, adv1=None, adv2=None, with_flags=False):
  """``puzzlemix`` with the adversarial noise injection of docs/algorithms/puzzlemix.md#adversarial-noise-injection."""
  batch, geos = _validate(images, labels, sal, block_num, hp, lam, perm)
  channels = images.shape[-1]
  mean_v, std_v = _channel_vector("mean", mean, channels), _channel_vector("std", std, channels)
  key_n, key_lam, key_perm = jax.random.split(key, 3)
  force_own = hp["alpha"] == 0 and lam is None
  lam = core.sample_beta(key_lam, hp["alpha"]) if lam is None else jnp.asarray(lam, jnp.float32)
  perm = core.sample_perm(key_perm, batch) if perm is None else jnp.asarray(perm, jnp.int32)
  lam_b = jnp.broadcast_to(lam, (batch,))
  x = images.astype(jnp.float32)
  sal = jnp.asarray(sal, jnp.float32)
  normalised = mean_v is not None and std_v is not None
  pix1 = x * std_v + mean_v if normalised else x
  x1, x2 = x, x[perm]
  if noise is not None:
    # docs/algorithms/puzzlemix.md#adversarial-noise-injection: the noise enters after the mask was computed, before transport.
    x1 = jnp.where(adv1, (jnp.clip(pix1 + noise, 0.0, 1.0) - mean_v) / std_v, x1)
    x2 = jnp.where(adv2, (jnp.clip(pix1[perm] + noise[perm], 0.0, 1.0) - mean_v) / std_v, x2)
  emb = _Embedding(geos, images.shape[1], images.shape[2], bool(hp["transport"]), hp["t_eps"])
  idx = 0 if len(geos) == 1 else jax.random.randint(key_n, (), 0, len(geos))
  out = _mix(emb, idx, sal, lam_b, perm, pix1, x1, x2, hp, force_own)
  mixed, ratio, lab, d1, d2, objective, flag = out
  result = MixResult(
    images=mixed.astype(images.dtype),
    labels=core.mix_labels(labels, perm, ratio),
    lam=ratio,
    perm=perm,
    mask=lab.astype(jnp.float32) / (hp["n_labels"] - 1),
    transport=(d1, d2),
    objective=objective,
  )
  return (result, flag) if with_flags else result


def puzzlemix(
  key,
  images: Array,
  labels: Array,
  saliency: Array,
  *,
  alpha: float = 1.0,
  block_num: Optional[int] = None,
  beta: float = 1.2,
  gamma: float = 0.5,
  eta: float = 0.2,
  neigh_size: int = 4,
  n_labels: int = 3,
  transport: bool = True,
  t_eps: float = 0.8,
  t_size: int = -1,
  mean=None,
  std=None,
  lam=None,
  perm=None,
) -> MixResult:
  """Puzzle Mix (Kim et al., ICML 2020), graph-free and jit/vmap clean.

  Per batch: a block count ``n`` (drawn uniformly from {2, 4, 8, 16} among those
  dividing the image, or ``block_num``), a partner permutation and one
  ``lam ~ Beta(alpha, alpha)``. Per sample, the ``n x n`` mask
  ``z in {0, 1/(m-1), ..., 1}`` (1 = own image) minimises the official energy
  (docs/algorithms/puzzlemix.md#unary-saliency-terms): the saliency each choice hides, the
  data-smoothness across neighbouring blocks (``beta / (16 n)``, ``gamma``), the
  label smoothness ``w (z_p - z_q)^2`` and a Binomial prior (``eta / n^2``) that
  keeps the mask mean near ``lam``. Each image's salient cells are then moved into
  the region it keeps by the official greedy transport (docs/algorithms/puzzlemix.md#transport), and
  ``x~ = M * T1(x) + (1 - M) * T2(x[perm])`` with the per-sample label weight
  ``lam_b = mean(M_b)``.

  Deviations from the official code: the mask solver is a convex relaxation
  with rounding and ICM instead of gco's alpha-beta swap on int-truncated costs
  (``_solve_mask``: float energies, measured against the exact optimum); an
  all-zero saliency map counts as uniform (the official code divides by zero);
  when a block side is not a multiple of ``neigh_size`` the largest divisor below
  it is used; ``alpha = 0`` returns the batch unchanged (mask of ones). The
  transport plan is the official one (``_transport_plan`` explains how it is
  computed without dense cost matrices).

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` float images (normalised; see ``mean`` / ``std``).
    labels: ``[B, K]`` soft targets.
    saliency: ``[B, H, W]`` non-negative pixel saliency (``jaxmix.saliency`` of the
      input gradients).
    alpha: Beta concentration of ``lam``; ``0`` disables mixing.
    block_num: ``None`` draws the block count per batch from {2, 4, 8, 16} (those
      dividing H and W) without recompiling; an int fixes it (a divisor of H and W).
    beta: label-smoothness weight (normalised by ``16 n``).
    gamma: data-smoothness weight (relative to ``beta``).
    eta: prior weight (normalised by ``n^2``).
    neigh_size: pooling size of the data-smoothness term.
    n_labels: m, the number of mask levels (the official code has 2, 3 or 4).
    transport: move salient cells into the kept region.
    t_eps: transport cost weight.
    t_size: transport cell size in pixels (-1: the mask blocks; the official
      CIFAR-100 recipe uses 4).
    mean: optional per-channel mean; with ``std``, the smoothness term uses
      ``images * std + mean`` ([0, 1] pixels, as the official code).
    std: optional per-channel std.
    lam: optional scalar or ``[B]`` override of the prior mean ``lam``.
    perm: optional ``[B]`` int override of the partner permutation.

  Returns:
    A ``MixResult`` with ``lam`` the per-sample mask mean, ``mask`` ``[B, n, n]``
    (values ``l / (m - 1)``), ``transport`` a pair ``([B, T*T], [B, T*T])`` of int32
    plans for the own image and the partner (entry j = the source cell that
    destination cell j receives, -1 for none; the identity when
    ``transport=False``) and ``objective`` ``[B]``, the float energy of the mask.
    With ``block_num=None``, ``mask`` is nearest-upsampled to the finest grid that
    can be drawn and ``transport`` is expressed on the finest transport grid.

  Raises:
    ValueError: on a bad image / label / saliency shape, a negative ``alpha``,
      ``beta``, ``gamma``, ``eta`` or ``t_eps``, ``n_labels < 2``,
      ``neigh_size < 1``, a ``block_num`` that does not divide the image, a
      ``t_size`` whose grid does not tile it, or badly shaped overrides.

  Example:
    >>> sal = jaxmix.saliency(jax.grad(clean_loss)(x))
    >>> res = jaxmix.puzzlemix(key, x, y, sal, mean=MEAN, std=STD)
  """
  core.check_key(key)
  hp = dict(alpha=alpha, beta=beta, gamma=gamma, eta=eta, neigh_size=neigh_size, n_labels=n_labels, transport=transport)
  hp.update(t_eps=t_eps, t_size=t_size)
  return _puzzlemix(key, images, labels, saliency, block_num=block_num, hp=hp, mean=mean, std=std, lam=lam, perm=perm)


def _hyperparameter_defaults() -> dict:
  """``puzzlemix``'s keyword defaults (its signature is the one place they are written),
  less the per-call arguments."""
  params = inspect.signature(puzzlemix).parameters.values()
  per_call = {"block_num", "mean", "std", "lam", "perm"}
  return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in per_call}


def puzzlemix_train_batch(
  key,
  images: Array,
  labels: Array,
  *,
  grad_fn: Callable[[Array], tuple[Array, Any]],
  mean,
  std,
  adv_p: float = 0.0,
  adv_eps: float = 10.0,
  **puzzlemix_kwargs,
) -> tuple[MixResult, Any]:
  """The per-batch Puzzle Mix step of the official training loop (docs/algorithms/puzzlemix.md#per-batch-control-flow steps 1-5).

  1. With ``adv_p > 0``: two flags ``a1, a2 ~ Bernoulli(adv_p)``, once per batch.
  2. If either is set: a random start ``delta ~ U(-adv_eps/255, adv_eps/255)`` per
     pixel in [0, 1] space, clipped so that ``x_pix + delta`` stays in [0, 1]; the
     saliency pass then sees that noisy batch.
  3. ``grad_fn(x_in)`` once, and ``jaxmix.saliency`` of its input gradients.
  4. If a flag is set: ``delta <- clip(delta + (adv_eps + 2)/255 sign(g))`` to
     ``+-adv_eps/255``, then scaled by one ``u ~ U(0, 1)``.
  5. ``puzzlemix`` of the clean batch with that saliency; the noise is added to
     the own images (a1) and to the partners (a2) after the mask and before the
     transport (docs/algorithms/puzzlemix.md#adversarial-noise-injection).

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` normalised images.
    labels: ``[B, K]`` soft targets.
    grad_fn: ``x_in -> (d loss / d x_in [B, H, W, C], aux)``. The train step
      chooses the loss (BN in inference mode when ``clean_lam == 0``, or the clean
      loss whose parameter gradients it keeps in ``aux`` when ``clean_lam > 0``).
    mean: per-channel mean of the normalisation (None if ``images`` are pixels).
    std: per-channel std of the normalisation (None if ``images`` are pixels).
    adv_p: probability of each adversarial flag (official CIFAR-100 variant: 0.1).
    adv_eps: noise bound in 1/255 pixel units.
    **puzzlemix_kwargs: forwarded to ``puzzlemix`` (``alpha``, ``block_num``, ...).

  Returns:
    ``(result, aux)``: the ``MixResult`` and ``grad_fn``'s aux.

  Raises:
    ValueError: as ``puzzlemix``; also ``adv_p`` outside [0, 1], a negative
      ``adv_eps``, unknown keyword arguments, or ``adv_p > 0`` without
      ``mean`` / ``std``.

  Example:
    >>> res, aux = jaxmix.puzzlemix_train_batch(key, x, y, grad_fn=g, mean=MEAN, std=STD)
  """
  core.check_key(key)
  core.check_prob("adv_p", adv_p)
  core.check_nonneg("adv_eps", adv_eps)
  channels = core.check_images(images)[-1]
  defaults = _hyperparameter_defaults()
  unknown = set(puzzlemix_kwargs) - set(defaults) - {"block_num", "lam", "perm"}
  if unknown:
    raise ValueError(f"unknown puzzlemix arguments {sorted(unknown)}; known: {sorted(defaults) + ['block_num', 'lam', 'perm']}.")
  kwargs = dict(puzzlemix_kwargs)
  block_num, lam, perm = kwargs.pop("block_num", None), kwargs.pop("lam", None), kwargs.pop("perm", None)
  hp = {**defaults, **kwargs}
  mix = functools.partial(_puzzlemix, block_num=block_num, hp=hp, mean=mean, std=std, lam=lam, perm=perm)
  key_flags, key_start, key_scale, key_mix = jax.random.split(key, 4)
  if adv_p == 0:
    grads, aux = grad_fn(images)
    return mix(key_mix, images, labels, saliency(jax.lax.stop_gradient(grads))), aux
  if mean is None or std is None:
    raise ValueError("adv_p > 0 needs mean and std (the adversarial noise lives in [0, 1] pixel space).")
  mean_v, std_v = _channel_vector("mean", mean, channels), _channel_vector("std", std, channels)
  eps = adv_eps / 255.0
  a1, a2 = jax.random.bernoulli(key_flags, adv_p, (2,))
  pix = images.astype(jnp.float32) * std_v + mean_v
  noisy = jnp.clip(pix + jax.random.uniform(key_start, images.shape, jnp.float32, -eps, eps), 0.0, 1.0)
  delta = noisy - pix
  x_in = jnp.where(a1 | a2, ((noisy - mean_v) / std_v).astype(images.dtype), images)
  grads, aux = grad_fn(x_in)
  grads = jax.lax.stop_gradient(grads)
  delta = jnp.clip(delta + (adv_eps + 2.0) / 255.0 * jnp.sign(grads.astype(jnp.float32)), -eps, eps)
  delta = jax.random.uniform(key_scale, (), jnp.float32) * delta
  return mix(key_mix, images, labels, saliency(grads), noise=delta, adv1=a1, adv2=a2), aux
