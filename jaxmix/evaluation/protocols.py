"""Evaluation protocols as small objects, and ``evaluate_all`` that runs a list of them.

Every protocol takes the same :class:`EvalData` (a ``logits_fn(images_normalised
[B, H, W, C] float32) -> logits [B, K]`` in inference mode, host test data as uint8
``[N, H, W, C]`` with int labels ``[N]``, the dataset ``mean`` / ``std`` in [0, 1]
units) and returns a JSON-ready dict from ``run(data)``:

* :class:`Clean`: top-1 / top-5 accuracy (%), mean cross-entropy, ECE, the RMS
  calibration error of AugMix / PixMix / IPMix and the mean confidence.
* :class:`FGSM`: PatchUp's normalised-space FGSM and the pixel-space FGSM, one input
  gradient per batch for every epsilon.
* :class:`PGD`: L-inf PGD with the presets of :data:`PGD_PRESETS`.
* :class:`Deformed`: PatchUp's eight deformed test sets (:mod:`jaxmix.evaluation.deform`).
* :class:`Corruptions`: real CIFAR-10-C / CIFAR-100-C, tfds ``cifar10_corrupted`` or
  the offline generator of :mod:`jaxmix.evaluation.corruptions`.

A new protocol is a class with a ``name`` and a ``run(data) -> dict``; pass it to
:func:`run_protocols`. What each protocol measures, and where it follows or departs
from the seed papers' code, is in ``docs/algorithms/evaluation.md``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.evaluation import attacks, corruptions, deform
from jaxmix.evaluation.metrics import classification_metrics
from jaxmix.ops.core import normalize

__all__ = (
  "Clean",
  "Corruptions",
  "Deformed",
  "EvalData",
  "EvalProtocol",
  "FGSM",
  "FGSM_PATCHUP_EPSILONS",
  "FGSM_PIXEL_EPSILONS",
  "PGD",
  "PGD_PRESETS",
  "evaluate_all",
  "format_summary",
  "predict",
  "run_protocols",
  "spread_indices",
)

FGSM_PATCHUP_EPSILONS = (0.0, 0.05, 0.1, 0.12, 0.15, 0.18, 0.2)
FGSM_PIXEL_EPSILONS = (4 / 255, 8 / 255)
PGD_PRESETS = {
  # Puzzle Mix's test_robust.py.
  "puzzlemix": {"epsilon": 4 / 255, "step_size": 2 / 255, "num_steps": 20, "clip_start": True},
  # IPMix's cifar.py.
  "ipmix": {"epsilon": 2 / 255, "step_size": 0.5 / 255, "num_steps": 20, "clip_start": False},
}


# ----------------------------------------------------------------------------
# Host data in fixed-size batches


def spread_indices(total: int, n: Optional[int]) -> np.ndarray:
  """``n`` evenly spaced indices of ``range(total)`` (all of them if ``n`` is None or >= total).

  A deterministic, RNG-free way to cut an evaluation set: on a class-sorted test set
  (the class-folder layout) it keeps the classes balanced, where the first ``n``
  examples would cover only the first classes.
  """
  if n is None or n >= total:
    return np.arange(total)
  return np.floor(np.arange(n) * (total / n)).astype(np.int64)


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the batch axis to ``size`` by repeating the last example (keeps batch min/max)."""
  if x.shape[0] == size:
    return x
  return np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)], axis=0)


def _check_batch_size(batch_size) -> None:
  if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")


def predict(logits_fn: Callable, images: np.ndarray, *, mean, std, batch_size: int = 100) -> np.ndarray:
  """Logits ``[N, K]`` (float32 numpy) of uint8 images ``[N, H, W, C]``, in fixed-size batches."""
  _check_batch_size(batch_size)
  outs = []
  for lo, hi in _batches(len(images), batch_size):
    x = normalize(_pad(np.asarray(images[lo:hi]), batch_size), mean, std)
    outs.append(np.asarray(logits_fn(x))[: hi - lo])
  return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), np.float32)


def _summarise(logits: np.ndarray, labels: np.ndarray) -> dict:
  return classification_metrics(logits, labels, calibration=False) | {"n": int(len(labels))}


