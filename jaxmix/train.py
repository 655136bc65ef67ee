"""Training: ``jaxmix train`` and the ``train(config)`` function behind it.

One readable loop: load data, build model and optimizer, resume from the run
directory if it holds a checkpoint, then for each epoch run the jitted
data-parallel step (``jaxmix.train_step``) over the tf.data batches, evaluate,
log JSONL, checkpoint with orbax (periodic + best validation). The run is
resumable bit-for-bit: the data order, crops, flips and every mixing draw depend
only on the seed and the global step, which the checkpoint holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxmix import models
from jaxmix import train_step as ts
from jaxmix.registry import METHODS, get_method

ARCHS = models.ARCHS

# Flag -> op keyword, per method: which command-line flags set which hyper-parameter.
# A flag left unset keeps the registry's seed default.
FLAG_MAP = {
  "mixup": {"alpha": "alpha"},
  "cutmix": {"alpha": "alpha", "cutmix_prob": "prob"},
  "cutout": {"cutout": "size"},
  "patch_augment": {"patch_prob": "prob", "patch_min_dim": "min_dim", "patch_max_dim": "max_dim"},
  "manifold_mixup": {"alpha": "alpha"},
  "patchup": {"patchup_type": "mode", "patchup_block": "block_size", "patchup_prob": "prob", "gamma": "gamma"},
  "dropblock": {"drop_block": "block_size", "keep_prob": "keep_prob", "drop_block_all": "drop_block_all"},
  "puzzlemix": {
    "alpha": "alpha",
    "block_num": "block_num",
    "pm_beta": "beta",
    "gamma": "gamma",
    "eta": "eta",
    "neigh_size": "neigh_size",
    "n_labels": "n_labels",
    "transport": "transport",
    "t_eps": "t_eps",
    "t_size": "t_size",
    "adv_p": "adv_p",
    "adv_eps": "adv_eps",
  },
  "ipmix": {"ipmix_k": "k", "ipmix_depth": "depth", "ipmix_beta": "beta", "aug_severity": "severity"},
}


@dataclasses.dataclass
class TrainConfig:
  """Everything that defines a run (saved as ``config.json`` in the run directory)."""

  dataset: str = "cifar10"
  data_dir: Optional[str] = None
  root_dir: str = "experiments"
  job_id: str = ""
  labels_per_class: Optional[int] = None
  valid_labels_per_class: int = 0
  arch: str = "preactresnet18"
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  train: str = "vanilla"
  hparams: dict = dataclasses.field(default_factory=dict)
  loss: str = "bce"
  label_smoothing: float = 0.0
  epochs: int = 400
  batch_size: int = 100
  optimizer: str = "sgd"
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = True
  decay: float = 1e-4
  l2_conv: float = 0.0
  lr_schedule: str = "step"
  schedule: tuple = (150, 225)
  step_factors: tuple = (0.1, 0.1)
  crop_padding: int = 2
  flip: bool = True
  seed: int = 0
  num_devices: int = 0
  mix_group_size: int = 0
  jsd: bool = False
  clean_lam: float = 0.0
  eval_batch_size: int = 500
  keep_checkpoints: int = 2
  save_every_steps: int = 0
  max_steps_per_epoch: int = 0
  max_eval_examples: int = 0  # evenly spaced (class-balanced on class-sorted sets)
  print_freq: int = 50
  affine_test: bool = False
  affine_path: Optional[str] = None
  fsgm_attack: bool = False

  def run_dir(self) -> str:
    name = self.job_id or f"{self.dataset}_{self.arch}_{self.train}_seed{self.seed}"
    return os.path.join(self.root_dir, name)


# ----------------------------------------------------------------------------
# Building blocks


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (momentum, Nesterov, L2 weight decay as PyTorch) or Adam, with the recipes' schedules.

  ``step``: lr multiplied by ``step_factors[i]`` from epoch ``schedule[i]`` on (PatchUp's
  ``adjust_learning_rate``); ``cosine``: per-step cosine decay to 1e-6 (IPMix).
  """
  if len(cfg.schedule) != len(cfg.step_factors):
    raise ValueError(f"--schedule {list(cfg.schedule)} and --step_factors {list(cfg.step_factors)} must have the same length.")
  if cfg.lr_schedule == "step":
    boundaries = {int(e) * steps_per_epoch: float(f) for e, f in zip(cfg.schedule, cfg.step_factors, strict=True)}
    lr = optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)
  elif cfg.lr_schedule == "cosine":
    total = max(1, cfg.epochs * steps_per_epoch)
    floor = 1e-6 / cfg.learning_rate
    lr = lambda s: cfg.learning_rate * (floor + (1 - floor) * 0.5 * (1 + jnp.cos(jnp.pi * s / total)))  # noqa: E731
  else:
    raise ValueError(f"--lr_schedule must be 'step' or 'cosine', got {cfg.lr_schedule!r}.")
  if cfg.optimizer == "sgd":
    return optax.chain(optax.add_decayed_weights(cfg.decay), optax.sgd(lr, momentum=cfg.momentum, nesterov=cfg.nesterov))
  if cfg.optimizer == "adam":
    return optax.chain(optax.add_decayed_weights(cfg.decay), optax.adam(lr))
  raise ValueError(f"--optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}.")


