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
import hashlib
import itertools
import json
import os
import sys
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
  "verify",
  "truncate_log",
)

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng", "ema")
"""The ``TrainState`` fields a checkpoint holds (``ema`` only when the run keeps one)."""


def checkpoint_manager(path: str, keep: int) -> ocp.CheckpointManager:
  """A synchronous orbax manager of ``state`` + ``meta`` items keeping the ``keep`` newest steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(path), options=options, item_names=("state", "meta"))


def _to_host(state) -> dict:
  """The checkpointed part of a ``TrainState`` as a dict of host arrays."""
  return jax.tree.map(np.asarray, {f: getattr(state, f) for f in STATE_FIELDS if getattr(state, f) is not None})


def _manifest_path(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(os.fspath(manager.directory), f"{step}.manifest.json")


def _digests(directory: str) -> dict:
  """``{relative path: sha256}`` of every file below ``directory``."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def save(manager: ocp.CheckpointManager, state, meta: dict) -> None:
  """Saves ``state`` and ``meta`` at ``state.step``, then a manifest of the files' checksums.

  Idempotent: a step that is already saved is left as it is (a resumed run that
  recomputes a step gets bit-identical state). The manifest (``<step>.manifest.json``
  beside the step's folder) is written after orbax has finished, so a step without one
  is a save that a kill interrupted, or a checkpoint of an older jaxmix. In a multi-host
  run every process calls it (orbax writes the host arrays from process 0); process 0
  writes the manifest and the others wait for it.
  """
  step = int(state.step)
  if step in manager.all_steps():
    return
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_host(state)), meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()
  if jax.process_index() == 0:  # multi-host: every process saves (orbax), process 0 writes the manifest
    digests = _digests(os.path.join(os.fspath(manager.directory), str(step)))
    tmp = _manifest_path(manager, step) + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"step": step, "sha256": digests}, f)
    os.replace(tmp, _manifest_path(manager, step))
    for name in os.listdir(manager.directory):  # manifests of steps orbax rotated out
      stem = name.split(".")[0]
      if name.endswith(".manifest.json") and stem.isdigit() and int(stem) not in manager.all_steps():
        os.remove(os.path.join(manager.directory, name))
  _sync("manifest")


_BARRIERS = itertools.count()


def _sync(purpose: str) -> None:
  """Waits for every process of a multi-host run (no-op on one); all call it in the same order."""
  ocp.multihost.sync_global_processes(f"jaxmix-{purpose}-{next(_BARRIERS)}")


def verify(manager: ocp.CheckpointManager, step: int) -> Optional[str]:
  """``None`` if the files of ``step`` match its manifest (or it has none); else what differs."""
  path = _manifest_path(manager, step)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      expected = json.load(f)["sha256"]
  except (OSError, ValueError, KeyError) as e:
    return f"its manifest {path} is unreadable ({e})"
  found = _digests(os.path.join(os.fspath(manager.directory), str(step)))
  bad = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
  return None if not bad else f"{len(bad)} file(s) differ from {path}: {', '.join(bad[:3])}"


def _restore_step(manager: ocp.CheckpointManager, step: int, template):
  target = _to_host(template)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return template.replace(**restored.state), dict(restored.meta)


def restore(manager: ocp.CheckpointManager, template, *, set_aside: bool = False, log=print):
  """The newest intact checkpoint of ``manager`` as ``(state like template, meta dict, step)``.

  A step whose files differ from its manifest, or that orbax cannot read, is reported
  by path and the next older one is tried. With ``set_aside`` (resuming a run) such a
  step's folder is renamed ``<step>.corrupt`` so that the run can save that step again.

  Raises:
    FileNotFoundError: if the manager holds no intact checkpoint.
  """
  problems = []
  for step in sorted(manager.all_steps(), reverse=True):
    where = os.path.join(os.fspath(manager.directory), str(step))
    problem = verify(manager, step)
    if problem is None:
      try:
        state, meta = _restore_step(manager, step, template)
        return state, meta, step
      except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
        problem = f"it cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
    problems.append(f"{where}: {problem}")
    log(f"jaxmix: checkpoint {where} is damaged ({problem}); trying the next older one.")
    if set_aside:
      _sync("checked")  # every process has read the step before process 0 moves it
      if jax.process_index() == 0:
        os.replace(where, where + ".corrupt")
        manifest = _manifest_path(manager, step)
        if os.path.exists(manifest):
          os.replace(manifest, manifest + ".corrupt")
      _sync("set-aside")
      manager.reload()
  raise FileNotFoundError(f"no intact checkpoint in {manager.directory}" + (": " + "; ".join(problems) if problems else " (it is empty)."))