def _eps_name(eps: float) -> str:
  k = eps * 255.0
  if eps and abs(k - round(k)) < 1e-6:
    return f"{int(round(k))}/255"
  return f"{eps:g}"


# ----------------------------------------------------------------------------
# Protocols


@dataclasses.dataclass(frozen=True)
class EvalData:
  """What every protocol evaluates: a model and a test set.

  Attributes:
    logits_fn: ``f(x_normalised [B, H, W, C] float32) -> logits [B, K]``, jitted,
      inference mode.
    images: ``[N, H, W, C]`` uint8 test images.
    labels: ``[N]`` int32 labels.
    mean: per-channel dataset mean (or a mean image) in [0, 1] units.
    std: per-channel dataset std (or a scalar).
    batch_size: evaluation batch (also the batch of PatchUp's batch-wide FGSM clamp).
    seed: seed of generated test sets and of random attack starts.
    cache_dir: cache of generated test sets (``None``: no cache).
    max_examples: the cut applied to ``images`` (real CIFAR-C sets apply it themselves).
  """

  logits_fn: Callable
  images: np.ndarray
  labels: np.ndarray
  mean: Any
  std: Any
  batch_size: int = 100
  seed: int = 0
  cache_dir: Optional[str] = None
  max_examples: Optional[int] = None

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Logits of uint8 ``images`` in this evaluation's batches."""
    return predict(self.logits_fn, images, mean=self.mean, std=self.std, batch_size=self.batch_size)

  def padded_batches(self, images: np.ndarray):
    """``(lo, hi, images[lo:hi] padded, labels[lo:hi] padded)`` in fixed-size batches."""
    for lo, hi in _batches(len(images), self.batch_size):
      y = _pad(np.asarray(self.labels[lo:hi], np.int32), self.batch_size)
      yield lo, hi, _pad(np.asarray(images[lo:hi]), self.batch_size), y


class EvalProtocol(Protocol):
  """An evaluation protocol: a ``name`` (its key in the result) and ``run``."""

  name: str

  def run(self, data: EvalData) -> dict: ...


@dataclasses.dataclass(frozen=True)
class Clean:
  """Clean accuracy, cross-entropy and calibration on the test set."""

  name: str = "clean"

  def run(self, data: EvalData) -> dict:
    return classification_metrics(data.predict(data.images), data.labels) | {"n": int(len(data.labels))}


@dataclasses.dataclass(frozen=True)
class FGSM:
  """FGSM at every epsilon of PatchUp's normalised-space protocol and of the pixel-space one."""

  patchup_epsilons: Sequence[float] = FGSM_PATCHUP_EPSILONS
  pixel_epsilons: Sequence[float] = FGSM_PIXEL_EPSILONS
  name: str = "fgsm"

  def run(self, data: EvalData) -> dict:
    mean_v = jnp.asarray(np.asarray(data.mean, np.float32).reshape(-1))
    std_v = jnp.asarray(np.asarray(data.std, np.float32).reshape(-1))
    logits_fn = data.logits_fn

    @jax.jit
    def grad_sign(x, y):
      return jnp.sign(attacks.input_gradient(logits_fn, x, y))

    @jax.jit
    def patchup_logits(x, sign, eps):
      return logits_fn(attacks.patchup_step(x, sign, eps))

    @jax.jit
    def pixel_logits(x, sign, eps):
      # sign(d/dx01) == sign(d/dx_norm) since std > 0: one gradient serves both.
      x01 = x * std_v + mean_v
      return logits_fn(normalize(jnp.clip(x01 + eps * sign, 0.0, 1.0), mean_v, std_v, max_value=1.0))

    pu = {e: [] for e in self.patchup_epsilons}
    px = {e: [] for e in self.pixel_epsilons}
    for lo, hi, images, labels in data.padded_batches(data.images):
      x = normalize(images, data.mean, data.std)
      sign = grad_sign(x, labels)
      for e in pu:
        pu[e].append(np.asarray(patchup_logits(x, sign, jnp.float32(e)))[: hi - lo])
      for e in px:
        px[e].append(np.asarray(pixel_logits(x, sign, jnp.float32(e)))[: hi - lo])
    return {
      "patchup": {f"{e:g}": _summarise(np.concatenate(v), data.labels) for e, v in pu.items()},
      "pixel": {_eps_name(e): _summarise(np.concatenate(v), data.labels) for e, v in px.items()},
      "patchup_batch_size": data.batch_size,
    }


