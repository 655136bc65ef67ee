"""``jaxmix seed patchup|puzzlemix|ipmix ...``: the seed repositories' command lines, verbatim.

Each dialect is the official script's argument parser (its flags, spellings and
defaults: PatchUp's and Puzzle Mix's ``main.py``, Puzzle Mix's ``imagenet/train.py``,
IPMix's ``cifar.py`` and ``imagenet.py``) and a translation
of the parsed flags into a ``TrainConfig`` that trains what the official code trains.
Flags that concern only the original's hardware or bookkeeping are accepted and reported
as ignored; a flag the script does not have is an error naming it; a value jaxmix cannot
train (a model it lacks, dropout) is an error saying so. ``--print_config`` prints the
resolved configuration; the jaxmix-only flags ``--max_steps_per_epoch``,
``--max_eval_examples``, ``--num_devices`` and ``--compilation_cache`` may be appended
for short runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, NamedTuple, Optional, Sequence

from jaxmix.training import config as jconfig
from jaxmix.training import loop, step
from jaxmix.training.registry import parse_bool

__all__ = ("DIALECTS", "REPOS", "Dialect", "cli_main", "parse")

_SITES = ("input", "conv1", "layer1", "layer2", "layer3")


class Dialect(NamedTuple):
  """A seed script: its parser, the translation, and its flags that jaxmix ignores."""

  script: str
  parser: Callable[[], argparse.ArgumentParser]
  to_config: Callable[[argparse.Namespace], jconfig.TrainConfig]
  ignored: tuple
  required: tuple = ()  # the script's required flags, with stand-in values (to read its defaults)


def _unsupported(script: str, flag: str, why: str):
  raise ValueError(f"{script} {flag}: {why}")


# ----------------------------------------------------------------------------
# What PatchUp's and Puzzle Mix's main.py share (both grew from Manifold Mixup's)


def _lineage_flags(p: argparse.ArgumentParser, *, datasets: list, arch: str, epochs: int, factors: str) -> None:
  """The flags both ``main.py`` have, with their common defaults; ``factors`` names the lr-factor flag."""
  a = p.add_argument
  a("--dataset", default="cifar10", choices=datasets)
  a("--data_dir", default="cifar10")
  a("--root_dir", default="experiments")
  a("--labels_per_class", type=int, default=5000)
  a("--valid_labels_per_class", type=int, default=0)
  a("--arch", default=arch, choices=["preactresnet18", "preactresnet34", "wrn28_10", "wrn28_2"])
  a("--epochs", type=int, default=epochs)
  a("--batch_size", type=int, default=100)
  a("--learning_rate", type=float, default=0.1)
  a("--momentum", type=float, default=0.9)
  a("--decay", type=float, default=0.0001)
  a("--schedule", type=int, nargs="+", default=[150, 225])
  a(f"--{factors}", type=float, nargs="+", default=[0.1, 0.1])
  a("--print_freq", type=int, default=100)
  a("--resume", default="")
  a("--start_epoch", type=int, default=0)
  a("--evaluate", action="store_true")
  a("--ngpu", type=int, default=1)
  a("--workers", type=int, default=2)
  a("--add_name", default="")
  a("--job_id", default="")


def _lineage_config(args: argparse.Namespace, script: str, *, step_factors, **fields) -> jconfig.TrainConfig:
  """The ``TrainConfig`` of the flags both ``main.py`` share (BCE on softmax, step schedule), plus ``fields``."""
  if args.dropout:
    _unsupported(script, "--dropout", "the jaxmix models have no dropout layer.")
  if args.evaluate:
    _unsupported(script, "--evaluate", "use 'jaxmix eval --checkpoint RUN_DIR'.")
  return jconfig.TrainConfig(
    data_dir=args.data_dir,
    root_dir=args.root_dir,
    job_id=args.job_id,
    labels_per_class=args.labels_per_class,
    valid_labels_per_class=args.valid_labels_per_class,
    arch=args.arch,
    loss="bce",
    epochs=args.epochs,
    batch_size=args.batch_size,
    learning_rate=args.learning_rate,
    momentum=args.momentum,
    decay=args.decay,
    lr_schedule="step",
    schedule=tuple(args.schedule),
    step_factors=tuple(step_factors),
    print_freq=args.print_freq,
    **fields,
  )


# ----------------------------------------------------------------------------
# PatchUp main.py


def _patchup_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxmix seed patchup", description="PatchUp's main.py flags (python main.py -> jaxmix seed patchup).")
  _lineage_flags(p, datasets=["cifar10", "cifar100", "svhn"], arch="preactresnet18", epochs=400, factors="step_factors")
  a = p.add_argument
  a("--train", default="vanilla", choices=["vanilla", "mixup", "manifold_mixup", "cutout", "patchup", "cutmix", "dropblock"])
  a("--alpha", type=float, default=0.0)
  a("--cutout", type=int, default=8)
  a("--drop_block", type=int, default=7)
  a("--drop_block_all", nargs="?", const="True", default="False")  # the README also writes it bare
  a("--k", type=int, default=2)
  a("--keep_prob", type=float, default=0.9)
  a("--gamma", type=float, default=0.9)
  a("--patchup_block", type=int, default=7)
  a("--patchup_prob", type=float, default=0.7)
  a("--patchup_type", default="soft", choices=["soft", "hard"])
  a("--cutmix_prob", type=float, default=0.5)
  a("--dropout", action="store_true")
  a("--data_aug", type=int, default=1)
  a("--manualSeed", type=int, default=None)
  a("--checkpoint", nargs="?", const="True", default="False")  # the README also writes it bare
  a("--affine_test", nargs="?", const="True", default="False")  # the README also writes it bare
  a("--affine_path", default="../../data/affine/")
  a("--fsgm_attack", nargs="?", const="True", default="False")  # the README also writes it bare
  a("--loss_params", type=int, nargs="+", default=[1, 1])
  return p


def _patchup_config(args: argparse.Namespace) -> jconfig.TrainConfig:
  script = "main.py (PatchUp)"
  if list(args.loss_params) != [1, 1]:
    _unsupported(script, "--loss_params", "only the README's [1, 1] (the collapsed PatchUp loss) is implemented.")
  if not 1 <= args.k <= 4:
    _unsupported(script, "--k", f"must be in 1..4 for the jaxmix models, got {args.k}.")
  method, hparams = args.train, {}
  if method == "mixup":
    hparams = {"alpha": args.alpha}
  elif method == "manifold_mixup":  # its models' k: mix at layer_mix in {0..k}: input, conv1, layer1, ...
    hparams = {"alpha": args.alpha, "sites": _SITES[: args.k + 1]}
  elif method == "cutout":  # one hole for the batch (modules/cutout.py on the batch tensor)
    hparams = {"size": args.cutout, "shared": True}
  elif method == "cutmix":  # CutMix(beta=1.) whatever --alpha says
    hparams = {"alpha": 1.0, "prob": args.cutmix_prob}
  elif method == "patchup":
    hparams = {
      "mode": args.patchup_type,
      "block_size": args.patchup_block,
      "gamma": args.gamma,
      "prob": args.patchup_prob,
      "sites": _SITES[: args.k + 1],
      "wrn_target_bug": args.arch.startswith("wrn"),  # the official WideResNet's layer-0 target
    }
  elif method == "dropblock":
    hparams = {
      "block_size": args.drop_block,
      "keep_prob": args.keep_prob,
      "drop_block_all": parse_bool(args.drop_block_all),
      "sites": _SITES[1 : args.k + 1],
    }
  svhn = args.dataset == "svhn"
  return _lineage_config(
    args,
    script,
    step_factors=args.step_factors,
    dataset="svhn_cropped" if svhn else args.dataset,
    train=method,
    hparams=hparams,
    crop_padding=2 if args.data_aug else 0,
    flip=bool(args.data_aug) and not svhn,  # its SVHN loader crops without flipping
    seed=0 if args.manualSeed is None else args.manualSeed,
    affine_test=parse_bool(args.affine_test),
    affine_path=args.affine_path,
    fsgm_attack=parse_bool(args.fsgm_attack),
  )


# ----------------------------------------------------------------------------
# Puzzle Mix main.py


def _puzzlemix_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxmix seed puzzlemix", description="Puzzle Mix's main.py flags (main.py -> jaxmix seed puzzlemix).")
  _lineage_flags(p, datasets=["cifar10", "cifar100", "tiny-imagenet-200"], arch="wrn28_10", epochs=300, factors="gammas")
  a = p.add_argument
  a("--initial_channels", type=int, default=64, choices=(16, 64))
  a("--train", default="vanilla", choices=["vanilla", "mixup", "mixup_hidden"])
  a("--in_batch", type=parse_bool, default=False)
  a("--mixup_alpha", type=float, default=None)
  a("--dropout", type=parse_bool, default=False)
  a("--box", type=parse_bool, default=False)
  a("--graph", type=parse_bool, default=False)
  a("--neigh_size", type=int, default=4)
  a("--n_labels", type=int, default=3)
  a("--beta", type=float, default=1.2)
  a("--gamma", type=float, default=0.5)
  a("--eta", type=float, default=0.2)
  a("--transport", type=parse_bool, default=True)
  a("--t_eps", type=float, default=0.8)
  a("--t_size", type=int, default=-1)
  a("--adv_eps", type=float, default=10.0)
  a("--adv_p", type=float, default=0.0)
  a("--clean_lam", type=float, default=0.0)
  a("--mp", type=int, default=8)
  a("--seed", type=int, default=0)
  a("--log_off", type=parse_bool, default=False)
  return p


def _puzzlemix_config(args: argparse.Namespace) -> jconfig.TrainConfig:
  script = "main.py (Puzzle Mix)"
  if args.train != "vanilla" and args.mixup_alpha is None:
    _unsupported(script, "--mixup_alpha", f"--train {args.train} needs it (the official code reads it as None otherwise).")
  method, hparams = "vanilla", {}
  if args.train == "mixup" and args.graph:
    method = "puzzlemix"
    names = ("neigh_size", "n_labels", "beta", "gamma", "eta", "transport", "t_eps", "t_size", "adv_p", "adv_eps")
    hparams = {"alpha": args.mixup_alpha, **{n: getattr(args, n) for n in names}}
  elif args.train == "mixup" and args.box:  # CutMix on every batch
    method, hparams = "cutmix", {"alpha": args.mixup_alpha, "prob": 1.0, "box_rule": "puzzlemix"}
  elif args.train == "mixup":
    method, hparams = "mixup", {"alpha": args.mixup_alpha}
  elif args.train == "mixup_hidden":  # its models: k in {0, 1, 2}: input, after layer1, after layer2
    method, hparams = "manifold_mixup", {"alpha": args.mixup_alpha, "sites": ("input", "layer1", "layer2")}
  tiny = args.dataset == "tiny-imagenet-200"
  model_kwargs = {"widths": [16, 32, 64, 128]} if args.initial_channels == 16 and args.arch.startswith("preact") else {}
  if tiny:  # its main.py: stride-2 stem at 64x64, the whole training set, no validation split, test on val/
    args.labels_per_class, args.valid_labels_per_class = None, 0
    if args.arch == "preactresnet18" and not model_kwargs:
      args.arch = "preactresnet18_64"
    else:
      model_kwargs["stem_stride"] = 2
  return _lineage_config(
    args,
    script,
    step_factors=args.gammas,
    dataset=args.dataset,
    model_kwargs=model_kwargs,
    train=method,
    hparams=hparams,
    clean_lam=args.clean_lam,
    crop_padding=4 if tiny else 2,
    seed=args.seed,
    fsgm_attack=args.adv_p > 0,  # its main.py attacks the test set (FGSM 4/255 and 8/255) when --adv_p > 0
  )


# ----------------------------------------------------------------------------
# Puzzle Mix imagenet/train.py (CutMix's train.py with Puzzle Mix added)


def _puzzlemix_imagenet_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="jaxmix seed puzzlemix", description="Puzzle Mix's imagenet/train.py flags (python train.py -> jaxmix seed puzzlemix train.py)."
  )
  a = p.add_argument
  a("--net_type", default="resnet")
  a("--workers", "-j", type=int, default=4)
  a("--epochs", type=int, default=300)
  a("--batch_size", "-b", type=int, default=64)
  a("--lr", "--learning-rate", type=float, default=0.25)
  a("--momentum", type=float, default=0.9)
  a("--weight-decay", "--wd", dest="weight_decay", type=float, default=1e-4)
  a("--print-freq", "-p", dest="print_freq", type=int, default=1)
  a("--depth", type=int, default=50)
  a("--no-bottleneck", dest="bottleneck", action="store_false")
  a("--dataset", default="imagenet")
  a("--no-verbose", dest="verbose", action="store_false")
  a("--alpha", type=float, default=240)
  a("--expname", default="")
  a("--beta", type=float, default=1.0)
  a("--mixup_prob", type=float, default=1.0)
  a("--padding", type=int, default=4)
  a("--method", default="puzzle", choices=("vanilla", "cut", "puzzle"))
  a("--mp", type=int, default=8)
  a("--n_labels", type=int, default=3)
  a("--neigh_size", type=int, default=4)
  a("--p_beta", type=float, default=1.2)
  a("--p_gamma", type=float, default=0.5)
  a("--p_eta", type=float, default=0.2)
  a("--transport", type=parse_bool, default=True)
  a("--t_eps", type=float, default=0.8)
  a("--clean_lam", type=float, default=0.0)
  a("--seed", type=int, default=-1)
  # jaxmix additions: the script reads ImageNet from a fixed path and saves under runs/EXPNAME.
  a("--data_dir", default="/data/readonly/ImageNet-Fast/imagenet")
  a("--root_dir", default="runs")
  a("--job_id", default="")
  return p


def _puzzlemix_imagenet_config(args: argparse.Namespace) -> jconfig.TrainConfig:
  script = "imagenet/train.py (Puzzle Mix)"
  if args.dataset != "imagenet":
    _unsupported(script, "--dataset", f"{args.dataset!r}: jaxmix has the script's ImageNet ResNet-50, not its CIFAR ResNet / PyramidNet.")
  if args.net_type != "resnet" or args.depth != 50 or not args.bottleneck:
    _unsupported(script, "--net_type/--depth", "jaxmix has ResNet-50 (--net_type resnet --depth 50 with bottlenecks) for ImageNet.")
  method, hparams = "vanilla", {}
  if args.beta > 0 and args.method == "cut":  # rand_bbox, lam from the box: the clovaai rule
    method, hparams = "cutmix", {"alpha": args.beta, "prob": args.mixup_prob}
  elif args.beta > 0 and args.method == "puzzle":
    if args.mixup_prob != 1.0:
      _unsupported(script, "--mixup_prob", "jaxmix's Puzzle Mix mixes every batch (1.0, the README's value).")
    method = "puzzlemix"  # block count drawn from {2, 4, 8, 16}, transport on the block grid
    hparams = {
      "alpha": args.beta,
      "beta": args.p_beta,
      "gamma": args.p_gamma,
      "eta": args.p_eta,
      "neigh_size": min(args.neigh_size, 2),  # its ImageNet branch caps it at 2
      "n_labels": args.n_labels,
      "transport": args.transport,
      "t_eps": args.t_eps,
    }
  steps = 75 if args.epochs == 300 else 30  # its adjust_learning_rate: x0.1 every 75 (300 epochs) or 30 epochs
  schedule = tuple(range(steps, args.epochs, steps))
  name = args.expname + args.method + ("_tp" if args.transport else "") + f"_prob_{args.mixup_prob}"  # its args.expname
  name += (f"_clean_{args.clean_lam}" if args.clean_lam > 0 else "") + (f"_seed{args.seed}" if args.seed >= 0 else "")
  return jconfig.TrainConfig(
    dataset="imagenet2012",
    data_dir=args.data_dir,
    root_dir=args.root_dir,
    job_id=args.job_id or name,
    arch="resnet50",
    train=method,
    hparams=hparams,
    # Its clean loss is clean_lam * CE; jaxmix's is 2 clean_lam / K * CE (main.py's, K classes).
    clean_lam=args.clean_lam * 1000 / 2,
    loss="ce",
    epochs=args.epochs,
    batch_size=args.batch_size,
    eval_batch_size=max(1, args.batch_size // 4),
    learning_rate=args.lr,
    momentum=args.momentum,
    nesterov=True,
    decay=args.weight_decay,
    lr_schedule="step",
    schedule=schedule,
    step_factors=(0.1,) * len(schedule),
    print_freq=args.print_freq,
    seed=max(args.seed, 0),
  )


# ----------------------------------------------------------------------------
# IPMix cifar.py


def _ipmix_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxmix seed ipmix", description="IPMix's cifar.py flags (python cifar.py -> jaxmix seed ipmix).")
  a = p.add_argument
  a("--dataset", default="cifar100", choices=["cifar10", "cifar100"])
  a("--data-path", dest="data_path", required=True)
  a("--mixing-set", dest="mixing_set", required=True)
  a("--model", "-m", default="wrn", choices=["wrn", "resnext", "resnet", "densenet"])
  a("--epochs", "-e", type=int, default=100)
  a("--learning-rate", "-lr", dest="learning_rate", type=float, default=0.1)
  a("--batch-size", "-b", dest="batch_size", type=int, default=128)
  a("--eval-batch-size", dest="eval_batch_size", type=int, default=1000)
  a("--momentum", type=float, default=0.9)
  a("--decay", "-wd", type=float, default=0.0005)
  a("--layers", type=int, default=40)
  a("--widen-factor", dest="widen_factor", type=int, default=4)
  a("--droprate", type=float, default=0.3)
  a("--k", type=int, default=3)
  a("--t", type=int, default=3)
  a("--no-jsd", "-nj", dest="no_jsd", action="store_true")
  a("--beta", type=int, default=3)
  a("--aug-severity", dest="aug_severity", type=int, default=3)
  a("--save", "-s", default="./result")
  a("--resume", "-r", default="")
  a("--evaluate", action="store_true")
  a("--print-freq", dest="print_freq", type=int, default=50)
  a("--num-workers", dest="num_workers", type=int, default=4)
  return p


def _ipmix_config(args: argparse.Namespace) -> jconfig.TrainConfig:
  script = "cifar.py (IPMix)"
  if args.model not in ("wrn", "resnext"):
    _unsupported(
      script,
      "--model",
      f"{args.model!r} is not a jaxmix model; 'wrn' (WRN-{args.layers}-{args.widen_factor}) and 'resnext' (ResNeXt-29) are.",
    )
  arch, model_kwargs = ("wrn40_4", {"depth": args.layers, "widen_factor": args.widen_factor}) if args.model == "wrn" else ("resnext29", {})
  if args.evaluate:
    _unsupported(script, "--evaluate", "use 'jaxmix eval --checkpoint RUN_DIR'.")
  return _ipmix_recipe(
    args,
    dataset=args.dataset,
    data_dir=args.data_path,
    arch=arch,
    model_kwargs=model_kwargs,
    eval_batch_size=args.eval_batch_size,
    learning_rate=args.learning_rate,
    decay=args.decay,
    crop_padding=4,
  )


def _ipmix_recipe(args: argparse.Namespace, *, hparams: Optional[dict] = None, **fields) -> jconfig.TrainConfig:
  """What ``cifar.py`` and ``imagenet.py`` share: IPMix with JSD unless ``--no-jsd``, CE, SGD with
  Nesterov momentum and the per-step cosine (its ``LambdaLR``), the uint8 wrap of its
  add/multiply, their common flags; plus each script's ``fields`` and extra ``hparams``."""
  ipmix = {"k": args.k, "depth": args.t, "beta": float(args.beta), "severity": args.aug_severity, "overflow": "wrap", **(hparams or {})}
  return jconfig.TrainConfig(
    root_dir=args.save,
    train="ipmix",
    mixing_set=args.mixing_set,
    hparams=ipmix,
    loss="ce",
    jsd=not args.no_jsd,
    epochs=args.epochs,
    batch_size=args.batch_size,
    momentum=args.momentum,
    nesterov=True,
    lr_schedule="cosine",
    print_freq=args.print_freq,
    **fields,
  )