def resolve_hparams(cfg: TrainConfig) -> dict:
  """The registry's seed defaults for ``cfg.train`` updated by ``cfg.hparams``."""
  method = get_method(cfg.train)
  hp = dict(method.defaults)
  hp.update(cfg.hparams)
  return hp


def _mesh(num_devices: int):
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ValueError(f"--num_devices {n} exceeds the {len(devices)} available devices.")
  return jax.make_mesh((n,), (ts.AXIS,), devices=devices[:n])


def _step_config(cfg: TrainConfig, data) -> ts.StepConfig:
  hp = resolve_hparams(cfg)
  return ts.StepConfig(
    method=cfg.train,
    hparams=tuple(sorted(hp.items())),
    num_classes=data.num_classes,
    mean=tuple(data.mean),
    std=tuple(data.std),
    loss=cfg.loss,
    label_smoothing=cfg.label_smoothing,
    group_size=cfg.mix_group_size,
    jsd=cfg.jsd,
    clean_lam=cfg.clean_lam,
    l2_conv=cfg.l2_conv,
  )


def _checkpoint_manager(path: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(path), options=options, item_names=("state", "meta"))


def _save(manager, state, meta: dict) -> None:
  manager.save(
    int(state.step),
    args=ocp.args.Composite(state=ocp.args.StandardSave(_to_host(state)), meta=ocp.args.JsonSave(meta)),
    force=True,
  )
  manager.wait_until_finished()


_STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")


def _to_host(state) -> dict:
  """The checkpointed part of a ``TrainState`` as a dict of host arrays."""
  return jax.tree.map(np.asarray, {f: getattr(state, f) for f in _STATE_FIELDS})


def _restore(manager, template):
  step = manager.latest_step()
  target = _to_host(template)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  state = template.replace(**restored.state)
  return state, dict(restored.meta)


def evaluate(eval_step, variables, split, data, batch_size: int, sharding) -> dict:
  """Top-1 / top-5 accuracy (%) and mean CE of ``variables`` on a data split."""
  from jaxmix import data as jdata

  totals = None
  batches = map(_host_slice, jdata.eval_batches(split, batch_size=batch_size))
  for batch in jdata.prefetch_to_device(batches, 2, sharding):
    out = eval_step(variables, batch, tuple(data.mean), tuple(data.std))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  n = float(totals["count"])
  return {"top1": 100.0 * float(totals["correct"]) / n, "top5": 100.0 * float(totals["correct5"]) / n, "loss": float(totals["ce"]) / n}


def _host_slice(batch: dict) -> dict:
  """This host's contiguous slice of a global batch (the whole batch on one host)."""
  n, i = jax.process_count(), jax.process_index()
  if n == 1:
    return batch
  return {k: np.array_split(v, n)[i] for k, v in batch.items()}


