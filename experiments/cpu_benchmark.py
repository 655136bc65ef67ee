"""CPU-scale benchmark of every registry method on real CIFAR-10 (resumable).

For every method of ``jaxmix.METHODS`` (with its registry seed defaults; IPMix also
with its seed JSD loss) and every seed, train the small ``preactresnet_small`` on a
class-balanced CIFAR-10 training subset through ``jaxmix.training.train``, restore the
last checkpoint with ``jaxmix.training.restore_for_eval`` and evaluate it with
``jaxmix.evaluate.evaluate_all``:

* clean top-1 and ECE (15 bins) on the full 10,000-image test set;
* FGSM accuracy on a class-balanced test subset (both protocols are stored; the
  table reports pixel-space eps = 4/255, Puzzle Mix's protocol);
* mean accuracy over the 15 generated corruptions x 5 severities
  (``jaxmix.corruptions``, offline) on a smaller class-balanced test subset.

Finished runs are skipped: ``train`` returns the summary of a finished run
directory, and each run's evaluation is cached as ``eval.json`` in its run
directory. Results go to ``--out_dir``: ``runs.json`` (one record per run, with
wall / CPU seconds), ``summary.json`` (mean, sd and min/max over seeds per method,
plus settings, date, machine and command), ``table.md`` and ``plot.png``.

Usage::

  python -m experiments.cpu_benchmark --data_dir ~/data/cifar10            # full table
  python -m experiments.cpu_benchmark --data_dir ~/data/cifar10 --preset overfit   # 200 / class, 100 epochs
  python -m experiments.cpu_benchmark --data_dir ~/data/cifar10 --quick    # smoke run
  python -m experiments.cpu_benchmark --data_dir ... --report_only                 # re-aggregate

Notes:
  * One common recipe for every method (SGD Nesterov, cosine decay, CE, crop pad 2 +
    flip, batch 100), so only the mixing differs; the seeds' own schedules (hundreds
    of epochs, step decay) cannot be run at this scale.
  * During training ``jaxmix train`` evaluates ``--max_eval_examples`` test images per
    epoch (evenly spaced over the test set); the benchmark sets it to 100 only to
    keep that cheap and does not use that number.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import time
from typing import Optional, Sequence

import numpy as np

DEFAULTS = {
  "labels_per_class": 500,
  "epochs": 14,
  "seeds": (0, 1, 2),
  "methods": None,  # all registered
  "widths": (16, 32, 64, 128),
  "blocks": (1, 1, 1, 1),
  "batch_size": 100,
  "learning_rate": 0.1,
  "decay": 5e-4,
  "fgsm_examples": 1000,
  "corruption_examples": 500,
  "corruptions": None,  # all 15
  "subset_seed": None,  # None: each seed draws its own training subset
  "train_accuracy": False,  # also evaluate the final model on its (un-augmented) training images
}
QUICK = {
  "labels_per_class": 100,
  "epochs": 1,
  "seeds": (0,),
  "methods": ("vanilla", "mixup"),
  "fgsm_examples": 500,
  "corruption_examples": 100,
}
PRESETS = {
  # The overfitting regime (low data, long training): 200 images per class, the same
  # subset for every method and seed, and the final training accuracy in the table.
  "overfit": {"labels_per_class": 200, "epochs": 100, "subset_seed": 0, "train_accuracy": True},
}
FGSM_KEY = "4/255"  # pixel-space epsilon reported in the table
HEADLINE = (
  ("test_top1", "test top-1 (%)"),
  ("ece", "ECE (%)"),
  ("fgsm_top1", f"FGSM {FGSM_KEY} top-1 (%)"),
  ("corruption_top1", "mean corruption top-1 (%)"),
  ("overconfidence", "confidence - top-1 (pts)"),
)
TRAIN_HEADLINE = (("train_top1", "final train top-1 (%)"), ("gap", "train - test top-1 (pts)"))


def headline(records: Sequence[dict]) -> tuple:
  """The table's metrics: the training accuracy and the gap too when every run has them."""
  return HEADLINE + (TRAIN_HEADLINE if records and all("train_top1" in r for r in records) else ())


_HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------
# Settings


