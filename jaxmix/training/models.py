"""Flax Linen models of the seed recipes, with a mixing hook at fixed sites.

Every model is channels-last, keeps BatchNorm statistics in the ``batch_stats``
collection and has the same call signature::

  variables = model.init(key, x, train=False)          # {"params", "batch_stats"}
  logits = model.apply(variables, x, train=False)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  (logits, carry), updates = model.apply(
      variables, x, train=True, mix=mix_fn, carry=carry, mutable=["batch_stats"])

With ``mix`` given, the model calls ``h, carry = mix(site, h, carry)`` at each of
its sites in forward order; ``site`` is a static string from ``SITES``:
``"input"`` (the input batch), ``"conv1"`` (after the stem), ``"layer1"``,
``"layer2"``, ``"layer3"`` (after each of the first three residual stages). The
model does nothing else with ``mix``; ``jaxmix.hidden_mix`` builds mixers for
Manifold Mixup, PatchUp and DropBlock.

Initialisation follows the reference frameworks: the PyTorch models
(PreActResNet, WideResNet) use PyTorch's default conv / linear kernel init
(``kaiming_uniform(a=sqrt(5))``, i.e. ``U(+-1/sqrt(fan_in))``) and BatchNorm
momentum 0.1 (Flax ``momentum=0.9``), eps 1e-5; the Keras models use
``he_normal`` kernels and Keras BatchNorm (momentum 0.99, eps 1e-3). Deviation:
biases start at zero (PyTorch draws them from ``U(+-1/sqrt(fan_in))``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmix.ops.hook import SITES, MixFn, apply_mix

__all__ = (
  "ARCHS",
  "SITES",
  "PreActResNet",
  "ResNetV1",
  "ResNetV2",
  "WideResNet",
  "count_params",
  "get_model",
  "model_fields",
)

_torch_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_keras_init = nn.initializers.he_normal()
_PAD1 = ((1, 1), (1, 1))


def _torch_conv(features: int, kernel: int, stride: int = 1, bias: bool = False, name: Optional[str] = None) -> nn.Conv:
  """A PyTorch ``Conv2d(k, stride, padding=k // 2)`` (symmetric padding)."""
  pad = ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=pad, use_bias=bias, kernel_init=_torch_init, name=name)


def _torch_bn(train: bool, momentum: float = 0.9, name: Optional[str] = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5, name=name)


def _keras_bn(train: bool, name: Optional[str] = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, name=name)


def _keras_conv(features: int, kernel: int, stride: int = 1, name: Optional[str] = None) -> nn.Conv:
  """A Keras ``Conv2D(padding="same", kernel_initializer="he_normal")`` (with bias)."""
  return nn.Conv(features, (kernel, kernel), strides=stride, padding="SAME", kernel_init=_keras_init, name=name)


def _outputs(mix, logits, carry):
  return logits if mix is None else (logits, carry)


# ----------------------------------------------------------------------------
# PreActResNet (PatchUp / Manifold Mixup / Puzzle Mix lineage).