class _Progress:
  """A one-line progress bar with loss / accuracy / img/s (plain lines when not a TTY)."""

  def __init__(self, epoch: int, total: int, freq: int):
    self.epoch, self.total, self.freq = epoch, total, freq
    self.tty = sys.stdout.isatty()
    self.start = time.perf_counter()

  def update(self, i: int, images: int, metrics: dict) -> None:
    rate = images / max(time.perf_counter() - self.start, 1e-9)
    line = f"epoch {self.epoch:3d} [{i:4d}/{self.total}] loss {metrics['loss']:.4f} acc {100 * metrics['accuracy']:.2f}% {rate:8.1f} img/s"
    print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

  def close(self) -> None:
    if self.tty:
      print()


def _load_data(cfg: TrainConfig):
  """``jaxmix.data.load`` for the config, with eval splits cut to ``max_eval_examples``."""
  from jaxmix import data as jdata

  data = jdata.load(
    cfg.dataset, cfg.data_dir, labels_per_class=cfg.labels_per_class, valid_labels_per_class=cfg.valid_labels_per_class, seed=cfg.seed
  )
  n = cfg.max_eval_examples
  if n:
    cut = lambda s: None if s is None else type(s)(*(a[jdata.spread_indices(len(s.labels), n)] for a in s))  # noqa: E731
    data = data._replace(valid=cut(data.valid), test=cut(data.test))
  return data


def _check_run_dir(cfg: TrainConfig, run_dir: str) -> Optional[dict]:
  """Returns the summary of a finished run; refuses a directory of a different run."""
  cfg_path = os.path.join(run_dir, "config.json")
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      old = json.load(f)
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))
    ignore = {"print_freq", "root_dir", "eval_batch_size"}
    diff = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if diff:
      raise ValueError(
        f"run directory {run_dir} holds a run with a different configuration (differs in: {', '.join(diff)}); "
        "choose another --job_id or --root_dir. Nothing was overwritten."
      )
  summary = os.path.join(run_dir, "summary.json")
  if os.path.exists(summary):
    with open(summary) as f:
      return json.load(f)
  return None


