"""Per-batch mixers for the models' mixing hook (Manifold Mixup, PatchUp, DropBlock).

``hidden_mix(key, labels, method=..., **hparams)`` returns ``(mix_fn, carry)``;
pass both to a model of ``jaxmix.models``::

  mix_fn, carry = jaxmix.hidden_mix(key, y, method="patchup", mode="soft")
  (logits, carry), updates = model.apply(
      variables, x, train=True, mix=mix_fn, carry=carry, mutable=["batch_stats"])
  loss = carry.loss_scale * jaxmix.bce_on_softmax(logits, carry.labels)

The site index is sampled once per batch as a traced value and every site's op
runs under ``lax.cond(layer == index, ...)``: the step compiles once whatever the
sampled layer and only the chosen site does work.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxmix.ops import core, hidden_ops, input_ops
from jaxmix.ops.core import Array, MixResult

SITES = ("input", "conv1", "layer1", "layer2", "layer3")
"""The mixing sites every model of ``jaxmix.models`` calls, in forward order: the input
batch, after the stem (``conv1``) and after each of the first three residual stages."""

MixFn = Callable[[str, Array, MixResult], tuple]
"""A mixer: ``h, carry = mix_fn(site, h, carry)``."""


def _check_sites(sites: Sequence[str]) -> tuple:
  sites = tuple(sites)
  if not sites or any(s not in SITES for s in sites) or len(set(sites)) != len(sites):
    raise ValueError(f"sites must be distinct names from {SITES}, got {sites!r}.")
  return sites


def _identity_carry(labels: Array) -> MixResult:
  batch = labels.shape[0]
  return MixResult(
    images=None,
    labels=labels,
    lam=jnp.ones((batch,), jnp.float32),
    perm=jnp.arange(batch, dtype=jnp.int32),
    loss_scale=jnp.float32(1.0),
  )


def _layer(key, n_sites: int, layer) -> Array:
  if layer is None:
    return jax.random.randint(key, (), 0, n_sites, dtype=jnp.int32)
  return jnp.asarray(layer, jnp.int32)


def _manifold_mixup(
  key, labels: Array, *, alpha: float = 2.0, sites: Sequence[str] = ("input", "layer1", "layer2"), layer=None, lam=None, perm=None
):
  """Manifold Mixup: one site of ``sites`` uniformly per batch (official ``{0, 1, 2}``)."""
  sites = _check_sites(sites)
  batch = labels.shape[0]
  core.check_nonneg("alpha", alpha)
  core.check_lam_perm(lam, perm, batch)
  key_layer, key_mix = jax.random.split(key)
  key_lam, key_perm = jax.random.split(key_mix)
  lam = hidden_ops.sample_lam(key_lam, alpha) if lam is None else jnp.asarray(lam, jnp.float32)
  perm = core.sample_perm(key_perm, batch) if perm is None else jnp.asarray(perm, jnp.int32)
  lam = jnp.broadcast_to(lam, (batch,))
  layer = _layer(key_layer, len(sites), layer)
  carry = MixResult(None, core.mix_labels(labels, perm, lam), lam, perm, loss_scale=jnp.float32(1.0))

  def mix_fn(site: str, h: Array, carry: MixResult):
    if site not in sites:
      return h, carry
    h = lax.cond(layer == sites.index(site), lambda h: hidden_ops.pair_mix(h, perm, lam), lambda h: h, h)
    return h, carry

  return mix_fn, carry


def _patchup(
  key,
  labels: Array,
  *,
  mode: str = "soft",
  gamma=None,
  prob=None,
  block_size: int = 7,
  alpha: float = 2.0,
  use_alpha: bool = False,
  per_sample: bool = False,
  sites: Sequence[str] = ("input", "conv1", "layer1"),
  layer=None,
  lam=None,
  perm=None,
  cutmix_alpha: float = 1.0,
  wrn_target_bug: bool = False,
):
  """PatchUp: CutMix at ``input``, PatchUp at the other sites; one site per batch."""
  sites = _check_sites(sites)
  batch = labels.shape[0]
  if mode not in ("soft", "hard"):
    raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}.")
  default_gamma, default_prob = hidden_ops.PATCHUP_DEFAULTS[mode]
  gamma = default_gamma if gamma is None else gamma
  prob = default_prob if prob is None else prob
  core.check_prob("gamma", gamma)
  core.check_prob("prob", prob)
  core.check_nonneg("alpha", alpha)
  core.check_nonneg("cutmix_alpha", cutmix_alpha)
  core.check_lam_perm(lam, perm, batch)
  key_layer, key_apply, key_lam, key_perm, key_op = jax.random.split(key, 5)
  if lam is None:
    lam = hidden_ops.sample_lam(key_lam, alpha if use_alpha else 2.0)
  perm = core.sample_perm(key_perm, batch) if perm is None else jnp.asarray(perm, jnp.int32)
  layer = _layer(key_layer, len(sites), layer)
  if not (core.is_static_number(prob) and prob >= 1.0):
    layer = jnp.where(jax.random.uniform(key_apply) < prob, layer, -1)

  def mix_fn(site: str, h: Array, carry: MixResult):
    if site not in sites:
      return h, carry
    index = sites.index(site)
    key_site = jax.random.fold_in(key_op, index)

    def mixed(h, carry):
      if site == "input":
        key_box, key_cut = jax.random.split(key_site)
        cut_lam = hidden_ops.sample_lam(key_cut, cutmix_alpha)
        res = input_ops.cutmix(key_box, h, carry.labels, lam=cut_lam, perm=perm)
        labels, own = res.labels, res.lam
        if wrn_target_bug:
          labels, own = 0.5 * (labels + carry.labels), 0.5 * (own + 1.0)
      else:
        res = hidden_ops.patchup(
          key_site, h, carry.labels, mode=mode, gamma=gamma, prob=1.0, block_size=block_size, lam=lam, perm=perm, per_sample=per_sample
        )
        labels, own = res.labels, res.lam
      return res.images, MixResult(None, labels, own, res.perm, loss_scale=jnp.float32(2.0))

    return lax.cond(layer == index, mixed, lambda h, carry: (h, carry), h, carry)

  return mix_fn, _identity_carry(labels)


def _dropblock(
  key,
  labels: Array,
  *,
  block_size: int = 7,
  keep_prob=0.9,
  drop_block_all: bool = True,
  sites: Sequence[str] = ("conv1", "layer1"),
  layer=None,
  variant: str = "patchup",
):
  """DropBlock at every site of ``sites`` (``drop_block_all``) or one per batch."""
  sites = _check_sites(sites)
  if core.is_static_number(keep_prob):
    core.check_prob("keep_prob", keep_prob)
  key_layer, key_op = jax.random.split(key)
  layer = None if drop_block_all else _layer(key_layer, len(sites), layer)

  def mix_fn(site: str, h: Array, carry: MixResult):
    if site not in sites:
      return h, carry
    index = sites.index(site)
    drop = lambda h: hidden_ops.dropblock(  # noqa: E731
      jax.random.fold_in(key_op, index), h, block_size=block_size, keep_prob=keep_prob, variant=variant
    )
    if layer is None:
      return drop(h), carry
    return lax.cond(layer == index, drop, lambda h: h, h), carry

  return mix_fn, _identity_carry(labels)


_BUILDERS = {"manifold_mixup": _manifold_mixup, "patchup": _patchup, "dropblock": _dropblock}

HIDDEN_METHODS = tuple(_BUILDERS)
"""The method names ``hidden_mix`` accepts (the registry's ``"hidden"`` entries)."""


PER_CALL = frozenset({"lam", "perm", "layer", "seeds"})
"""Keyword arguments that override a draw of one call, not hyper-parameters."""


def method_defaults(method: str) -> dict:
  """The keyword defaults ``hidden_mix(key, labels, method=method)`` uses (sites included)."""
  if method not in _BUILDERS:
    raise ValueError(f"unknown hidden method {method!r}; known: {', '.join(HIDDEN_METHODS)}.")
  params = inspect.signature(_BUILDERS[method]).parameters.values()
  return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in PER_CALL}


