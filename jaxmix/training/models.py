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

The models: the CIFAR PreActResNets (``PreActResNet``, also at 64x64 for
Tiny-ImageNet) and Wide ResNets (``WideResNet``) of the PatchUp / Manifold Mixup /
Puzzle Mix code, the Keras CIFAR ResNets v1 / v2 (``ResNetV1``, ``ResNetV2``) of
the Patch Augmentation notebooks, torchvision's ImageNet ResNet-50 (``ResNet``)
and the CIFAR ResNeXt-29 of the IPMix code (``CifarResNeXt``).

Initialisation follows the reference frameworks: the PyTorch models
(PreActResNet, WideResNet) use PyTorch's default conv / linear kernel init
(``kaiming_uniform(a=sqrt(5))``, i.e. ``U(+-1/sqrt(fan_in))``) and BatchNorm
momentum 0.1 (Flax ``momentum=0.9``), eps 1e-5; ResNet-50 and ResNeXt-29 use their
references' ``kaiming_normal(mode="fan_out")`` conv kernels and the same BatchNorm;
the Keras models use ``he_normal`` kernels and Keras BatchNorm (momentum 0.99, eps
1e-3). Deviation: biases start at zero (PyTorch draws them from
``U(+-1/sqrt(fan_in))``).

Mixed precision: every model has a ``dtype`` attribute (``get_model(...,
dtype="bfloat16")``): convolutions and matmuls compute in that dtype with float32
parameters; BatchNorm keeps float32 statistics and computes in float32 (its output
is cast to ``dtype``); the logits are float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmix.ops.hook import SITES, MixFn, apply_mix

__all__ = (
  "ARCHS",
  "DTYPES",
  "SITES",
  "Bottleneck",
  "CifarResNeXt",
  "PreActResNet",
  "ResNet",
  "ResNetV1",
  "ResNetV2",
  "WideResNet",
  "compute_dtype",
  "count_params",
  "get_model",
  "model_fields",
)

_torch_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_keras_init = nn.initializers.he_normal()
_fan_out_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torch kaiming_normal_(mode="fan_out")
_fan_in_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # torch kaiming_normal_() (fan_in)
_PAD1 = ((1, 1), (1, 1))
DTYPES = ("float32", "bfloat16")
"""The compute dtypes ``get_model(..., dtype=...)`` accepts (parameters stay float32)."""