def _truncate_log(path: str, start_epoch: int) -> None:
  """Keeps the JSONL records of epochs before ``start_epoch`` (resume after a kill)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  with open(path, "w") as f:
    for r in records:
      if r["epoch"] < start_epoch:
        f.write(json.dumps(r) + "\n")


# ----------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig) -> dict:
  """Trains (or resumes, or returns the finished) run described by ``cfg``.

  Returns:
    The summary dict (also written to ``<run_dir>/summary.json``): test metrics of
    the best-validation (or last) checkpoint, the run's timing and its config.

  Raises:
    ValueError: on unknown method / arch / dataset, a bad data path, a run directory
      holding a different run, or a NaN loss (the last good checkpoint is kept).
  """
  from jaxmix import data as jdata

  get_method(cfg.train)
  if cfg.arch not in ARCHS:
    raise ValueError(f"unknown --arch {cfg.arch!r}; known architectures: {', '.join(ARCHS)}.")
  if cfg.jsd and not get_method(cfg.train).pixel_space:
    raise ValueError("--jsd needs a pixel-space label-preserving method (ipmix).")
  run_dir = cfg.run_dir()
  finished = _check_run_dir(cfg, run_dir)
  if finished is not None:
    print(f"jaxmix train: {run_dir} already holds a finished run; not overwriting it. Test: {finished.get('test')}")
    return finished
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2)

  data = _load_data(cfg)
  mesh = _mesh(cfg.num_devices)
  n_dev = mesh.devices.size
  if cfg.batch_size % n_dev:
    raise ValueError(f"--batch_size {cfg.batch_size} must be divisible by the number of devices ({n_dev}).")
  spe = jdata.steps_per_epoch(data.train, cfg.batch_size)
  if cfg.max_steps_per_epoch:
    spe = min(spe, cfg.max_steps_per_epoch)
  if spe < 1:
    raise ValueError(f"the training split has {len(data.train.labels)} examples, fewer than --batch_size {cfg.batch_size}.")

  model = models.get_model(cfg.arch, data.num_classes, **cfg.model_kwargs)
  tx = make_optimizer(cfg, spe)
  seed_key = jax.random.key(cfg.seed)
  init_key, _ = jax.random.split(jax.random.fold_in(seed_key, 1))
  state = ts.init_state(model, tx, init_key, data.train.images.shape[1:], seed_key=seed_key)
  step_cfg = _step_config(cfg, data)
  train_step = ts.make_train_step(model, step_cfg, mesh, per_device_batch=cfg.batch_size // n_dev)
  eval_step = ts.make_eval_step(model, mesh)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.AXIS))
  eval_bs = max(n_dev, cfg.eval_batch_size - cfg.eval_batch_size % n_dev)

  manager = _checkpoint_manager(os.path.join(run_dir, "checkpoints"), cfg.keep_checkpoints)
  best_manager = _checkpoint_manager(os.path.join(run_dir, "best"), 1)
  meta = {"best_valid_top1": -1.0, "best_epoch": -1, "train_seconds": 0.0}
  if manager.latest_step() is not None:
    state, meta = _restore(manager, state)
    print(f"jaxmix train: resumed {run_dir} at step {int(state.step)}")
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put(state, replicated)
  base_key = np.array(jax.device_get(state.rng))  # a copy: the state is donated

  log_path = os.path.join(run_dir, "metrics.jsonl")
  start_epoch, start_step = divmod(int(state.step), spe)
  _truncate_log(log_path, start_epoch)
  print(
    f"jaxmix train: {cfg.train} on {data.name} ({len(data.train.labels)} train / "
    f"{0 if data.valid is None else len(data.valid.labels)} valid / {len(data.test.labels)} test), "
    f"{cfg.arch}, {n_dev} device(s), {spe} steps/epoch, run dir {run_dir}"
  )
  t_run = time.perf_counter()
  for epoch in range(start_epoch, cfg.epochs):
    t_epoch = time.perf_counter()
    first = start_step if epoch == start_epoch else 0
    batches = jdata.train_batches(
      data.train,
      batch_size=cfg.batch_size,
      seed=cfg.seed,
      epoch=epoch,
      start_step=first,
      crop_padding=cfg.crop_padding,
      flip=cfg.flip,
      num_shards=jax.process_count(),
      shard_index=jax.process_index(),
    )
    progress = _Progress(epoch, spe, cfg.print_freq)
    sums, count, timed = None, 0, 0
    if epoch == start_epoch and first and "epoch_sums" in meta:  # resumed mid-epoch: the epoch's running sums
      sums = {k: jnp.float32(v) for k, v in meta["epoch_sums"].items()}
      count = meta["epoch_count"]
    meta.pop("epoch_sums", None)
    meta.pop("epoch_count", None)
    for i, batch in enumerate(jdata.prefetch_to_device(batches, 2, sharding), start=first):
      if i >= spe:
        break
      state, metrics = train_step(state, batch, base_key)
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
      count += 1
      timed += 1
      if (i + 1) % cfg.print_freq == 0 or i + 1 == spe:
        host = {k: float(v) / count for k, v in jax.device_get(sums).items()}
        if not math.isfinite(host["loss"]):
          progress.close()
          raise ValueError(
            f"NaN/inf loss at epoch {epoch}, step {int(state.step)}; stopped. The last good checkpoint in {run_dir} is kept."
          )
        progress.update(i + 1, (i + 1 - first) * cfg.batch_size, host)
      if cfg.save_every_steps and int(state.step) % cfg.save_every_steps == 0 and i + 1 < spe:
        partial = {k: float(v) for k, v in jax.device_get(sums).items()}
        _save(
          manager,
          state,
          {**meta, "train_seconds": meta["train_seconds"] + time.perf_counter() - t_run, "epoch_sums": partial, "epoch_count": count},
        )
    progress.close()
    train_metrics = {k: float(v) / max(count, 1) for k, v in jax.device_get(sums).items()} if sums else {}
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    record = {"epoch": epoch, "step": int(state.step), "train": train_metrics, "epoch_seconds": time.perf_counter() - t_epoch}
    if data.valid is not None:
      record["valid"] = evaluate(eval_step, variables, data.valid, data, eval_bs, sharding)
    record["test"] = evaluate(eval_step, variables, data.test, data, eval_bs, sharding)
    record["img_per_s"] = timed * cfg.batch_size / max(record["epoch_seconds"], 1e-9)
    meta["train_seconds"] += time.perf_counter() - t_run
    t_run = time.perf_counter()
    score = record["valid"]["top1"] if "valid" in record else record["test"]["top1"]
    is_best = data.valid is not None and score > meta["best_valid_top1"]
    if is_best:
      meta.update(best_valid_top1=score, best_epoch=epoch)
      _save(best_manager, state, meta)
    _save(manager, state, meta)
    with open(log_path, "a") as f:
      f.write(json.dumps(record) + "\n")
    print(
      f"epoch {epoch:3d}: train loss {train_metrics.get('loss', float('nan')):.4f}"
      + (f"  valid top1 {record['valid']['top1']:.2f}" if "valid" in record else "")
      + f"  test top1 {record['test']['top1']:.2f}  ({record['epoch_seconds']:.1f}s, {record['img_per_s']:.0f} img/s)"
    )

  return _finish(cfg, run_dir, manager, best_manager, state, meta, eval_step, data, eval_bs, sharding, replicated)


def _finish(cfg, run_dir, manager, best_manager, state, meta, eval_step, data, eval_bs, sharding, replicated) -> dict:
  """Tests the best-validation (else the last) checkpoint and writes summary.json."""
  chosen = "last"
  if best_manager.latest_step() is not None:
    state, _ = _restore(best_manager, state)
    state = jax.device_put(state, replicated)
    chosen = f"best valid (epoch {meta['best_epoch']})"
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  summary = {
    "run_dir": run_dir,
    "method": cfg.train,
    "hparams": resolve_hparams(cfg),
    "checkpoint": chosen,
    "step": int(state.step),
    "test": evaluate(eval_step, variables, data.test, data, eval_bs, sharding),
    "best_valid_top1": meta["best_valid_top1"] if meta["best_epoch"] >= 0 else None,
    "train_seconds": meta["train_seconds"],
    "config": dataclasses.asdict(cfg),
  }
  if cfg.fsgm_attack or cfg.affine_test:
    summary["robustness"] = _robustness(cfg, run_dir)
  with open(os.path.join(run_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, default=str)
  print(f"jaxmix train: done. Test ({chosen}): top1 {summary['test']['top1']:.2f}%  top5 {summary['test']['top5']:.2f}%")
  return summary


def _robustness(cfg: TrainConfig, run_dir: str) -> dict:
  """PatchUp's ``--fsgm_attack`` / ``--affine_test``, through ``jaxmix.evaluate``."""
  from jaxmix import evaluate as jeval

  logits_fn, data, _ = restore_for_eval(run_dir)
  return jeval.evaluate_all(
    logits_fn,
    data.test.images,
    data.test.labels,
    mean=data.mean,
    std=data.std,
    fgsm=cfg.fsgm_attack,
    deformed=cfg.affine_test,
    corruptions=False,
  )


