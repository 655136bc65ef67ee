"""Every training command of the seed READMEs, with the papers' numbers.

Each :class:`Experiment` holds one seed command (without its data and output paths,
which the runner adds), the numbers the paper or README reports for it (``expected``,
in percent) and where each number comes from (``source``). A number that could not be
read from a public source is left out and the ``source`` says so; none is invented.

Where the seed repository has a command line, the entry *is* that command line,
verbatim, read by its dialect (``dialect``, as ``jaxmix seed DIALECT`` reads it,
``jaxmix/dialects.py``), so it trains what the official script trains:

* **PatchUp** (``chandar-lab/PatchUp`` README): its ``main.py`` lines. CIFAR-100 / SVHN
  change only ``--dataset`` and ``--labels_per_class`` / ``--valid_labels_per_class``
  (README "CIFAR-100" / "SVHN" sections); SVHN's Cutout gets ``--cutout 20`` (README note).
* **Puzzle Mix** (``snu-mllab/PuzzleMix`` README): its ``main.py`` lines for CIFAR-100
  (PreActResNet-18 and, as the README says to change, WRN-28-10) and Tiny-ImageNet, and
  its ``imagenet/README.md`` line of ``imagenet/train.py`` (ResNet-50, 300 epochs; CutMix
  and vanilla with its other ``--method`` values).
* **IPMix** (``hzlsaber/IPMix`` README): its ``cifar.py`` and ``imagenet.py`` lines.

The rest are ``jaxmix train`` flags (``dialect == ""``):

* **Patch Augmentation** (``mdbloice/Patch-Augmentation`` notebooks, no command line;
  docs/algorithms/recipes.md#keras-resnet20v1-and-resnet29v2): Keras ResNet20v1 /
  ResNet29v2, Adam 1e-3 with the notebook's per-epoch schedule, L2 1e-4 on conv kernels
  in the loss, categorical CE, batch 128, 200 epochs, no crop/flip. Deviation: the
  notebooks subtract the per-pixel mean image; jaxmix normalises with the per-channel
  CIFAR mean/std.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

# ----------------------------------------------------------------------------
# Where the expected numbers come from.

SRC_PATCHUP = (
  "PatchUp paper (Faramarzi et al., AAAI 2022, arXiv:2006.07794) Tables 1-4: not available to us in "
  "readable form (only the abstract); the PatchUp README gives no numbers. Left empty."
)
SRC_PA_README = (
  "mdbloice/Patch-Augmentation README (current version, as stored at github.com/mdbloice/Patch-Augmentation): "
  "table 'test set accuracy' (Dataset | Model | No Augmentation | Patch Augmentation). The notebooks report the "
  "max test accuracy over epochs (docs/algorithms/ 11.6)."
)
SRC_PA_README_C100 = (
  "mdbloice/Patch-Augmentation README: ResNet20v1 CIFAR-100 baseline 44.08% (table); the Patch Augmentation cell "
  "is cut off in the stored copy, the README text says 'improves a baseline accuracy of about 45% to over 61%'. "
  "Only the baseline is filled in."
)
SRC_PA_NONE = "mdbloice/Patch-Augmentation README: the stored copy of its table is cut off before this row. Left empty."
SRC_PA_ADV = (
  "mdbloice/Patch-Augmentation Adversarial-Examples.ipynb, outputs of cells 6-8: CleverHans FGSM on the first 1,000 "
  "CIFAR-10 test images (mean-subtracted [0, 1] inputs, clip [-1, 1], no labels passed, so the predicted labels are "
  "attacked): eps 0.001: 725/1000 (Patch Augmentation, p=0.5, patch_area=0.5) vs 643/1000 (no augmentation); "
  "eps 0.03: 201/1000 vs 138/1000. Models: ResNet20v2 checkpoints of epochs 105 / 114."
)
SRC_PM_README = (
  "snu-mllab/PuzzleMix README, 'Download Checkpoints and Test': the released adversarial Puzzle Mix PreActResNet18 "
  "CIFAR-100 checkpoint has 80.34% clean test accuracy and 42.89% accuracy against FGSM with 8/255 l-inf epsilon."
)
SRC_PM_PWC = (
  "Papers with Code entry of the Puzzle Mix paper (ICML 2020): CIFAR-100, WRN28-10, 'Percentage correct' 84.05 "
  "(the listing does not say which epoch budget / variant; the paper's own tables were not readable)."
)
SRC_PM_NONE = "Puzzle Mix paper (Kim et al., ICML 2020) Table 1/2: not available to us in readable form. Left empty."
SRC_IPMIX_NONE = (
  "IPMix paper (Huang et al., NeurIPS 2023) tables: not available to us in readable form; the IPMix README gives no numbers. Left empty."
)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One seed command as a ``jaxmix train`` entry.

  Attributes:
    name: unique name (also the run directory name under ``--root_dir``).
    seed_repo: the repository whose README / notebook the command comes from.
    argv: ``jaxmix train`` flags, without ``--data_dir`` / ``--root_dir`` / ``--job_id``.
    expected: metric -> value in percent reported by the paper / README
      (``"test_top1"``, ``"fgsm_8_255_top1"``); empty when not found.
    source: where each expected number comes from (or why it is empty).
    note: deviations or remarks.
    dialect: ``""`` when ``argv`` holds ``jaxmix train`` flags; else the repository whose
      official command line ``argv`` is, verbatim (without its data and output paths),
      run through ``jaxmix seed DIALECT``.
  """

  name: str
  seed_repo: str
  argv: tuple
  expected: Mapping[str, float]
  source: str
  note: str = ""
  dialect: str = ""


