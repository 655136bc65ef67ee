"""Runs a chosen subset of the seed experiments (``experiments.seeds``) on a GPU/TPU host.

Usage::

  python -m experiments.run --list [--only PATTERN ...]
  python -m experiments.run --only NAME [NAME ...] [--dry_run] [--data_dir DIR] [--root_dir DIR] [--mixing_set DIR] [-- EXTRA FLAGS]
  python -m experiments.run --report --only PATTERN ... [--root_dir DIR]

``--only`` takes exact names or shell-style patterns (``'patchup.cifar10.*'``).
Flags after ``--`` are appended to every command, so they override the entry's
(e.g. ``-- --epochs 2 --max_steps_per_epoch 5`` for a smoke run; every entry's
command line knows ``--epochs``). Entries that are an official command line verbatim
(``Experiment.dialect``) are read by their dialect, as ``jaxmix seed DIALECT`` does.
Each run goes through ``jaxmix.training.train`` into ``ROOT_DIR/NAME``; a finished run is not
retrained (its summary is returned), an interrupted one resumes.
``--report`` prints, for the chosen entries, the papers' numbers next to the
``summary.json`` of the runs found under ``--root_dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import shlex
import sys
from typing import Optional, Sequence

from experiments.seeds import EXPERIMENTS, Experiment


def select(patterns: Optional[Sequence[str]]) -> list:
  """The entries matching any of ``patterns`` (all if ``None``), in registry order.

  Raises:
    ValueError: if a pattern matches nothing.
  """
  if not patterns:
    return list(EXPERIMENTS)
  chosen = []
  for pattern in patterns:
    hits = [e for e in EXPERIMENTS if fnmatch.fnmatchcase(e.name, pattern)]
    if not hits:
      raise ValueError(f"--only {pattern!r} matches no experiment; see 'python -m experiments.run --list'.")
    chosen.extend(e for e in hits if e not in chosen)
  return sorted(chosen, key=EXPERIMENTS.index)


def _paths(exp: Experiment, data_dir: Optional[str], mixing_set: Optional[str]) -> list:
  """The data (and IPMix mixing-set) flags of an entry, in its command line's spelling."""
  if exp.dialect == "ipmix" and "--num-classes" in exp.argv:  # imagenet.py: DIR/train and DIR/val
    root = data_dir or "data/imagenet"
    split_dirs = ["--data-standard", os.path.join(root, "train"), "--data-val", os.path.join(root, "val")]
    return split_dirs + ["--mixing-set", mixing_set or "mixing_set"]
  if exp.dialect == "ipmix":
    return ["--data-path", data_dir or "data", "--mixing-set", mixing_set or "mixing_set"]
  out = ["--data_dir", data_dir] if data_dir else []
  if mixing_set and not exp.dialect and "ipmix" in exp.argv:
    out += ["--mixing_set", mixing_set]
  return out


def command(
  exp: Experiment, *, data_dir: Optional[str], root_dir: str, extra: Sequence[str] = (), mixing_set: Optional[str] = None
) -> list:
  """The full argument list of ``exp`` after ``jaxmix train`` (or ``jaxmix seed DIALECT``)."""
  argv = list(exp.argv) + _paths(exp, data_dir, mixing_set)
  if exp.dialect == "ipmix":
    argv += ["--save", os.path.join(root_dir, exp.name)]
  else:
    argv += ["--job_id", exp.name, "--root_dir", root_dir]
  return argv + list(extra)


def program(exp: Experiment) -> str:
  """``jaxmix train`` or ``jaxmix seed DIALECT``."""
  return f"jaxmix seed {exp.dialect}" if exp.dialect else "jaxmix train"


def config(exp: Experiment, *, data_dir: Optional[str] = None, root_dir: str = "runs", extra: Sequence[str] = (), mixing_set=None):
  """The ``jaxmix.training.TrainConfig`` of ``exp``, parsed by ``jaxmix train``'s parser or by its dialect."""
  from jaxmix import training as jtrain

  argv = command(exp, data_dir=data_dir, root_dir=root_dir, extra=extra, mixing_set=mixing_set)
  if exp.dialect:
    from jaxmix import dialects

    cfg, _, _ = dialects.parse(exp.dialect, argv)
    return dataclasses.replace(cfg, root_dir=root_dir, job_id=exp.name)
  return jtrain.config_from_args(jtrain.build_parser().parse_args(argv))


def _fmt_expected(exp: Experiment) -> str:
  return ", ".join(f"{k} {v:.2f}" for k, v in exp.expected.items()) or "-"


def _list(entries) -> None:
  counts = {}
  for e in entries:
    counts[e.seed_repo] = counts.get(e.seed_repo, 0) + 1
    print(f"{e.name:60s} expected: {_fmt_expected(e)}")
  print("\n" + ", ".join(f"{repo}: {n}" for repo, n in counts.items()) + f"; total {len(entries)}")


def _report(entries, root_dir: str) -> None:
  print("| experiment | expected (paper / README) | jaxmix test top-1 | FGSM 8/255 top-1 | status |")
  print("| --- | --- | --- | --- | --- |")
  for e in entries:
    path = os.path.join(root_dir, e.name, "summary.json")
    got, fgsm, status = "", "", "not run"
    if os.path.exists(path):
      with open(path) as f:
        s = json.load(f)
      got = f"{s['test']['top1']:.2f}"
      px = s.get("robustness", {}).get("fgsm", {}).get("pixel", {}).get("8/255")
      fgsm = f"{px['top1']:.2f}" if px else ""
      status = "finished"
    elif os.path.isdir(os.path.join(root_dir, e.name)):
      status = "started"
    print(f"| {e.name} | {_fmt_expected(e)} | {got} | {fgsm} | {status} |")


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = []
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1 :]
  p = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n")[0])
  p.add_argument("--list", action="store_true", help="list the experiments (filtered by --only) with their expected numbers")
  p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="names or shell patterns of the experiments to run")
  p.add_argument("--dry_run", action="store_true", help="print the jaxmix train commands instead of running them")
  p.add_argument("--report", action="store_true", help="print expected vs measured for the runs under --root_dir")
  p.add_argument("--data_dir", default=None, help="passed to jaxmix train (tfds data dir or local class folders)")
  p.add_argument("--root_dir", default="runs", help="run directories are ROOT_DIR/NAME")
  p.add_argument("--mixing_set", default=None, help="IPMix's mixing set (a folder of pictures), for the IPMix entries")
  args = p.parse_args(argv)
  try:
    entries = select(args.only)
  except ValueError as e:
    print(f"experiments.run: {e}", file=sys.stderr)
    return 2
  if args.list:
    _list(entries)
    return 0
  if args.report:
    _report(entries, args.root_dir)
    return 0
  if not args.only:
    print("experiments.run: choose experiments with --only (or --list them); refusing to run all of them.", file=sys.stderr)
    return 2
  if args.dry_run:
    for e in entries:
      print(
        f"{program(e)} " + shlex.join(command(e, data_dir=args.data_dir, root_dir=args.root_dir, extra=extra, mixing_set=args.mixing_set))
      )
    return 0
  from jaxmix import training as jtrain

  for e in entries:
    print(f"experiments.run: {e.name} (expected: {_fmt_expected(e)})", flush=True)
    summary = jtrain.train(config(e, data_dir=args.data_dir, root_dir=args.root_dir, extra=extra, mixing_set=args.mixing_set))
    print(f"experiments.run: {e.name} test top-1 {summary['test']['top1']:.2f}% (expected: {_fmt_expected(e)})", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