def check_run_dir(cfg: TrainConfig, run_dir: str) -> Optional[dict]:
  """Returns the summary of a finished run; refuses a directory of a different run."""
  cfg_path = os.path.join(run_dir, "config.json")
  if os.path.exists(cfg_path):
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))
    old = {**json.loads(json.dumps(dataclasses.asdict(TrainConfig()))), **_read_json(cfg_path, "the run's configuration")}
    ignore = {"print_freq", "root_dir", "job_id", "eval_batch_size"}  # where the run lives, how it reports
    diff = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if diff:
      raise ValueError(
        f"run directory {run_dir} holds a run with a different configuration (differs in: {', '.join(diff)}); "
        "choose another --job_id or --root_dir. Nothing was overwritten."
      )
  summary = os.path.join(run_dir, "summary.json")
  if os.path.exists(summary):
    try:
      with open(summary) as f:
        return json.load(f)
    except ValueError:
      print(f"jaxmix train: {summary} is unreadable (a kill while it was written?); finishing the run again.")
  return None


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path) as f:
      value = json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} ({what}) is not valid JSON: {e}. Fix or remove it.") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} ({what}) must hold a JSON object.")
  return value


def truncate_log(path: str, start_epoch: int) -> None:
  """Keeps the JSONL records of epochs before ``start_epoch`` (resume after a kill)."""
  if not os.path.exists(path):
    return
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue  # a line half-written by a kill; its epoch is redone
  with open(path, "w") as f:
    for r in records:
      if isinstance(r, dict) and isinstance(r.get("epoch"), int) and r["epoch"] < start_epoch:
        f.write(json.dumps(r) + "\n")


def restore_for_eval(run_dir: str, *, ema: bool = False):
  """Restores a run for evaluation.

  Args:
    run_dir: a directory written by ``jaxmix train`` (with ``config.json`` and
      ``checkpoints/`` or ``best/``).
    ema: evaluate the EMA weights (runs with ``--ema_decay``) instead of the raw ones.

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
  model = models.get_model(cfg.arch, data.num_classes, dtype=cfg.dtype, **cfg.model_kwargs)
  if ema and not cfg.ema_decay:
    raise ValueError(f"{run_dir} was trained without --ema_decay; it has no EMA weights.")
  key = jax.random.key(0)
  template = ts.init_state(model, make_optimizer(cfg, 1), key, data.test.images.shape[1:], seed_key=key, ema=cfg.ema_decay > 0)
  problems = []
  for sub in ("best", "checkpoints"):
    path = os.path.join(run_dir, sub)
    if os.path.isdir(path):
      try:
        state, _, _ = restore(checkpoint_manager(path, 1), template, log=lambda s: print(s, file=sys.stderr))
        break
      except FileNotFoundError as e:
        problems.append(str(e))
  else:
    raise FileNotFoundError(f"{run_dir} holds no intact checkpoint (looked in best/ and checkpoints/). " + " ".join(problems))
  chosen = state.ema if ema else {"params": state.params, "batch_stats": state.batch_stats}
  variables = jax.tree.map(jnp.asarray, chosen)

  @jax.jit
  def logits_fn(x):
    return model.apply(variables, x, train=False)

  return logits_fn, data, cfg
