"""The method registry: command-line name -> op, where it acts, seed defaults."""

from __future__ import annotations

import types
from typing import Any, Callable, Mapping, NamedTuple

from jaxmix import hidden_ops, input_ops
from jaxmix.ipmix import ipmix as ipmix_op
from jaxmix.puzzlemix import puzzlemix as puzzlemix_op

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
  """

  name: str
  op: Callable[..., Any]
  site: str
  defaults: Mapping[str, Any]
  paper: str
  pixel_space: bool = False


def _entries():
  yield Method("vanilla", input_ops.vanilla, "input", {}, "no mixing (ERM baseline)")
  yield Method("mixup", input_ops.mixup, "input", {"alpha": 1.0}, "Zhang et al., mixup, ICLR 2018")
  yield Method("cutmix", input_ops.cutmix, "input", {"alpha": 1.0, "prob": 0.5}, "Yun et al., CutMix, ICCV 2019")
  yield Method("cutout", input_ops.cutout, "label_preserving", {"size": 16}, "DeVries & Taylor, Cutout, 2017")
  yield Method(
    "patch_augment",
    input_ops.patch_augment,
    "input",
    {"prob": 1.0, "min_dim": 0.1, "max_dim": 0.9},
    "Bloice et al., Patch Augmentation, 2021",
  )
  yield Method("manifold_mixup", hidden_ops.manifold_mixup, "hidden", {"alpha": 2.0}, "Verma et al., Manifold Mixup, ICML 2019")
  yield Method(
    "patchup",
    hidden_ops.patchup,
    "hidden",
    {"mode": "soft", "block_size": 7, "gamma": None, "prob": None},
    "Faramarzi et al., PatchUp, AAAI 2022",
  )
  yield Method(
    "dropblock",
    hidden_ops.dropblock,
    "hidden",
    {"block_size": 7, "keep_prob": 0.9, "drop_block_all": True},
    "Ghiasi et al., DropBlock, NeurIPS 2018",
  )
  yield Method(
    "ipmix",
    ipmix_op,
    "label_preserving",
    {"k": 3, "depth": 3, "beta": 3.0, "severity": 3},
    "Huang et al., IPMix, NeurIPS 2023",
    pixel_space=True,
  )
  yield Method(
    "puzzlemix",
    puzzlemix_op,
    "saliency",
    {"alpha": 1.0, "beta": 1.2, "gamma": 0.5, "eta": 0.2, "neigh_size": 4, "n_labels": 3, "transport": True, "t_eps": 0.8, "t_size": -1},
    "Kim et al., Puzzle Mix, ICML 2020",
  )


def _build() -> Mapping[str, Method]:
  methods = {}
  for method in _entries():
    if method.site not in SITES:
      raise ValueError(f"site of {method.name!r} must be one of {SITES}, got {method.site!r}.")
    methods[method.name] = method._replace(defaults=types.MappingProxyType(dict(method.defaults)))
  return types.MappingProxyType(methods)


METHODS: Mapping[str, Method] = _build()


def get_method(name: str) -> Method:
  """Returns the registered method ``name``; ValueError listing the known names."""
  try:
    return METHODS[name]
  except KeyError:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}.") from None
