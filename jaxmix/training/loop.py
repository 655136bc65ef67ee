"""Training: ``jaxmix train`` and the ``train(config)`` function behind it.

One readable loop: load data, build model and optimizer, resume from the run
directory if it holds a checkpoint, then for each epoch run the jitted
data-parallel step (:mod:`jaxmix.training.step`) over the input pipeline's batches, evaluate,
log JSONL, checkpoint with orbax (periodic + best validation). The run is
resumable bit-for-bit: the data order, crops, flips and every mixing draw depend
only on the seed and the global step, which the checkpoint holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.evaluation.protocols import evaluate_all
from jaxmix.training import checkpoint as ckpt
from jaxmix.training import data as jdata
from jaxmix.training import models, sources
from jaxmix.training import step as ts
from jaxmix.training.config import (
  TrainConfig,
  learning_rate_schedule,
  load_data,
  make_optimizer,
  parse_args,
  resolve_hparams,
  resolved_config,
  step_config,
  validate,
)
from jaxmix.training.tensorboard import EventLog

__all__ = ("TrainConfig", "cli_main", "evaluate", "train")


# ----------------------------------------------------------------------------
# Building blocks


def mixing_side(image_size: int, augment: str) -> int:
  """The shorter side IPMix's mixing pictures are resized to before the per-draw crop:
  ``cifar.py``'s ``Resize(36)`` for 32 (9/8 of the side), ``imagenet.py``'s ``Resize(256)``
  for the 224 crop of the ``inception`` recipe (the side / 0.875)."""
  return round(image_size / 0.875) if augment == "inception" else image_size + image_size // 8


def evaluate(eval_step, variables, split, data, batch_size: int, sharding) -> dict:
  """Top-1 / top-5 accuracy (%) and mean CE of ``variables`` on a data split."""
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
    _say(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

  def close(self) -> None:
    if self.tty:
      _say()


def _say(*args, **kwargs) -> None:
  """``print`` on process 0 only: every process of a multi-host run runs the same loop."""
  if jax.process_index() == 0:
    print(*args, **kwargs)


# ----------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig) -> dict:
  """Trains (or resumes, or returns the finished) run described by ``cfg``.

  Every setting, the data and the device count are checked before the run directory
  is created; a kill at any instant leaves a run that the same call resumes; no state
  with a non-finite loss or parameter is ever saved.

  Returns:
    The summary dict (also written to ``<run_dir>/summary.json``): test metrics of
    the best-validation (or last) checkpoint, the run's timing and its config.

  Raises:
    ValueError: on a bad setting, a bad data path, a run directory holding a
      different run, or a non-finite loss (the message names the last finite
      checkpoint, from which a resume restarts).
    FileNotFoundError: on a missing data set.
  """
  validate(cfg)
  run_dir = cfg.run_dir()
  finished = ckpt.check_run_dir(cfg, run_dir)
  if finished is not None:
    _say(f"jaxmix train: {run_dir} already holds a finished run; not overwriting it. Test: {finished.get('test')}")
    return finished
  data = load_data(cfg)
  mixing_pictures = None
  if cfg.mixing_set is not None:
    mixing_pictures = sources.load_pictures(cfg.mixing_set, short_side=mixing_side(data.image_size, data.augment))
  mesh = ts.make_mesh(cfg.num_devices)
  n_dev = mesh.devices.size
  if jax.process_count() > 1 and n_dev != jax.device_count():
    raise ValueError(f"--num_devices {cfg.num_devices}: a multi-host run uses all {jax.device_count()} devices of its processes.")
  if cfg.batch_size % n_dev:
    raise ValueError(f"--batch_size {cfg.batch_size} must be divisible by the number of devices ({n_dev}).")
  spe = jdata.steps_per_epoch(data.train, cfg.batch_size)
  if cfg.max_steps_per_epoch:
    spe = min(spe, cfg.max_steps_per_epoch)
  if spe < 1:
    raise ValueError(f"the training split has {len(data.train.labels)} examples, fewer than --batch_size {cfg.batch_size}.")

  model = models.get_model(cfg.arch, data.num_classes, dtype=cfg.dtype, **cfg.model_kwargs)
  tx = make_optimizer(cfg, spe)
  seed_key = jax.random.key(cfg.seed)
  init_key, _ = jax.random.split(jax.random.fold_in(seed_key, 1))
  state = ts.init_state(model, tx, init_key, data.test.images.shape[1:], seed_key=seed_key, ema=cfg.ema_decay > 0)
  step_cfg = step_config(cfg, data.num_classes, data.mean, data.std)
  train_step = ts.make_train_step(model, step_cfg, mesh, per_device_batch=cfg.batch_size // n_dev)
  if cfg.mixup_off_epoch:  # timm's --mixup-off-epoch: the plain step from that epoch on
    plain = dataclasses.replace(step_cfg, method="vanilla", hparams=(), jsd=False, clean_lam=0.0, group_size=0)
    plain_step = ts.make_train_step(model, plain, mesh, per_device_batch=cfg.batch_size // n_dev)
  eval_step = ts.make_eval_step(model, mesh)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.AXIS))
  eval_bs = max(n_dev, cfg.eval_batch_size - cfg.eval_batch_size % n_dev)

  os.makedirs(run_dir, exist_ok=True)  # every check passed: only now is anything written
  lead = jax.process_index() == 0  # multi-host: process 0 writes the logs; every process saves and restores checkpoints
  if lead:
    _write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(cfg))
  manager = ckpt.checkpoint_manager(os.path.join(run_dir, "checkpoints"), cfg.keep_checkpoints)
  best_manager = ckpt.checkpoint_manager(os.path.join(run_dir, "best"), 1)
  meta = {"best_valid_top1": -1.0, "best_epoch": -1, "train_seconds": 0.0}
  resumed = bool(manager.all_steps())
  if resumed:
    state, meta, _ = ckpt.restore(manager, state, set_aside=True, log=_say)
    _say(f"jaxmix train: resumed {run_dir} at step {int(state.step)}")
    if meta["best_epoch"] >= 0 and (meta["best_epoch"] + 1) * spe == int(state.step):
      ckpt.save(best_manager, state, meta)  # a kill between the two saves of the best epoch
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put(state, replicated)
  base_key = np.array(jax.device_get(state.rng))  # a copy: the state is donated

  events = EventLog(run_dir, int(state.step) if resumed else None, enabled=cfg.tensorboard and lead)
  lr_at = learning_rate_schedule(cfg, spe)
  log_path = os.path.join(run_dir, "metrics.jsonl")
  start_epoch, start_step = divmod(int(state.step), spe)
  if lead:
    ckpt.truncate_log(log_path, start_epoch)
  _say(
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
      random_resized_crop=data.image_size if data.augment == "inception" else None,
      mixing_pictures=mixing_pictures,
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
      step_fn = plain_step if cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch else train_step
      state, metrics = step_fn(state, batch, base_key)
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
      count += 1
      timed += 1
      if (i + 1) % cfg.print_freq == 0 or i + 1 == spe:
        host = {k: float(v) / count for k, v in jax.device_get(sums).items()}
        _stop_unless_finite(host["loss"], state, manager, epoch, progress)
        progress.update(i + 1, (i + 1 - first) * cfg.batch_size, host)
        step_now = int(state.step)
        for tag, value in (("loss", host["loss"]), ("accuracy", host["accuracy"]), ("learning_rate", lr_at(step_now - 1))):
          events.add(f"train/{tag}", float(value), step_now)
      if cfg.save_every_steps and int(state.step) % cfg.save_every_steps == 0 and i + 1 < spe:
        partial = {k: float(v) for k, v in jax.device_get(sums).items()}
        _stop_unless_finite(partial["loss"], state, manager, epoch, progress)
        seconds = meta["train_seconds"] + time.perf_counter() - t_run
        ckpt.save(manager, state, {**meta, "train_seconds": seconds, "epoch_sums": partial, "epoch_count": count})
        events.flush()
    progress.close()
    train_metrics = {k: float(v) / max(count, 1) for k, v in jax.device_get(sums).items()} if sums else {}
    _stop_unless_finite(train_metrics.get("loss", 0.0), state, manager, epoch, progress)
    record = {"epoch": epoch, "step": int(state.step), "train": train_metrics, "epoch_seconds": time.perf_counter() - t_epoch}
    record.update(_evaluate_splits(eval_step, state, data, eval_bs, sharding))
    record["img_per_s"] = timed * cfg.batch_size / max(record["epoch_seconds"], 1e-9)
    meta["train_seconds"] += time.perf_counter() - t_run
    t_run = time.perf_counter()
    is_best = data.valid is not None and record["valid"]["top1"] > meta["best_valid_top1"]
    if is_best:
      meta.update(best_valid_top1=record["valid"]["top1"], best_epoch=epoch)
    ckpt.save(manager, state, meta)  # the periodic checkpoint first: resume needs it
    if is_best:
      ckpt.save(best_manager, state, meta)
    for split in ("valid", "test", "valid_ema", "test_ema"):
      if split in record:
        events.add(f"{split}/top1", record[split]["top1"], int(state.step))
    events.flush()
    if lead:
      with open(log_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    _say(_epoch_line(record))

  events.close()
  return _finish(cfg, run_dir, best_manager, state, meta, eval_step, data, eval_bs, sharding, replicated)


def _evaluate_splits(eval_step, state, data, batch_size: int, sharding) -> dict:
  """``valid`` / ``test`` metrics of the raw weights, and ``valid_ema`` / ``test_ema`` of the EMA."""
  out = {}
  raw = {"params": state.params, "batch_stats": state.batch_stats}
  for suffix, weights in (("", raw), ("_ema", state.ema)):
    if weights is not None:
      if data.valid is not None:
        out["valid" + suffix] = evaluate(eval_step, weights, data.valid, data, batch_size, sharding)
      out["test" + suffix] = evaluate(eval_step, weights, data.test, data, batch_size, sharding)
  return out


def _epoch_line(record: dict) -> str:
  valid = f"  valid top1 {record['valid']['top1']:.2f}" if "valid" in record else ""
  return (
    f"epoch {record['epoch']:3d}: train loss {record['train'].get('loss', float('nan')):.4f}{valid}"
    f"  test top1 {record['test']['top1']:.2f}  ({record['epoch_seconds']:.1f}s, {record['img_per_s']:.0f} img/s)"
  )


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _stop_unless_finite(loss: float, state, manager, epoch: int, progress) -> None:
  """Raises (before anything is saved) if the loss or a parameter is NaN/inf."""
  if math.isfinite(loss) and bool(_all_finite(state.params)):
    return
  progress.close()
  last = manager.latest_step()
  where = (
    f"the last finite checkpoint is {os.path.join(os.fspath(manager.directory), str(last))} (step {last}); "
    "running the same command resumes from it"
    if last is not None
    else "no checkpoint was saved yet"
  )
  what = "loss" if not math.isfinite(loss) else "parameters"
  raise ValueError(
    f"NaN/inf {what} at epoch {epoch}, step {int(state.step)}; stopped without saving it ({where}). "
    "Lower --learning_rate or check the data."
  )


def _write_json(path: str, value) -> None:
  """Writes JSON through a temporary file, so a kill never leaves half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, default=str)
  os.replace(tmp, path)