# ----------------------------------------------------------------------------
# IPMix imagenet.py


def _ipmix_imagenet_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="jaxmix seed ipmix", description="IPMix's imagenet.py flags (python imagenet.py -> jaxmix seed ipmix [imagenet.py])."
  )
  a = p.add_argument
  a("--data-standard", dest="data_standard", default="data/imagenet/train/")
  a("--data-val", dest="data_val", default="data/imagenet/val/")
  a("--imagenet-r-dir", dest="imagenet_r_dir", default="data/imagenet_r/")
  a("--imagenet-c-dir", dest="imagenet_c_dir", default="data/imagenet_c/")
  a("--imagenet-a-dir", dest="imagenet_a_dir", default="data/imagenet_a/")
  a("--mixing-set", dest="mixing_set", required=True)
  a("--num-classes", dest="num_classes", choices=["200", "1000"], required=True)
  a("--aug-severity", dest="aug_severity", type=int, default=1)
  a("--beta", type=int, default=4)
  a("--k", type=int, default=3)
  a("--t", type=int, default=3)
  a("--no-jsd", "-nj", dest="no_jsd", action="store_true")
  a("--all-ops", "-all", dest="all_ops", action="store_true")
  a("--save", default="checkpoints/TEMP")
  a("--arch", "-a", default="resnet50")
  a("--workers", "-j", type=int, default=36)
  a("--epochs", type=int, default=180)
  a("--start-epoch", dest="start_epoch", type=int, default=0)
  a("--batch-size", "-b", dest="batch_size", type=int, default=128)
  a("--batch-size-val", dest="batch_size_val", type=int, default=512)
  a("--lr", "--learning-rate", dest="lr", type=float, default=0.01)
  a("--momentum", type=float, default=0.9)
  a("--wd", "--weight-decay", dest="weight_decay", type=float, default=5e-4)
  a("--decay_epochs", "--de", type=int, nargs="+", default=[30, 60])
  a("--print-freq", "-p", dest="print_freq", type=int, default=10)
  a("--resume", default="")
  a("--evaluate", "-e", action="store_true")
  a("--pretrained", action="store_true")
  return p