def _split(cmd: str) -> tuple:
  return tuple(cmd.split())


# ----------------------------------------------------------------------------
# PatchUp


_PU_DATA = {
  "cifar10": "--dataset cifar10 --labels_per_class 5000 --valid_labels_per_class 500",
  "cifar100": "--dataset cifar100 --labels_per_class 500 --valid_labels_per_class 50",
  "svhn": "--dataset svhn --labels_per_class 7325 --valid_labels_per_class 733",
}
_PU_ARCH = {
  "preactresnet18": "--arch preactresnet18 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1",
  "preactresnet34": "--arch preactresnet34 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1",
  "wrn28_10": "--arch wrn28_10 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1",
}
_PU_COMMON = "--learning_rate 0.1 --momentum 0.9 --decay 0.0001"


def _pu_method(method: str, dataset: str, arch: str, *, gamma_soft: float = 0.75) -> str:
  cutout = 20 if dataset == "svhn" else (8 if arch == "wrn28_10" else 16)
  return {
    "patchup_soft": f"--train patchup --alpha 2.0 --patchup_type soft --patchup_block 7 --patchup_prob 1.0 --gamma {gamma_soft}",
    "patchup_hard": "--train patchup --alpha 2.0 --patchup_type hard --patchup_block 7 --patchup_prob 0.7 --gamma 0.5",
    "manifold_mixup": "--train manifold_mixup --alpha 1.5",
    "cutmix": "--train cutmix --cutmix_prob 0.4",
    "cutout": f"--train cutout --cutout {cutout}",
    "mixup": "--train mixup --alpha 1.0",
    "dropblock": "--train dropblock --drop_block 7 --keep_prob 0.9 --drop_block_all True",
    "vanilla": "--train vanilla",
  }[method]


PATCHUP_METHODS = ("patchup_soft", "patchup_hard", "manifold_mixup", "cutmix", "cutout", "mixup", "dropblock", "vanilla")