@dataclasses.dataclass(frozen=True)
class PGD:
  """L-inf PGD in pixel space with the named presets of :data:`PGD_PRESETS`."""

  presets: Sequence[str] = tuple(PGD_PRESETS)
  name: str = "pgd"

  def __post_init__(self):
    for preset in self.presets:
      if preset not in PGD_PRESETS:
        raise ValueError(f"pgd presets must be among {sorted(PGD_PRESETS)}, got {preset!r}.")

  def run(self, data: EvalData) -> dict:
    out = {}
    for preset in self.presets:
      cfg = PGD_PRESETS[preset]

      @jax.jit
      def attack(key, x01, y, cfg=cfg):
        adv = attacks.pgd_pixel(key, data.logits_fn, x01, y, mean=data.mean, std=data.std, **cfg)
        return data.logits_fn(normalize(adv, data.mean, data.std, max_value=1.0))

      logits = []
      base = jax.random.key(data.seed)
      for i, (lo, hi, images, labels) in enumerate(data.padded_batches(data.images)):
        x01 = jnp.asarray(images, jnp.float32) / 255.0
        logits.append(np.asarray(attack(jax.random.fold_in(base, i), x01, labels))[: hi - lo])
      settings = {k: (v if isinstance(v, bool) else float(v)) for k, v in cfg.items()}
      out[preset] = _summarise(np.concatenate(logits), data.labels) | settings
    return out


@dataclasses.dataclass(frozen=True)
class Deformed:
  """PatchUp's eight deformed test sets (rotations, shears, zooms), generated once and cached."""

  name: str = "deformed"

  def run(self, data: EvalData) -> dict:
    sets = deform.deformed_test_sets(data.images, seed=data.seed, cache_dir=data.cache_dir)
    out = {name: _summarise(data.predict(x), data.labels) for name, x in sets.items()}
    out["mean_top1"] = float(np.mean([v["top1"] for v in out.values()]))
    return out


@dataclasses.dataclass(frozen=True)
class Corruptions:
  """Accuracy under the 15 corruptions x 5 severities, averaged over severities.

  Attributes:
    subset: names of corruptions to use (default all 15).
    cifar_c_dir: folder of real ``<corruption>.npy`` + ``labels.npy`` files; used
      instead of generated sets when given.
    tfds_name: a tfds name such as ``"cifar10_corrupted"`` to load instead.
    frost_textures: real frost photographs (uint8) for the generator's frost.
  """

  subset: Optional[Sequence[str]] = None
  cifar_c_dir: Optional[str] = None
  tfds_name: Optional[str] = None
  frost_textures: Optional[Sequence[np.ndarray]] = None
  name: str = "corruptions"

  def _sets(self, data: EvalData):
    if self.cifar_c_dir:
      sets, labels = corruptions.load_cifar_c(self.cifar_c_dir, names=self.subset, max_examples=data.max_examples)
      return sets, labels, f"npy:{self.cifar_c_dir}"
    if self.tfds_name:
      sets, labels = corruptions.load_tfds_corrupted(self.tfds_name, names=self.subset, max_examples=data.max_examples)
      return sets, labels, f"tfds:{self.tfds_name}"
    sets = corruptions.corrupted_test_sets(
      data.images, names=self.subset, seed=data.seed, cache_dir=data.cache_dir, frost_textures=self.frost_textures
    )
    labels = np.broadcast_to(np.asarray(data.labels), (5, len(data.labels)))
    return sets, labels, "generated (jaxmix.corruptions; see its docstring for approximations)"

  def run(self, data: EvalData) -> dict:
    sets, labels, source = self._sets(data)
    per = {}
    for name, by_severity in sets.items():
      accs = [
        100.0 * float(np.mean(np.argmax(data.predict(by_severity[s]), -1) == np.asarray(labels[s]))) for s in range(by_severity.shape[0])
      ]
      per[name] = {"top1": float(np.mean(accs)), "top1_by_severity": accs}
    mean_acc = float(np.mean([v["top1"] for v in per.values()])) if per else float("nan")
    return {"source": source, "per_corruption": per, "mean_top1": mean_acc, "mean_corruption_error": 100.0 - mean_acc}


