"""The data-parallel train step: one pure ``(state, batch, key) -> (state, metrics)``.

The step runs under ``jax.shard_map`` over a 1-D mesh of all devices (axis
``"data"``): each device mixes its own shard of the batch on device with a key
folded by step and device (or, with ``group_size``, by global group index, so the
result does not depend on the device count), computes the loss of the registry
method, and gradients, batch statistics and metrics are averaged with explicit
``pmean`` collectives. The method is looked up in ``jaxmix.METHODS`` by its
``site``; there is no per-method branch here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from jaxmix.evaluation.metrics import top_k_correct
from jaxmix.ops import core, losses
from jaxmix.ops.core import normalize
from jaxmix.ops.hook import hidden_mix
from jaxmix.ops.ipmix import ipmix_views, jsd_loss
from jaxmix.ops.puzzlemix import puzzlemix_train_batch
from jaxmix.training.registry import get_method

AXIS = "data"


def default_compilation_cache() -> str:
  """``$JAXMIX_COMPILATION_CACHE``, else ``$JAX_COMPILATION_CACHE_DIR``, else ``~/.cache/jaxmix/xla``."""
  env = os.environ.get("JAXMIX_COMPILATION_CACHE") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
  return env or os.path.join(os.path.expanduser("~"), ".cache", "jaxmix", "xla")


def use_compilation_cache(path: Optional[str]) -> Optional[str]:
  """Turns on JAX's persistent compilation cache in ``path`` (``None``, ``""`` or ``"off"``: leave it off).

  ``jaxmix train`` and ``jaxmix eval`` call it with ``--compilation_cache`` (default
  :func:`default_compilation_cache`), so the second run of a
  configuration loads its compiled steps instead of compiling them again. Returns the
  directory in use.
  """
  if not path or path == "off":
    return None
  path = os.path.expanduser(path)
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return path


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh (axis :data:`AXIS`) over the first ``num_devices`` devices (0 = all)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ValueError(f"--num_devices {n} exceeds the {len(devices)} available devices.")
  return jax.make_mesh((n,), (AXIS,), devices=devices[:n])


class TrainState(train_state.TrainState):
  """Flax ``TrainState`` with BatchNorm statistics and the run's base PRNG key.

  Attributes:
    batch_stats: BatchNorm running statistics.
    rng: raw ``uint32[2]`` base key of the run; the step folds in ``step`` and the
      device / group index, so ``(rng, step)`` fixes every random draw.
    ema: ``{"params", "batch_stats"}``, the exponential moving average of both
      (timm's ``ModelEmaV2``), or ``None`` when the run keeps no EMA.
  """

  batch_stats: Any = None
  rng: Any = None
  ema: Any = None


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static description of a train step (hashable: it keys the compiled step).

  Attributes:
    method: registry name (``jaxmix.METHODS``).
    hparams: the op's keyword hyper-parameters, as a tuple of ``(name, value)``.
    num_classes: K.
    mean: per-channel mean in [0, 1] units (normalisation).
    std: per-channel std in [0, 1] units.
    loss: ``"bce"`` (BCE on softmax, the PatchUp / Manifold Mixup / Puzzle Mix
      lineage) or ``"ce"`` (softmax cross-entropy).
    label_smoothing: applied by ``one_hot`` before mixing.
    group_size: 0 mixes each device's shard as one batch; ``G > 0`` mixes within
      fixed groups of G examples keyed by their global group index, so 1 and 8
      devices give the same mixed batches for the same global batch.
    jsd: IPMix's JSD consistency loss (clean + two views).
    clean_lam: Puzzle Mix ``clean_lam`` (> 0 keeps the clean-loss gradients).
    l2_conv: L2 penalty on conv kernels added to the loss (the Keras ResNets' 1e-4).
    ema_decay: ``D > 0`` keeps ``ema = D ema + (1 - D) (params, batch_stats)`` after
      every step (the state must be made with ``init_state(..., ema=True)``).
  """

  method: str = "vanilla"
  hparams: tuple = ()
  num_classes: int = 10
  mean: tuple = (0.0, 0.0, 0.0)
  std: tuple = (1.0, 1.0, 1.0)
  loss: str = "bce"
  label_smoothing: float = 0.0
  group_size: int = 0
  jsd: bool = False
  clean_lam: float = 0.0
  l2_conv: float = 0.0
  ema_decay: float = 0.0


def base_loss(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The loss ``(logits, soft_targets) -> scalar`` named ``"bce"``, ``"ce"`` or ``"sigmoid_bce"``."""
  table = {"bce": losses.bce_on_softmax, "ce": losses.softmax_cross_entropy, "sigmoid_bce": losses.sigmoid_bce}
  if name not in table:
    raise ValueError(f"loss must be one of {sorted(table)}, got {name!r}.")
  return table[name]


def l2_conv(params) -> jax.Array:
  """The sum of squares of every 4-D (conv) kernel: the Keras ResNets' L2 penalty, before its weight."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  terms = [jnp.sum(jnp.square(v)) for path, v in leaves if "kernel" in jax.tree_util.keystr(path) and v.ndim == 4]
  return sum(terms) if terms else jnp.float32(0.0)


def _mixing_kwargs(mixing) -> dict:
  """IPMix's per-example mixing pictures from the input pipeline (``batch["mixing"]``), or none."""
  if mixing is None:
    return {}
  return {"mixing_set": mixing, "mixing_index": jnp.arange(mixing.shape[0], dtype=jnp.int32)}


def _grouped(op, key, images, labels, group_size: int, first_group, mixing=None):
  """Applies ``op`` per group of ``group_size`` examples, keyed by global group index."""
  batch = images.shape[0]
  if group_size <= 0:
    return op(key, images, labels, **_mixing_kwargs(mixing))
  if batch % group_size:
    raise ValueError(f"group_size={group_size} must divide the per-device batch {batch}.")
  n = batch // group_size
  keys = jax.vmap(lambda g: jax.random.fold_in(key, g))(first_group + jnp.arange(n))
  split = lambda a: None if a is None else a.reshape(n, group_size, *a.shape[1:])  # noqa: E731
  res = jax.vmap(lambda k, x, y, m: op(k, x, y, **_mixing_kwargs(m)))(keys, split(images), split(labels), split(mixing))
  flat = lambda a: None if a is None else a.reshape(batch, *a.shape[2:])  # noqa: E731
  offsets = (jnp.arange(n, dtype=jnp.int32) * group_size)[:, None]
  perm = (res.perm + offsets).reshape(batch)
  scale = None if res.loss_scale is None else jnp.mean(res.loss_scale)
  return core.MixResult(flat(res.images), flat(res.labels), flat(res.lam), perm, loss_scale=scale)


def _mix_key(key, step, group_size: int):
  """Folds the step, then the device (per-device mixing) into the run key."""
  key = jax.random.fold_in(key, step)
  if group_size > 0:
    return key  # groups fold their global index in ``_grouped``.
  return jax.random.fold_in(key, jax.lax.axis_index(AXIS))


def _input_dtype(model) -> jnp.dtype:
  """The dtype the step feeds ``model``: its ``dtype`` attribute (Flax's compute dtype), float32 if unset."""
  dtype = getattr(model, "dtype", None)
  return jnp.dtype(jnp.float32 if dtype is None else dtype)


def make_loss_fn(model, cfg: StepConfig):
  """Builds ``loss_fn(params, batch_stats, images_u8, labels_int, key) -> (loss, aux)``.

  ``aux`` holds the new batch statistics, the logits, the soft targets and extra
  parameter gradients (Puzzle Mix with ``clean_lam > 0``). The method's ``site``
  decides what runs:

  * ``input`` / ``label_preserving``: the op mixes the normalised batch (IPMix, a
    pixel-space op, mixes the [0, 1] batch before normalisation);
  * ``hidden``: ``jaxmix.hook.hidden_mix`` builds the mixer the model calls at its
    sites;
  * ``saliency``: ``jaxmix.puzzlemix_train_batch`` asks for input gradients (BN in
    inference mode when ``clean_lam == 0``) and mixes with them.

  Mixed precision: the normalised batch is cast to the model's compute ``dtype``
  (``jaxmix.models``' ``dtype`` attribute; float32 if it has none) before the
  mixing op and the model, so a bfloat16 model mixes and sees a bfloat16 batch
  (pixel-space ops still mix the float32 [0, 1] batch, cast after normalising);
  the logits, targets and loss are float32.
  """
  method = get_method(cfg.method)
  hp = dict(cfg.hparams)
  loss_of = base_loss(cfg.loss)
  op = functools.partial(method.op, **hp)
  dtype = _input_dtype(model)

  def forward(params, batch_stats, x, **kw):
    variables = {"params": params, "batch_stats": batch_stats}
    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], **kw)
    return out, updates["batch_stats"]

  def loss_fn(params, batch_stats, images_u8, labels_int, key, first_group, mixing=None):
    y = core.one_hot(labels_int, cfg.num_classes, cfg.label_smoothing)
    x01 = images_u8.astype(jnp.float32) / 255.0
    norm = lambda x: normalize(x, cfg.mean, cfg.std, max_value=1.0).astype(dtype)  # noqa: E731
    extra_grads = None
    scale = jnp.float32(1.0)
    if method.site == "hidden":
      if cfg.group_size:
        raise ValueError("group_size is not supported for hidden-layer methods; use group_size=0.")
      mix_fn, carry = hidden_mix(key, y, method=cfg.method, **hp)
      (logits, carry), new_bs = forward(params, batch_stats, norm(x01), mix=mix_fn, carry=carry)
      targets = carry.labels
      scale = jnp.float32(1.0) if carry.loss_scale is None else carry.loss_scale
    elif method.site == "saliency":
      res, extra_grads, batch_stats = _puzzlemix_inputs(model, cfg, hp, params, batch_stats, norm(x01), y, labels_int, key)
      logits, new_bs = forward(params, batch_stats, res.images)
      targets = res.labels
    elif cfg.jsd:
      views = ipmix_views(key, x01, **hp, **_mixing_kwargs(mixing))
      both = jnp.concatenate([x01, views[0], views[1]], axis=0)
      all_logits, new_bs = forward(params, batch_stats, norm(both))
      b = x01.shape[0]
      logits = all_logits[:b]
      loss = jsd_loss(logits, [all_logits[b : 2 * b], all_logits[2 * b :]], y)
      loss = loss + cfg.l2_conv * l2_conv(params)
      return loss, (new_bs, logits, y, extra_grads)
    else:
      if method.pixel_space:
        res = _grouped(op, key, x01, y, cfg.group_size, first_group, mixing)
        x_in, targets = norm(res.images), res.labels
      else:
        res = _grouped(op, key, norm(x01), y, cfg.group_size, first_group)
        x_in, targets = res.images, res.labels
      if res.loss_scale is not None:
        scale = res.loss_scale
      logits, new_bs = forward(params, batch_stats, x_in)
    loss = scale * loss_of(logits, targets) + cfg.l2_conv * l2_conv(params)
    return loss, (new_bs, logits, targets, extra_grads)

  return loss_fn


