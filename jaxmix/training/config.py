"""The run configuration: ``TrainConfig``, the command line built from it, and what
derives from it (the method's hyper-parameters, the step configuration, the optimizer,
the data).

Every setting is written once, as a ``TrainConfig`` field whose metadata carries its
help text and flag aliases; ``build_parser`` turns the fields into the flags of
``jaxmix train`` (the PatchUp ``main.py`` flags among them), the methods' own flags come
from the registry, and ``step_config`` derives the train step's static configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import typing
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import optax

from jaxmix.evaluation.protocols import spread_indices
from jaxmix.ops import hook
from jaxmix.training import data as jdata
from jaxmix.training import models, tensorboard
from jaxmix.training import step as ts
from jaxmix.training.registry import HPARAM_FLAGS, METHODS, get_method, parse_bool
from jaxmix.training.step import StepConfig

__all__ = (
  "TrainConfig",
  "build_parser",
  "config_from_args",
  "load_data",
  "learning_rate_schedule",
  "make_optimizer",
  "parse_args",
  "read_config",
  "resolved_config",
  "resolve_hparams",
  "step_config",
  "validate",
)


LOSSES = ("bce", "ce", "sigmoid_bce")


def _field(default, help: str, *, flags: tuple = (), choices=None, cli: bool = True, group: str = "run"):
  """A ``TrainConfig`` field with its command-line help, extra flag names and group."""
  meta = {"help": help, "flags": flags, "choices": choices, "cli": cli, "group": group}
  if isinstance(default, (dict, list)):
    return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class TrainConfig:
  """Everything that defines a run (saved as ``config.json`` in the run directory)."""

  dataset: str = _field(
    "cifar10",
    "cifar10, cifar100, svhn, tiny-imagenet-200, imagenet2012, folder (any class folders) or tfds:NAME "
    "(tfds names, or offline with --data_dir)",
  )
  data_dir: Optional[str] = _field(
    None, "tfds data dir, a local class-folder directory / zip (e.g. ~/data/cifar10), or Tiny-ImageNet's unpacked folder"
  )
  image_size: int = _field(0, "resize (shorter side) and centre-crop images to this size (0: the data set's, or the files' own size)")
  augment: str = _field(
    "",
    "crop_flip (pad-and-crop + flip) or inception (ImageNet's random-resized crop + flip); default: the data set's recipe",
    choices=("", "crop_flip", "inception"),
  )
  download: bool = _field(False, "let tfds download a data set that --data_dir (or the tfds default) does not hold; needs network")
  root_dir: str = _field("experiments", "folder where run directories are created")
  job_id: str = _field("", "name of the run directory (default: derived from dataset/arch/method/seed)")
  labels_per_class: Optional[int] = _field(None, "training examples per class (default: all)")
  valid_labels_per_class: int = _field(0, "held-out validation examples per class")
  subset_seed: Optional[int] = _field(None, "seed of the labels_per_class / valid_labels_per_class subset (default: --seed)")
  arch: str = _field("preactresnet18", "model architecture", choices=models.ARCHS)
  model_kwargs: dict = _field({}, "JSON kwargs of the model, e.g. '{\"widths\": [16, 32, 64, 128]}'")
  dtype: str = _field(
    "float32",
    "compute dtype of the convolutions and matmuls; bfloat16 = mixed precision (float32 parameters, BatchNorm, logits and loss)",
    choices=models.DTYPES,
  )
  train: str = _field("vanilla", "mixing method", choices=tuple(sorted(METHODS)))
  hparams: dict = _field({}, "the method's hyper-parameters (set through the method flags)", cli=False)
  loss: str = _field(
    "bce",
    "bce = BCE on softmax (PatchUp/MM/PuzzleMix), ce = cross-entropy, sigmoid_bce = per-class sigmoid BCE (timm --bce-loss)",
    choices=LOSSES,
  )
  label_smoothing: float = _field(0.0, "label smoothing applied before mixing")
  epochs: int = _field(400, "training epochs")
  batch_size: int = _field(100, "global batch size")
  optimizer: str = _field("sgd", "optimizer", choices=("sgd", "adam"))
  learning_rate: float = _field(0.1, "initial learning rate")
  momentum: float = _field(0.9, "SGD momentum")
  nesterov: bool = _field(True, "Nesterov momentum")
  decay: float = _field(1e-4, "weight decay (L2 through the optimizer, as PyTorch SGD)")
  l2_conv: float = _field(0.0, "L2 penalty on conv kernels in the loss (Keras ResNets: 1e-4)")
  lr_schedule: str = _field("step", "learning-rate schedule", choices=("step", "cosine"))
  schedule: tuple = _field((150, 225), "epochs at which the lr is multiplied by --step_factors")
  step_factors: tuple = _field((0.1, 0.1), "lr factors at the --schedule epochs")
  crop_padding: int = _field(2, "random-crop zero padding (2 in the PatchUp lineage, 4 elsewhere)")
  flip: bool = _field(True, "random horizontal flip")
  seed: int = _field(0, "seed of the data order, augmentation, initialisation and mixing", flags=("--manualSeed",))
  num_devices: int = _field(0, "devices to use (0 = all)")
  mix_group_size: int = _field(0, "mix within fixed groups of this many examples (device-count independent)")
  mixup_off_epoch: int = _field(0, "no mixing from this epoch on (timm --mixup-off-epoch); 0 = mix every epoch", group="method")
  tensorboard: bool = _field(False, "write TensorBoard event files to RUN_DIR/tensorboard (needs tensorboardX)")
  ema_decay: float = _field(0.0, "keep an EMA of the weights and BN statistics with this decay (timm --model-ema-decay); 0 = none")
  jsd: bool = _field(False, "IPMix JSD consistency loss (clean + two views)", group="method")
  mixing_set: Optional[str] = _field(
    None,
    "IPMix: a folder or zip of mixing pictures (resized to 36/32 of the image side, randomly cropped per example, as the "
    "official Resize(36) + RandomCrop(32)); default: jaxmix's procedural fractals",
    group="method",
  )
  clean_lam: float = _field(0.0, "Puzzle Mix clean-loss weight (> 0 keeps its parameter gradients)", group="method")
  eval_batch_size: int = _field(500, "evaluation batch size")
  keep_checkpoints: int = _field(2, "periodic checkpoints to keep")
  save_every_steps: int = _field(0, "also checkpoint every N steps within an epoch")
  max_steps_per_epoch: int = _field(0, "cap the steps per epoch (smoke runs)")
  max_eval_examples: int = _field(0, "evaluate on N evenly spaced test/valid examples only (smoke runs; 0 = all)")
  print_freq: int = _field(50, "progress line every N steps")
  affine_test: bool = _field(False, "evaluate on the deformed test sets", group="eval")
  affine_path: Optional[str] = _field(None, "cache directory of the deformed test sets", group="eval")
  fsgm_attack: bool = _field(False, "evaluate FGSM robustness", group="eval")

  def run_dir(self) -> str:
    name = self.job_id or f"{self.dataset}_{self.arch}_{self.train}_seed{self.seed}"
    return os.path.join(self.root_dir, name)


# Flags of PatchUp's main.py that concern only its own code or hardware.
_IGNORED_FLAGS = (
  ("--k", {"type": int}),
  ("--dropout", {"action": "store_true"}),
  ("--data_aug", {"type": int}),
  ("--checkpoint", {}),
  ("--workers", {"type": int}),
  ("--ngpu", {"type": int}),
  ("--add_name", {}),
  ("--loss_params", {"type": int, "nargs": "+"}),
)

_GROUPS = {
  "method": "method hyper-parameters (unset = the method's seed default)",
  "eval": "evaluation at the end (PatchUp flags)",
}


def _field_kwargs(field: dataclasses.Field, hint) -> dict:
  """argparse keywords of a ``TrainConfig`` field, from its type hint and default."""
  meta = field.metadata
  default = field.default_factory() if field.default is dataclasses.MISSING else field.default
  kw = {"dest": field.name, "default": default, "help": meta["help"]}
  if meta["choices"]:
    kw["choices"] = list(meta["choices"])
  if hint is bool:
    kw.update(type=parse_bool, nargs="?", const=True)
  elif hint is dict:
    kw["type"] = json.loads
  elif hint is tuple:
    kw.update(type=type(default[0]), nargs="+", default=list(default))
  else:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if base in (int, float):
      kw["type"] = base
  return kw


def build_parser() -> argparse.ArgumentParser:
  """The ``jaxmix train`` flags: one per ``TrainConfig`` field, plus the registry's method flags.

  Accepts the flags of PatchUp's ``main.py`` with their meanings; its flags that only
  concern its own code or hardware are accepted and have no effect.
  """
  p = argparse.ArgumentParser(
    prog="jaxmix train",
    description="Train a classifier with a mixing method. Accepts the flags of the PatchUp main.py.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  groups = {"run": p, **{name: p.add_argument_group(title) for name, title in _GROUPS.items()}}
  hints = typing.get_type_hints(TrainConfig)
  for field in dataclasses.fields(TrainConfig):
    if field.metadata["cli"]:
      names = (*field.metadata["flags"], f"--{field.name}")
      groups[field.metadata["group"]].add_argument(*names, **_field_kwargs(field, hints[field.name]))
  p.add_argument("--print_config", action="store_true", help="print the resolved run configuration as JSON and exit")
  p.add_argument("--config", default=None, help="a run configuration JSON (e.g. a run's config.json); flags given override it")
  p.add_argument(
    "--compilation_cache",
    default=ts.default_compilation_cache(),
    help="persistent XLA compilation cache directory ('off' to disable; default $JAXMIX_COMPILATION_CACHE or ~/.cache/jaxmix/xla)",
  )
  multi = p.add_argument_group(
    "multi-host (process settings, not saved in config.json: every process, and a 1-process run, have the same run configuration)"
  )
  multi.add_argument(
    "--distributed",
    action="store_true",
    help="multi-host: call jax.distributed.initialize() first; each process reads its slice of every batch, process 0 "
    "writes the logs. Without the three flags below JAX finds the processes itself: on Cloud TPU, under Slurm "
    "(SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID), Open MPI (OMPI_MCA_orte_hnp_uri, "
    "OMPI_COMM_WORLD_SIZE / _RANK / _LOCAL_RANK) or a Kubernetes indexed job; JAX_COORDINATOR_ADDRESS / "
    "JAX_COORDINATOR_PORT override the coordinator it finds",
  )
  multi.add_argument(
    "--coordinator_address",
    default=None,
    metavar="HOST:PORT",
    help="multi-host: process 0's address and a free port (implies --distributed; give all three flags)",
  )
  multi.add_argument("--num_processes", type=int, default=None, metavar="N", help="multi-host: the number of processes")
  multi.add_argument("--process_id", type=int, default=None, metavar="I", help="multi-host: this process's index in [0, N)")
  users = {flag: sorted(m.name for m in METHODS.values() if flag in m.flags) for flag in HPARAM_FLAGS}
  for flag, spec in HPARAM_FLAGS.items():
    kw = {"type": spec.type, "default": None, "help": f"{spec.help} [{', '.join(users[flag])}]"}
    if spec.choices:
      kw["choices"] = list(spec.choices)
    if spec.optional_value:
      kw.update(nargs="?", const=True)
    if spec.nargs:
      kw["nargs"] = spec.nargs
    if spec.store is not None:
      kw = {"action": "store_const", "const": spec.store, "default": None, "help": kw["help"]}
    groups["method"].add_argument(f"--{flag}", **kw)
  compat = p.add_argument_group("accepted for compatibility with PatchUp main.py (no effect)")
  for flag, kw in _IGNORED_FLAGS:
    compat.add_argument(flag, default=None, **kw)
  return p


def config_from_args(args: argparse.Namespace, base_hparams: Optional[dict] = None) -> TrainConfig:
  """Maps parsed flags to a ``TrainConfig`` (method flags through the registry's ``flags``).

  ``base_hparams`` (from a ``--config`` file of the same method) are kept where no
  method flag overrides them.
  """
  method = get_method(args.train)
  given = {kw: getattr(args, flag) for flag, kw in method.flags.items() if getattr(args, flag) is not None}
  hparams = {**(base_hparams or {}), **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}}
  values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]}
  values.update(
    dataset={"svhn": "svhn_cropped"}.get(args.dataset, args.dataset),
    hparams=hparams,
    schedule=tuple(args.schedule),
    step_factors=tuple(args.step_factors),
  )
  return TrainConfig(**values)


_UNSET = object()


def _given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set:
  """The destinations that ``argv`` sets explicitly (not by a default)."""
  namespace = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), _UNSET))
  parsed = vars(parser.parse_known_args(list(argv), namespace=namespace)[0])
  return {dest for dest, value in parsed.items() if value is not _UNSET}


def parse_args(argv: Sequence[str]) -> tuple[TrainConfig, argparse.Namespace]:
  """``jaxmix train``'s command line -> ``(TrainConfig, parsed flags)``.

  With ``--config FILE`` (a ``config.json`` a run wrote, or any JSON object of
  ``TrainConfig`` fields) the file's values replace the defaults and the flags given on
  the command line override them; the file's ``hparams`` are kept when ``--train`` names
  the same method. Without one, the method's recipe (``Method.recipe``: IPMix's JSD,
  cross-entropy, crop padding, model and schedule) fills every setting the command line
  does not give.
  """
  parser = build_parser()
  known, _ = parser.parse_known_args(list(argv))
  base = None
  if known.config:
    if not os.path.isfile(known.config):
      parser.error(f"--config {known.config}: no such file")
    try:
      base = read_config(known.config)
    except (ValueError, TypeError) as e:
      parser.error(f"--config {known.config}: {e}")
    defaults = {f.name: getattr(base, f.name) for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]}
    parser.set_defaults(**{k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()})
  args = parser.parse_args(list(argv))
  same_method = base is not None and base.train == args.train
  cfg = config_from_args(args, base.hparams if same_method else None)
  if base is None:
    given = _given(parser, argv)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in get_method(cfg.train).recipe.items() if k not in given})
  return cfg, args


_PER_CALL = frozenset({"lam", "perm", "layer", "seeds", "mean", "std", "mixing_index", "m", "chain_depth", "block_num"})


def resolved_config(cfg: TrainConfig) -> dict:
  """What ``--print_config`` prints: the run configuration with the method's full
  hyper-parameters (the op's own defaults, hidden-layer sites included, under the
  recipe's and the command line's values) and where the method acts."""
  method = get_method(cfg.train)
  if method.site == "hidden":
    base = hook.method_defaults(cfg.train)
  else:
    params = inspect.signature(method.op).parameters.values()
    base = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _PER_CALL}
  out = json.loads(json.dumps(dataclasses.asdict(cfg), default=list))
  out["hparams"] = json.loads(json.dumps({**base, **resolve_hparams(cfg)}, default=list))
  out["method"] = {"name": method.name, "site": method.site, "pixel_space": method.pixel_space, "paper": method.paper}
  return out


def read_config(path: str) -> TrainConfig:
  """The ``TrainConfig`` saved in ``path`` (a ``config.json``); unknown keys are ignored."""
  with open(path) as f:
    try:
      raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); it is not a readable jaxmix run configuration.") from None
  if not isinstance(raw, dict):
    raise ValueError(f"{path} must hold a JSON object of TrainConfig fields.")
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  return TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in fields})


def _fail(flag: str, value, what: str):
  raise ValueError(f"--{flag} must be {what}, got {value!r}.")


def _int_at_least(cfg: TrainConfig, name: str, low: int) -> None:
  value = getattr(cfg, name)
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    _fail(name, value, f"an integer >= {low}")


def _finite(cfg: TrainConfig, name: str, *, low: float = 0.0, positive: bool = False, high: float = math.inf) -> None:
  value = getattr(cfg, name)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    _fail(name, value, "a finite number")
  if value < low or (positive and value <= low) or value > high:
    _fail(name, value, f"{'>' if positive else '>='} {low}" + (f" and <= {high}" if high < math.inf else ""))


def validate(cfg: TrainConfig) -> None:
  """Checks every setting of ``cfg`` before any file is written or any data is read.

  Raises:
    ValueError: naming the flag and what it must be.
  """
  for name in ("epochs", "batch_size", "eval_batch_size", "print_freq", "keep_checkpoints"):
    _int_at_least(cfg, name, 1)
  for name in ("valid_labels_per_class", "crop_padding", "num_devices", "mix_group_size", "save_every_steps", "mixup_off_epoch"):
    _int_at_least(cfg, name, 0)
  for name in ("max_steps_per_epoch", "max_eval_examples", "image_size"):
    _int_at_least(cfg, name, 0)
  if cfg.labels_per_class is not None:
    _int_at_least(cfg, "labels_per_class", 1)
  if cfg.subset_seed is not None:
    _int_at_least(cfg, "subset_seed", 0)
  _finite(cfg, "learning_rate", positive=True)
  _finite(cfg, "momentum", high=1.0)
  _finite(cfg, "decay")
  _finite(cfg, "l2_conv")
  _finite(cfg, "label_smoothing", high=1.0)
  _finite(cfg, "clean_lam")
  _finite(cfg, "ema_decay", high=0.999999)
  get_method(cfg.train)
  if cfg.mixing_set is not None and cfg.train != "ipmix":
    _fail("mixing_set", cfg.mixing_set, "given only with --train ipmix (the mixing pictures of IPMix)")
  for name, value, choices in (
    ("arch", cfg.arch, models.ARCHS),
    ("dtype", cfg.dtype, models.DTYPES),
    ("loss", cfg.loss, LOSSES),
    ("optimizer", cfg.optimizer, ("sgd", "adam")),
    ("lr_schedule", cfg.lr_schedule, ("step", "cosine")),
  ):
    if value not in choices:
      _fail(name, value, f"one of {', '.join(choices)}")
  if len(cfg.schedule) != len(cfg.step_factors):
    raise ValueError(f"--schedule {list(cfg.schedule)} and --step_factors {list(cfg.step_factors)} must have the same length.")
  if not isinstance(cfg.model_kwargs, dict):
    _fail("model_kwargs", cfg.model_kwargs, "a JSON object of the model's fields, e.g. '{\"widths\": [16, 32, 64, 128]}'")
  if "dtype" in cfg.model_kwargs:
    raise ValueError("--model_kwargs: set the compute dtype with --dtype.")
  fields = models.model_fields(cfg.arch)
  unknown = sorted(set(cfg.model_kwargs) - set(fields))
  if unknown:
    raise ValueError(f"--model_kwargs: {cfg.arch} has no field(s) {unknown}; its fields are {sorted(fields)}.")
  if cfg.tensorboard:
    tensorboard.check_available()
  if cfg.jsd and not get_method(cfg.train).pixel_space:
    raise ValueError("--jsd needs a pixel-space label-preserving method (ipmix).")


# ----------------------------------------------------------------------------
# What derives from the configuration


def resolve_hparams(cfg: TrainConfig) -> dict:
  """The registry's seed defaults for ``cfg.train`` updated by ``cfg.hparams``."""
  hp = dict(get_method(cfg.train).defaults)
  hp.update(cfg.hparams)
  return hp