def _patchup_entries():
  for dataset in _PU_DATA:
    for arch in _PU_ARCH:
      for method in PATCHUP_METHODS:
        cmd = f"{_PU_DATA[dataset]} {_PU_ARCH[arch]} {_PU_COMMON} {_pu_method(method, dataset, arch)}"
        yield Experiment(f"patchup.{dataset}.{arch}.{method}", "chandar-lab/PatchUp", _split(cmd), {}, SRC_PATCHUP, dialect="patchup")
  # Deformed images: README example is CIFAR-100 WRN-28-10 Soft PatchUp with gamma 0.25 and
  # --affine_test; "use the above as a pattern" for the other methods.
  for method in PATCHUP_METHODS:
    cmd = f"{_PU_DATA['cifar100']} {_PU_ARCH['wrn28_10']} {_PU_COMMON} {_pu_method(method, 'cifar100', 'wrn28_10', gamma_soft=0.25)}"
    yield Experiment(
      f"patchup.deformed.cifar100.wrn28_10.{method}",
      "chandar-lab/PatchUp",
      _split(cmd + " --affine_test"),
      {},
      SRC_PATCHUP,
      "deformed test sets (PatchUp README 'Experiments on Deformed Images'); generated by jaxmix.deform, no load_data.py step",
      dialect="patchup",
    )
  # FGSM: README example is CIFAR-10 PreActResNet18 Soft PatchUp with gamma 0.25 and --fsgm_attack True.
  for method in PATCHUP_METHODS:
    cmd = (
      f"{_PU_DATA['cifar10']} {_PU_ARCH['preactresnet18']} {_PU_COMMON} {_pu_method(method, 'cifar10', 'preactresnet18', gamma_soft=0.25)}"
    )
    yield Experiment(
      f"patchup.fgsm.cifar10.preactresnet18.{method}",
      "chandar-lab/PatchUp",
      _split(cmd + " --fsgm_attack True"),
      {},
      SRC_PATCHUP,
      "FGSM as PatchUp (normalised-space eps 0..0.2, batch-wide clamp), PatchUp README 'Robustness to Adversarial Examples'",
      dialect="patchup",
    )


# ----------------------------------------------------------------------------
# Patch Augmentation (Keras notebooks)

# lr = 1e-3, x0.1 after epoch 100, 1e-2 after 140, 1e-3 after 180, 5e-4 after 190 (0-based
# Keras epochs, 'epoch > 100' -> from epoch 101); jaxmix's factors multiply cumulatively.
_PA_COMMON = (
  "--optimizer adam --learning_rate 0.001 --decay 0 --l2_conv 1e-4 --loss ce --batch_size 128 --epochs 200 "
  "--schedule 101 141 181 191 --step_factors 0.1 0.1 0.1 0.5 --crop_padding 0 --flip False"
)
# CIFAR-10: the README table does not say which hyper-parameters; use PatchAugmentation.py's class
# defaults (p=1.0, 0.1..0.9, the registry defaults). CIFAR-100: notebook cell 28 (p=0.9, 0.3..0.8).
_PA_HP = {"cifar10": "", "cifar100": "--patch_prob 0.9 --patch_min_dim 0.3 --patch_max_dim 0.8"}
_PA_EXPECTED = {
  ("cifar10", "resnet20v1"): ({"test_top1": 80.86}, {"test_top1": 89.33}, SRC_PA_README),
  ("cifar10", "resnet29v2"): ({"test_top1": 83.15}, {"test_top1": 91.19}, SRC_PA_README),
  ("cifar100", "resnet20v1"): ({"test_top1": 44.08}, {}, SRC_PA_README_C100),
  ("cifar100", "resnet29v2"): ({}, {}, SRC_PA_NONE),
}