def _puzzlemix_inputs(model, cfg, hp, params, batch_stats, x, y, labels_int, key):
  """Runs Puzzle Mix's saliency pass and mix; returns (MixResult, extra grads, stats)."""
  k = cfg.num_classes

  if cfg.clean_lam > 0:
    # Train mode: the clean loss's parameter gradients are kept and added (docs/algorithms/puzzlemix.md#per-batch-control-flow).
    def clean(p, x_in):
      variables = {"params": p, "batch_stats": batch_stats}
      logits, upd = model.apply(variables, x_in, train=True, mutable=["batch_stats"])
      return (2.0 * cfg.clean_lam / k) * losses.softmax_cross_entropy(logits, y), upd["batch_stats"]

    def grad_fn(x_in):
      (g_params, g_x), new_stats = jax.grad(clean, argnums=(0, 1), has_aux=True)(params, x_in)
      return g_x, (g_params, new_stats)

    res, (g_params, new_stats) = puzzlemix_train_batch(key, x, y, grad_fn=grad_fn, mean=cfg.mean, std=cfg.std, **hp)
    return res, jax.lax.stop_gradient(g_params), new_stats

  # Inference-mode BN; gradient w.r.t. the input only (no parameter gradients).
  def clean_x(x_in):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x_in, train=False)
    return losses.softmax_cross_entropy(logits, y)

  def grad_fn(x_in):
    return jax.grad(clean_x)(jax.lax.stop_gradient(x_in)), None

  res, _ = puzzlemix_train_batch(key, x, y, grad_fn=grad_fn, mean=cfg.mean, std=cfg.std, **hp)
  return jax.tree.map(jax.lax.stop_gradient, res), None, batch_stats


