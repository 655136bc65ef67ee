"""Side by side with timm's ``Mixup``: ``jaxmix.mixup_cutmix`` draws the same distributions.

For each setting and mode, both libraries mix the same batch many times; the script
compares, per sample, the distribution of lambda (two-sample Kolmogorov-Smirnov), the
share of CutMix among mixed samples and the distribution of the pasted box sides. Every
sample has its own class, so lambda is read back from the mixed targets exactly.
Needs torch and timm (``pip install torch==2.13.0; pip install --no-deps timm``).

  python benchmarks/timm_mixup_check.py [--draws 300]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from ops import load_timm_mixup  # benchmarks/ops.py: timm's mixup.py without torchvision
from scipy import stats

import jaxmix

torch, _timm_mixup = load_timm_mixup()

B, H, W = 16, 32, 24
_IMAGES = np.random.default_rng(0).uniform(size=(B, H, W, 3)).astype(np.float32)
_PARTNERS = _IMAGES[::-1]
SETTINGS = {
  "switch": dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0),
  "minmax": dict(mixup_alpha=0.0, cutmix_alpha=1.0, cutmix_minmax=(0.2, 0.8), prob=0.8),
  "no_correct_lam": dict(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False, prob=1.0),
}


def _stats(images, mixed, lam, mode="elem"):
  """Per mixed sample: is it CutMix, and the box's rows and columns (0 for Mixup).

  In batch mode every sample shares the draw, so only the first counts (one draw per
  batch); in pair mode the first of each pair.
  """
  take = {"batch": slice(0, 1), "pair": slice(0, B // 2), "elem": slice(None)}[mode]
  images, mixed, lam = images[take], mixed[take], lam[take]
  partner = _PARTNERS[take]
  own = np.isclose(mixed, images).all(-1)
  other = np.isclose(mixed, partner).all(-1) & ~np.isclose(images, partner).all(-1)
  cut = (own | other).all(axis=(1, 2)) & other.any(axis=(1, 2))
  rows, cols = other.any(axis=2).sum(axis=1), other.any(axis=1).sum(axis=1)
  keep = lam < 1.0 - 1e-6
  return cut[keep], lam[keep], rows[keep & cut], cols[keep & cut]


def _timm(setting, mode, draws, images):
  kw = dict(setting)
  mix = _timm_mixup.Mixup(
    mixup_alpha=kw.pop("mixup_alpha"),
    cutmix_alpha=kw.pop("cutmix_alpha"),
    cutmix_minmax=kw.pop("cutmix_minmax", None),
    prob=kw.pop("prob"),
    switch_prob=kw.pop("switch_prob", 0.5),
    mode=mode,
    correct_lam=kw.pop("correct_lam", True),
    label_smoothing=0.0,
    num_classes=B,
  )
  np.random.seed(0)  # noqa: NPY002 - timm's Mixup draws from the global numpy RNG
  out = []
  for _ in range(draws):
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    target = torch.arange(B)
    x, y = mix(x, target)
    lam = y.numpy()[np.arange(B), np.arange(B)]
    out.append(_stats(images, x.numpy().transpose(0, 2, 3, 1), lam, mode))
  return [np.concatenate(parts) for parts in zip(*out, strict=True)]


def _jaxmix(setting, mode, draws, images):
  labels = jaxmix.one_hot(np.arange(B), B)
  fn = jax.jit(lambda k: jaxmix.mixup_cutmix(k, images, labels, mode=mode, **setting))
  out = []
  for i in range(draws):
    res = fn(jax.random.key(i))
    out.append(_stats(images, np.asarray(res.images), np.asarray(res.labels)[np.arange(B), np.arange(B)], mode))
  return [np.concatenate(parts) for parts in zip(*out, strict=True)]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--draws", type=int, default=300)
  args = parser.parse_args()
  images = _IMAGES
  print("| setting | mode | mixed samples (timm / jaxmix) | CutMix share | lambda KS p | box rows KS p | box cols KS p |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for name, setting in SETTINGS.items():
    for mode in ("batch", "pair", "elem"):
      t_cut, t_lam, t_rows, t_cols = _timm(setting, mode, args.draws, images)
      j_cut, j_lam, j_rows, j_cols = _jaxmix(setting, mode, args.draws, images)
      ks = lambda a, b: stats.ks_2samp(a, b).pvalue if len(a) and len(b) else float("nan")  # noqa: E731
      print(
        f"| {name} | {mode} | {len(t_lam)} / {len(j_lam)} | {t_cut.mean():.3f} / {j_cut.mean():.3f} | {ks(t_lam, j_lam):.3f} "
        f"| {ks(t_rows, j_rows):.3f} | {ks(t_cols, j_cols):.3f} |"
      )


if __name__ == "__main__":
  main()
