"""Evaluation: metrics, attacks, robustness test sets and the protocols that run them.

Everything here works on a ``logits_fn`` and host arrays and imports nothing of
training, except the command line (:mod:`jaxmix.evaluation.cli`), which restores
checkpoints through :mod:`jaxmix.training.checkpoint`.
"""

from jaxmix.evaluation import attacks, corruptions, deform, metrics, protocols
from jaxmix.evaluation.attacks import fgsm_patchup, fgsm_pixel, input_gradient, pgd_pixel
from jaxmix.evaluation.metrics import (
  classification_metrics,
  cross_entropy,
  expected_calibration_error,
  mean_confidence,
  rms_calibration_error,
  top_k_correct,
)
from jaxmix.evaluation.protocols import (
  FGSM,
  FGSM_PATCHUP_EPSILONS,
  FGSM_PIXEL_EPSILONS,
  PGD,
  PGD_PRESETS,
  Clean,
  Corruptions,
  Deformed,
  EvalData,
  EvalProtocol,
  evaluate_all,
  format_summary,
  predict,
  run_protocols,
  spread_indices,
)

__all__ = (
  "FGSM",
  "FGSM_PATCHUP_EPSILONS",
  "FGSM_PIXEL_EPSILONS",
  "PGD",
  "PGD_PRESETS",
  "Clean",
  "Corruptions",
  "Deformed",
  "EvalData",
  "EvalProtocol",
  "attacks",
  "classification_metrics",
  "corruptions",
  "cross_entropy",
  "deform",
  "evaluate_all",
  "expected_calibration_error",
  "fgsm_patchup",
  "fgsm_pixel",
  "format_summary",
  "input_gradient",
  "mean_confidence",
  "metrics",
  "pgd_pixel",
  "predict",
  "protocols",
  "rms_calibration_error",
  "run_protocols",
  "spread_indices",
  "top_k_correct",
)