def _imagenet_root(script: str, train: str, val: str) -> str:
  """The folder whose ``train/`` and ``val/`` are ``train`` and ``val`` (jaxmix reads one folder of both)."""
  train, val = os.path.normpath(train), os.path.normpath(val)
  root = os.path.dirname(train)
  if os.path.basename(train) != "train" or os.path.basename(val) not in ("val", "test") or os.path.dirname(val) != root:
    _unsupported(
      script,
      "--data-standard/--data-val",
      f"jaxmix reads the train/ and val/ class folders of one directory; got {train!r} and {val!r} (pass DIR/train and DIR/val).",
    )
  return root or "."


def _ipmix_imagenet_config(args: argparse.Namespace) -> jconfig.TrainConfig:
  script = "imagenet.py (IPMix)"
  if args.num_classes != "1000":
    _unsupported(script, "--num-classes", "only 1000 is implemented (200 is the ImageNet-R class subset, which jaxmix does not select).")
  if args.arch != "resnet50":
    _unsupported(script, "--arch", f"{args.arch!r} is not a jaxmix ImageNet model; resnet50 is.")
  if args.all_ops:
    _unsupported(script, "--all-ops", "jaxmix's IPMix has the ten default operations, not the four colour ones --all-ops adds.")
  for flag in ("evaluate", "pretrained"):
    if getattr(args, flag):
      _unsupported(script, f"--{flag}", "use 'jaxmix eval --checkpoint RUN_DIR' on a jaxmix run; torchvision weights are not loaded.")
  return _ipmix_recipe(
    args,
    hparams={"patch_sizes": (4, 8, 16, 32, 64, 224)},  # its ipmix(): patch_sizes = [4, 8, 16, 32, 64, 224]
    dataset="imagenet2012",
    data_dir=_imagenet_root(script, args.data_standard, args.data_val),
    arch="resnet50",
    eval_batch_size=args.batch_size_val,
    learning_rate=args.lr,
    decay=args.weight_decay,  # its --decay_epochs is parsed but never used: the schedule is the cosine
  )