def restore_for_eval(run_dir: str):
  """Restores a run for evaluation.

  Args:
    run_dir: a directory written by ``jaxmix train`` (with ``config.json`` and
      ``checkpoints/`` or ``best/``).

  Returns:
    ``(logits_fn, datasets, config)``: ``logits_fn(images_normalised [B, H, W, C]) ->
    logits`` jitted, in inference mode, from the best-validation checkpoint if there
    is one, else the last; ``datasets`` as ``jaxmix.data.load`` returns; the
    ``TrainConfig``.

  Raises:
    FileNotFoundError: if ``run_dir`` holds no config or no checkpoint.
  """
  from jaxmix import models

  cfg_path = os.path.join(run_dir, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{run_dir} is not a jaxmix run directory (no config.json).")
  with open(cfg_path) as f:
    raw = json.load(f)
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  cfg = TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in fields})
  data = _load_data(cfg)
  model = models.get_model(cfg.arch, data.num_classes, **cfg.model_kwargs)
  template = ts.init_state(model, make_optimizer(cfg, 1), jax.random.key(0), data.train.images.shape[1:], seed_key=jax.random.key(0))
  for sub in ("best", "checkpoints"):
    path = os.path.join(run_dir, sub)
    if os.path.isdir(path):
      manager = _checkpoint_manager(path, 1)
      if manager.latest_step() is not None:
        break
  else:
    raise FileNotFoundError(f"{run_dir} holds no checkpoint (looked in best/ and checkpoints/).")
  state, _ = _restore(manager, template)
  variables = jax.tree.map(jnp.asarray, {"params": state.params, "batch_stats": state.batch_stats})

  @jax.jit
  def logits_fn(x):
    return model.apply(variables, x, train=False)

  return logits_fn, data, cfg


