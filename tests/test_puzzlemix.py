"""Puzzle Mix: known answers of docs/algorithms/puzzlemix.md, transport vs the official rule, solver vs brute force."""

import functools
import importlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment, linprog
from scipy.sparse import coo_matrix

import jaxmix

pm = importlib.import_module("jaxmix.ops.puzzlemix")

MEAN = np.array([0.49, 0.48, 0.45], np.float32)
STD = np.array([0.25, 0.24, 0.26], np.float32)


# ----------------------------------------------------------------------------
# Reference implementations (numpy, float32, the official semantics).


def official_transport(z, s, t_eps, t):
  """The official ``mask_transport`` loop on dense float32 matrices; returns dest[j]."""
  n = t * t
  r, c = np.divmod(np.arange(n), t)
  cost_m = (((r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2).astype(np.float32)) / np.float32(max(t - 1, 1) ** 2)
  zz = (np.asarray(z).reshape(-1) > 0).astype(np.float32)
  cost = np.float32(t_eps) * cost_m - np.asarray(s, np.float32).reshape(-1, 1) * zz[None]
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
  return dest, np.float32(t_eps) * cost_m - np.asarray(s, np.float32).reshape(-1, 1) * zz[None]


def random_problems(seed, batch, n, n_labels, side=None):
  """Energy tables of realistic random problems: blocky images, skewed saliency, lam ~ U(0, 1)."""
  rng = np.random.default_rng(seed)
  side = side or 4 * n
  low = rng.random((batch, n, n, 3))
  x = np.repeat(np.repeat(low, side // n, 1), side // n, 2) + 0.15 * rng.normal(size=(batch, side, side, 3))
  x = np.clip(x, 0, 1).astype(np.float32)
  sal = rng.gamma(rng.choice([0.2, 0.5, 1.0, 3.0], size=(batch, 1, 1)), size=(batch, side, side)).astype(np.float32)
  lam = rng.random(batch).astype(np.float32)
  perm = rng.permutation(batch)
  return _terms(jnp.asarray(sal), jnp.asarray(x), jnp.asarray(lam), jnp.asarray(perm), n, n_labels)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _terms(sal, x, lam, perm, n, n_labels):
  geo = pm._Geometry(x.shape[1], x.shape[2], n, 4, -1)
  s = pm._block_saliency(sal, n)
  u1, u0, wv, wh = pm._mask_terms(s, s[perm], x, x[perm], geo, 1.2, 0.5)
  return pm._unary_table(u1, u0, lam, 0.2, n_labels), wv, wh


@functools.partial(jax.jit, static_argnums=(3,))
def _solve(unary, wv, wh, n_labels):
  labels = pm._solve_mask(unary, wv, wh, n_labels)
  return labels, pm._energy(labels, unary, wv, wh, n_labels)


@functools.partial(jax.jit, static_argnums=(4,))
def _energies(labelings, unary, wv, wh, n_labels):
  return pm._energy(labelings[:, None], unary, wv, wh, n_labels)


def brute_force(unary, wv, wh, n_labels):
  n = unary.shape[1]
  labelings = np.array(list(itertools.product(range(n_labels), repeat=n * n)), np.int32).reshape(-1, n, n)
  chunk = 4096
  labelings = np.concatenate([labelings, np.repeat(labelings[:1], -len(labelings) % chunk, 0)])
  best = np.full(unary.shape[0], np.inf, np.float32)
  for i in range(0, len(labelings), chunk):
    best = np.minimum(best, np.asarray(_energies(jnp.asarray(labelings[i : i + chunk]), unary, wv, wh, n_labels)).min(0))
  return best


def binary_min_cut_value(unary, wv, wh):
  """Exact optimum of a binary problem via the LP of its min-cut (integral for w >= 0)."""
  u = np.asarray(unary, np.float64)
  n = u.shape[0]
  edges = [(r * n + c, (r + 1) * n + c, wv[r, c]) for r in range(n - 1) for c in range(n)]
  edges += [(r * n + c, r * n + c + 1, wh[r, c]) for r in range(n) for c in range(n - 1)]
  nv, ne = n * n, len(edges)
  rows, cols, vals = [], [], []
  for e, (p, q, _) in enumerate(edges):
    for k, sgn in enumerate((1.0, -1.0)):  # t_e >= +-(x_p - x_q)
      rows += [2 * e + k] * 3
      cols += [p, q, nv + e]
      vals += [sgn, -sgn, -1.0]
  a_ub = coo_matrix((vals, (rows, cols)), shape=(2 * ne, nv + ne))
  cost = np.concatenate([(u[..., 1] - u[..., 0]).reshape(-1), [float(w) for _, _, w in edges]])
  res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * ne), bounds=[(0, 1)] * nv + [(0, None)] * ne, method="highs")
  return res.fun + u[..., 0].sum()


# ----------------------------------------------------------------------------
# Saliency and the energy's known answers (docs/algorithms/puzzlemix.md).


def test_saliency_is_root_mean_square_over_channels():
  g = jnp.asarray(np.arange(24, dtype=np.float32).reshape(1, 2, 4, 3) - 10.0)
  expected = np.sqrt(np.mean(np.asarray(g) ** 2, axis=-1))
  np.testing.assert_allclose(jaxmix.saliency(g), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="grads_wrt_images"):
    jaxmix.saliency(jnp.zeros((2, 4, 4)))


def test_prior_known_answer():
  prior = np.asarray(pm._neg_log_prior(jnp.asarray([0.5, 0.3]), 3))
  np.testing.assert_allclose(prior[0], [1.386294, 0.693147, 1.386294], rtol=1e-5)
  # Label index l <-> z = l / 2: z = 1 has prior lam^2, z = 0 has (1 - lam)^2.
  np.testing.assert_allclose(prior[1], -np.log([0.49, 0.42, 0.09]), rtol=1e-5)
  unary = pm._unary_table(jnp.zeros((2, 4, 4)), jnp.zeros((2, 4, 4)), jnp.asarray([0.5, 0.3]), 0.2, 3)
  np.testing.assert_allclose(unary[0, 1, 2], 0.2 / 16 * np.array([1.386294, 0.693147, 1.386294]), rtol=1e-5)


def test_beta_normalisation_and_edge_orientation():
  n, side = 4, 16
  geo = pm._Geometry(side, side, n, 4, -1)
  s = jnp.full((1, n, n), 1.0 / 16)
  x1 = jnp.zeros((1, side, side, 3))
  x2 = jnp.ones((1, side, side, 3))
  terms = jax.jit(pm._mask_terms, static_argnums=(4, 5, 6))
  _, _, wv, wh = terms(s, s, x1, x2, geo, 1.2, 0.0)
  np.testing.assert_allclose(wv, np.full((1, 3, 4), 0.01875), rtol=1e-6)
  np.testing.assert_allclose(wh, np.full((1, 4, 3), 0.01875), rtol=1e-6)
  # Own image all 0, partner all 1: every mixed edge costs |0 - 1| = 1, so
  # w = beta' + beta' gamma (1 + 1 - 0 - 0) / 2 and each interior site gets half of
  # D^{00} + D^{01} = 1 per edge in its z = 0 unary and half of D^{10} + D^{11} = 1 in u1.
  u1, u0, wv, _ = terms(s, s, x1, x2, geo, 1.2, 0.5)
  np.testing.assert_allclose(wv, 0.01875 * 1.5, rtol=1e-6)
  np.testing.assert_allclose(u1[0, 1, 1] - 1 / 16, 4 * 0.01875 * 0.5 * 0.5, rtol=1e-5)
  np.testing.assert_allclose(u0[0, 1, 1] - 1 / 16, 4 * 0.01875 * 0.5 * 0.5, rtol=1e-5)


@pytest.fixture(scope="module")
def decoupled_batch():
  rng = np.random.default_rng(3)
  b, side = 4, 8
  x = jnp.asarray(rng.normal(size=(b, side, side, 3)).astype(np.float32))
  y = jaxmix.one_hot(jnp.arange(b), 5)
  sal = jnp.asarray(rng.gamma(0.7, size=(b, side, side)).astype(np.float32))
  perm = jnp.asarray([2, 0, 3, 1])
  return x, y, sal, perm


_decoupled = jax.jit(
  lambda key, x, y, s, perm, lam: jaxmix.puzzlemix(
    key, x, y, s, block_num=4, beta=0.0, gamma=0.0, eta=0.0, transport=False, perm=perm, lam=lam
  )
)


def test_decoupled_sites_known_answer(decoupled_batch):
  x, y, sal, perm = decoupled_batch
  res = _decoupled(jax.random.key(0), x, y, sal, perm, 0.5)
  s = np.asarray(pm._block_saliency(sal, 4))
  expected = (s > s[np.asarray(perm)]).astype(np.float32)
  np.testing.assert_array_equal(res.mask, expected)
  # Objective: the saliency hidden by the choice, z s' + (1 - z) s.
  np.testing.assert_allclose(res.objective, np.sum(expected * s[np.asarray(perm)] + (1 - expected) * s, axis=(1, 2)), rtol=1e-5)


def test_mask_and_label_consistency(decoupled_batch):
  x, y, sal, perm = decoupled_batch
  res = _decoupled(jax.random.key(1), x, y, sal, perm, 0.5)
  big = np.repeat(np.repeat(np.asarray(res.mask), 2, 1), 2, 2)
  np.testing.assert_allclose(res.lam, big.mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(res.labels, res.lam[:, None] * y + (1 - res.lam[:, None]) * y[perm], rtol=1e-6)
  np.testing.assert_allclose(res.labels.sum(-1), 1.0, rtol=1e-6)
  own = big[..., None] == 1
  np.testing.assert_array_equal(np.where(own, res.images, 0), np.where(own, x, 0))
  np.testing.assert_array_equal(np.where(big[..., None] == 0, res.images, 0), np.where(big[..., None] == 0, x[perm], 0))
  np.testing.assert_array_equal(res.transport[0], np.broadcast_to(np.arange(16), (4, 16)))
  assert res.perm.dtype == jnp.int32 and res.lam.dtype == jnp.float32


# ----------------------------------------------------------------------------
# Transport (docs/algorithms/puzzlemix.md - docs/algorithms/puzzlemix.md, official semantics, vs linear_sum_assignment).


def test_cost_matrix_known_answer():
  for t, scale in ((2, 1.0), (4, 9.0)):
    sorted_cost, order, _ = pm._transport_tables(t, 1.0)
    cost = np.empty_like(sorted_cost)
    np.put_along_axis(cost, order, sorted_cost, axis=-1)
    if t == 2:
      np.testing.assert_array_equal(cost, [[0, 1, 1, 2], [1, 0, 2, 1], [1, 2, 0, 1], [2, 1, 1, 0]])
    np.testing.assert_allclose(cost[0, t + 1], 2.0 / scale, rtol=1e-6)  # (0,0) -> (1,1)


_plan = jax.jit(pm._transport_plan, static_argnums=(2, 3))
_PLANS = ((2, 0.8), (4, 0.2), (8, 0.8), (16, 0.8))  # (grid, t_eps) configurations compiled by the tests


def test_transport_identity_known_answer():
  rng = np.random.default_rng(0)
  for t, t_eps in _PLANS[:3]:
    s = rng.random((24, t * t)).astype(np.float32) + 0.01
    s /= s.sum(1, keepdims=True)
    dest, _ = _plan(jnp.ones((24, t * t), bool), jnp.asarray(s), t, t_eps)
    np.testing.assert_array_equal(dest, np.broadcast_to(np.arange(t * t), (24, t * t)))


def test_transport_move_known_answer():
  z = np.array([[1, 0, 0, 0]], bool)
  s = np.array([[0.02, 0.9, 0.04, 0.04]], np.float32)
  dest, _ = _plan(jnp.asarray(z), jnp.asarray(s), 2, 0.8)
  np.testing.assert_array_equal(dest, [[1, -1, -1, -1]])
  np.testing.assert_array_equal(official_transport(z[0], s[0], 0.8, 2)[0], [1, -1, -1, -1])
  # The masked block then shows the image's top-right block.
  img = jnp.arange(4 * 4 * 1, dtype=jnp.float32).reshape(1, 4, 4, 1)
  moved = pm._apply_transport(img, dest, 2)
  np.testing.assert_array_equal(moved[0, :2, :2, 0], img[0, :2, 2:, 0])
  np.testing.assert_array_equal(moved[0, 2:], 0)


@pytest.mark.parametrize("t,t_eps", _PLANS)
def test_transport_matches_official_rule_and_never_beats_lsa(t, t_eps):
  rng = np.random.default_rng(t)
  g = 24 if t < 16 else 8
  conc = rng.choice([0.2, 1.0, 5.0], size=(g, 1))
  s = rng.gamma(conc, size=(g, t * t)).astype(np.float32)
  s /= s.sum(1, keepdims=True)
  z = rng.random((g, t * t)) < rng.random((g, 1))
  dest, _ = _plan(jnp.asarray(z), jnp.asarray(s), t, t_eps)
  dest = np.asarray(dest)
  for k in range(g):
    ref, cost = official_transport(z[k], s[k], t_eps, t)
    np.testing.assert_array_equal(dest[k], ref)
    masked = cost * z[k][None, :]
    rows, cols = linear_sum_assignment(masked)
    won = dest[k] >= 0
    heuristic = masked[dest[k][won], np.arange(t * t)[won]].sum()
    assert heuristic >= masked[rows, cols].sum() - 1e-5


def test_refined_plan_moves_the_same_pixels():
  rng = np.random.default_rng(1)
  img = jnp.asarray(rng.normal(size=(2, 8, 8, 3)).astype(np.float32))
  dest = jnp.asarray([[3, -1, 0, 0], [1, 2, -1, 3]], jnp.int32)
  both = jax.jit(lambda img, dest: (pm._apply_transport(img, pm._refine_plan(dest, 2, 8), 8), pm._apply_transport(img, dest, 2)))
  fine, coarse = both(img, dest)
  np.testing.assert_array_equal(fine, coarse)


# ----------------------------------------------------------------------------
# Solver quality (docs/algorithms/puzzlemix.md#the-jaxmix-graph-free-solver, docs/algorithms/puzzlemix.md#puzzle-mix-known-answer-checks).


@pytest.mark.parametrize("n,n_labels,count", [(2, 3, 64), (3, 3, 64), (4, 2, 64)])
def test_solver_within_two_percent_of_brute_force(n, n_labels, count):
  unary, wv, wh = random_problems(10 + n, count, n, n_labels)
  labels, energy = _solve(unary, wv, wh, n_labels)
  best = brute_force(unary, wv, wh, n_labels)
  gap = (np.asarray(energy) - best) / np.maximum(np.abs(best), 1e-6)
  assert gap.min() >= -1e-5  # never below the optimum
  assert np.mean(gap <= 0.02) >= 0.95
  assert np.all(np.asarray(labels) >= 0) and np.all(np.asarray(labels) < n_labels)


def test_binary_brute_force_matches_min_cut():
  unary, wv, wh = random_problems(5, 6, 3, 2)
  best = brute_force(unary, wv, wh, 2)
  cut = [binary_min_cut_value(unary[k], np.asarray(wv[k]), np.asarray(wh[k])) for k in range(6)]
  np.testing.assert_allclose(best, cut, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# The op: random block count, determinism, jit / vmap, validation.


@pytest.fixture(scope="module")
def small_batch():
  rng = np.random.default_rng(7)
  x = jnp.asarray(((rng.random((4, 8, 8, 3)) - MEAN) / STD).astype(np.float32))
  y = jaxmix.one_hot(jnp.asarray([0, 1, 2, 3]), 4)
  sal = jnp.asarray(rng.gamma(0.5, size=(4, 8, 8)).astype(np.float32))
  return x, y, sal


_random_blocks = jax.jit(lambda key, x, y, s: jaxmix.puzzlemix(key, x, y, s, mean=MEAN, std=STD))
_fixed = functools.partial(jaxmix.puzzlemix, block_num=2, mean=MEAN, std=STD)
_fixed_jit = jax.jit(_fixed)


def _block_count(mask):
  """The coarsest n whose nearest upsampling reproduces every mask of the batch."""
  m = np.asarray(mask)
  for n in (1, 2, 4):
    f = m.shape[-1] // n
    if np.array_equal(np.repeat(np.repeat(m[:, ::f, ::f], f, 1), f, 2), m):
      return n
  return m.shape[-1]


def test_random_block_count_static_shapes_and_label_weights(small_batch):
  x, y, sal = small_batch[0][:, :4, :4], small_batch[1], small_batch[2][:, :4, :4]
  seen = set()
  for seed in range(12):
    res = _random_blocks(jax.random.key(seed), x, y, sal)
    assert res.mask.shape == (4, 4, 4) and res.transport[0].shape == (4, 16) and res.objective.shape == (4,)
    np.testing.assert_allclose(res.lam, np.asarray(res.mask).mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(res.labels.sum(-1), 1.0, rtol=1e-6)
    assert np.isfinite(np.asarray(res.images)).all()
    # Destinations with a positive mask always receive a cell (s > 0).
    for plan, kept in ((res.transport[0], res.mask > 0), (res.transport[1], res.mask < 1)):
      assert np.all(np.asarray(plan)[np.asarray(kept).reshape(4, -1)] >= 0)
    seen.add(_block_count(res.mask))
  assert len(seen) >= 2  # the draw changes the block count without recompiling
  assert _random_blocks._cache_size() == 1


def test_random_block_count_equals_the_block_count_it_drew(small_batch):
  # One program for every block count (each embedded in the finest grid) must give
  # what the drawn block count gives on its own grid: same mask, plan and images.
  x, y, sal = small_batch
  seen = set()
  for seed in range(6):
    key = jax.random.key(seed)
    n = (2, 4, 8)[int(jax.random.randint(jax.random.split(key, 3)[0], (), 0, 3))]  # _puzzlemix's draw
    seen.add(n)
    drawn = _random_blocks(key, x, y, sal)
    alone = _fixed_jit(key, x, y, sal) if n == 2 else jax.jit(functools.partial(_fixed, block_num=n))(key, x, y, sal)
    np.testing.assert_array_equal(drawn.mask, pm._upsample(alone.mask, 8, 8))
    for a, b in zip(drawn.transport, alone.transport, strict=True):
      np.testing.assert_array_equal(a, pm._refine_plan(b, n, 8))
    np.testing.assert_array_equal(drawn.images, alone.images)
    np.testing.assert_array_equal(drawn.lam, alone.lam)
    np.testing.assert_allclose(drawn.objective, alone.objective, rtol=1e-6)
  assert len(seen) >= 2


def test_same_key_same_output_and_jit_equals_eager(small_batch, decoupled_batch):
  x, y, sal = small_batch
  key = jax.random.key(3)
  jitted = _fixed_jit(key, x, y, sal)
  again = _fixed_jit(key, x, y, sal)
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(a, b)
  # Eager (op by op) against jit on the solver path; the transport's jit/eager
  # equality is covered by its exact match with the numpy reference above.
  x, y, sal, perm = decoupled_batch
  kwargs = dict(block_num=4, transport=False, perm=perm, lam=0.4, mean=MEAN, std=STD)
  eager = jaxmix.puzzlemix(key, x, y, sal, **kwargs)
  jitted = jax.jit(lambda k, x, y, s: jaxmix.puzzlemix(k, x, y, s, **kwargs))(key, x, y, sal)
  np.testing.assert_array_equal(eager.mask, jitted.mask)
  np.testing.assert_allclose(eager.images, jitted.images, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(eager.objective, jitted.objective, rtol=1e-5)


def test_vmap_equals_loop(small_batch):
  x, y, sal = small_batch
  keys = jax.random.split(jax.random.key(5), 2)
  xs, ys, ss = jnp.stack([x, x[::-1]]), jnp.stack([y, y[::-1]]), jnp.stack([sal, sal[::-1]])
  batched = jax.jit(jax.vmap(_fixed))(keys, xs, ys, ss)
  for i in range(2):
    single = _fixed_jit(keys[i], xs[i], ys[i], ss[i])
    np.testing.assert_array_equal(batched.mask[i], single.mask)
    np.testing.assert_allclose(batched.images[i], single.images, rtol=1e-5, atol=1e-5)


def test_alpha_zero_keeps_the_batch(small_batch):
  x, y, sal = small_batch
  res = jaxmix.puzzlemix(jax.random.key(0), x, y, sal, alpha=0.0, block_num=4, transport=False, mean=MEAN, std=STD)
  np.testing.assert_array_equal(res.images, x)
  np.testing.assert_array_equal(res.lam, np.ones(4))
  np.testing.assert_allclose(res.labels, y)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"alpha": -1.0}, "alpha"),
    ({"block_num": 3}, "block_num"),
    ({"n_labels": 1}, "n_labels"),
    ({"t_size": 0}, "t_size"),
    ({"neigh_size": 0}, "neigh_size"),
    ({"t_eps": -0.1}, "t_eps"),
    ({"mean": [0.5, 0.5]}, "mean"),
    ({"lam": jnp.ones(3)}, "lam"),
  ],
)
def test_bad_arguments_raise(small_batch, kwargs, match):
  x, y, sal = small_batch
  with pytest.raises(ValueError, match=match):
    jaxmix.puzzlemix(jax.random.key(0), x, y, sal, **kwargs)


def test_bad_saliency_shape_raises(small_batch):
  x, y, sal = small_batch
  with pytest.raises(ValueError, match="saliency"):
    jaxmix.puzzlemix(jax.random.key(0), x, y, sal[:, :4])


# ----------------------------------------------------------------------------
# The train-step helper (docs/algorithms/puzzlemix.md steps 1, 2, 4, 5 and docs/algorithms/puzzlemix.md).


def _linear_grad_fn(weights):
  """Gradient of the fixed linear model ``sum(x * W)``; aux counts the calls via the input."""

  def grad_fn(x_in):
    return jax.grad(lambda v: jnp.sum(v * weights))(x_in), x_in

  return grad_fn


def test_train_batch_without_adversary_is_puzzlemix_of_the_saliency(small_batch):
  x, y, _ = small_batch
  weights = jnp.asarray(np.random.default_rng(0).normal(size=x.shape[1:]).astype(np.float32))
  key = jax.random.key(11)
  run = jax.jit(lambda k, x, y: jaxmix.puzzlemix_train_batch(k, x, y, grad_fn=_linear_grad_fn(weights), mean=MEAN, std=STD, block_num=2))
  res, aux = run(key, x, y)
  np.testing.assert_array_equal(aux, x)  # grad_fn saw the clean batch
  sal = jaxmix.saliency(jnp.broadcast_to(weights, x.shape))
  expected = _fixed_jit(jax.random.split(key, 4)[3], x, y, sal)
  np.testing.assert_array_equal(res.mask, expected.mask)
  np.testing.assert_allclose(res.images, expected.images, rtol=1e-6, atol=1e-6)


def test_train_batch_adversarial_steps_follow_the_official_loop(small_batch):
  x, y, _ = small_batch
  weights = jnp.asarray(np.random.default_rng(1).normal(size=x.shape[1:]).astype(np.float32))
  key = jax.random.key(12)
  kwargs = dict(block_num=2, transport=False)
  res, x_in = jaxmix.puzzlemix_train_batch(key, x, y, grad_fn=_linear_grad_fn(weights), mean=MEAN, std=STD, adv_p=1.0, **kwargs)
  # Re-derive the steps by hand with the same keys.
  _, key_start, key_scale, key_mix = jax.random.split(key, 4)
  eps = 10.0 / 255.0
  pix = np.asarray(x) * STD + MEAN
  noisy = np.clip(pix + np.asarray(jax.random.uniform(key_start, x.shape, jnp.float32, -eps, eps)), 0, 1)
  np.testing.assert_allclose(x_in, (noisy - MEAN) / STD, rtol=1e-5, atol=1e-5)
  delta = np.clip(noisy - pix + 12.0 / 255.0 * np.sign(np.asarray(weights)), -eps, eps)
  delta = float(jax.random.uniform(key_scale, (), jnp.float32)) * delta
  sal = jaxmix.saliency(jnp.broadcast_to(weights, x.shape))
  clean = jaxmix.puzzlemix(key_mix, x, y, sal, mean=MEAN, std=STD, **kwargs)
  big = np.repeat(np.repeat(np.asarray(clean.mask), 4, 1), 4, 2)[..., None]
  perm = np.asarray(clean.perm)
  own = (np.clip(pix + delta, 0, 1) - MEAN) / STD
  partner = (np.clip(pix[perm] + delta[perm], 0, 1) - MEAN) / STD
  np.testing.assert_array_equal(res.mask, clean.mask)
  np.testing.assert_allclose(res.images, big * own + (1 - big) * partner, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(res.images) * STD - np.asarray(clean.images) * STD).max() <= eps + 1e-5


def test_train_batch_rejects_unknown_arguments(small_batch):
  x, y, _ = small_batch
  with pytest.raises(ValueError, match="unknown"):
    jaxmix.puzzlemix_train_batch(jax.random.key(0), x, y, grad_fn=_linear_grad_fn(1.0), mean=MEAN, std=STD, clean_lam=1.0)
  with pytest.raises(ValueError, match="adv_p"):
    jaxmix.puzzlemix_train_batch(jax.random.key(0), x, y, grad_fn=_linear_grad_fn(1.0), mean=MEAN, std=STD, adv_p=1.5)