class PreActBlock(nn.Module):
  """Pre-activation basic block: BN-ReLU-conv3x3(stride), BN-ReLU-conv3x3, + shortcut.

  The shortcut is the identity, or a 1x1 conv (no bias) applied to the
  pre-activated input when the shape changes (as the reference code).

  Attributes:
    features: output channels.
    stride: stride of the first conv and of the shortcut.
  """

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    out = nn.relu(_torch_bn(train, name="bn1")(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _torch_conv(self.features, 1, self.stride, name="shortcut")(out)
    else:
      shortcut = x
    out = _torch_conv(self.features, 3, self.stride, name="conv1")(out)
    out = _torch_conv(self.features, 3, name="conv2")(nn.relu(_torch_bn(train, name="bn2")(out)))
    return out + shortcut


class PreActResNet(nn.Module):
  """Pre-activation ResNet as in the PatchUp / Manifold Mixup / Puzzle Mix code.

  He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016, in the
  CIFAR form of ``PatchUp/models/preresnet.py``: a 3x3 stem conv (no BN/ReLU after
  it), stages of ``PreActBlock`` with strides 1, 2, 2, 2, **no final BN-ReLU**
  (the reference quirk), average pooling and a linear layer.

  Parameter counts (trainable, checked in ``tests/test_models.py`` against a
  closed-form count of the PyTorch reference; BN scale and bias included, as
  PyTorch counts them):
  PreActResNet-18 ``(2, 2, 2, 2)``, widths ``(64, 128, 256, 512)``: 11,171,146
  for 10 classes (kuangliu/pytorch-cifar's published figure), 11,217,316 for 100
  classes; PreActResNet-34 ``(3, 4, 6, 3)``: 21,279,306 for 10 classes.

  The reference pools with ``avg_pool2d(4)`` over the 4x4 map of 32x32 inputs; this
  model takes the global mean, which is the same at 32x32 (and at 64x64 with
  ``stem_stride=2``) and also works at other sizes.

  Mixing sites: ``input``, ``conv1`` (stem output), ``layer1``, ``layer2``,
  ``layer3`` (stage outputs; with fewer than three stages only those that exist).

  Attributes:
    num_classes: K.
    blocks: blocks per stage.
    widths: channels per stage (same length as ``blocks``).
    stem_stride: 1 for CIFAR, 2 for 64x64 Tiny-ImageNet (reference ``stride``).
  """

  num_classes: int
  blocks: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False, mix: Optional[MixFn] = None, carry=None):
    if len(self.blocks) != len(self.widths) or not self.blocks:
      raise ValueError(f"blocks and widths must be non-empty and of equal length, got {self.blocks!r} and {self.widths!r}.")
    h, carry = apply_mix(mix, "input", x, carry)
    h = _torch_conv(self.widths[0], 3, self.stem_stride, name="conv1")(h)
    h, carry = apply_mix(mix, "conv1", h, carry)
    for stage, (n, width) in enumerate(zip(self.blocks, self.widths, strict=True)):
      for j in range(n):
        stride = (1 if stage == 0 else 2) if j == 0 else 1
        h = PreActBlock(width, stride, name=f"layer{stage + 1}_{j}")(h, train)
      if stage < 3:
        h, carry = apply_mix(mix, f"layer{stage + 1}", h, carry)
    h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=_torch_init, name="linear")(h)
    return _outputs(mix, logits, carry)


# ----------------------------------------------------------------------------
# Wide ResNet (PatchUp / Manifold Mixup / Puzzle Mix lineage).


class WideBasic(nn.Module):
  """WRN block: BN-ReLU-conv3x3, BN-ReLU-conv3x3(stride), + shortcut (convs with bias).

  The shortcut is a 1x1 conv with bias on the **raw** input when the shape changes.

  Attributes:
    features: output channels.
    stride: stride of the second conv and of the shortcut.
  """

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    out = _torch_conv(self.features, 3, bias=True, name="conv1")(nn.relu(_torch_bn(train, name="bn1")(x)))
    out = _torch_conv(self.features, 3, self.stride, bias=True, name="conv2")(nn.relu(_torch_bn(train, name="bn2")(out)))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _torch_conv(self.features, 1, self.stride, bias=True, name="shortcut")(x)
    return out + x


class WideResNet(nn.Module):
  """Wide ResNet as in the PatchUp / Manifold Mixup code (dropout removed).

  Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, in the form of
  ``PatchUp/models/wide_resnet.py``: a 3x3 stem conv (16 channels, bias), three
  groups of ``(depth - 4) / 6`` ``WideBasic`` blocks with widths ``16k, 32k, 64k``
  and strides 1, 2, 2, a final BN-ReLU, global average pooling and a linear layer.
  The final BN uses PyTorch ``momentum=0.9`` (0.9 weight on the new batch, the
  reference quirk), i.e. Flax ``momentum=0.1``; the block BNs use the PyTorch
  default.

  Parameter counts (trainable): WRN-28-10: 36,489,290 for 10 classes (the
  torchsummary figure of this reference, whose convs have biases; the often quoted
  36,479,194 is bearpaw's bias-free WRN), 36,546,980 for 100 classes; WRN-28-2:
  1,469,642 for 10 classes.

  Mixing sites: ``input``, ``conv1``, ``layer1``, ``layer2``, ``layer3`` (the last
  before the final BN).

  Attributes:
    num_classes: K.
    depth: 6n + 4.
    widen_factor: k.
    stem_stride: 1 for CIFAR, 2 for 64x64 inputs.
  """

  num_classes: int
  depth: int = 28
  widen_factor: int = 10
  stem_stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False, mix: Optional[MixFn] = None, carry=None):
    if (self.depth - 4) % 6 != 0 or self.depth < 10:
      raise ValueError(f"depth must be 6n + 4 with n >= 1, got {self.depth!r}.")
    n = (self.depth - 4) // 6
    h, carry = apply_mix(mix, "input", x, carry)
    h = _torch_conv(16, 3, self.stem_stride, bias=True, name="conv1")(h)
    h, carry = apply_mix(mix, "conv1", h, carry)
    for stage, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2), strict=True)):
      for j in range(n):
        h = WideBasic(width * self.widen_factor, stride if j == 0 else 1, name=f"layer{stage + 1}_{j}")(h, train)
      h, carry = apply_mix(mix, f"layer{stage + 1}", h, carry)
    h = nn.relu(_torch_bn(train, momentum=0.1, name="bn_final")(h))
    h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=_torch_init, name="linear")(h)
    return _outputs(mix, logits, carry)


