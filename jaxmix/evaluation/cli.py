"""``jaxmix eval``: restore a run of ``jaxmix train`` and run the evaluation protocols.

The one module of ``jaxmix.evaluation`` that knows about training: it restores the
checkpoint through :mod:`jaxmix.training.checkpoint`, then hands ``logits_fn`` and the
test set to :func:`jaxmix.evaluation.protocols.evaluate_all`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Sequence

import numpy as np

from jaxmix.evaluation.protocols import PGD_PRESETS, evaluate_all, format_summary
from jaxmix.training import checkpoint, step

__all__ = ("build_parser", "cli_main", "default_cache_dir")


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="jaxmix eval",
    description="Evaluate a run of 'jaxmix train': clean accuracy and calibration, FGSM (PatchUp and pixel space), "
    "optional PGD, the PatchUp deformed test sets and corruption robustness.",
  )
  p.add_argument("--checkpoint", required=True, help="run directory written by 'jaxmix train'")
  p.add_argument("--out", default=None, help="output JSON (default: RUN_DIR/eval_metrics.json)")
  p.add_argument("--max_examples", type=_positive_int, default=None, help="evaluate on N evenly spaced test examples")
  p.add_argument("--batch_size", type=_positive_int, default=100, help="evaluation batch (also PatchUp's FGSM clamp batch)")
  p.add_argument("--no_fgsm", action="store_true", help="skip FGSM")
  p.add_argument("--pgd", nargs="*", default=None, choices=sorted(PGD_PRESETS), help="run PGD (all presets if no name is given)")
  p.add_argument("--no_deformed", action="store_true", help="skip the PatchUp deformed test sets")
  p.add_argument("--no_corruptions", action="store_true", help="skip corruption robustness")
  p.add_argument("--corruptions", nargs="+", default=None, help="subset of corruptions (default all 15)")
  p.add_argument("--cifar_c_dir", default=None, help="folder with real CIFAR-10-C / CIFAR-100-C .npy files")
  p.add_argument("--tfds_corrupted", default=None, help="tfds name, e.g. cifar10_corrupted (needs the data prepared)")
  p.add_argument("--frost_dir", default=None, help="folder with the robustness repo's frost1.png .. frost6.jpg (real frost)")
  p.add_argument(
    "--cache_dir",
    default=None,
    help="cache of generated deformed / corrupted sets, shared between runs (default: $JAXMIX_EVAL_CACHE or ~/.cache/jaxmix/eval)",
  )
  p.add_argument("--seed", type=int, default=0, help="seed of the generated sets and of PGD")
  p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a run trained with --ema_decay")
  p.add_argument(
    "--compilation_cache",
    default=step.default_compilation_cache(),
    help="persistent XLA compilation cache directory ('off' to disable; default $JAXMIX_COMPILATION_CACHE or ~/.cache/jaxmix/xla)",
  )
  return p


def default_cache_dir() -> str:
  """``$JAXMIX_EVAL_CACHE`` or ``~/.cache/jaxmix/eval``: generated sets are keyed by a
  fingerprint of the test images and the seed, so runs on the same data share them."""
  return os.environ.get("JAXMIX_EVAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxmix", "eval")


def _load_frost(directory: str) -> list:
  """The frost photographs ``frost1.png, frost2.png, frost3.png, frost4.jpg, ...`` in numeric order."""
  from PIL import Image

  paths = sorted(glob.glob(os.path.join(directory, "frost*.*")), key=lambda p: os.path.basename(p))
  if not paths:
    raise FileNotFoundError(f"no frost*.png / frost*.jpg in {directory}")
  return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def cli_main(argv: Sequence[str]) -> int:
  """``jaxmix eval --checkpoint RUN_DIR [--out metrics.json] [--max_examples N] ...``.

  Restores the run with :func:`jaxmix.training.checkpoint.restore_for_eval`, runs
  :func:`evaluate_all`, prints a summary and writes the JSON.
  """
  args = build_parser().parse_args(list(argv))
  step.use_compilation_cache(args.compilation_cache)
  try:
    logits_fn, data, _ = checkpoint.restore_for_eval(args.checkpoint, ema=args.ema)
    metrics = evaluate_all(
      logits_fn,
      np.asarray(data.test.images),
      np.asarray(data.test.labels),
      mean=tuple(data.mean),
      std=tuple(data.std),
      batch_size=args.batch_size,
      fgsm=not args.no_fgsm,
      pgd=(list(args.pgd) or True) if args.pgd is not None else False,
      deformed=not args.no_deformed,
      corruptions=not args.no_corruptions,
      corruption_subset=args.corruptions,
      cifar_c_dir=args.cifar_c_dir,
      tfds_corrupted=args.tfds_corrupted,
      frost_textures=_load_frost(args.frost_dir) if args.frost_dir else None,
      cache_dir=args.cache_dir or default_cache_dir(),
      max_examples=args.max_examples,
      seed=args.seed,
      log=lambda s: print(s, flush=True),
    )
  except (FileNotFoundError, ValueError) as e:
    print(f"jaxmix eval: error: {e}", file=sys.stderr)
    return 1
  metrics["checkpoint"] = os.path.abspath(args.checkpoint)
  metrics["weights"] = "ema" if args.ema else "raw"
  out = args.out or os.path.join(args.checkpoint, "eval_metrics.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(metrics, f, indent=2)
  print(format_summary(metrics))
  print(f"jaxmix eval: wrote {out}")
  return 0
