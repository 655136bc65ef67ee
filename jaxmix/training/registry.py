"""The method registry: command-line name -> op, where it acts, recipe defaults, flags.

Each method is written here once: its op, its site, the hyper-parameters its seed
recipe trains with and the command-line flags that set them. The train step reads
``site``; the command line of ``jaxmix train`` is built from ``flags`` and
:data:`HPARAM_FLAGS`; nothing else names a method.
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable, Mapping, NamedTuple

from jaxmix.ops import hidden_ops, input_ops
from jaxmix.ops.hook import SITES as HOOK_SITES
from jaxmix.ops.ipmix import ipmix as ipmix_op
from jaxmix.ops.mixup_cutmix import mixup_cutmix
from jaxmix.ops.puzzlemix import puzzlemix as puzzlemix_op

__all__ = ("HPARAM_FLAGS", "METHODS", "SITES", "HparamFlag", "Method", "get_method", "parse_bool")

SITES = ("input", "hidden", "saliency", "label_preserving")


class Method(NamedTuple):
  """A registered mixing method.

  Attributes:
    name: the command-line name (``--train NAME``).
    op: the pure op, ``op(key, images_or_features, labels, **defaults)``.
    site: where it acts: ``"input"`` (on the input batch), ``"hidden"`` (inside the
      model through its mixing hook), ``"saliency"`` (needs input gradients first)
      or ``"label_preserving"`` (changes images only).
    defaults: the seed recipes' hyper-parameters for training (may differ from the
      op's own keyword defaults, e.g. CutMix's ``prob=0.5``).
    paper: the paper the method comes from.
    pixel_space: the op works on [0, 1] pixels (before normalisation), as IPMix;
      otherwise it gets the normalised batch (Cutout's zeros = the mean colour).
    flags: command-line flag (without ``--``) -> the op keyword it sets; the flag's
      type and help are in :data:`HPARAM_FLAGS`. A flag left unset keeps ``defaults``.
    recipe: run settings (``TrainConfig`` fields) of the method's official training
      recipe where they differ from ``jaxmix train``'s defaults (loss, JSD, crop
      padding, model, optimizer, schedule); ``jaxmix train --train NAME`` applies them
      to every such setting not given on the command line.
  """

  name: str
  op: Callable[..., Any]
  site: str
  defaults: Mapping[str, Any]
  paper: str
  pixel_space: bool = False
  flags: Mapping[str, str] = types.MappingProxyType({})
  recipe: Mapping[str, Any] = types.MappingProxyType({})


def parse_bool(text: str) -> bool:
  """``True``/``False`` as the seed scripts spell them (``--transport True``)."""
  if isinstance(text, bool):
    return text
  if text.lower() in ("true", "1", "yes"):
    return True
  if text.lower() in ("false", "0", "no"):
    return False
  raise ValueError(f"expected True or False, got {text!r}")


class HparamFlag(NamedTuple):
  """The type and help text of one hyper-parameter flag (shared by the methods that use it)."""

  type: Callable[[str], Any]
  help: str
  choices: tuple = ()
  optional_value: bool = False  # ``--flag`` alone means True (PatchUp's store-true style)
  nargs: Any = None  # a number of values (a tuple), or "+"
  store: Any = None  # a switch: ``--flag`` sets the keyword to this value


HPARAM_FLAGS: Mapping[str, HparamFlag] = types.MappingProxyType(
  {
    "alpha": HparamFlag(float, "Beta concentration (mixup, manifold_mixup, cutmix, puzzlemix)"),
    "cutmix_prob": HparamFlag(float, "CutMix probability"),
    "cutmix_box_rule": HparamFlag(str, "CutMix box rule (Puzzle Mix's --box baseline: puzzlemix)", choices=("clovaai", "puzzlemix")),
    "cutout": HparamFlag(int, "Cutout hole size"),
    "patchup_type": HparamFlag(str, "PatchUp mode", choices=("soft", "hard")),
    "patchup_block": HparamFlag(int, "PatchUp block size"),
    "patchup_prob": HparamFlag(float, "PatchUp probability"),
    "gamma": HparamFlag(float, "PatchUp gamma, or Puzzle Mix data-smoothness gamma"),
    "drop_block": HparamFlag(int, "DropBlock block size"),
    "keep_prob": HparamFlag(float, "DropBlock keep probability"),
    "drop_block_all": HparamFlag(parse_bool, "DropBlock at every site (else one site per batch)", optional_value=True),
    "patch_prob": HparamFlag(float, "Patch Augmentation probability"),
    "patch_min_dim": HparamFlag(float, "Patch Augmentation smallest patch side (fraction of the image side)"),
    "patch_max_dim": HparamFlag(float, "Patch Augmentation largest patch side (fraction of the image side)"),
    "block_num": HparamFlag(int, "Puzzle Mix block count (default: drawn from {2,4,8,16})"),
    "pm_beta": HparamFlag(float, "Puzzle Mix label smoothness beta (its --beta)"),
    "eta": HparamFlag(float, "Puzzle Mix prior weight eta"),
    "neigh_size": HparamFlag(int, "Puzzle Mix neighbourhood size"),
    "n_labels": HparamFlag(int, "Puzzle Mix number of mask labels"),
    "transport": HparamFlag(parse_bool, "Puzzle Mix transport"),
    "t_eps": HparamFlag(float, "Puzzle Mix transport epsilon"),
    "t_size": HparamFlag(int, "Puzzle Mix transport grid size (-1: the block grid)"),
    "adv_p": HparamFlag(float, "Puzzle Mix adversarial noise probability"),
    "adv_eps": HparamFlag(float, "Puzzle Mix adversarial noise bound (1/255 units)"),
    "ipmix_k": HparamFlag(int, "IPMix number of mixing chains k"),
    "ipmix_depth": HparamFlag(int, "IPMix chain depth"),
    "ipmix_beta": HparamFlag(float, "IPMix Beta/Dirichlet concentration"),
    "aug_severity": HparamFlag(int, "IPMix augmentation severity"),
    "ipmix_overflow": HparamFlag(str, "IPMix add/multiply overflow: clip, or wrap as the official uint8 cast", choices=("clip", "wrap")),
    "mm_sites": HparamFlag(
      str,
      "Manifold Mixup sites (Manifold Mixup code: input layer1 layer2; PatchUp code: input conv1 layer1)",
      choices=HOOK_SITES,
      nargs="+",
    ),
    "cutout_shared": HparamFlag(
      parse_bool, "one Cutout hole for the whole batch with PatchUp's float rule (PatchUp's main.py)", optional_value=True
    ),
    "wrn_target_bug": HparamFlag(
      parse_bool, "PatchUp's WideResNet target at the input site (the official code's bug)", optional_value=True
    ),
    "mixup_alpha": HparamFlag(float, "Mixup alpha of the timm-style switch (timm --mixup)"),
    "cutmix_alpha": HparamFlag(float, "CutMix alpha of the timm-style switch (timm --cutmix)"),
    "cutmix_minmax": HparamFlag(float, "CutMix box sides as fractions (lo hi) of the side (timm --cutmix-minmax)", nargs=2),
    "mix_prob": HparamFlag(float, "probability of mixing a batch / pair / sample (timm --mixup-prob)"),
    "switch_prob": HparamFlag(float, "probability of CutMix when both alphas are set (timm --mixup-switch-prob)"),
    "mix_mode": HparamFlag(str, "draw per batch, pair or sample (timm --mixup-mode)", choices=("batch", "pair", "elem")),
    "no_correct_lam": HparamFlag(parse_bool, "keep the drawn lambda where the CutMix box was clipped", store=False),
  }
)


def _op_defaults(op, *names: str) -> dict:
  """The op's own keyword defaults for ``names`` (its signature is where they are written)."""
  params = inspect.signature(op).parameters
  return {name: params[name].default for name in names}