DIALECTS = {
  "patchup": Dialect("main.py", _patchup_parser, _patchup_config, ("ngpu", "workers", "add_name", "checkpoint", "resume", "start_epoch")),
  "puzzlemix": Dialect(
    "main.py", _puzzlemix_parser, _puzzlemix_config, ("mp", "ngpu", "workers", "add_name", "log_off", "resume", "start_epoch", "in_batch")
  ),
  "ipmix": Dialect("cifar.py", _ipmix_parser, _ipmix_config, ("num_workers", "resume"), ("--data-path", "x", "--mixing-set", "x")),
  "puzzlemix_imagenet": Dialect(
    "imagenet/train.py", _puzzlemix_imagenet_parser, _puzzlemix_imagenet_config, ("workers", "mp", "verbose", "padding", "alpha")
  ),
  "ipmix_imagenet": Dialect(
    "imagenet.py",
    _ipmix_imagenet_parser,
    _ipmix_imagenet_config,
    ("workers", "start_epoch", "resume", "decay_epochs", "imagenet_r_dir", "imagenet_c_dir", "imagenet_a_dir"),
    ("--mixing-set", "x", "--num-classes", "1000"),
  ),
}
"""The dialects by repository name (``ipmix_imagenet``: IPMix's ``imagenet.py``)."""