# ----------------------------------------------------------------------------
# Keras ResNet v1 / v2 (Patch Augmentation notebooks, the Keras CIFAR example).


class ResNetV1(nn.Module):
  """Keras CIFAR ResNet v1 (He et al., CVPR 2016), depth ``6n + 2``.

  As the Keras example used by the Patch Augmentation notebooks: stem
  conv3x3(16)-BN-ReLU; three stages of ``n`` basic blocks (16, 32, 64 filters)
  ``[conv3x3-BN-ReLU, conv3x3-BN] + shortcut`` then ReLU; the shortcut is a 1x1
  stride-2 conv (bias, no BN) at each stage start after the first; global average
  pooling (the reference's ``AveragePooling2D(8)`` on the 8x8 map) and a dense
  layer. The model returns logits (Keras applies softmax in the layer).
  Convs use ``he_normal`` kernels and bias, as Keras' ``Conv2D`` defaults; the
  reference adds an L2 penalty of 1e-4 on conv kernels to the loss (the train
  step's business). Deviation: the dense kernel uses ``he_normal`` too, as the
  reference.

  Parameter count (trainable, as the Keras summary): ResNet-20 v1, 10 classes:
  273,066 (plus 1,376 BN moving statistics in ``batch_stats``).

  Attributes:
    num_classes: K.
    depth: 6n + 2 (20 -> n = 3).
  """

  num_classes: int
  depth: int = 20

  @nn.compact
  def __call__(self, x, train: bool = False, mix: Optional[MixFn] = None, carry=None):
    if (self.depth - 2) % 6 != 0 or self.depth < 8:
      raise ValueError(f"depth must be 6n + 2 with n >= 1, got {self.depth!r}.")
    n = (self.depth - 2) // 6
    h, carry = apply_mix(mix, "input", x, carry)
    h = nn.relu(_keras_bn(train, name="bn_stem")(_keras_conv(16, 3, name="conv1")(h)))
    h, carry = apply_mix(mix, "conv1", h, carry)
    for stage, filters in enumerate((16, 32, 64)):
      for j in range(n):
        stride = 2 if stage > 0 and j == 0 else 1
        name = f"layer{stage + 1}_{j}"
        y = nn.relu(_keras_bn(train, name=f"{name}_bn1")(_keras_conv(filters, 3, stride, name=f"{name}_conv1")(h)))
        y = _keras_bn(train, name=f"{name}_bn2")(_keras_conv(filters, 3, name=f"{name}_conv2")(y))
        if stride != 1:
          h = _keras_conv(filters, 1, stride, name=f"{name}_shortcut")(h)
        h = nn.relu(h + y)
      h, carry = apply_mix(mix, f"layer{stage + 1}", h, carry)
    h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=_keras_init, name="dense")(h)
    return _outputs(mix, logits, carry)