def _torch_conv(
  features: int,
  kernel: int,
  stride: int = 1,
  bias: bool = False,
  name: Optional[str] = None,
  *,
  dtype: Any = jnp.float32,
  init=_torch_init,
  groups: int = 1,
) -> nn.Conv:
  """A PyTorch ``Conv2d(k, stride, padding=k // 2, groups)`` (symmetric padding), computing in ``dtype``."""
  pad = ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=stride,
    padding=pad,
    use_bias=bias,
    feature_group_count=groups,
    kernel_init=init,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def _torch_bn(train: bool, momentum: float = 0.9, name: Optional[str] = None, *, dtype: Any = jnp.float32) -> nn.BatchNorm:
  """PyTorch ``BatchNorm2d`` (eps 1e-5): statistics and arithmetic in float32, the output in ``dtype``."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, name=name)


def _keras_bn(train: bool, name: Optional[str] = None, *, dtype: Any = jnp.float32) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=dtype, param_dtype=jnp.float32, name=name)


def _keras_conv(features: int, kernel: int, stride: int = 1, name: Optional[str] = None, *, dtype: Any = jnp.float32) -> nn.Conv:
  """A Keras ``Conv2D(padding="same", kernel_initializer="he_normal")`` (with bias)."""
  return nn.Conv(
    features, (kernel, kernel), strides=stride, padding="SAME", kernel_init=_keras_init, dtype=dtype, param_dtype=jnp.float32, name=name
  )


def _dense(features: int, init, dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=init, dtype=dtype, param_dtype=jnp.float32, name=name)


def _outputs(mix, logits, carry):
  """The logits in float32 (whatever the compute dtype), with the carry when mixing."""
  logits = logits.astype(jnp.float32)
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
    dtype: compute dtype of the convs and of the BN outputs.
  """

  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(_torch_conv, dtype=self.dtype)
    bn = functools.partial(_torch_bn, train, dtype=self.dtype)
    out = nn.relu(bn(name="bn1")(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.stride, name="shortcut")(out)
    else:
      shortcut = x
    out = conv(self.features, 3, self.stride, name="conv1")(out)
    out = conv(self.features, 3, name="conv2")(nn.relu(bn(name="bn2")(out)))
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
    dtype: compute dtype (``float32`` or ``bfloat16``); parameters, BN statistics
      and logits are float32.
  """

  num_classes: int
  blocks: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mix: Optional[MixFn] = None, carry=None):
    if len(self.blocks) != len(self.widths) or not self.blocks:
      raise ValueError(f"blocks and widths must be non-empty and of equal length, got {self.blocks!r} and {self.widths!r}.")
    h, carry = apply_mix(mix, "input", x, carry)
    h = _torch_conv(self.widths[0], 3, self.stem_stride, name="conv1", dtype=self.dtype)(h)
    h, carry = apply_mix(mix, "conv1", h, carry)
    for stage, (n, width) in enumerate(zip(self.blocks, self.widths, strict=True)):
      for j in range(n):
        stride = (1 if stage == 0 else 2) if j == 0 else 1
        h = PreActBlock(width, stride, dtype=self.dtype, name=f"layer{stage + 1}_{j}")(h, train)
      if stage < 3:
        h, carry = apply_mix(mix, f"layer{stage + 1}", h, carry)
    h = jnp.mean(h, axis=(1, 2))
    logits = _dense(self.num_classes, _torch_init, self.dtype, "linear")(h)
    return _outputs(mix, logits, carry)


# ----------------------------------------------------------------------------
# Wide ResNet (PatchUp / Manifold Mixup / Puzzle Mix lineage).


class WideBasic(nn.Module):
  """WRN block: BN-ReLU-conv3x3, BN-ReLU-conv3x3(stride), + shortcut (convs with bias).

  The shortcut is a 1x1 conv with bias on the **raw** input when the shape changes.

  Attributes:
    features: output channels.
    stride: stride of the second conv and of the shortcut.
    dtype: compute dtype of the convs and of the BN outputs.
  """

  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(_torch_conv, bias=True, dtype=self.dtype)
    bn = functools.partial(_torch_bn, train, dtype=self.dtype)
    out = conv(self.features, 3, name="conv1")(nn.relu(bn(name="bn1")(x)))
    out = conv(self.features, 3, self.stride, name="conv2")(nn.relu(bn(name="bn2")(out)))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(self.features, 1, self.stride, name="shortcut")(x)
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
    dtype: compute dtype (``float32`` or ``bfloat16``); parameters, BN statistics
      and logits are float32.
  """

  num_classes: int
  depth: int = 28
  widen_factor: int = 10
  stem_stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mix: Optional[MixFn] = None, carry=None):
    if (self.depth - 4) % 6 != 0 or self.depth < 10:
      raise ValueError(f"depth must be 6n + 4 with n >= 1, got {self.depth!r}.")
    n = (self.depth - 4) // 6
    h, carry = apply_mix(mix, "input", x, carry)
    h = _torch_conv(16, 3, self.stem_stride, bias=True, name="conv1", dtype=self.dtype)(h)
    h, carry = apply_mix(mix, "conv1", h, carry)
    for stage, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2), strict=True)):
      for j in range(n):
        h = WideBasic(width * self.widen_factor, stride if j == 0 else 1, dtype=self.dtype, name=f"layer{stage + 1}_{j}")(h, train)
      h, carry = apply_mix(mix, f"layer{stage + 1}", h, carry)
    h = nn.relu(_torch_bn(train, momentum=0.1, name="bn_final", dtype=self.dtype)(h))
    h = jnp.mean(h, axis=(1, 2))
    logits = _dense(self.num_classes, _torch_init, self.dtype, "linear")(h)
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
    dtype: compute dtype (``float32`` or ``bfloat16``); parameters, BN statistics
      and logits are float32.
  """

  num_classes: int
  depth: int = 20
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mix: Optional[MixFn] = None, carry=None):
    if (self.depth - 2) % 6 != 0 or self.depth < 8:
      raise ValueError(f"depth must be 6n + 2 with n >= 1, got {self.depth!r}.")
    n = (self.depth - 2) // 6
    conv = functools.partial(_keras_conv, dtype=self.dtype)
    bn = functools.partial(_keras_bn, train, dtype=self.dtype)
    h, carry = apply_mix(mix, "input", x, carry)
    h = nn.relu(bn(name="bn_stem")(conv(16, 3, name="conv1")(h)))
    h, carry = apply_mix(mix, "conv1", h, carry)
    for stage, filters in enumerate((16, 32, 64)):
      for j in range(n):
        stride = 2 if stage > 0 and j == 0 else 1
        name = f"layer{stage + 1}_{j}"
        y = nn.relu(bn(name=f"{name}_bn1")(conv(filters, 3, stride, name=f"{name}_conv1")(h)))
        y = bn(name=f"{name}_bn2")(conv(filters, 3, name=f"{name}_conv2")(y))
        if stride != 1:
          h = conv(filters, 1, stride, name=f"{name}_shortcut")(h)
        h = nn.relu(h + y)
      h, carry = apply_mix(mix, f"layer{stage + 1}", h, carry)
    h = jnp.mean(h, axis=(1, 2))
    logits = _dense(self.num_classes, _keras_init, self.dtype, "dense")(h)
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
    dtype: compute dtype (``float32`` or ``bfloat16``); parameters, BN statistics
      and logits are float32.
  """

  num_classes: int
  depth: int = 29
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mix: Optional[MixFn] = None, carry=None):
    if (self.depth - 2) % 9 != 0 or self.depth < 11:
      raise ValueError(f"depth must be 9n + 2 with n >= 1, got {self.depth!r}.")
    n = (self.depth - 2) // 9
    conv = functools.partial(_keras_conv, dtype=self.dtype)
    bn = functools.partial(_keras_bn, train, dtype=self.dtype)
    h, carry = apply_mix(mix, "input", x, carry)
    h = nn.relu(bn(name="bn_stem")(conv(16, 3, name="conv1")(h)))
    h, carry = apply_mix(mix, "conv1", h, carry)
    f_in = 16
    for stage in range(3):
      f_out = f_in * 4 if stage == 0 else f_in * 2
      for j in range(n):
        stride = 2 if stage > 0 and j == 0 else 1
        name = f"layer{stage + 1}_{j}"
        y = h
        if not (stage == 0 and j == 0):
          y = nn.relu(bn(name=f"{name}_bn1")(y))
        y = conv(f_in, 1, stride, name=f"{name}_conv1")(y)
        y = conv(f_in, 3, name=f"{name}_conv2")(nn.relu(bn(name=f"{name}_bn2")(y)))
        y = conv(f_out, 1, name=f"{name}_conv3")(nn.relu(bn(name=f"{name}_bn3")(y)))
        if j == 0:
          h = conv(f_out, 1, stride, name=f"{name}_shortcut")(h)
        h = h + y
      h, carry = apply_mix(mix, f"layer{stage + 1}", h, carry)
      f_in = f_out
    h = nn.relu(bn(name="bn_final")(h))
    h = jnp.mean(h, axis=(1, 2))
    logits = _dense(self.num_classes, _keras_init, self.dtype, "dense")(h)
    return _outputs(mix, logits, carry)