def _check_test_set(images, labels, max_examples) -> tuple[np.ndarray, np.ndarray]:
  images = np.asarray(images)
  labels = np.asarray(labels).astype(np.int32).reshape(-1)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"test_images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}.")
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"test_labels has {labels.shape[0]} entries for {images.shape[0]} images.")
  if max_examples is not None:
    if not isinstance(max_examples, int) or isinstance(max_examples, bool) or max_examples < 1:
      raise ValueError(f"max_examples must be a positive int or None, got {max_examples!r}.")
    keep = spread_indices(len(labels), max_examples)
    images, labels = images[keep], labels[keep]
  return images, labels


def run_protocols(protocols: Sequence[EvalProtocol], data: EvalData, *, log: Optional[Callable[[str], None]] = None) -> dict:
  """Runs each protocol on ``data``; returns ``{"n_examples", "batch_size", "seconds", <name>: ...}``."""
  log = log or (lambda s: None)
  result = {"n_examples": int(len(data.labels)), "batch_size": data.batch_size, "seconds": {}}
  for protocol in protocols:
    t0 = time.perf_counter()
    log(f"jaxmix eval: {protocol.name} ...")
    result[protocol.name] = protocol.run(data)
    result["seconds"][protocol.name] = round(time.perf_counter() - t0, 2)
  return _jsonable(result)


def evaluate_all(
  logits_fn: Callable,
  test_images: np.ndarray,
  test_labels: np.ndarray,
  *,
  mean,
  std,
  batch_size: int = 100,
  fgsm: bool = True,
  fgsm_epsilons: Sequence[float] = FGSM_PATCHUP_EPSILONS,
  pixel_epsilons: Sequence[float] = FGSM_PIXEL_EPSILONS,
  pgd: bool | Sequence[str] = False,
  deformed: bool = True,
  corruptions: bool = True,
  corruption_subset: Optional[Sequence[str]] = None,
  cifar_c_dir: Optional[str] = None,
  tfds_corrupted: Optional[str] = None,
  frost_textures: Optional[Sequence[np.ndarray]] = None,
  cache_dir: Optional[str] = None,
  max_examples: Optional[int] = None,
  seed: int = 0,
  log: Optional[Callable[[str], None]] = None,
) -> dict:
  """Runs the clean protocol and the enabled robustness protocols; a JSON-serialisable dict.

  The keywords switch protocols on and configure them (see :class:`FGSM`, :class:`PGD`,
  :class:`Deformed`, :class:`Corruptions`); :func:`run_protocols` with your own list
  does the same for any set of protocols. Accuracies, ECE and RMS calibration error are
  in percent; ``ce`` is the mean cross-entropy in nats.

  Args:
    logits_fn: ``f(x_normalised [B, H, W, C] float32) -> logits [B, K]``, jitted, inference mode.
    test_images: ``[N, H, W, C]`` uint8 test images.
    test_labels: ``[N]`` int labels.
    mean: per-channel dataset mean in [0, 1] units.
    std: per-channel dataset std.
    batch_size: evaluation batch (also the batch of PatchUp's batch-wide FGSM clamp;
      PatchUp evaluated with its training batch size, 100 by default).
    fgsm: run :class:`FGSM` with ``fgsm_epsilons`` (PatchUp's, normalised units) and
      ``pixel_epsilons``.
    fgsm_epsilons: PatchUp's eps.
    pixel_epsilons: pixel-space eps.
    pgd: ``True`` for both presets of :data:`PGD_PRESETS`, or a list of names.
    deformed: evaluate the eight PatchUp deformed sets.
    corruptions: evaluate corruption robustness (:class:`Corruptions` with
      ``corruption_subset``, ``cifar_c_dir``, ``tfds_corrupted``, ``frost_textures``).
    corruption_subset: names of corruptions to use (default all 15).
    cifar_c_dir: folder of real CIFAR-10-C / CIFAR-100-C ``.npy`` files.
    tfds_corrupted: a tfds name such as ``"cifar10_corrupted"``.
    frost_textures: real frost photographs for the generator.
    cache_dir: where generated deformed / corrupted sets are cached (``None``: no cache).
    max_examples: evaluate on N evenly spaced test examples only (class-balanced on a
      class-sorted test set; real CIFAR-C sets keep their first N per severity).
    seed: seed of the generated sets and the PGD random start.
    log: optional ``print``-like progress callback.

  Returns:
    ``{"n_examples", "batch_size", "seconds", "clean", "fgsm", "pgd", "deformed",
    "corruptions"}``; disabled parts are absent.

  Raises:
    ValueError: for inconsistent shapes or a bad ``batch_size`` / ``max_examples`` / preset.

  Example:
    >>> logits_fn, data, cfg = jaxmix.training.restore_for_eval("runs/x")
    >>> m = evaluate_all(logits_fn, data.test.images, data.test.labels, mean=data.mean, std=data.std, max_examples=1000)
  """
  _check_batch_size(batch_size)
  images, labels = _check_test_set(test_images, test_labels, max_examples)
  protocols = [Clean()]
  if fgsm:
    protocols.append(FGSM(tuple(fgsm_epsilons), tuple(pixel_epsilons)))
  if pgd:
    protocols.append(PGD(tuple(PGD_PRESETS) if pgd is True else tuple(pgd)))
  if deformed:
    protocols.append(Deformed())
  if corruptions:
    protocols.append(Corruptions(corruption_subset, cifar_c_dir, tfds_corrupted, frost_textures))
  data = EvalData(logits_fn, images, labels, mean, std, batch_size, seed, cache_dir, max_examples)
  return run_protocols(protocols, data, log=log)