REPOS = ("patchup", "puzzlemix", "ipmix")
"""The names ``jaxmix seed`` takes (``ipmix`` picks ``cifar.py`` or ``imagenet.py``)."""

# What the jaxmix runs of a dialect do differently from the official script, reported with
# the configuration (the deviations of each method are in docs/algorithms/).
_NOTES = {
  "ipmix": (
    "--droprate: the jaxmix WideResNet has no dropout",
    "normalisation: the CIFAR mean/std instead of the official 0.5/0.5",
  ),
  "ipmix_imagenet": ("the 'P' chains do not mix in an augmented copy of the image (docs/algorithms/ipmix.md)",),
  "puzzlemix": (),
  "puzzlemix_imagenet": ("no ColorJitter(0.4, 0.4, 0.4) and PCA lighting (0.1) in the jaxmix input pipeline",),
  "patchup": (),
}


_HARDWARE = "the original's hardware or bookkeeping"
_WHY_IGNORED = {
  "imagenet_r_dir": "ImageNet-R is not evaluated by the run",
  "imagenet_c_dir": "ImageNet-C is not evaluated by the run",
  "imagenet_a_dir": "ImageNet-A is not evaluated by the run",
  "decay_epochs": "imagenet.py parses it but its schedule is the cosine",
  "in_batch": "it only names the official run folder",
  "verbose": "jaxmix prints every --print-freq steps",
  "padding": "its ImageNet branch does not use it",
  "alpha": "the PyramidNet widening factor; jaxmix trains ResNet-50",
  "resume": "a jaxmix run resumes from its run directory by itself",
  "start_epoch": "a jaxmix run resumes from its run directory by itself",
}