# ----------------------------------------------------------------------------
# Bottleneck ResNets: torchvision's ResNet-50 (ImageNet) and the CIFAR ResNeXt-29
# of the AugMix / IPMix code.


class Bottleneck(nn.Module):
  """Post-activation bottleneck: conv1x1-BN-ReLU, conv3x3(stride, groups)-BN-ReLU, conv1x1-BN, + shortcut, ReLU.

  torchvision's ``Bottleneck`` (v1.5: the stride is on the 3x3 conv) and, with
  ``groups > 1``, the ResNeXt block (type C). The shortcut is the identity, or a
  1x1 conv (stride, no bias) and BN when the shape changes. Convs without bias and
  with ``kaiming_normal(mode="fan_out")`` kernels, PyTorch BN (weight 1, bias 0).

  Attributes:
    width: channels of the two inner convs.
    features: output channels.
    stride: stride of the 3x3 conv and of the shortcut.
    groups: groups of the 3x3 conv (ResNeXt cardinality).
    dtype: compute dtype of the convs and of the BN outputs.
  """

  width: int
  features: int
  stride: int = 1
  groups: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(_torch_conv, init=_fan_out_init, dtype=self.dtype)
    bn = functools.partial(_torch_bn, train, dtype=self.dtype)
    out = nn.relu(bn(name="bn1")(conv(self.width, 1, name="conv1")(x)))
    out = nn.relu(bn(name="bn2")(conv(self.width, 3, self.stride, groups=self.groups, name="conv2")(out)))
    out = bn(name="bn3")(conv(self.features, 1, name="conv3")(out))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn(name="shortcut_bn")(conv(self.features, 1, self.stride, name="shortcut")(x))
    return nn.relu(out + x)