def hidden_mix(key, labels: Array, *, method: str, **hparams) -> tuple[MixFn, MixResult]:
  """Builds the per-batch mixer for a model's mixing hook.

  Samples everything that is drawn once per batch (the site index as a traced
  int32, lam, the permutation, PatchUp's apply draw) and returns a function the
  model calls as ``h, carry = mix_fn(site, h, carry)`` at each of its sites
  (``jaxmix.models.SITES``), plus the initial ``carry``. After the forward pass
  ``carry.labels`` ``[B, K]`` are the targets and ``carry.loss_scale`` (float32
  scalar) multiplies the loss; ``carry.lam`` ``[B]`` and ``carry.perm`` ``[B]``
  describe the mix; ``carry.images`` is ``None``.

  Methods and their ``hparams`` (defaults are the official ones):

  * ``"manifold_mixup"`` (Verma et al., ICML 2019): ``alpha=2.0``,
    ``sites=("input", "layer1", "layer2")`` (the official ``k ~ U{0, 1, 2}``; the
    input site is plain input mixup), ``layer=None`` (an index into ``sites`` to
    force, may be traced), ``lam=None``, ``perm=None``. The targets do not depend
    on the site, so ``carry`` is final from the start.
  * ``"patchup"`` (Faramarzi et al., AAAI 2022): ``mode="soft"``, ``gamma=None``,
    ``prob=None`` (by mode, see ``jaxmix.patchup``), ``block_size=7``,
    ``alpha=2.0`` with ``use_alpha=False`` (lam ~ Beta(2, 2) as the official code),
    ``per_sample=False``, ``sites=("input", "conv1", "layer1")`` (the official
    ``layer_mix ~ U{0, 1, 2}``; at ``input`` it is CutMix with Beta(``cutmix_alpha``
    = 1) and one box per batch, elsewhere PatchUp), ``layer=None``, ``lam=None``,
    ``perm=None``, ``wrn_target_bug=False``. With probability ``1 - prob`` the
    batch is not mixed at all (``loss_scale = 1``, labels unchanged); otherwise
    ``loss_scale = 2`` and ``labels`` is the collapsed target of the official
    three-term loss. The same ``block_size`` is used at every site, as the
    official PreActResNet (one module instance).
  * ``"dropblock"`` (Ghiasi et al., NeurIPS 2018, the PatchUp copy):
    ``block_size=7``, ``keep_prob=0.9`` (may be traced, e.g.
    ``jaxmix.dropblock_schedule``), ``drop_block_all=True`` (drop at every site
    of ``sites``, the README setting; ``False``: one site per batch),
    ``sites=("conv1", "layer1")`` (the official ``1..k`` with ``k = 2``),
    ``layer=None``, ``variant="patchup"`` (or ``"paper"``). Labels unchanged.

  Quirk decision (WRN layer-0 target bug): in the official WideResNet, when
  layer 0 (CutMix) is drawn the reweighted target is never updated, so the third
  loss term pulls towards the un-mixed label. This is fixed by default (the
  PreActResNet behaviour: collapsed target ``lam' y + (1 - lam') y[perm]``,
  ``loss_scale = 2``); ``wrn_target_bug=True`` reproduces it (collapsed target
  ``(lam' y + (1 - lam') y[perm] + y) / 2``, ``loss_scale = 2``) for matching the
  WRN numbers of the paper.

  Only call ``mix_fn`` from a training forward pass; the models do not mix when
  ``mix`` is ``None``.

  Args:
    key: PRNG key (fold in the step number per batch).
    labels: ``[B, K]`` soft targets.
    method: one of ``HIDDEN_METHODS``.
    **hparams: the method's keyword hyper-parameters (above).

  Returns:
    ``(mix_fn, carry)``.

  Raises:
    ValueError: on an unknown ``method``, bad labels, a site name not in
      ``jaxmix.models.SITES`` or a bad hyper-parameter value.
    TypeError: on a hyper-parameter the method does not take.

  Example:
    >>> mix_fn, carry = jaxmix.hidden_mix(key, y, method="manifold_mixup", alpha=2.0)
    >>> (logits, carry), upd = model.apply(v, x, train=True, mix=mix_fn, carry=carry,
    ...                                    mutable=["batch_stats"])
  """
  core.check_key(key)
  if method not in _BUILDERS:
    raise ValueError(f"unknown hidden method {method!r}; known: {', '.join(HIDDEN_METHODS)}.")
  shape = jnp.shape(labels)
  if len(shape) != 2:
    raise ValueError(f"labels must be soft targets [B, K] (use jaxmix.one_hot for integer labels), got shape {tuple(shape)}.")
  return _BUILDERS[method](key, jnp.asarray(labels, jnp.float32), **hparams)


def apply_mix(mix_fn: Optional[MixFn], site: str, h: Array, carry):
  """Calls ``mix_fn(site, h, carry)`` if given, else returns ``(h, carry)``.

  For custom models: call it at each site of ``jaxmix.models.SITES`` you expose.
  """
  if mix_fn is None:
    return h, carry
  return mix_fn(site, h, carry)