def step_config(cfg: TrainConfig, num_classes: int, mean, std) -> StepConfig:
  """The train step's static configuration for a run on a data set of ``num_classes``."""
  return StepConfig(
    method=cfg.train,
    hparams=tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in resolve_hparams(cfg).items())),
    num_classes=num_classes,
    mean=tuple(mean),
    std=tuple(std),
    loss=cfg.loss,
    label_smoothing=cfg.label_smoothing,
    group_size=cfg.mix_group_size,
    jsd=cfg.jsd,
    clean_lam=cfg.clean_lam,
    l2_conv=cfg.l2_conv,
    ema_decay=cfg.ema_decay,
  )


def learning_rate_schedule(cfg: TrainConfig, steps_per_epoch: int):
  """The learning rate as a function of the step.

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
  return lr


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (momentum, Nesterov, L2 weight decay as PyTorch) or Adam, with :func:`learning_rate_schedule`."""
  lr = learning_rate_schedule(cfg, steps_per_epoch)
  if cfg.optimizer == "sgd":
    return optax.chain(optax.add_decayed_weights(cfg.decay), optax.sgd(lr, momentum=cfg.momentum, nesterov=cfg.nesterov))
  if cfg.optimizer == "adam":
    return optax.chain(optax.add_decayed_weights(cfg.decay), optax.adam(lr))
  raise ValueError(f"--optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}.")


def load_data(cfg: TrainConfig) -> Any:
  """``jaxmix.data.load`` for the config, with eval splits cut to ``max_eval_examples``."""
  data = jdata.load(
    cfg.dataset,
    cfg.data_dir,
    labels_per_class=cfg.labels_per_class,
    valid_labels_per_class=cfg.valid_labels_per_class,
    seed=cfg.seed if cfg.subset_seed is None else cfg.subset_seed,
    download=cfg.download,
    image_size=cfg.image_size or None,
    augment=cfg.augment or None,
  )
  n = cfg.max_eval_examples
  if n:
    cut = lambda s: None if s is None else type(s)(*(a[spread_indices(len(s.labels), n)] for a in s))  # noqa: E731
    data = data._replace(valid=cut(data.valid), test=cut(data.test))
  return data