class ResNet(nn.Module):
  """torchvision's ImageNet ResNet with bottlenecks (ResNet-50 by default).

  He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, in the form
  of ``torchvision.models.resnet50`` (v1.5): a 7x7 stride-2 stem conv (64, no bias),
  BN, ReLU and a 3x3 stride-2 max-pool (padding 1); four stages of ``Bottleneck``
  (expansion 4) with widths ``64, 128, 256, 512`` and strides 1, 2, 2, 2 (on the
  3x3 conv); global average pooling and a linear layer. Init as torchvision: conv
  kernels ``kaiming_normal(mode="fan_out", relu)``, BN weight 1 and bias 0 (no
  zero-init of the last BN of each block, torchvision's default), the linear layer
  PyTorch's default (bias at zero, this module's deviation). PyTorch BN (momentum
  0.1, i.e. Flax ``momentum=0.9``, eps 1e-5). For 224x224 inputs (any size works).

  Parameter count (trainable): ResNet-50, 1000 classes: 25,557,032 (torchvision's
  figure).

  Mixing sites: ``input``, ``conv1`` (after the stem's max-pool), ``layer1``,
  ``layer2``, ``layer3``.

  Attributes:
    num_classes: K.
    blocks: bottlenecks per stage.
    widths: inner width per stage (the output is 4x).
    dtype: compute dtype (``float32`` or ``bfloat16``); parameters, BN statistics
      and logits are float32.
  """

  num_classes: int
  blocks: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mix: Optional[MixFn] = None, carry=None):
    if len(self.blocks) != len(self.widths) or not self.blocks:
      raise ValueError(f"blocks and widths must be non-empty and of equal length, got {self.blocks!r} and {self.widths!r}.")
    h, carry = apply_mix(mix, "input", x, carry)
    h = _torch_conv(self.widths[0], 7, 2, init=_fan_out_init, dtype=self.dtype, name="conv1")(h)
    h = nn.relu(_torch_bn(train, name="bn1", dtype=self.dtype)(h))
    h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=_PAD1)
    h, carry = apply_mix(mix, "conv1", h, carry)
    for stage, (n, width) in enumerate(zip(self.blocks, self.widths, strict=True)):
      for j in range(n):
        stride = 2 if stage > 0 and j == 0 else 1
        h = Bottleneck(width, 4 * width, stride, dtype=self.dtype, name=f"layer{stage + 1}_{j}")(h, train)
      if stage < 3:
        h, carry = apply_mix(mix, f"layer{stage + 1}", h, carry)
    h = jnp.mean(h, axis=(1, 2))
    logits = _dense(self.num_classes, _torch_init, self.dtype, "fc")(h)
    return _outputs(mix, logits, carry)