def _finish(cfg, run_dir, best_manager, state, meta, eval_step, data, eval_bs, sharding, replicated) -> dict:
  """Tests the best-validation (else the last) checkpoint and writes summary.json."""
  chosen = "last"
  if best_manager.all_steps():
    state, _, _ = ckpt.restore(best_manager, state)
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
  if state.ema is not None:
    summary["test_ema"] = evaluate(eval_step, state.ema, data.test, data, eval_bs, sharding)
  if cfg.fsgm_attack or cfg.affine_test:
    summary["robustness"] = _robustness(cfg, run_dir)
  if jax.process_index() == 0:
    _write_json(os.path.join(run_dir, "summary.json"), summary)
  _say(f"jaxmix train: done. Test ({chosen}): top1 {summary['test']['top1']:.2f}%  top5 {summary['test']['top5']:.2f}%")
  return summary


def _robustness(cfg: TrainConfig, run_dir: str) -> dict:
  """PatchUp's ``--fsgm_attack`` / ``--affine_test``, through ``jaxmix.evaluate``."""
  logits_fn, data, _ = ckpt.restore_for_eval(run_dir)
  return evaluate_all(
    logits_fn,
    data.test.images,
    data.test.labels,
    mean=data.mean,
    std=data.std,
    fgsm=cfg.fsgm_attack,
    deformed=cfg.affine_test,
    corruptions=False,
  )