def _extras() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(add_help=False)
  p.add_argument("--print_config", action="store_true")
  p.add_argument("--max_steps_per_epoch", type=int, default=0)
  p.add_argument("--max_eval_examples", type=int, default=0)
  p.add_argument("--num_devices", type=int, default=0)
  p.add_argument("--compilation_cache", default=step.default_compilation_cache())
  return p


def _script(repo: str, argv: Sequence[str]) -> tuple[str, list]:
  """The dialect of ``jaxmix seed REPO ARGV`` and its flags. ``puzzlemix`` runs ``main.py``'s line, or
  ``imagenet/train.py``'s when the first word names it or a flag only that script has is given;
  ``ipmix`` runs ``cifar.py``'s line, or ``imagenet.py``'s when the first word names it or its
  required ``--num-classes`` is given."""
  argv = list(argv)
  given = lambda *flags: any(a.split("=")[0] in flags for a in argv)  # noqa: E731
  if repo == "puzzlemix":
    if argv and argv[0] in ("main.py", "train.py", "imagenet/train.py"):
      return ("puzzlemix" if argv[0] == "main.py" else "puzzlemix_imagenet"), argv[1:]
    return ("puzzlemix_imagenet" if given("--net_type", "--method", "--mixup_prob", "--p_beta") else repo), argv
  if repo != "ipmix":
    return repo, argv
  if argv and argv[0] in ("cifar.py", "imagenet.py"):
    return ("ipmix" if argv[0] == "cifar.py" else "ipmix_imagenet"), argv[1:]
  return ("ipmix_imagenet" if given("--num-classes") else repo), argv