@dataclasses.dataclass
class Settings:
  """Everything that defines the benchmark (saved with the results)."""

  data_dir: str
  root_dir: str
  out_dir: str
  labels_per_class: int
  epochs: int
  seeds: tuple
  methods: tuple
  widths: tuple
  blocks: tuple
  batch_size: int
  learning_rate: float
  decay: float
  fgsm_examples: int
  corruption_examples: int
  corruptions: Optional[tuple]
  subset_seed: Optional[int] = None
  train_accuracy: bool = False


def balanced_indices(labels: np.ndarray, n: int, num_classes: int, seed: int = 1234) -> np.ndarray:
  """``n`` test indices, ``n // num_classes`` per class, from a fixed shuffle (sorted)."""
  per = n // num_classes
  order = np.random.default_rng(seed).permutation(len(labels))
  picked = [order[labels[order] == c][:per] for c in range(num_classes)]
  return np.sort(np.concatenate(picked))


def train_config(s: Settings, method: str, seed: int):
  """The ``jaxmix.training.TrainConfig`` of one benchmark run."""
  from jaxmix.training import TrainConfig

  return TrainConfig(
    dataset="cifar10",
    data_dir=os.path.abspath(s.data_dir),
    root_dir=s.root_dir,
    job_id=f"{method}_seed{seed}",
    labels_per_class=s.labels_per_class,
    valid_labels_per_class=0,
    subset_seed=s.subset_seed,
    arch="preactresnet_small",
    model_kwargs={"widths": list(s.widths), "blocks": list(s.blocks)},
    train=method,
    loss="ce",
    epochs=s.epochs,
    batch_size=s.batch_size,
    optimizer="sgd",
    learning_rate=s.learning_rate,
    momentum=0.9,
    nesterov=True,
    decay=s.decay,
    lr_schedule="cosine",
    schedule=(),
    step_factors=(),
    crop_padding=2,
    flip=True,
    seed=seed,
    num_devices=1,
    jsd=method == "ipmix",  # IPMix's seed recipe trains with the JSD loss (its README)
    max_eval_examples=100,
    print_freq=10_000,
  )


# ----------------------------------------------------------------------------
# One run


def run_one(s: Settings, method: str, seed: int, test, log=print) -> dict:
  """Trains (or resumes / skips) and evaluates one run; returns its record."""
  from jaxmix import evaluation as jeval
  from jaxmix import training as jtrain

  cfg = train_config(s, method, seed)
  run_dir = cfg.run_dir()
  eval_path = os.path.join(run_dir, "eval.json")
  timing_path = os.path.join(run_dir, "bench_timing.json")
  if os.path.exists(eval_path) and os.path.exists(os.path.join(run_dir, "summary.json")):
    with open(eval_path) as f:
      record = json.load(f)
    return record if "overconfidence" in record else _add_confidence(record, run_dir, test, eval_path, log)

  t0, c0 = time.perf_counter(), time.process_time()
  summary = jtrain.train(cfg)
  train_wall, train_cpu = time.perf_counter() - t0, time.process_time() - c0
  timing = {"train_wall_s": train_wall, "train_cpu_s": train_cpu, "train_seconds_in_summary": summary.get("train_seconds")}
  if os.path.exists(timing_path):  # resumed / finished earlier: keep the first measurement
    with open(timing_path) as f:
      timing = json.load(f) | {"resumed": True}
  else:
    with open(timing_path, "w") as f:
      json.dump(timing, f)

  t1, c1 = time.perf_counter(), time.process_time()
  logits_fn, data, _ = jtrain.restore_for_eval(run_dir)
  images, labels = test
  cache = os.path.join(s.root_dir, "eval_cache")
  clean = _clean_metrics(logits_fn, data, images, labels)
  idx = balanced_indices(labels, s.fgsm_examples, data.num_classes)
  fgsm = jeval.evaluate_all(
    logits_fn, images[idx], labels[idx], mean=data.mean, std=data.std, batch_size=100, fgsm=True, deformed=False, corruptions=False
  )
  idx_c = balanced_indices(labels, s.corruption_examples, data.num_classes)
  corr = jeval.evaluate_all(
    logits_fn,
    images[idx_c],
    labels[idx_c],
    mean=data.mean,
    std=data.std,
    batch_size=100,
    fgsm=False,
    deformed=False,
    corruptions=True,
    corruption_subset=list(s.corruptions) if s.corruptions else None,
    cache_dir=cache,
  )
  eval_wall, eval_cpu = time.perf_counter() - t1, time.process_time() - c1
  record = {
    "method": method,
    "seed": seed,
    "run_dir": run_dir,
    "hparams": summary.get("hparams"),
    "jsd": cfg.jsd,
    "test_top1": clean["top1"],
    "ece": clean["ece"],
    **_confidence_fields(clean),
    "rms_calibration_error": clean["rms_calibration_error"],
    "test_n": clean["n_examples"],
    "fgsm_top1": fgsm["fgsm"]["pixel"][FGSM_KEY]["top1"],
    "fgsm_clean_top1": fgsm["clean"]["top1"],
    "fgsm_n": fgsm["n_examples"],
    "fgsm": fgsm["fgsm"],
    "corruption_top1": corr["corruptions"]["mean_top1"],
    "corruption_clean_top1": corr["clean"]["top1"],
    "corruption_n": corr["n_examples"],
    "corruptions": {k: v["top1"] for k, v in corr["corruptions"]["per_corruption"].items()},
    "timing": timing | {"eval_wall_s": eval_wall, "eval_cpu_s": eval_cpu},
  }
  if s.train_accuracy:  # the overfitting gap: the final model on its training images, without augmentation
    train_top1 = _clean_metrics(logits_fn, data, np.asarray(data.train.images), np.asarray(data.train.labels))["top1"]
    record |= {"train_top1": train_top1, "gap": train_top1 - record["test_top1"]}
  with open(eval_path, "w") as f:
    json.dump(record, f, indent=2)
  log(
    f"cpu_benchmark: {method} seed {seed}: top1 {record['test_top1']:.2f}  ECE {record['ece']:.2f}  "
    f"FGSM {record['fgsm_top1']:.2f}  corr {record['corruption_top1']:.2f}  "
    f"(train {timing['train_wall_s']:.0f}s wall / {timing['train_cpu_s']:.0f}s CPU, eval {eval_wall:.0f}s)"
  )
  return record


