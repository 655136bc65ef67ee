"""jaxmix: mixing-based data augmentation for JAX / Flax, pure and jit/vmap clean."""

from jaxmix import corruptions, data, deform, evaluate, fractals, hook, image_ops, losses, models
from jaxmix.compose import maybe_apply, switch
from jaxmix.core import MixResult, one_hot
from jaxmix.evaluate import evaluate_all, expected_calibration_error, rms_calibration_error
from jaxmix.hidden_ops import dropblock, dropblock_schedule, manifold_mixup, patchup
from jaxmix.hook import hidden_mix
from jaxmix.input_ops import cutmix, cutout, mixup, patch_augment, vanilla
from jaxmix.ipmix import ipmix, ipmix_views, jsd_loss
from jaxmix.losses import bce_on_softmax, softmax_cross_entropy
from jaxmix.puzzlemix import puzzlemix, puzzlemix_train_batch, saliency
from jaxmix.registry import METHODS, Method, get_method

__version__ = "0.1.0"

__all__ = (
  "METHODS",
  "Method",
  "MixResult",
  "bce_on_softmax",
  "corruptions",
  "cutmix",
  "cutout",
  "data",
  "deform",
  "dropblock",
  "dropblock_schedule",
  "evaluate",
  "evaluate_all",
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
  "models",
  "one_hot",
  "patch_augment",
  "patchup",
  "puzzlemix",
  "puzzlemix_train_batch",
  "rms_calibration_error",
  "saliency",
  "softmax_cross_entropy",
  "switch",
  "vanilla",
)