def parse(repo: str, argv: Sequence[str]) -> tuple[jconfig.TrainConfig, argparse.Namespace, list]:
  """``(TrainConfig, jaxmix-only flags, notes)`` for an official command line of ``repo``.

  Raises:
    SystemExit: on a flag the official script does not have (argparse's message names it).
    ValueError: on a value jaxmix cannot train.
  """
  repo, argv = _script(repo, argv)
  dialect = DIALECTS[repo]
  extras, rest = _extras().parse_known_args(argv)
  parser = dialect.parser()
  args = parser.parse_args(rest)
  defaults = vars(parser.parse_args(list(dialect.required)))
  spelling = {a.dest: next(o for o in a.option_strings if o.startswith("--")) for a in parser._actions if a.option_strings}
  given = [name for name in dialect.ignored if getattr(args, name) != defaults[name]]
  notes = [f"{spelling[name]} ignored ({_WHY_IGNORED.get(name, _HARDWARE)})" for name in given]
  notes += list(_NOTES[repo])
  cfg = dialect.to_config(args)
  cfg = dataclasses.replace(
    cfg, max_steps_per_epoch=extras.max_steps_per_epoch, max_eval_examples=extras.max_eval_examples, num_devices=extras.num_devices
  )
  return cfg, extras, notes