# ----------------------------------------------------------------------------
# Command line


_PROCESS_FLAGS = ("coordinator_address", "num_processes", "process_id")


def _process_settings(args) -> dict | None:
  """The keywords of ``jax.distributed.initialize`` the flags ask for (``{}``: JAX detects them), or ``None`` (one process).

  Raises:
    ValueError: if only some of ``--coordinator_address --num_processes --process_id``
      are given (naming the missing ones), or one of them is out of range.
  """
  given = {name: getattr(args, name) for name in _PROCESS_FLAGS if getattr(args, name) is not None}
  if not given:
    return {} if args.distributed else None
  missing = [f"--{name}" for name in _PROCESS_FLAGS if name not in given]
  if missing:
    raise ValueError(
      f"--coordinator_address, --num_processes and --process_id go together; missing {', '.join(missing)} "
      "(or give none of them and --distributed, for JAX to find the processes itself)."
    )
  address, n, i = (given[name] for name in _PROCESS_FLAGS)
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--coordinator_address must be HOST:PORT (process 0's address and a free port), got {address!r}.")
  if n < 1:
    raise ValueError(f"--num_processes must be >= 1, got {n}.")
  if not 0 <= i < n:
    raise ValueError(f"--process_id must be in [0, {n}) for --num_processes {n}, got {i}.")
  return given


def _init_distributed(settings: dict) -> None:
  """``jax.distributed.initialize(**settings)``, before anything touches a device; CPU collectives through gloo."""
  if jax.config.jax_cpu_collectives_implementation is None:  # older JAX: no cross-process collectives on CPU by default
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**settings)
  except ValueError as e:
    if settings:
      raise
    hint = "give --coordinator_address, --num_processes and --process_id"
    raise ValueError(f"--distributed: JAX found no cluster to join ({e}); {hint}.") from e


def cli_main(argv: Sequence[str]) -> int:
  """``jaxmix train``: parse flags, train (or resume), print the test metrics."""
  try:
    cfg, args = parse_args(argv)
    processes = _process_settings(args)
    if args.print_config:
      validate(cfg)
      print(json.dumps(resolved_config(cfg), indent=2))
      return 0
    ts.use_compilation_cache(args.compilation_cache)
    if processes is not None:
      _init_distributed(processes)
    train(cfg)
  except (ValueError, OSError) as e:  # bad settings or data, a damaged run, a full disk
    print(f"jaxmix train: error: {e}", file=sys.stderr)
    return 2
  return 0