def _jsonable(obj):
  """Floats NaN/inf -> None, numpy scalars -> Python, recursively."""
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    v = float(obj)
    return v if math.isfinite(v) else None
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


def format_summary(metrics: dict) -> str:
  """A short human-readable summary of :func:`evaluate_all`'s dict (``None`` reads "n/a")."""
  c = metrics["clean"]
  fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
  lines = [
    f"examples: {metrics['n_examples']}",
    f"clean: top1 {fmt(c['top1'])}%  top5 {fmt(c['top5'])}%  CE {'n/a' if c['ce'] is None else format(c['ce'], '.4f')}  "
    f"ECE {fmt(c.get('ece'))}%  mean confidence {fmt(c.get('mean_confidence'))}%  "
    f"RMS calib {fmt(c.get('rms_calibration_error'))}% (official, last bin skipped; "
    f"all bins {fmt(c.get('rms_calibration_error_all_bins'))}%)",
  ]
  if "fgsm" in metrics:
    pu = "  ".join(f"{k}: {fmt(v['top1'])}" for k, v in metrics["fgsm"]["patchup"].items())
    px = "  ".join(f"{k}: {fmt(v['top1'])}" for k, v in metrics["fgsm"]["pixel"].items())
    lines.append(f"FGSM (PatchUp, normalised eps) top1 %: {pu}")
    lines.append(f"FGSM (pixel eps) top1 %: {px}")
  for name, v in metrics.get("pgd", {}).items():
    lines.append(f"PGD {name}: top1 {fmt(v['top1'])}%")
  if "deformed" in metrics:
    d = metrics["deformed"]
    lines.append("deformed top1 %: " + "  ".join(f"{k}: {fmt(v['top1'])}" for k, v in d.items() if isinstance(v, dict)))
  if "corruptions" in metrics:
    cc = metrics["corruptions"]
    lines.append(f"corruptions ({cc['source']}): mean top1 {fmt(cc['mean_top1'])}%  mean error {fmt(cc['mean_corruption_error'])}%")
    lines.append("  " + "  ".join(f"{k}: {fmt(v['top1'])}" for k, v in cc["per_corruption"].items()))
  return "\n".join(lines)