def _clean_metrics(logits_fn, data, images, labels) -> dict:
  """Clean top-1 / calibration on the whole test set (``evaluate_all``'s "clean" dict plus ``n_examples``)."""
  from jaxmix import evaluation as jeval

  res = jeval.evaluate_all(
    logits_fn, images, labels, mean=data.mean, std=data.std, batch_size=500, fgsm=False, deformed=False, corruptions=False
  )
  return res["clean"] | {"n_examples": res["n_examples"]}


def _confidence_fields(clean: dict) -> dict:
  return {"mean_confidence": clean["mean_confidence"], "overconfidence": clean["mean_confidence"] - clean["top1"]}


def _add_confidence(record: dict, run_dir: str, test, eval_path: str, log=print) -> dict:
  """Adds the mean confidence to an ``eval.json`` written before it was recorded.

  Re-runs only the clean pass of the restored checkpoint (~10 s) and checks that
  it reproduces the stored top-1, so the new number belongs to the same model.
  """
  from jaxmix import training as jtrain

  logits_fn, data, _ = jtrain.restore_for_eval(run_dir)
  images, labels = test
  clean = _clean_metrics(logits_fn, data, images, labels)
  if abs(clean["top1"] - record["test_top1"]) > 0.015:  # 0.01 % = one of 10,000 images
    raise RuntimeError(f"{run_dir}: re-evaluated top-1 {clean['top1']:.2f} != stored {record['test_top1']:.2f}")
  record = record | _confidence_fields(clean)
  with open(eval_path, "w") as f:
    json.dump(record, f, indent=2)
  log(f"cpu_benchmark: {record['method']} seed {record['seed']}: added mean confidence {clean['mean_confidence']:.2f}")
  return record