# ----------------------------------------------------------------------------
# Command line


def _bool(s: str) -> bool:
  if s.lower() in ("true", "1", "yes"):
    return True
  if s.lower() in ("false", "0", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected True or False, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
  """The ``jaxmix train`` flags: those of PatchUp's ``main.py`` plus the other methods'."""
  p = argparse.ArgumentParser(
    prog="jaxmix train",
    description="Train a classifier with a mixing method. Accepts the flags of the PatchUp main.py.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  a = p.add_argument
  a("--dataset", default="cifar10", help="cifar10, cifar100 or svhn (tfds names, or offline with --data_dir)")
  a("--data_dir", default=None, help="tfds data dir, or a local class-folder directory / zip (e.g. ../shared/data/cifar10)")
  a("--root_dir", default="experiments", help="folder where run directories are created")
  a("--job_id", default="", help="name of the run directory (default: derived from dataset/arch/method/seed)")
  a("--labels_per_class", type=int, default=None, help="training examples per class (default: all)")
  a("--valid_labels_per_class", type=int, default=0, help="held-out validation examples per class")
  a("--arch", default="preactresnet18", choices=ARCHS)
  a("--model_kwargs", type=json.loads, default={}, help="JSON kwargs of the model, e.g. '{\"widths\": [16, 32, 64, 128]}'")
  a("--train", default="vanilla", choices=sorted(METHODS), help="mixing method")
  a("--epochs", type=int, default=400)
  a("--batch_size", type=int, default=100)
  a("--learning_rate", type=float, default=0.1)
  a("--momentum", type=float, default=0.9)
  a("--nesterov", type=_bool, default=True)
  a("--decay", type=float, default=1e-4, help="weight decay (L2 through the optimizer, as PyTorch SGD)")
  a("--l2_conv", type=float, default=0.0, help="L2 penalty on conv kernels in the loss (Keras ResNets: 1e-4)")
  a("--optimizer", default="sgd", choices=["sgd", "adam"])
  a("--lr_schedule", default="step", choices=["step", "cosine"])
  a("--schedule", type=int, nargs="+", default=[150, 225], help="epochs at which the lr is multiplied by --step_factors")
  a("--step_factors", type=float, nargs="+", default=[0.1, 0.1])
  a("--loss", default="bce", choices=["bce", "ce"], help="bce = BCE on softmax (PatchUp/MM/PuzzleMix), ce = cross-entropy")
  a("--label_smoothing", type=float, default=0.0)
  a("--crop_padding", type=int, default=2, help="random-crop zero padding (2 in the PatchUp lineage, 4 elsewhere)")
  a("--flip", type=_bool, default=True)
  a("--manualSeed", "--seed", dest="seed", type=int, default=0)
  a("--num_devices", type=int, default=0, help="devices to use (0 = all)")
  a("--distributed", action="store_true", help="multi-host: call jax.distributed.initialize() first (each host reads its slice)")
  a("--mix_group_size", type=int, default=0, help="mix within fixed groups of this many examples (device-count independent)")
  a("--eval_batch_size", type=int, default=500)
  a("--keep_checkpoints", type=int, default=2)
  a("--save_every_steps", type=int, default=0, help="also checkpoint every N steps within an epoch")
  a("--max_steps_per_epoch", type=int, default=0, help="cap the steps per epoch (smoke runs)")
  a("--max_eval_examples", type=int, default=0, help="evaluate on N evenly spaced test/valid examples only (smoke runs; 0 = all)")
  a("--print_freq", type=int, default=50)
  g = p.add_argument_group("method hyper-parameters (unset = the method's seed default)")
  ga = g.add_argument
  ga("--alpha", type=float, default=None, help="Beta concentration (mixup, manifold_mixup, cutmix, puzzlemix)")
  ga("--cutmix_prob", type=float, default=None)
  ga("--cutout", type=int, default=None, help="Cutout hole size")
  ga("--patchup_type", choices=["soft", "hard"], default=None)
  ga("--patchup_block", type=int, default=None)
  ga("--patchup_prob", type=float, default=None)
  ga("--gamma", type=float, default=None, help="PatchUp gamma, or Puzzle Mix data-smoothness gamma")
  ga("--drop_block", type=int, default=None, help="DropBlock block size")
  ga("--keep_prob", type=float, default=None)
  ga("--drop_block_all", type=_bool, nargs="?", const=True, default=None)
  ga("--patch_prob", type=float, default=None, help="Patch Augmentation probability")
  ga("--patch_min_dim", type=float, default=None)
  ga("--patch_max_dim", type=float, default=None)
  ga("--block_num", type=int, default=None, help="Puzzle Mix block count (default: drawn from {2,4,8,16})")
  ga("--pm_beta", type=float, default=None, help="Puzzle Mix label smoothness beta (its --beta)")
  ga("--eta", type=float, default=None)
  ga("--neigh_size", type=int, default=None)
  ga("--n_labels", type=int, default=None)
  ga("--transport", type=_bool, default=None)
  ga("--t_eps", type=float, default=None)
  ga("--t_size", type=int, default=None)
  ga("--adv_p", type=float, default=None)
  ga("--adv_eps", type=float, default=None)
  ga("--clean_lam", type=float, default=0.0)
  ga("--ipmix_k", type=int, default=None)
  ga("--ipmix_depth", type=int, default=None)
  ga("--ipmix_beta", type=float, default=None)
  ga("--aug_severity", type=int, default=None)
  ga("--jsd", type=_bool, default=False, help="IPMix JSD consistency loss (clean + two views)")
  r = p.add_argument_group("evaluation at the end (PatchUp flags)")
  r.add_argument("--affine_test", type=_bool, nargs="?", const=True, default=False, help="evaluate on the deformed test sets")
  r.add_argument("--affine_path", default=None, help="cache directory of the deformed test sets")
  r.add_argument("--fsgm_attack", type=_bool, nargs="?", const=True, default=False, help="evaluate FGSM robustness")
  c = p.add_argument_group("accepted for compatibility with PatchUp main.py (no effect)")
  for flag, kw in (
    ("--k", {"type": int}),
    ("--dropout", {"action": "store_true"}),
    ("--data_aug", {"type": int}),
    ("--checkpoint", {}),
    ("--workers", {"type": int}),
    ("--ngpu", {"type": int}),
    ("--add_name", {}),
    ("--loss_params", {"type": int, "nargs": "+"}),
  ):
    c.add_argument(flag, default=None, **kw)
  return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
  """Maps parsed flags to a ``TrainConfig`` (method flags through ``FLAG_MAP``)."""
  dataset = {"svhn": "svhn_cropped"}.get(args.dataset, args.dataset)
  hparams = {kw: getattr(args, flag) for flag, kw in FLAG_MAP.get(args.train, {}).items() if getattr(args, flag) is not None}
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  values = {k: v for k, v in vars(args).items() if k in fields and k != "distributed"}
  values.update(dataset=dataset, hparams=hparams, schedule=tuple(args.schedule), step_factors=tuple(args.step_factors))
  return TrainConfig(**values)


def cli_main(argv: Sequence[str]) -> int:
  """``jaxmix train``: parse flags, train (or resume), print the test metrics."""
  args = build_parser().parse_args(list(argv))
  if args.distributed:
    jax.distributed.initialize()
  try:
    train(config_from_args(args))
  except (ValueError, FileNotFoundError) as e:
    print(f"jaxmix train: error: {e}", file=sys.stderr)
    return 2
  return 0