def _patch_augment_entries():
  for dataset in ("cifar10", "cifar100"):
    for arch in ("resnet20v1", "resnet29v2"):
      base, pa, src = _PA_EXPECTED[(dataset, arch)]
      note = "reported numbers are max test accuracy over epochs; per-pixel mean subtraction replaced by per-channel mean/std"
      pa_cmd = f"--dataset {dataset} --arch {arch} {_PA_COMMON} --train patch_augment {_PA_HP[dataset]}"
      yield Experiment(f"patch_augment.{dataset}.{arch}.patch_augment", "mdbloice/Patch-Augmentation", _split(pa_cmd), pa, src, note)
      van_cmd = f"--dataset {dataset} --arch {arch} {_PA_COMMON} --train vanilla"
      yield Experiment(f"patch_augment.{dataset}.{arch}.vanilla", "mdbloice/Patch-Augmentation", _split(van_cmd), base, src, note)
  # The adversarial notebook's two ResNet20v2 models (Keras resnet_v2 with n = 2). Its Patch Augmentation model
  # used the older fixed-area variant (p=0.5, patch_area=0.5: a 23x23 patch at the same place in source and
  # destination, label weight 0.5); the closest current-variant setting is a fixed 23x23 patch (23/32 of the side,
  # label weight 529/1024) at independent places.
  adv_note = (
    "jaxmix's --fsgm_attack runs PatchUp's and the pixel-space FGSM, not CleverHans's on mean-subtracted inputs with "
    "predicted labels; compare with pixel eps ~0.255/255 and ~7.65/255 only loosely. Fixed-area old variant approximated."
  )
  arch = '--arch resnet29v2 --model_kwargs {"depth":20}'
  for method, flags, expected in (
    ("patch_augment", "--train patch_augment --patch_prob 0.5 --patch_min_dim 0.71875 --patch_max_dim 0.71875", (72.5, 20.1)),
    ("vanilla", "--train vanilla", (64.3, 13.8)),
  ):
    cmd = f"--dataset cifar10 {arch} {_PA_COMMON} {flags} --fsgm_attack True"
    exp = {"fgsm_cleverhans_eps0.001_top1": expected[0], "fgsm_cleverhans_eps0.03_top1": expected[1]}
    yield Experiment(
      f"patch_augment.fgsm.cifar10.resnet20v2.{method}", "mdbloice/Patch-Augmentation", _split(cmd), exp, SRC_PA_ADV, adv_note
    )


# ----------------------------------------------------------------------------
# Puzzle Mix

# Its README's CIFAR-100 lines (without --data_dir / --root_dir): main.py's own defaults give batch 100 and no
# validation split; the WRN-28-10 budgets change --arch, --epochs, --schedule (and --learning_rate) as it says.
_PM_DATA = "--dataset cifar100 --labels_per_class 500"
_PM_BUDGETS = {
  ("preactresnet18", "long"): "--arch preactresnet18 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 1200 --schedule 400 800",
  ("preactresnet18", "short"): "--arch preactresnet18 --learning_rate 0.2 --momentum 0.9 --decay 0.0001 --epochs 600 --schedule 350 500",
  ("wrn28_10", "long"): "--arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300",
  ("wrn28_10", "short"): "--arch wrn28_10 --learning_rate 0.2 --momentum 0.9 --decay 0.0001 --epochs 200 --schedule 120 170",
}
_PM_EPOCHS = {("preactresnet18", "long"): 1200, ("preactresnet18", "short"): 600, ("wrn28_10", "long"): 400, ("wrn28_10", "short"): 200}
_PM_FLAGS = (
  "--gammas 0.1 0.1 --train mixup --mixup_alpha 1.0 --graph True --n_labels 3 --eta 0.2 --beta 1.2 --gamma 0.5 --neigh_size 4 "
  "--transport True --t_size 4 --t_eps 0.8"
)
_PM_ADV = "--adv_p 0.1 --adv_eps 10.0"
_PM_BASELINES = {
  "vanilla": "--gammas 0.1 0.1 --train vanilla",
  "mixup": "--gammas 0.1 0.1 --train mixup --mixup_alpha 1.0",
  "manifold_mixup": "--gammas 0.1 0.1 --train mixup_hidden --mixup_alpha 2.0",
  "cutmix": "--gammas 0.1 0.1 --train mixup --mixup_alpha 1.0 --box True",
}