def measure_steps(s: Settings, methods: Sequence[str], steps: int = 8, log=print) -> dict:
  """Times the jitted train step of each method on the benchmark's model and batch.

  Builds the step exactly as ``jaxmix.training.train`` does (same config), runs 2
  warm-up steps (compilation) and then ``steps`` timed steps on real batches.

  Returns:
    ``{method: {"wall_s_per_step", "cpu_s_per_step", "compile_wall_s"}}``; CPU
    seconds count every thread of the process, so on a shared machine they are a
    better proxy for the time on a quiet one than the wall clock.
  """
  import jax

  from jaxmix import training as jtrain
  from jaxmix.training import data as jdata
  from jaxmix.training import models
  from jaxmix.training import step as ts

  out = {}
  for method in methods:
    cfg = train_config(s, method, 0)
    data = jtrain.config.load_data(cfg)
    mesh = jax.make_mesh((1,), (ts.AXIS,), devices=jax.devices()[:1])
    model = models.get_model(cfg.arch, data.num_classes, **cfg.model_kwargs)
    spe = jdata.steps_per_epoch(data.train, cfg.batch_size)
    state = ts.init_state(
      model, jtrain.make_optimizer(cfg, spe), jax.random.key(0), data.train.images.shape[1:], seed_key=jax.random.key(0)
    )
    step = ts.make_train_step(
      model, jtrain.config.step_config(cfg, data.num_classes, data.mean, data.std), mesh, per_device_batch=cfg.batch_size
    )
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.AXIS))
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    key = np.array(jax.device_get(state.rng))
    batches = jdata.train_batches(data.train, batch_size=cfg.batch_size, seed=0, epoch=0, crop_padding=cfg.crop_padding, flip=cfg.flip)
    batches = [jax.device_put(next(batches), sharding) for _ in range(min(spe, steps + 2))]
    t0 = time.perf_counter()
    for b in batches[:2]:
      state, metrics = step(state, b, key)
    jax.block_until_ready(metrics)
    compile_wall = time.perf_counter() - t0
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while n < steps:
      for b in batches[2:]:
        state, metrics = step(state, b, key)
        n += 1
        if n == steps:
          break
    jax.block_until_ready(metrics)
    wall, cpu = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
    out[method] = {"wall_s_per_step": wall, "cpu_s_per_step": cpu, "compile_wall_s": compile_wall}
    log(f"cpu_benchmark --measure: {method:15s} {wall:6.3f} s/step wall  {cpu:6.3f} s/step CPU  (compile+2 steps {compile_wall:.0f}s)")
  return out


# ----------------------------------------------------------------------------
# Aggregation and outputs


def aggregate(records: Sequence[dict], methods: Sequence[str]) -> dict:
  """Per method: mean, sd (ddof=1, 0 for one seed), min, max and n of each headline metric."""
  out = {}
  for m in methods:
    rs = [r for r in records if r["method"] == m]
    if not rs:
      continue
    entry = {"n_seeds": len(rs), "seeds": [r["seed"] for r in rs]}
    for key, _ in headline(records):
      v = np.asarray([r[key] for r in rs], np.float64)
      entry[key] = {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "values": v.tolist(),
      }
    entry["train_wall_s_mean"] = float(np.mean([_train_seconds(r) for r in rs]))
    entry["train_cpu_s_mean"] = float(np.mean([r["timing"]["train_cpu_s"] for r in rs]))
    entry["eval_wall_s_mean"] = float(np.mean([r["timing"]["eval_wall_s"] for r in rs]))
    out[m] = entry
  return out


def _train_seconds(record: dict) -> float:
  """Training wall time of a run as the trainer counts it: summed over resumes.

  `train_wall_s` only covers the last `train()` call, which for a resumed run is
  just its tail; the trainer's own `train_seconds` carries the earlier part in
  the checkpoint.
  """
  t = record["timing"]
  return float(t.get("train_seconds_in_summary") or t["train_wall_s"])


def _time_sums(records: Sequence[dict]) -> dict:
  """Sum over the runs of their own train + eval time (meaningful across resumes).

  The CPU seconds of a resumed run only cover its last ``train()`` call.
  """
  return {
    "sum_run_wall_s": float(sum(_train_seconds(r) + r["timing"]["eval_wall_s"] for r in records)),
    "sum_run_cpu_s": float(sum(r["timing"]["train_cpu_s"] + r["timing"]["eval_cpu_s"] for r in records)),
  }