class ResNetV2(nn.Module):
  """Keras CIFAR ResNet v2 (pre-activation bottlenecks), depth ``9n + 2``.

  As the Keras example used by the Patch Augmentation notebooks: stem
  conv3x3(16)-BN-ReLU; three stages of ``n`` bottlenecks
  ``[BN-ReLU-conv1x1(in, stride), BN-ReLU-conv3x3(in), BN-ReLU-conv1x1(out)]``
  (the very first one without BN-ReLU in front), ``in``/``out`` = 16/64, 64/128,
  128/256, strides 1, 2, 2; a projection 1x1 conv (bias, no BN) at each stage's
  first block; no ReLU after the add; final BN-ReLU, global average pooling and a
  dense layer (logits). Keras init and BN as ``ResNetV1``.

  Parameter count (trainable, as the Keras summary): ResNet-29 v2, 10 classes:
  843,786 (plus 5,216 BN moving statistics).

  Attributes:
    num_classes: K.
    depth: 9n + 2 (29 -> n = 3).
  """

  num_classes: int
  depth: int = 29

  @nn.compact
  def __call__(self, x, train: bool = False, mix: Optional[MixFn] = None, carry=None):
    if (self.depth - 2) % 9 != 0 or self.depth < 11:
      raise ValueError(f"depth must be 9n + 2 with n >= 1, got {self.depth!r}.")
    n = (self.depth - 2) // 9
    h, carry = apply_mix(mix, "input", x, carry)
    h = nn.relu(_keras_bn(train, name="bn_stem")(_keras_conv(16, 3, name="conv1")(h)))
    h, carry = apply_mix(mix, "conv1", h, carry)
    f_in = 16
    for stage in range(3):
      f_out = f_in * 4 if stage == 0 else f_in * 2
      for j in range(n):
        stride = 2 if stage > 0 and j == 0 else 1
        name = f"layer{stage + 1}_{j}"
        y = h
        if not (stage == 0 and j == 0):
          y = nn.relu(_keras_bn(train, name=f"{name}_bn1")(y))
        y = _keras_conv(f_in, 1, stride, name=f"{name}_conv1")(y)
        y = _keras_conv(f_in, 3, name=f"{name}_conv2")(nn.relu(_keras_bn(train, name=f"{name}_bn2")(y)))
        y = _keras_conv(f_out, 1, name=f"{name}_conv3")(nn.relu(_keras_bn(train, name=f"{name}_bn3")(y)))
        if j == 0:
          h = _keras_conv(f_out, 1, stride, name=f"{name}_shortcut")(h)
        h = h + y
      h, carry = apply_mix(mix, f"layer{stage + 1}", h, carry)
      f_in = f_out
    h = nn.relu(_keras_bn(train, name="bn_final")(h))
    h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=_keras_init, name="dense")(h)
    return _outputs(mix, logits, carry)


# ----------------------------------------------------------------------------
# Factory.

_ARCHS = {
  "preactresnet18": functools.partial(PreActResNet, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
  "preactresnet34": functools.partial(PreActResNet, blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
  "wrn28_10": functools.partial(WideResNet, depth=28, widen_factor=10),
  "wrn28_2": functools.partial(WideResNet, depth=28, widen_factor=2),
  "resnet20v1": functools.partial(ResNetV1, depth=20),
  "resnet29v2": functools.partial(ResNetV2, depth=29),
  "preactresnet_small": functools.partial(PreActResNet, blocks=(1, 1, 1, 1), widths=(16, 32, 64, 128)),
  "wrn40_4": functools.partial(WideResNet, depth=40, widen_factor=4),  # IPMix's CIFAR default (without its dropout 0.3)
}

ARCHS = tuple(_ARCHS)
"""The architecture names ``get_model`` accepts."""


def get_model(arch: str, num_classes: int, **kwargs) -> nn.Module:
  """Builds a model by its command-line name.

  Args:
    arch: one of ``ARCHS``: ``preactresnet18``, ``preactresnet34``, ``wrn28_10``,
      ``wrn28_2``, ``resnet20v1``, ``resnet29v2`` or ``preactresnet_small`` (a
      CPU-scale PreActResNet, by default one block per stage with widths
      ``(16, 32, 64, 128)``: 308,122 parameters for 10 classes; override
      ``blocks=`` / ``widths=``).
    num_classes: K >= 1.
    **kwargs: overrides of the model's attributes (e.g. ``stem_stride=2`` for
      64x64 inputs, ``widths=(32, 64, 128, 256)``).

  Returns:
    The Flax module.

  Raises:
    ValueError: on an unknown ``arch`` (the message lists the names) or a bad
      ``num_classes``.

  Example:
    >>> model = jaxmix.models.get_model("preactresnet18", 10)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  """
  if arch not in _ARCHS:
    raise ValueError(f"unknown arch {arch!r}; known archs: {', '.join(ARCHS)}.")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  return _ARCHS[arch](num_classes=num_classes, **kwargs)


def model_fields(arch: str) -> tuple[str, ...]:
  """The fields of model ``arch`` that ``get_model(arch, K, **kwargs)`` accepts as ``kwargs``."""
  if arch not in _ARCHS:
    raise ValueError(f"unknown arch {arch!r}; known archs: {', '.join(ARCHS)}.")
  builder = _ARCHS[arch]
  cls = builder.func if isinstance(builder, functools.partial) else builder
  return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name", "num_classes"))


def count_params(model: nn.Module, input_shape: Sequence[int] = (1, 32, 32, 3)) -> int:
  """Number of trainable parameters, via ``jax.eval_shape`` (nothing is allocated).

  Args:
    model: a model of this module.
    input_shape: ``[B, H, W, C]`` of a dummy input.

  Returns:
    The total size of the ``params`` collection.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False))
  return sum(math.prod(p.shape) for p in jax.tree.leaves(shapes["params"]))