def _puzzlemix_entries():
  note = "graph-free Puzzle Mix (docs/algorithms/puzzlemix.md); PuzzleMix reports the median test accuracy of the last 10 epochs"
  for arch in ("preactresnet18", "wrn28_10"):
    for budget in ("long", "short"):
      epochs = _PM_EPOCHS[(arch, budget)]
      expected, src = {}, SRC_PM_NONE
      if arch == "wrn28_10" and budget == "long":
        expected, src = {"test_top1": 84.05}, SRC_PM_PWC
      cmd = f"{_PM_DATA} {_PM_BUDGETS[(arch, budget)]} {_PM_FLAGS}"
      yield Experiment(
        f"puzzlemix.cifar100.{arch}.puzzlemix_{epochs}ep", "snu-mllab/PuzzleMix", _split(cmd), expected, src, note, dialect="puzzlemix"
      )
    long_epochs = _PM_EPOCHS[(arch, "long")]
    expected, src = {}, SRC_PM_NONE
    if arch == "preactresnet18":
      expected, src = {"test_top1": 80.34, "fgsm_8_255_top1": 42.89}, SRC_PM_README
    cmd = f"{_PM_DATA} {_PM_BUDGETS[(arch, 'long')]} {_PM_FLAGS} {_PM_ADV}"
    yield Experiment(
      f"puzzlemix.cifar100.{arch}.puzzlemix_adv_{long_epochs}ep",
      "snu-mllab/PuzzleMix",
      _split(cmd),
      expected,
      src,
      note + "; adversarial variant (adv_p 0.1, adv_eps 10/255); FGSM 8/255 is in summary.json robustness.fgsm.pixel",
      dialect="puzzlemix",
    )
    for method, flags in _PM_BASELINES.items():
      cmd = f"{_PM_DATA} {_PM_BUDGETS[(arch, 'long')]} {flags}"
      yield Experiment(
        f"puzzlemix.cifar100.{arch}.{method}_{long_epochs}ep", "snu-mllab/PuzzleMix", _split(cmd), {}, SRC_PM_NONE, dialect="puzzlemix"
      )


# ----------------------------------------------------------------------------
# Puzzle Mix on Tiny-ImageNet-200 (its README's commands, verbatim) and ImageNet

SRC_PM_TINY = (
  "The Puzzle Mix paper's Tiny-ImageNet table (PreActResNet-18, 1200 epochs) as shown on the lecture's Puzzle Mix slides "
  "and quoted in this project's issue: top-1 / top-5 / FGSM error 42.77 / 26.35 / 91.85 (vanilla), 36.52 / 18.95 / 92.52 "
  "(Puzzle Mix), 38.55 / 20.48 / 82.07 (Puzzle Mix adv); stored as accuracies (100 - error). The slides do not give "
  "the FGSM epsilon; the other commands have no number there."
)
SRC_PM_IMAGENET = (
  "snu-mllab/PuzzleMix imagenet/README.md table (ResNet-50, 300 epochs, CutMix's setting): top-1 / top-5 error (best) "
  "23.68 / 7.05 (baseline), 21.40 / 5.92 (CutMix), 21.24 / 5.71 (Puzzle Mix); stored as accuracies (100 - error)."
)
_PM_TINY_COMMON = (
  "--dataset tiny-imagenet-200 --labels_per_class 500 --arch preactresnet18 --learning_rate 0.2 --momentum 0.9 --decay 0.0001"
)
_PM_TINY_PUZZLE = (
  "--train mixup --mixup_alpha 1.0 --graph True --n_labels 3 --eta 0.2 --beta 1.2 --gamma 0.5 --neigh_size 4 --transport True --t_eps 0.8"
)
_PM_TINY = {
  "puzzlemix_1200ep": (f"--epochs 1200 --schedule 600 900 --gammas 0.1 0.1 {_PM_TINY_PUZZLE} --clean_lam 1", (63.48, 81.05, 7.48)),
  "puzzlemix_600ep": (f"--epochs 600 --schedule 300 450 --gammas 0.1 0.1 {_PM_TINY_PUZZLE} --clean_lam 1", None),
  "puzzlemix_adv_1200ep": (
    f"--epochs 1200 --schedule 600 900 --gammas 0.1 0.1 {_PM_TINY_PUZZLE} --adv_p 0.15 --adv_eps 10.0 --clean_lam 1",
    (61.45, 79.52, 17.93),
  ),
  "puzzlemix_adv_600ep": (
    f"--epochs 600 --schedule 300 450 --gammas 0.1 0.1 {_PM_TINY_PUZZLE} --adv_p 0.15 --adv_eps 10.0 --clean_lam 1",
    None,
  ),
  "vanilla_1200ep": ("--epochs 1200 --schedule 600 900 --gammas 0.1 0.1 --train vanilla", (57.23, 73.65, 8.15)),
  "mixup_1200ep": ("--epochs 1200 --schedule 600 900 --gammas 0.1 0.1 --train mixup --mixup_alpha 0.2", None),
  "manifold_mixup_1200ep": ("--epochs 1200 --schedule 600 900 --gammas 0.1 0.1 --train mixup_hidden --mixup_alpha 0.2", None),
  "cutmix_1200ep": ("--epochs 1200 --schedule 600 900 --gammas 0.1 0.1 --train mixup --mixup_alpha 0.2 --box True", None),
}