def markdown_table(agg: dict, meta: dict) -> str:
  s = meta["settings"]
  metrics = [(k, label) for k, label in HEADLINE + TRAIN_HEADLINE if all(k in e for e in agg.values())]
  lines = [
    f"# {meta['title']}",
    "",
    f"- date: {meta['date']}; machine: {meta['machine']}; load average at start: {meta['loadavg_start']}",
    f"- command: `{meta['command']}`",
    f"- CIFAR-10 (real JPEGs), {s['labels_per_class']} training images per class ({10 * s['labels_per_class']} total"
    f"{', the same subset for every run' if s.get('subset_seed') is not None else ''}), "
    f"`preactresnet_small` widths {list(s['widths'])} blocks {list(s['blocks'])}, {s['epochs']} epochs, batch {s['batch_size']}, "
    f"SGD Nesterov lr {s['learning_rate']} cosine, wd {s['decay']}, CE, crop pad 2 + flip; seeds {list(s['seeds'])}",
    f"- test top-1 / ECE on the full test set (10,000); FGSM (pixel space, eps {FGSM_KEY}) on {s['fgsm_examples']} and "
    f"mean corruption accuracy (generated, 15 corruptions x 5 severities) on {s['corruption_examples']} class-balanced test images",
    "- values: mean ± sd over seeds (sd with ddof=1; n = number of seeds)",
    f"- time: {meta.get('sum_run_wall_s', 0) / 3600:.2f} h wall / {meta.get('sum_run_cpu_s', 0) / 3600:.2f} h CPU summed over the runs "
    "(training + evaluation, excluding data loading between runs)",
    "",
    "| method | n | " + " | ".join(label for _, label in metrics) + " | train time / run (s, wall, summed over resumes) |",
    "| --- | --- | " + " | ".join("---" for _ in metrics) + " | --- |",
  ]
  for m, e in agg.items():
    cells = [f"{e[k]['mean']:.2f} ± {e[k]['sd']:.2f}" for k, _ in metrics]
    lines.append(f"| {m} | {e['n_seeds']} | " + " | ".join(cells) + f" | {e['train_wall_s_mean']:.0f} |")
  for f in meta.get("failures", []):
    lines.append(f"\nFAILED: {f['method']} seed {f['seed']}: {f['error']}")
  return "\n".join(lines) + "\n"


def plot(agg: dict, records: Sequence[dict], path: str, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  methods = list(agg)
  metrics = headline(records)
  ncols = min(3, len(metrics))
  nrows = -(-len(metrics) // ncols)
  fig, grid = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.0 * nrows), constrained_layout=True, squeeze=False)
  axes = grid.ravel()
  for ax in axes[len(metrics) :]:
    ax.set_axis_off()
  x = np.arange(len(methods))
  for ax, (key, label) in zip(axes[: len(metrics)], metrics, strict=True):
    means = [agg[m][key]["mean"] for m in methods]
    sds = [agg[m][key]["sd"] for m in methods]
    # Points (mean ± sd, and every seed) rather than bars: the y axis does not start at 0.
    ax.errorbar(x, means, yerr=sds, fmt="o", color="#2b6c9e", ecolor="#2b6c9e", capsize=4, markersize=7, label="mean ± sd")
    for i, m in enumerate(methods):
      vals = [r[key] for r in records if r["method"] == m]
      ax.scatter(np.full(len(vals), i + 0.15), vals, color="k", marker="x", s=18, zorder=3, label="seeds" if i == 0 else None)
    if "vanilla" in agg:
      ax.axhline(agg["vanilla"][key]["mean"], color="#999999", lw=1, ls="--", label="vanilla mean")
    ax.set_xticks(x, methods, rotation=45, ha="right")
    ax.set_title(label)
    lo = min(min(agg[m][key]["min"] for m in methods), min(means) - max(sds, default=0))
    hi = max(agg[m][key]["max"] for m in methods)
    pad = 0.1 * (hi - lo) + 0.5
    ax.set_ylim(lo - pad if lo < 0 else max(0.0, lo - pad), hi + pad)
    if lo < 0 < hi:
      ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.grid(axis="y", alpha=0.3)
  axes[0].legend(fontsize=8, loc="best")
  fig.suptitle(title)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(s: Settings, records: list, meta: dict) -> dict:
  os.makedirs(s.out_dir, exist_ok=True)
  agg = aggregate(records, s.methods)
  with open(os.path.join(s.out_dir, "runs.json"), "w") as f:
    json.dump(records, f, indent=2)
  with open(os.path.join(s.out_dir, "summary.json"), "w") as f:
    json.dump({"meta": meta, "methods": agg}, f, indent=2)
  with open(os.path.join(s.out_dir, "table.md"), "w") as f:
    f.write(markdown_table(agg, meta))
  if agg:
    plot(agg, records, os.path.join(s.out_dir, "plot.png"), meta["title"])
  return agg


