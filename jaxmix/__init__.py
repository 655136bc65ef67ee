"""jaxmix: mixing-based data augmentation for JAX / Flax, pure and jit/vmap clean."""

from jaxmix.compose import maybe_apply, switch
from jaxmix.core import MixResult, one_hot
from jaxmix.input_ops import cutmix, cutout, mixup, patch_augment, vanilla
from jaxmix.registry import METHODS, Method, get_method

__version__ = "0.1.0"

__all__ = (
  "METHODS",
  "Method",
  "MixResult",
  "cutmix",
  "cutout",
  "get_method",
  "maybe_apply",
  "mixup",
  "one_hot",
  "patch_augment",
  "switch",
  "vanilla",
)
