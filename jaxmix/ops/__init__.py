"""The mixing ops: pure ``op(key, images, labels, *, hparams) -> MixResult`` functions.

This layer needs only JAX (and numpy); it imports nothing of Flax, optax, orbax or
TensorFlow, and nothing of ``jaxmix.training`` or ``jaxmix.evaluation``.

* :mod:`~jaxmix.ops.core`: ``MixResult``, ``one_hot``, ``normalize``, eager checks and
  the random draws every op shares.
* :mod:`~jaxmix.ops.input_ops`: Mixup, CutMix, Cutout, Patch Augmentation.
* :mod:`~jaxmix.ops.hidden_ops` and :mod:`~jaxmix.ops.hook`: Manifold Mixup, PatchUp,
  DropBlock on feature maps, and the per-batch mixers a model calls at its sites.
* :mod:`~jaxmix.ops.puzzlemix`: graph-free Puzzle Mix and its saliency.
* :mod:`~jaxmix.ops.ipmix`, :mod:`~jaxmix.ops.image_ops`, :mod:`~jaxmix.ops.fractals`:
  IPMix, the PIL-exact image ops it draws from and its procedural mixing set.
* :mod:`~jaxmix.ops.losses`, :mod:`~jaxmix.ops.compose`: soft-target losses, and
  ``maybe_apply`` / ``switch`` to combine ops.

``jaxmix.ops.ipmix`` and ``jaxmix.ops.puzzlemix`` name the op functions (as in the
top-level ``jaxmix``); their modules are imported by their full names.

What each op's official code does, and where jaxmix deviates, is in ``docs/algorithms/``.
"""

from jaxmix.ops import compose, core, fractals, hidden_ops, hook, image_ops, input_ops, losses
from jaxmix.ops.compose import maybe_apply, switch
from jaxmix.ops.core import MixResult, normalize, one_hot
from jaxmix.ops.debug import checked
from jaxmix.ops.hidden_ops import dropblock, dropblock_schedule, manifold_mixup, patchup
from jaxmix.ops.hook import SITES, apply_mix, hidden_mix
from jaxmix.ops.input_ops import cutmix, cutout, mixup, patch_augment, vanilla
from jaxmix.ops.ipmix import ipmix, ipmix_views, jsd_loss
from jaxmix.ops.losses import bce_on_softmax, sigmoid_bce, softmax_cross_entropy
from jaxmix.ops.mixup_cutmix import mixup_cutmix
from jaxmix.ops.puzzlemix import puzzlemix, puzzlemix_train_batch, saliency

__all__ = (
  "SITES",
  "MixResult",
  "apply_mix",
  "bce_on_softmax",
  "checked",
  "compose",
  "core",
  "cutmix",
  "cutout",
  "dropblock",
  "dropblock_schedule",
  "fractals",
  "hidden_mix",
  "hidden_ops",
  "hook",
  "image_ops",
  "input_ops",
  "ipmix",
  "ipmix_views",
  "jsd_loss",
  "losses",
  "manifold_mixup",
  "maybe_apply",
  "mixup",
  "mixup_cutmix",
  "normalize",
  "one_hot",
  "patch_augment",
  "patchup",
  "puzzlemix",
  "puzzlemix_train_batch",
  "saliency",
  "sigmoid_bce",
  "softmax_cross_entropy",
  "switch",
  "vanilla",
)
