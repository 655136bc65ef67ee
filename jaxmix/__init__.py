"""jaxmix: mixing-based data augmentation for JAX / Flax, pure and jit/vmap clean.

Three layers, each a subpackage, imports going down only:

* :mod:`jaxmix.ops`: the pure mixing ops (JAX only);
* :mod:`jaxmix.evaluation`: metrics, attacks, robustness sets and protocols;
* :mod:`jaxmix.training`: registry, models, data, train step, checkpoints, loop.

The names below are the public API; the subpackages hold the rest.
"""

import sys as _sys

from jaxmix import evaluation, ops, training
from jaxmix.evaluation import corruptions, deform
from jaxmix.evaluation import protocols as evaluate
from jaxmix.evaluation.metrics import expected_calibration_error, rms_calibration_error
from jaxmix.evaluation.protocols import evaluate_all
from jaxmix.ops import fractals, hook, image_ops, losses
from jaxmix.ops.compose import maybe_apply, switch
from jaxmix.ops.core import MixResult, normalize, one_hot
from jaxmix.ops.debug import checked
from jaxmix.ops.hidden_ops import dropblock, dropblock_schedule, manifold_mixup, patchup
from jaxmix.ops.hook import hidden_mix
from jaxmix.ops.input_ops import cutmix, cutout, mixup, patch_augment, vanilla
from jaxmix.ops.ipmix import ipmix, ipmix_views, jsd_loss
from jaxmix.ops.losses import bce_on_softmax, sigmoid_bce, softmax_cross_entropy
from jaxmix.ops.mixup_cutmix import mixup_cutmix
from jaxmix.ops.puzzlemix import puzzlemix, puzzlemix_train_batch, saliency
from jaxmix.training import data, models
from jaxmix.training.registry import METHODS, Method, get_method

__version__ = "0.1.0"

# The modules named in ``__all__`` also import by their names of the flat layout
# (``import jaxmix.data``), as they did before the layers.
for _name, _module in {
  "corruptions": corruptions,
  "data": data,
  "deform": deform,
  "evaluate": evaluate,
  "fractals": fractals,
  "hook": hook,
  "image_ops": image_ops,
  "losses": losses,
  "models": models,
}.items():
  _sys.modules.setdefault(f"{__name__}.{_name}", _module)

__all__ = (
  "METHODS",
  "Method",
  "MixResult",
  "bce_on_softmax",
  "checked",
  "corruptions",
  "cutmix",
  "cutout",
  "data",
  "deform",
  "dropblock",
  "dropblock_schedule",
  "evaluate",
  "evaluate_all",
  "evaluation",
  "expected_calibration_error",
  "fractals",
  "get_method",
  "hidden_mix",
  "hook",
  "image_ops",
  "ipmix",
  "ipmix_views",
  "jsd_loss",
  "losses",
  "manifold_mixup",
  "maybe_apply",
  "mixup",
  "mixup_cutmix",
  "models",
  "normalize",
  "one_hot",
  "ops",
  "patch_augment",
  "patchup",
  "puzzlemix",
  "puzzlemix_train_batch",
  "rms_calibration_error",
  "saliency",
  "sigmoid_bce",
  "softmax_cross_entropy",
  "switch",
  "training",
  "vanilla",
)