# Its imagenet/README.md line (imagenet/train.py: ResNet-50, batch 256, lr 0.1 x 0.1 every 75 epochs of 300,
# Nesterov SGD, wd 1e-4, CE, mixup_prob 1); CutMix and vanilla are the same line with its other --method values.
_PM_IMAGENET = (
  "--net_type resnet --dataset imagenet --batch_size 256 --lr 0.1 --depth 50 --epochs 300 --expname ResNet50 -j 40 --beta 1.0 "
  "--mixup_prob 1.0 --method {method} --transport True --no-verbose"
)
_PM_IMAGENET_METHODS = {"puzzlemix": ("puzzle", (78.76, 94.29)), "cutmix": ("cut", (78.60, 94.08)), "vanilla": ("vanilla", (76.32, 92.95))}


def _puzzlemix_large_entries():
  tiny_note = "its main.py at 64x64: stride-2 stem (preactresnet18_64), crop padding 4, mean = std = 0.5, test on val/"
  for name, (flags, expected) in _PM_TINY.items():
    exp = {} if expected is None else dict(zip(("test_top1", "test_top5", "fgsm_top1"), expected, strict=True))
    yield Experiment(
      f"puzzlemix.tiny-imagenet-200.preactresnet18.{name}",
      "snu-mllab/PuzzleMix",
      _split(f"{_PM_TINY_COMMON} {flags}"),
      exp,
      SRC_PM_TINY if expected else SRC_PM_NONE,
      tiny_note,
      dialect="puzzlemix",
    )
  for method, (official, (top1, top5)) in _PM_IMAGENET_METHODS.items():
    yield Experiment(
      f"puzzlemix.imagenet.resnet50.{method}_300ep",
      "snu-mllab/PuzzleMix",
      _split(_PM_IMAGENET.format(method=official)),
      {"test_top1": top1, "test_top5": top5},
      SRC_PM_IMAGENET,
      "its imagenet/train.py; no ColorJitter / PCA lighting in jaxmix; test = the ImageNet validation set",
      dialect="puzzlemix",
    )


# ----------------------------------------------------------------------------
# IPMix (its cifar.py and imagenet.py command lines, verbatim, through `jaxmix seed ipmix`)


def _ipmix_entries():
  note = "no dropout in jaxmix's WideResNet; CIFAR mean/std normalisation instead of 0.5/0.5"
  for dataset in ("cifar10", "cifar100"):
    for model, extra, tag in (
      ("wrn", "", "wrn40_4.ipmix"),
      ("resnext", "", "resnext29.ipmix"),
      ("wrn", " --no-jsd", "wrn40_4.ipmix_nojsd"),
    ):
      yield Experiment(
        f"ipmix.{dataset}.{tag}",
        "hzlsaber/IPMix",
        _split(f"--dataset {dataset} --model {model}{extra}"),
        {},
        SRC_IPMIX_NONE,
        note,
        dialect="ipmix",
      )
  yield Experiment(  # its README's imagenet.py line (ResNet-50, 180 epochs, JSD), the paths left to the runner
    "ipmix.imagenet.resnet50.ipmix_180ep",
    "hzlsaber/IPMix",
    _split("--num-classes 1000"),
    {},
    SRC_IPMIX_NONE,
    "the ImageNet IPMix's extra P step with an augmented copy is not done (docs/algorithms/ipmix.md); ImageNet-R/-C/-A not evaluated",
    dialect="ipmix",
  )


def all_experiments() -> tuple:
  """Every seed command, in a fixed order (PatchUp, Patch Augmentation, Puzzle Mix, IPMix)."""
  return (*_patchup_entries(), *_patch_augment_entries(), *_puzzlemix_entries(), *_puzzlemix_large_entries(), *_ipmix_entries())


EXPERIMENTS: tuple = all_experiments()
BY_NAME: Mapping[str, Experiment] = {e.name: e for e in EXPERIMENTS}