def _metrics(loss, logits, labels_int):
  top1 = jnp.mean(top_k_correct(logits, labels_int, 1))
  top5 = jnp.mean(top_k_correct(logits, labels_int, 5))
  return {"loss": loss, "accuracy": top1, "top5": top5}


def make_train_step(model, cfg: StepConfig, mesh, *, per_device_batch: Optional[int] = None):
  """Returns the jitted, data-parallel ``step(state, batch, key) -> (state, metrics)``.

  Args:
    model: a Flax model with ``train``/``mutable=["batch_stats"]`` and, for hidden
      methods, the ``mix``/``carry`` hook (``jaxmix.models``).
    cfg: the static ``StepConfig``.
    mesh: a 1-D ``jax.sharding.Mesh`` with axis ``"data"``.
    per_device_batch: used only to validate ``group_size`` early.

  Returns:
    ``step``; ``batch`` is ``{"image": uint8 [B, H, W, C], "label": int [B]}``
    (for IPMix optionally ``"mixing"``, uint8 ``[B, H, W, C]``: each example's mixing
    picture, from ``train_batches(..., mixing_pictures=...)``) sharded over
    ``"data"``, ``key`` the run's base key (typed or raw). The state is donated.
  """
  loss_fn = make_loss_fn(model, cfg)
  if cfg.group_size and per_device_batch and per_device_batch % cfg.group_size:
    raise ValueError(f"group_size={cfg.group_size} must divide the per-device batch {per_device_batch}.")

  def per_device(state, images, labels, key, extras):
    key = jax.random.wrap_key_data(key) if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    mix_key = _mix_key(key, state.step, cfg.group_size)
    first_group = jax.lax.axis_index(AXIS) * (images.shape[0] // cfg.group_size) if cfg.group_size else 0
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    args = (state.params, state.batch_stats, images, labels, mix_key, first_group, extras.get("mixing"))
    (loss, (new_bs, logits, _, extra), grads) = _unpack(grad_fn(*args))
    if extra is not None:
      grads = jax.tree.map(jnp.add, grads, extra)
    grads = jax.lax.pmean(grads, AXIS)
    new_bs = jax.lax.pmean(new_bs, AXIS)
    metrics = jax.lax.pmean(_metrics(loss, logits, labels), AXIS)
    metrics["grad_norm"] = optax.tree.norm(grads)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_bs)
    if cfg.ema_decay:
      new_state = new_state.replace(ema=ema_update(state.ema, new_state, cfg.ema_decay))
    return new_state, metrics

  sharded = jax.shard_map(
    per_device,
    mesh=mesh,
    in_specs=(P(), P(AXIS), P(AXIS), P(), P(AXIS)),
    out_specs=(P(), P()),
    check_vma=False,
  )

  replicated = jax.sharding.NamedSharding(mesh, P())

  @functools.partial(jax.jit, donate_argnums=0, out_shardings=(replicated, replicated))
  def step(state, batch, key):
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.key_data(key)
    extras = {k: batch[k] for k in ("mixing",) if k in batch and cfg.method == "ipmix"}  # others ignore it
    return sharded(state, batch["image"], batch["label"], key, extras)

  return step