def _machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


# ----------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.cpu_benchmark", description=__doc__.split("\n")[0])
  p.add_argument("--data_dir", required=True, help="CIFAR-10 in class-folder layout (e.g. ~/data/cifar10)")
  p.add_argument("--root_dir", default=None, help="run directories (default: runs/cpu_benchmark[_quick])")
  p.add_argument("--out_dir", default=None, help="results (default: experiments/results/cpu_benchmark[_smoke])")
  p.add_argument("--quick", action="store_true", help=f"smoke settings: {QUICK}")
  p.add_argument("--preset", choices=sorted(PRESETS), default=None, help=f"a second benchmark: {PRESETS}")
  p.add_argument("--report_only", action="store_true", help="aggregate the finished runs without training")
  p.add_argument("--measure", action="store_true", help="only time the train step of each method and project the full run")
  p.add_argument("--labels_per_class", type=int, default=None)
  p.add_argument("--epochs", type=int, default=None)
  p.add_argument("--seeds", type=int, nargs="+", default=None)
  p.add_argument("--methods", nargs="+", default=None, help="registry names (default: all registered)")
  p.add_argument("--widths", type=int, nargs=4, default=None)
  p.add_argument("--blocks", type=int, nargs=4, default=None)
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--learning_rate", type=float, default=None)
  p.add_argument("--decay", type=float, default=None)
  p.add_argument("--fgsm_examples", type=int, default=None)
  p.add_argument("--corruption_examples", type=int, default=None)
  p.add_argument("--corruptions", nargs="+", default=None, help="subset of corruption names (default all 15)")
  return p


def settings_from_args(args: argparse.Namespace) -> Settings:
  from jaxmix import METHODS

  values = dict(DEFAULTS)
  if args.preset:
    values.update(PRESETS[args.preset])
  if args.quick:
    values.update(QUICK)
  for k in values:
    v = getattr(args, k, None)
    if v is not None:
      values[k] = v
  methods = tuple(values["methods"] or METHODS)
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"--methods {unknown} are not registered; known: {', '.join(METHODS)}.")
  name = "cpu_benchmark" + (f"_{args.preset}" if args.preset else "")
  return Settings(
    data_dir=args.data_dir,
    root_dir=args.root_dir or os.path.join("runs", name + ("_quick" if args.quick else "")),
    out_dir=args.out_dir or os.path.join(_HERE, "results", name + ("_smoke" if args.quick else "")),
    labels_per_class=int(values["labels_per_class"]),
    epochs=int(values["epochs"]),
    seeds=tuple(int(x) for x in values["seeds"]),
    methods=methods,
    widths=tuple(values["widths"]),
    blocks=tuple(values["blocks"]),
    batch_size=int(values["batch_size"]),
    learning_rate=float(values["learning_rate"]),
    decay=float(values["decay"]),
    fgsm_examples=int(values["fgsm_examples"]),
    corruption_examples=int(values["corruption_examples"]),
    corruptions=tuple(values["corruptions"]) if values["corruptions"] else None,
    subset_seed=values["subset_seed"],
    train_accuracy=bool(values["train_accuracy"]),
  )


# Settings that do not change a run's result (where its files are).
_LOCATION_SETTINGS = ("data_dir", "root_dir", "out_dir")