class CifarResNeXt(nn.Module):
  """The CIFAR ResNeXt of the AugMix / IPMix code, depth ``9n + 2``.

  Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR
  2017, in the form of IPMix's ``models/ResNeXt_DenseNet/models/resnext.py`` (as
  its ``cifar.py`` builds it, ``resnext29(num_classes)``): a 3x3 stem conv (64, no
  bias), BN, ReLU; three stages of ``n`` ResNeXt bottlenecks (``Bottleneck`` with
  ``groups = cardinality``, inner width ``floor(planes * base_width / 64) *
  cardinality``, output ``4 planes``) for ``planes = 64, 128, 256`` with strides
  1, 2, 2; global average pooling (the reference's ``AvgPool2d(8)`` on the 8x8
  map) and a linear layer. The reference's defaults, kept here, are
  **cardinality 4 and base width 32** (4 groups of 32 channels in the first
  stage), although the AugMix / IPMix papers call the model ResNeXt-29 (32x4d).
  Init as the reference: conv kernels ``normal(0, sqrt(2 / (k * k * out)))``
  (``kaiming_normal`` fan_out), BN weight 1 and bias 0, the linear kernel
  ``kaiming_normal`` (fan_in) and its bias 0. PyTorch BN (momentum 0.1, eps 1e-5).

  Parameter counts (trainable, the reference module's count): ResNeXt-29 4x32d:
  6,807,882 for 10 classes, 6,900,132 for 100 classes.

  Mixing sites: ``input``, ``conv1`` (after the stem's BN-ReLU), ``layer1``,
  ``layer2``, ``layer3`` (the three stage outputs).

  Attributes:
    num_classes: K.
    depth: 9n + 2 (29 -> n = 3).
    cardinality: groups of the 3x3 convs.
    base_width: channels per group in the first stage (``planes = 64``).
    dtype: compute dtype (``float32`` or ``bfloat16``); parameters, BN statistics
      and logits are float32.
  """

  num_classes: int
  depth: int = 29
  cardinality: int = 4
  base_width: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mix: Optional[MixFn] = None, carry=None):
    if (self.depth - 2) % 9 != 0 or self.depth < 11:
      raise ValueError(f"depth must be 9n + 2 with n >= 1, got {self.depth!r}.")
    n = (self.depth - 2) // 9
    h, carry = apply_mix(mix, "input", x, carry)
    h = _torch_conv(64, 3, init=_fan_out_init, dtype=self.dtype, name="conv1")(h)
    h = nn.relu(_torch_bn(train, name="bn1", dtype=self.dtype)(h))
    h, carry = apply_mix(mix, "conv1", h, carry)
    for stage, (planes, stride) in enumerate(zip((64, 128, 256), (1, 2, 2), strict=True)):
      width = (planes * self.base_width // 64) * self.cardinality
      for j in range(n):
        block = Bottleneck(width, 4 * planes, stride if j == 0 else 1, self.cardinality, self.dtype, name=f"layer{stage + 1}_{j}")
        h = block(h, train)
      h, carry = apply_mix(mix, f"layer{stage + 1}", h, carry)
    h = jnp.mean(h, axis=(1, 2))
    logits = _dense(self.num_classes, _fan_in_init, self.dtype, "classifier")(h)
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
  # IPMix's CIFAR default, in the PatchUp form: biased convs and no dropout (docs/algorithms/recipes.md#ipmix-recipe).
  "wrn40_4": functools.partial(WideResNet, depth=40, widen_factor=4),
  "resnet50": functools.partial(ResNet, blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
  "resnext29": functools.partial(CifarResNeXt, depth=29, cardinality=4, base_width=32),  # IPMix's resnext29()
  "preactresnet18_64": functools.partial(PreActResNet, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem_stride=2),
}

ARCHS = tuple(_ARCHS)
"""The architecture names ``get_model`` accepts."""


def get_model(arch: str, num_classes: int, *, dtype: Any = "float32", **kwargs) -> nn.Module:
  """Builds a model by its command-line name.

  Args:
    arch: one of ``ARCHS``: ``preactresnet18``, ``preactresnet34``, ``wrn28_10``,
      ``wrn28_2``, ``wrn40_4``, ``resnet20v1``, ``resnet29v2``, ``resnet50``
      (torchvision's ImageNet ResNet-50), ``resnext29`` (the CIFAR ResNeXt-29
      of the IPMix code: cardinality 4, base width 32), ``preactresnet18_64``
      (PreActResNet-18 with a stride-2 stem for 64x64 Tiny-ImageNet, as Puzzle Mix)
      or ``preactresnet_small`` (a CPU-scale PreActResNet, by default one block per
      stage with widths ``(16, 32, 64, 128)``: 308,122 parameters for 10 classes;
      override ``blocks=`` / ``widths=``).
    num_classes: K >= 1.
    dtype: compute dtype of the convolutions and matmuls, one of ``DTYPES``
      (``"float32"`` or ``"bfloat16"``, or the jnp dtype). Parameters, BatchNorm
      statistics and arithmetic and the logits stay float32.
    **kwargs: overrides of the model's attributes (e.g. ``stem_stride=2`` for
      64x64 inputs, ``widths=(32, 64, 128, 256)``).

  Returns:
    The Flax module.

  Raises:
    ValueError: on an unknown ``arch`` (the message lists the names), a bad
      ``num_classes`` or a ``dtype`` not in ``DTYPES``.

  Example:
    >>> model = jaxmix.models.get_model("preactresnet18", 10, dtype="bfloat16")
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  """
  if arch not in _ARCHS:
    raise ValueError(f"unknown arch {arch!r}; known archs: {', '.join(ARCHS)}.")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  return _ARCHS[arch](num_classes=num_classes, dtype=compute_dtype(dtype), **kwargs)


def compute_dtype(dtype: Any) -> jnp.dtype:
  """``dtype`` (a name of ``DTYPES`` or a jnp dtype) as a jnp dtype; ValueError for any other."""
  try:
    name = jnp.dtype(dtype).name
  except TypeError:
    name = None
  if isinstance(dtype, bool) or dtype is None or name not in DTYPES:
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
  return jnp.dtype(name)


def model_fields(arch: str) -> tuple[str, ...]:
  """The fields of model ``arch`` that ``get_model(arch, K, **kwargs)`` accepts as ``kwargs`` (``dtype`` has its own keyword)."""
  if arch not in _ARCHS:
    raise ValueError(f"unknown arch {arch!r}; known archs: {', '.join(ARCHS)}.")
  builder = _ARCHS[arch]
  cls = builder.func if isinstance(builder, functools.partial) else builder
  return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name", "num_classes", "dtype"))


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