def _unpack(out):
  (loss, aux), grads = out
  return loss, aux, grads


def make_eval_step(model, mesh):
  """Returns jitted ``eval_step(variables, batch) -> sums`` over the masked batch.

  ``batch`` holds ``image`` (uint8, normalised here with the given mean/std),
  ``label`` and ``mask`` (bool, False on padding). The sums (``correct``,
  ``correct5``, ``ce``, ``count``) are totals, so a loop adds them up and divides.
  """

  @functools.partial(jax.jit, static_argnames=("mean", "std"))
  def eval_step(variables, batch, mean, std):
    x = normalize(batch["image"], mean, std)
    logits = model.apply(variables, x, train=False)
    labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
    # CE against one-hot targets rather than optax's integer-label gather, which JAX's
    # sharding rules reject for a one-example batch sharded over the mesh (eval batch 1).
    ce = optax.softmax_cross_entropy(logits, core.one_hot(labels, logits.shape[-1]))
    return {
      "correct": jnp.sum(top_k_correct(logits, labels, 1) * mask),
      "correct5": jnp.sum(top_k_correct(logits, labels, 5) * mask),
      "ce": jnp.sum(ce * mask),
      "count": jnp.sum(mask),
    }

  del mesh
  return eval_step


def ema_update(ema, state, decay: float):
  """timm's ``ModelEmaV2`` update of parameters and BatchNorm statistics: ``D ema + (1 - D) new``."""
  new = {"params": state.params, "batch_stats": state.batch_stats}
  return jax.tree.map(lambda e, v: decay * e + (1.0 - decay) * v, ema, new)


def init_state(model, tx, key, image_shape, *, seed_key, ema: bool = False) -> TrainState:
  """Initialises params and batch stats on a dummy batch; the state is replicated.

  With ``ema=True`` the state also holds an EMA of both, starting at their initial values.
  """
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  state = TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    tx=tx,
    rng=jax.random.key_data(seed_key),
    ema=jax.tree.map(jnp.copy, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}) if ema else None,
  )
  # Strong (not weak) dtypes everywhere, so the step's outputs match its inputs and
  # the step compiles exactly once.
  return jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.asarray(a).dtype), state.replace(step=jnp.zeros((), jnp.int32)))
