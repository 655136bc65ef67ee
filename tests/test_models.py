"""Models: parameter counts, the apply / mixing-hook contract, compile-once mixing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmix
from jaxmix.ops import hook
from jaxmix.training import models

# ----------------------------------------------------------------------------
# Parameter counts, by closed-form formulas of the reference PyTorch / Keras
# architectures (independent of the Flax code) and by published figures.


def _preact_block(cin, cout, stride):
  n = 2 * cin + cin * cout * 9 + 2 * cout + cout * cout * 9
  return n + (cin * cout if stride != 1 or cin != cout else 0)


def _preact(blocks, k, widths=(64, 128, 256, 512)):
  total, cin = 3 * widths[0] * 9, widths[0]
  for stage, (n, w) in enumerate(zip(blocks, widths, strict=True)):
    for j in range(n):
      total += _preact_block(cin, w, (1 if stage == 0 else 2) if j == 0 else 1)
      cin = w
  return total + cin * k + k


def _wrn_block(cin, cout, stride):
  n = 2 * cin + cin * cout * 9 + cout + 2 * cout + cout * cout * 9 + cout
  return n + (cin * cout + cout if stride != 1 or cin != cout else 0)


def _wrn(depth, widen, k):
  n = (depth - 4) // 6
  total, cin = 3 * 16 * 9 + 16, 16
  for w, s in zip((16 * widen, 32 * widen, 64 * widen), (1, 2, 2), strict=True):
    for j in range(n):
      total += _wrn_block(cin, w, s if j == 0 else 1)
      cin = w
  return total + 2 * cin + cin * k + k


def _bottleneck(cin, width, cout, stride, groups=1):
  # torch Bottleneck: conv1x1 + BN, grouped conv3x3 + BN, conv1x1 + BN, projection (conv1x1 + BN); no conv biases.
  n = cin * width + 2 * width + 9 * width * width // groups + 2 * width + width * cout + 2 * cout
  return n + (cin * cout + 2 * cout if stride != 1 or cin != cout else 0)


def _resnet50(k):
  # torchvision resnet50: conv 7x7 (3 -> 64) + BN, stages (3, 4, 6, 3) of planes 64..512 (x4 out), fc 2048 -> k.
  total, cin = 3 * 64 * 49 + 2 * 64, 64
  for stage, (n, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
    for j in range(n):
      total += _bottleneck(cin, planes, 4 * planes, 2 if stage > 0 and j == 0 else 1)
      cin = 4 * planes
  return total + cin * k + k


def _resnext29(k, cardinality=4, base_width=32):
  # IPMix models/ResNeXt_DenseNet/models/resnext.py, resnext29(k) (cardinality 4, base width 32): conv 3x3 (3 -> 64)
  # + BN, stages of 3 blocks, planes 64/128/256 (stride 1/2/2), D = floor(planes * bw / 64) * card, out 4 planes; fc 1024 -> k.
  total, cin = 3 * 64 * 9 + 2 * 64, 64
  for planes, stride in zip((64, 128, 256), (1, 2, 2), strict=True):
    for j in range(3):
      total += _bottleneck(cin, (planes * base_width // 64) * cardinality, 4 * planes, stride if j == 0 else 1, cardinality)
      cin = 4 * planes
  return total + cin * k + k


def _ipmix_wrn(depth, widen, k):
  # IPMix models/WideResNet_pytorch/wideresnet.py: bias-free convs, BN-ReLU-conv3x3, BN-ReLU-conv3x3, 1x1 projection
  # (no bias) when the width changes; final BN, fc.
  n = (depth - 4) // 6
  total, cin = 3 * 16 * 9, 16
  for w in (16 * widen, 32 * widen, 64 * widen):
    for _ in range(n):
      total += 2 * cin + 9 * cin * w + 2 * w + 9 * w * w + (cin * w if cin != w else 0)
      cin = w
  return total + 2 * cin + cin * k + k


@pytest.mark.parametrize(
  "arch, k, published",
  [
    ("preactresnet18", 10, 11_171_146),  # kuangliu/pytorch-cifar README
    ("preactresnet18", 100, None),
    ("preactresnet34", 10, 21_279_306),  # kuangliu/pytorch-cifar README
    ("wrn28_10", 10, 36_489_290),  # torchsummary of the PatchUp / MM Wide_ResNet (biased convs)
    ("wrn28_10", 100, None),
    ("resnet20v1", 10, 273_066),  # Keras summary, trainable params
    ("resnet29v2", 10, 843_786),  # Keras summary, trainable params
    ("preactresnet_small", 10, None),
    ("resnet50", 1000, 25_557_032),  # torchvision's resnet50 (its published parameter count)
    ("resnext29", 10, 6_807_882),  # IPMix's resnext29(10), counted with torch 2.13
    ("resnext29", 100, 6_900_132),  # IPMix's resnext29(100), counted with torch 2.13
    ("preactresnet18_64", 200, 11_268_616),  # Puzzle Mix's preactresnet18(200, stride=2), counted with torch 2.13
  ],
)
def test_param_counts(arch, k, published):
  size = {"resnet50": 224, "preactresnet18_64": 64}.get(arch, 32)
  count = models.count_params(models.get_model(arch, k), (1, size, size, 3))
  formula = {
    "preactresnet18": lambda: _preact((2, 2, 2, 2), k),
    "preactresnet34": lambda: _preact((3, 4, 6, 3), k),
    "wrn28_10": lambda: _wrn(28, 10, k),
    "preactresnet_small": lambda: _preact((1, 1, 1, 1), k, (16, 32, 64, 128)),
    "resnet50": lambda: _resnet50(k),
    "resnext29": lambda: _resnext29(k),
    "preactresnet18_64": lambda: _preact((2, 2, 2, 2), k),
  }.get(arch)
  if formula is not None:
    assert count == formula()
  if published is not None:
    assert count == published
  if arch == "preactresnet_small":
    assert 100_000 < count < 1_000_000


@pytest.mark.parametrize("k, ipmix", [(10, 8_949_210), (100, 8_972_340)])  # IPMix's WideResNet(40, k, 4), counted with torch 2.13
def test_wrn40_4_against_ipmix_wideresnet(k, ipmix):
  # Known deviation: wrn40_4 is the PatchUp-form WideResNet, whose convs have biases (stem 16, two per block,
  # one per projection: 16 + 2 * 6 * (64 + 128 + 256) + (64 + 128 + 256) = 5,840); IPMix's convs have none
  # (and its dropout 0.3 is left out).
  assert _ipmix_wrn(40, 4, k) == ipmix
  assert models.count_params(models.get_model("wrn40_4", k)) == ipmix + 5_840


def test_unknown_arch_lists_names():
  with pytest.raises(ValueError, match="preactresnet18.*wrn28_10"):
    models.get_model("resnet51", 10)
  with pytest.raises(ValueError, match="num_classes"):
    models.get_model("preactresnet18", 0)
  with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
    models.get_model("preactresnet18", 10, dtype="float16")


# ----------------------------------------------------------------------------
# Sites: every model calls the hook at the contract's sites, in order.


@pytest.mark.parametrize("arch", models.ARCHS)
def test_sites_in_forward_order(arch):
  seen = []

  def record(site, h, carry):
    seen.append((site, h.shape))
    return h, carry + 1

  model = models.get_model(arch, 10)
  x = jnp.zeros((2, 32, 32, 3))

  def run():
    variables = model.init(jax.random.key(0), x, train=False)
    seen.clear()
    return model.apply(variables, x, train=True, mix=record, carry=jnp.int32(0), mutable=["batch_stats"])

  (logits, carry), _ = jax.eval_shape(run)
  assert logits.shape == (2, 10)
  assert [s for s, _ in seen] == list(models.SITES)
  assert seen[0][1] == (2, 32, 32, 3)
  assert seen[3][1][1:3] == tuple(d // 2 for d in seen[2][1][1:3])  # layer2 halves the map
  assert carry.shape == ()


# ----------------------------------------------------------------------------
# A tiny model shared by the tests below (compiled once per function).

MODEL = models.get_model("preactresnet_small", 10, widths=(8, 16, 16, 16))
X = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
Y_INT = jnp.array([0, 1, 2, 3])
Y = jaxmix.one_hot(Y_INT, 10)
VARS = MODEL.init(jax.random.key(2), X, train=False)


def test_apply_contract():
  assert set(VARS) == {"params", "batch_stats"}
  logits = MODEL.apply(VARS, X, train=False)
  assert logits.shape == (4, 10)
  logits_t, updates = MODEL.apply(VARS, X, train=True, mutable=["batch_stats"])
  assert logits_t.shape == (4, 10) and set(updates) == {"batch_stats"}
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), VARS["batch_stats"], updates["batch_stats"])
  assert any(jax.tree.leaves(changed))


def _make_step(method):
  """A jitted (loss, grads, logits, carry) of one mixed training forward; traced once."""

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(variables, x, y, key, layer):
    def loss_fn(params):
      extra = {"block_size": 3} if method != "manifold_mixup" else {}
      mix_fn, carry = hook.hidden_mix(key, y, method=method, layer=layer, **extra)
      (logits, carry), _ = MODEL.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mix=mix_fn, carry=carry, mutable=["batch_stats"]
      )
      return carry.loss_scale * jaxmix.bce_on_softmax(logits, carry.labels), (logits, carry)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return loss, grads, aux

  return step


@pytest.mark.parametrize("method", ["manifold_mixup", "patchup", "dropblock"])
def test_hidden_mix_compiles_once_and_grads_finite(method):
  # The layer is a traced argument: three sites, one trace (assert_max_traces).
  layers = [0, 1, 2] if method != "dropblock" else [0, 1]
  chex.clear_trace_counter()  # the counter is keyed by the code object, shared by methods
  step = _make_step(method)
  out = []
  for layer in layers:
    loss, grads, (logits, carry) = step(VARS, X, Y, jax.random.key(3), jnp.int32(layer))
    assert np.isfinite(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(jax.tree.leaves(grads)[0]).sum()) > 0
    np.testing.assert_allclose(carry.labels.sum(1), 1.0, rtol=1e-6)
    out.append(np.asarray(logits))
  if method != "dropblock":  # different sites give different logits
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])


def test_manifold_mixup_lam_one_is_unmixed():
  # docs/algorithms/hidden_mixing.md#manifold-mixup check 1: lam = 1 at any site -> the unmixed logits (same BN mode).
  plain, _ = MODEL.apply(VARS, X, train=True, mutable=["batch_stats"])
  for layer in range(3):
    mix_fn, carry = hook.hidden_mix(jax.random.key(4), Y, method="manifold_mixup", lam=1.0, layer=layer)
    (logits, carry), _ = MODEL.apply(VARS, X, train=True, mix=mix_fn, carry=carry, mutable=["batch_stats"])
    np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(carry.labels, Y)


def test_manifold_mixup_layer0_is_input_mixup():
  # docs/algorithms/hidden_mixing.md#manifold-mixup check 2: k forced to 0 == input mixup with the same lam, perm.
  perm = jnp.array([2, 0, 3, 1])
  mix_fn, carry = hook.hidden_mix(jax.random.key(5), Y, method="manifold_mixup", lam=0.3, perm=perm, layer=0)
  (logits, carry), _ = MODEL.apply(VARS, X, train=True, mix=mix_fn, carry=carry, mutable=["batch_stats"])
  ref = jaxmix.mixup(jax.random.key(6), X, Y, lam=0.3, perm=perm)
  expected, _ = MODEL.apply(VARS, ref.images, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(carry.labels, ref.labels, rtol=1e-6)
  # The target does not depend on the site.
  mix_fn2, carry2 = hook.hidden_mix(jax.random.key(5), Y, method="manifold_mixup", lam=0.3, perm=perm, layer=2)
  np.testing.assert_array_equal(carry2.labels, carry.labels)


def test_manifold_mixup_layer_frequencies():
  layers = jax.vmap(lambda k: hook._layer(k, 3, None))(jax.random.split(jax.random.key(7), 3000))
  counts = np.bincount(np.asarray(layers), minlength=3)
  # Each ~ Binomial(3000, 1/3): sd ~ 25.8; 5 sd tolerance.
  assert np.all(np.abs(counts - 1000) < 130), counts


def test_hook_without_mix_returns_logits_only():
  out = MODEL.apply(VARS, X, train=False, mix=None)
  assert isinstance(out, jax.Array) and out.shape == (4, 10)


def test_hidden_mix_validation():
  with pytest.raises(ValueError, match="method"):
    hook.hidden_mix(jax.random.key(0), Y, method="mixup")
  with pytest.raises(ValueError, match="sites"):
    hook.hidden_mix(jax.random.key(0), Y, method="manifold_mixup", sites=("layer9",))
  with pytest.raises(ValueError, match="gamma"):
    hook.hidden_mix(jax.random.key(0), Y, method="patchup", gamma=1.5)
  with pytest.raises(ValueError, match="labels"):
    hook.hidden_mix(jax.random.key(0), Y_INT, method="patchup")
  with pytest.raises(TypeError):
    hook.hidden_mix(jax.random.key(0), Y, method="dropblock", alpha=1.0)


def test_stem_stride_two_for_64px_inputs():
  model = models.get_model("preactresnet18", 200, stem_stride=2)
  seen = {}

  def record(site, h, carry):
    seen[site] = h.shape
    return h, carry

  x = jnp.zeros((1, 64, 64, 3))
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x, mix=record, carry=None))
  assert out[0].shape == (1, 200) and seen["conv1"] == (1, 32, 32, 64) and seen["layer3"] == (1, 8, 8, 256)
  assert models.count_params(model, (1, 64, 64, 3)) == _preact((2, 2, 2, 2), 200)
  assert models.get_model("preactresnet18_64", 200) == model  # the registered Tiny-ImageNet model is this one


def test_tiny_imagenet_and_imagenet_shapes():
  x64 = jnp.zeros((2, 64, 64, 3))
  model = models.get_model("preactresnet18_64", 200)
  assert jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x64), x64)).shape == (2, 200)
  seen = {}

  def record(site, h, carry):
    seen[site] = h.shape
    return h, carry

  x224 = jnp.zeros((1, 224, 224, 3))
  model = models.get_model("resnet50", 1000)
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x224), x224, mix=record, carry=None))
  assert out[0].shape == (1, 1000)
  assert seen == {
    "input": (1, 224, 224, 3),
    "conv1": (1, 56, 56, 64),  # after the stride-2 stem and the stride-2 max-pool
    "layer1": (1, 56, 56, 256),
    "layer2": (1, 28, 28, 512),
    "layer3": (1, 14, 14, 1024),
  }