def cli_main(argv: Sequence[str]) -> int:
  """``jaxmix seed <repo> <the official script's flags> [--print_config]``."""
  argv = list(argv)
  if not argv or argv[0] not in REPOS:
    known = (
      "patchup (main.py), puzzlemix (main.py, or imagenet/train.py: 'puzzlemix train.py ...' or with its --method/--net_type), "
      "ipmix (cifar.py, or imagenet.py: 'ipmix imagenet.py ...' or with --num-classes)"
    )
    print(f"usage: jaxmix seed {{{','.join(REPOS)}}} <flags of the official script>\nknown: {known}", file=sys.stderr)
    return 2
  repo = argv[0]
  try:
    cfg, extras, notes = parse(repo, argv[1:])
    jconfig.validate(cfg)
  except ValueError as e:
    print(f"jaxmix seed {repo}: error: {e}", file=sys.stderr)
    return 2
  for note in notes:
    print(f"jaxmix seed {repo}: {note}", file=sys.stderr)
  if extras.print_config:
    print(json.dumps(jconfig.resolved_config(cfg), indent=2))
    return 0
  step.use_compilation_cache(extras.compilation_cache)
  try:
    loop.train(cfg)
  except (ValueError, OSError) as e:
    print(f"jaxmix seed {repo}: error: {e}", file=sys.stderr)
    return 2
  return 0