_PUZZLEMIX_FLAGS = {
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
}


def _entries():
  yield Method("vanilla", input_ops.vanilla, "input", {}, "no mixing (ERM baseline)")
  yield Method("mixup", input_ops.mixup, "input", {"alpha": 1.0}, "Zhang et al., mixup, ICLR 2018", flags={"alpha": "alpha"})
  yield Method(
    "cutmix",
    input_ops.cutmix,
    "input",
    {"alpha": 1.0, "prob": 0.5},
    "Yun et al., CutMix, ICCV 2019",
    flags={"alpha": "alpha", "cutmix_prob": "prob", "cutmix_box_rule": "box_rule"},
  )
  yield Method(
    "cutout",
    input_ops.cutout,
    "label_preserving",
    {"size": 16},
    "DeVries & Taylor, Cutout, 2017",
    flags={"cutout": "size", "cutout_shared": "shared"},
  )
  yield Method(
    "patch_augment",
    input_ops.patch_augment,
    "input",
    {"prob": 1.0, "min_dim": 0.1, "max_dim": 0.9},
    "Bloice et al., Patch Augmentation, 2021",
    flags={"patch_prob": "prob", "patch_min_dim": "min_dim", "patch_max_dim": "max_dim"},
  )
  yield Method(
    "manifold_mixup",
    hidden_ops.manifold_mixup,
    "hidden",
    {"alpha": 2.0},
    "Verma et al., Manifold Mixup, ICML 2019",
    flags={"alpha": "alpha", "mm_sites": "sites"},
  )
  yield Method(
    "patchup",
    hidden_ops.patchup,
    "hidden",
    {"mode": "soft", "block_size": 7, "gamma": None, "prob": None},
    "Faramarzi et al., PatchUp, AAAI 2022",
    flags={
      "patchup_type": "mode",
      "patchup_block": "block_size",
      "patchup_prob": "prob",
      "gamma": "gamma",
      "wrn_target_bug": "wrn_target_bug",
    },
  )
  yield Method(
    "dropblock",
    hidden_ops.dropblock,
    "hidden",
    {"block_size": 7, "keep_prob": 0.9, "drop_block_all": True},
    "Ghiasi et al., DropBlock, NeurIPS 2018",
    flags={"drop_block": "block_size", "keep_prob": "keep_prob", "drop_block_all": "drop_block_all"},
  )
  yield Method(
    "ipmix",
    ipmix_op,
    "label_preserving",
    {"k": 3, "depth": 3, "beta": 3.0, "severity": 3},
    "Huang et al., IPMix, NeurIPS 2023",
    pixel_space=True,
    flags={"ipmix_k": "k", "ipmix_depth": "depth", "ipmix_beta": "beta", "aug_severity": "severity", "ipmix_overflow": "overflow"},
    recipe={
      # The official cifar.py: JSD on, cross-entropy, RandomCrop(32, padding=4) + flip,
      # WRN-40-4, SGD Nesterov 0.1, wd 5e-4, batch 128, 100 epochs, per-step cosine.
      "loss": "ce",
      "jsd": True,
      "crop_padding": 4,
      "arch": "wrn40_4",
      "learning_rate": 0.1,
      "momentum": 0.9,
      "nesterov": True,
      "decay": 5e-4,
      "batch_size": 128,
      "eval_batch_size": 1000,
      "epochs": 100,
      "lr_schedule": "cosine",
    },
  )
  yield Method(
    "mixup_cutmix",
    mixup_cutmix,
    "input",
    {**_op_defaults(mixup_cutmix, "cutmix_minmax", "prob", "switch_prob", "mode", "correct_lam"), "mixup_alpha": 0.8, "cutmix_alpha": 1.0},
    "Mixup or CutMix switched as timm's Mixup (Wightman, pytorch-image-models)",
    flags={
      "mixup_alpha": "mixup_alpha",
      "cutmix_alpha": "cutmix_alpha",
      "cutmix_minmax": "cutmix_minmax",
      "mix_prob": "prob",
      "switch_prob": "switch_prob",
      "mix_mode": "mode",
      "no_correct_lam": "correct_lam",
    },
  )
  yield Method(
    "puzzlemix",
    puzzlemix_op,
    "saliency",
    _op_defaults(puzzlemix_op, "alpha", "beta", "gamma", "eta", "neigh_size", "n_labels", "transport", "t_eps", "t_size"),
    "Kim et al., Puzzle Mix, ICML 2020",
    flags=_PUZZLEMIX_FLAGS,
  )


def _build() -> Mapping[str, Method]:
  methods = {}
  for method in _entries():
    if method.site not in SITES:
      raise ValueError(f"site of {method.name!r} must be one of {SITES}, got {method.site!r}.")
    unknown = set(method.flags) - set(HPARAM_FLAGS)
    if unknown:
      raise ValueError(f"flags {sorted(unknown)} of {method.name!r} are not in HPARAM_FLAGS.")
    methods[method.name] = method._replace(
      defaults=types.MappingProxyType(dict(method.defaults)),
      flags=types.MappingProxyType(dict(method.flags)),
      recipe=types.MappingProxyType(dict(method.recipe)),
    )
  return types.MappingProxyType(methods)


METHODS: Mapping[str, Method] = _build()


def get_method(name: str) -> Method:
  """Returns the registered method ``name``; ValueError listing the known names."""
  try:
    return METHODS[name]
  except KeyError:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}.") from None
