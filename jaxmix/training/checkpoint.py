"""Checkpoints and run directories: save, restore, resume checks, restore-for-eval.

A run directory written by ``jaxmix train`` holds ``config.json`` (the ``TrainConfig``),
``metrics.jsonl`` (one record per finished epoch), ``checkpoints/`` (periodic orbax
checkpoints), ``best/`` (the best-validation checkpoint) and, once finished,
``summary.json``. Each checkpoint holds the whole train state (params, batch stats,
optimizer state, step, base PRNG key) and a JSON ``meta`` item (best score, timing,
the running sums of a mid-epoch save). Both the train loop and ``jaxmix eval`` use
this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxmix.training import models
from jaxmix.training import step as ts
from jaxmix.training.config import TrainConfig, load_data, make_optimizer, read_config

__all__ = (
  "STATE_FIELDS",
  "check_run_dir",
  "checkpoint_manager",
  "restore",
  "restore_for_eval",
  "save",
  "truncate_log",
)

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")
"""The ``TrainState`` fields a checkpoint holds."""


def checkpoint_manager(path: str, keep: int) -> ocp.CheckpointManager:
  """A synchronous orbax manager of ``state`` + ``meta`` items keeping the ``keep`` newest steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(path), options=options, item_names=("state", "meta"))


def _to_host(state) -> dict:
  """The checkpointed part of a ``TrainState`` as a dict of host arrays."""
  return jax.tree.map(np.asarray, {f: getattr(state, f) for f in STATE_FIELDS})


def save(manager: ocp.CheckpointManager, state, meta: dict) -> None:
  """Saves ``state`` and ``meta`` at ``state.step`` and waits until the files are written."""
  manager.save(
    int(state.step),
    args=ocp.args.Composite(state=ocp.args.StandardSave(_to_host(state)), meta=ocp.args.JsonSave(meta)),
    force=True,
  )
  manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, template):
  """The newest checkpoint of ``manager`` as ``(state like template, meta dict)``."""
  step = manager.latest_step()
  target = _to_host(template)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return template.replace(**restored.state), dict(restored.meta)


def check_run_dir(cfg: TrainConfig, run_dir: str) -> Optional[dict]:
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


def truncate_log(path: str, start_epoch: int) -> None:
  """Keeps the JSONL records of epochs before ``start_epoch`` (resume after a kill)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  with open(path, "w") as f:
    for r in records:
      if r["epoch"] < start_epoch:
        f.write(json.dumps(r) + "\n")


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
  cfg_path = os.path.join(run_dir, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{run_dir} is not a jaxmix run directory (no config.json).")
  cfg = read_config(cfg_path)
  data = load_data(cfg)
  model = models.get_model(cfg.arch, data.num_classes, **cfg.model_kwargs)
  template = ts.init_state(model, make_optimizer(cfg, 1), jax.random.key(0), data.train.images.shape[1:], seed_key=jax.random.key(0))
  for sub in ("best", "checkpoints"):
    path = os.path.join(run_dir, sub)
    if os.path.isdir(path):
      manager = checkpoint_manager(path, 1)
      if manager.latest_step() is not None:
        break
  else:
    raise FileNotFoundError(f"{run_dir} holds no checkpoint (looked in best/ and checkpoints/).")
  state, _ = restore(manager, template)
  variables = jax.tree.map(jnp.asarray, {"params": state.params, "batch_stats": state.batch_stats})

  @jax.jit
  def logits_fn(x):
    return model.apply(variables, x, train=False)

  return logits_fn, data, cfg