def recorded_runs(s: Settings) -> dict:
  """``{(method, seed): record}`` from ``out_dir/runs.json`` when it was made with these settings.

  The results directory is what a repository keeps; the run directories are not (a
  new machine starts without them). A rerun of the same command then keeps those
  records instead of training the runs again, or overwriting them with fewer.
  """
  runs, summary = (os.path.join(s.out_dir, name) for name in ("runs.json", "summary.json"))
  if not (os.path.exists(runs) and os.path.exists(summary)):
    return {}
  with open(summary) as f:
    old = json.load(f).get("meta", {}).get("settings", {})
  now = dataclasses.asdict(s)
  same = {k: v for k, v in old.items() if k not in _LOCATION_SETTINGS} == {
    k: json.loads(json.dumps(v)) for k, v in now.items() if k not in _LOCATION_SETTINGS
  }
  if not same:
    return {}
  with open(runs) as f:
    return {(r["method"], r["seed"]): r for r in json.load(f)}


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  try:
    s = settings_from_args(args)
  except ValueError as e:
    print(f"cpu_benchmark: {e}", file=sys.stderr)
    return 2
  from jaxmix.training import data as jdata

  if args.measure:
    return _measure_main(s)
  meta = {
    "title": "jaxmix CPU-scale benchmark"
    + (f", {args.preset} preset" if args.preset else "")
    + (" (SMOKE RUN: --quick settings, not a result)" if args.quick else ""),
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "machine": _machine(),
    "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    "command": "python -m experiments.cpu_benchmark " + shlex.join(argv),
    "settings": dataclasses.asdict(s),
  }
  old = os.path.join(s.out_dir, "summary.json")
  if args.report_only and os.path.exists(old):  # keep when / how the runs were made
    with open(old) as f:
      meta = json.load(f)["meta"] | {"reaggregated": meta["date"]}
  full = jdata.load("cifar10", s.data_dir)
  test = (np.asarray(full.test.images), np.asarray(full.test.labels))
  plan = [(method, seed) for seed in s.seeds for method in s.methods]
  recorded = recorded_runs(s)
  # The results directory's records stand (they may come from another machine, whose run
  # directories are gone); every write holds them, so an interruption never loses one.
  done = {run: recorded[run] for run in plan if run in recorded}
  failures, skipped = [], [f"{method}_seed{seed}" for method, seed in done]
  ordered = lambda: [done[run] for run in plan if run in done]  # noqa: E731
  t0 = time.perf_counter()
  for method, seed in plan:
    if (method, seed) in done:
      continue
    path = os.path.join(train_config(s, method, seed).run_dir(), "eval.json")
    if args.report_only:
      if os.path.exists(path):
        with open(path) as f:
          done[method, seed] = json.load(f)
      continue
    if os.path.exists(path):
      skipped.append(f"{method}_seed{seed}")
    try:
      done[method, seed] = run_one(s, method, seed, test)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # one broken method must not stop the table
      failures.append({"method": method, "seed": seed, "error": f"{type(e).__name__}: {e}"})
      print(f"cpu_benchmark: {method} seed {seed} FAILED: {e}", file=sys.stderr, flush=True)
      continue
    records = ordered()
    write_outputs(s, records, meta | _time_sums(records) | {"elapsed_s": time.perf_counter() - t0})  # partial results after each run
  records = ordered()
  if not args.report_only:
    meta["elapsed_s"] = time.perf_counter() - t0  # this invocation only
    meta["finished_before_this_invocation"] = skipped
  meta |= _time_sums(records)
  meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
  if failures:
    meta["failures"] = failures
  agg = write_outputs(s, records, meta)
  print(markdown_table(agg, meta))
  print(f"cpu_benchmark: wrote {s.out_dir}/{{runs.json,summary.json,table.md,plot.png}} ({time.perf_counter() - t0:.0f}s)")
  for f in failures:
    print(f"cpu_benchmark: FAILED {f['method']} seed {f['seed']}: {f['error']} (fix it and rerun: finished runs are skipped)")
  return 1 if failures else 0


def _measure_main(s: Settings) -> int:
  """Per-step timings and the projected duration of the full benchmark."""
  timings = measure_steps(s, s.methods)
  spe = (10 * s.labels_per_class) // s.batch_size
  steps = spe * s.epochs
  proj = {m: steps * t["cpu_s_per_step"] for m, t in timings.items()}
  total = len(s.seeds) * sum(proj.values())
  print(f"{spe} steps/epoch x {s.epochs} epochs = {steps} steps per run; load average {os.getloadavg()[0]:.2f}")
  for m, v in proj.items():
    print(f"  {m:15s} training ~{v:6.0f} CPU-s per run")
  print(f"projected training total over {len(s.seeds)} seed(s): {total:.0f} CPU-s ({total / 3600:.2f} h at 1 core-equivalent)")
  os.makedirs(s.out_dir, exist_ok=True)
  with open(os.path.join(s.out_dir, "measure.json"), "w") as f:
    json.dump(
      {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "loadavg": os.getloadavg(),
        "timings": timings,
        "steps_per_run": steps,
        "projected_train_cpu_s": proj,
        "settings": dataclasses.asdict(s),
      },
      f,
      indent=2,
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
