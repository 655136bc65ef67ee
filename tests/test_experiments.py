"""Tests of ``experiments/``: the seed commands, the runner and the CPU benchmark (one tiny real run)."""

import dataclasses
import inspect
import itertools
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from conftest import CIFAR_DIR  # noqa: E402

import jaxmix  # noqa: E402
from experiments import cpu_benchmark as cb  # noqa: E402
from experiments import run as runner  # noqa: E402
from experiments import seeds  # noqa: E402
from jaxmix import dialects  # noqa: E402
from jaxmix import training as jtrain  # noqa: E402
from jaxmix.ops import hook  # noqa: E402


def _method_of(exp):
  return _parse(exp).train if exp.dialect else exp.argv[exp.argv.index("--train") + 1]


def _parse(exp, extra=()):
  return runner.config(exp, data_dir="/data", root_dir="/tmp/root", extra=extra)


def _parseable(exp):
  if _method_of(exp) not in jaxmix.METHODS:
    pytest.skip(f"method {_method_of(exp)!r} is not registered yet")
  return _parse(exp)


def test_names_unique_and_counts_per_seed_repo():
  names = [e.name for e in seeds.EXPERIMENTS]
  assert len(names) == len(set(names))
  counts = {}
  for e in seeds.EXPERIMENTS:
    counts[e.seed_repo] = counts.get(e.seed_repo, 0) + 1
  # PatchUp: 3 datasets x 3 archs x 8 methods + 8 deformed + 8 FGSM; Patch Augmentation: 2 x 2 x 2 + the 2 models of
  # the adversarial notebook; Puzzle Mix: 2 archs x (2 budgets + adversarial + 4 baselines); IPMix: 2 datasets x
  # (2 archs + no-JSD).
  # Puzzle Mix also: its 8 Tiny-ImageNet README commands and 3 ImageNet runs; IPMix: 2 datasets x (WRN, ResNeXt,
  # WRN without JSD) + ImageNet.
  assert counts == {"chandar-lab/PatchUp": 88, "mdbloice/Patch-Augmentation": 10, "snu-mllab/PuzzleMix": 25, "hzlsaber/IPMix": 7}


def test_patchup_grid_is_complete():
  grid = {tuple(e.name.split(".")[1:]) for e in seeds.EXPERIMENTS if e.seed_repo == "chandar-lab/PatchUp" and len(e.name.split(".")) == 4}
  want = set(itertools.product(("cifar10", "cifar100", "svhn"), ("preactresnet18", "preactresnet34", "wrn28_10"), seeds.PATCHUP_METHODS))
  assert grid == want


@pytest.mark.parametrize("exp", seeds.EXPERIMENTS, ids=lambda e: e.name)
def test_every_entry_parses_into_a_valid_config(exp):
  cfg = _parseable(exp)
  assert isinstance(cfg, jtrain.TrainConfig)
  assert cfg.train in jaxmix.METHODS
  assert cfg.arch in jtrain.ARCHS
  assert cfg.job_id == exp.name and cfg.root_dir == "/tmp/root" and cfg.data_dir == "/data"
  assert cfg.run_dir() == os.path.join("/tmp/root", exp.name)
  assert len(cfg.schedule) == len(cfg.step_factors)
  # every method flag reached a hyper-parameter the registry op knows (Puzzle Mix's adversarial
  # flags belong to puzzlemix_train_batch, the training-loop wrapper of the op)
  method = jaxmix.METHODS[cfg.train]
  if method.site == "hidden":
    known = set(hook.method_defaults(cfg.train))
  else:
    known = {p.name for p in inspect.signature(method.op).parameters.values() if p.kind is p.KEYWORD_ONLY}
  known |= {"adv_p", "adv_eps"} if cfg.train == "puzzlemix" else set()
  assert set(cfg.hparams) <= known, (cfg.hparams, known)
  jtrain.make_optimizer(cfg, steps_per_epoch=10)  # raises on an inconsistent optimiser / schedule
  keys = ("test_top1", "test_top5", "fgsm_top1", "fgsm_8_255_top1", "fgsm_cleverhans_eps0.001_top1", "fgsm_cleverhans_eps0.03_top1")
  for key, value in exp.expected.items():
    assert key in keys and 0 < value <= 100
  assert exp.source


def test_patchup_known_flags():
  soft = _parse(seeds.BY_NAME["patchup.cifar10.preactresnet18.patchup_soft"])
  assert (soft.epochs, soft.schedule, soft.step_factors) == (2000, (500, 1000, 1500), (0.1, 0.1, 0.1))
  assert (soft.labels_per_class, soft.valid_labels_per_class, soft.loss, soft.crop_padding, soft.flip) == (5000, 500, "bce", 2, True)
  # its main.py: k = 2 (mix at input, conv1 or layer1); its PreActResNet has no target bug, its WideResNet does
  sites = ("input", "conv1", "layer1")
  assert soft.hparams == {"mode": "soft", "block_size": 7, "prob": 1.0, "gamma": 0.75, "sites": sites, "wrn_target_bug": False}
  hard = _parse(seeds.BY_NAME["patchup.cifar100.wrn28_10.patchup_hard"])
  assert (hard.dataset, hard.labels_per_class, hard.valid_labels_per_class, hard.epochs, hard.schedule) == (
    "cifar100",
    500,
    50,
    400,
    (200, 300),
  )
  assert hard.hparams == {"mode": "hard", "block_size": 7, "prob": 0.7, "gamma": 0.5, "sites": sites, "wrn_target_bug": True}
  svhn = _parse(seeds.BY_NAME["patchup.svhn.preactresnet34.cutout"])
  # its SVHN loader crops without flipping; its Cutout cuts one hole for the whole batch
  assert (svhn.dataset, svhn.flip, svhn.hparams, svhn.labels_per_class) == ("svhn_cropped", False, {"size": 20, "shared": True}, 7325)
  assert _parse(seeds.BY_NAME["patchup.cifar10.wrn28_10.cutout"]).hparams == {"size": 8, "shared": True}
  assert _parse(seeds.BY_NAME["patchup.cifar10.wrn28_10.manifold_mixup"]).hparams == {"alpha": 1.5, "sites": sites}
  assert _parse(seeds.BY_NAME["patchup.cifar10.wrn28_10.cutmix"]).hparams == {"alpha": 1.0, "prob": 0.4}  # CutMix(beta=1.)
  db = _parse(seeds.BY_NAME["patchup.cifar10.wrn28_10.dropblock"])
  assert db.hparams == {"block_size": 7, "keep_prob": 0.9, "drop_block_all": True, "sites": ("conv1", "layer1")}
  deformed = _parse(seeds.BY_NAME["patchup.deformed.cifar100.wrn28_10.patchup_soft"])
  assert deformed.affine_test and deformed.hparams["gamma"] == 0.25 and not deformed.fsgm_attack
  fgsm = _parse(seeds.BY_NAME["patchup.fgsm.cifar10.preactresnet18.patchup_soft"])
  assert fgsm.fsgm_attack and fgsm.hparams["gamma"] == 0.25 and not fgsm.affine_test


def _keras_lr(epoch):
  """The Patch Augmentation notebook's ``lr_schedule`` (reference)."""
  lr = 1e-3
  if epoch > 190:
    lr *= 0.5e-3
  elif epoch > 180:
    lr *= 1e-3
  elif epoch > 140:
    lr *= 1e-2
  elif epoch > 100:
    lr *= 1e-1
  return lr


@pytest.mark.parametrize("name", ["patch_augment.cifar10.resnet20v1.patch_augment", "patch_augment.cifar100.resnet29v2.vanilla"])
def test_patch_augment_recipe_matches_keras_notebook(name):
  cfg = _parse(seeds.BY_NAME[name])
  assert (cfg.optimizer, cfg.decay, cfg.l2_conv, cfg.loss, cfg.crop_padding, cfg.flip, cfg.batch_size, cfg.epochs) == (
    "adam",
    0.0,
    1e-4,
    "ce",
    0,
    False,
    128,
    200,
  )
  for epoch in range(cfg.epochs):
    lr = cfg.learning_rate * np.prod([f for e, f in zip(cfg.schedule, cfg.step_factors, strict=True) if epoch >= e])
    assert lr == pytest.approx(_keras_lr(epoch), rel=1e-9), epoch


def test_patch_augment_hparams_per_dataset():
  assert _parse(seeds.BY_NAME["patch_augment.cifar10.resnet29v2.patch_augment"]).hparams == {}
  c100 = _parse(seeds.BY_NAME["patch_augment.cifar100.resnet20v1.patch_augment"])
  assert c100.hparams == {"prob": 0.9, "min_dim": 0.3, "max_dim": 0.8}
  assert seeds.BY_NAME["patch_augment.cifar10.resnet20v1.patch_augment"].expected == {"test_top1": 89.33}


def test_patch_augment_fgsm_entries():
  cfg = _parse(seeds.BY_NAME["patch_augment.fgsm.cifar10.resnet20v2.patch_augment"])
  assert (cfg.arch, cfg.model_kwargs, cfg.fsgm_attack, cfg.optimizer) == ("resnet29v2", {"depth": 20}, True, "adam")
  assert cfg.hparams == {"prob": 0.5, "min_dim": 0.71875, "max_dim": 0.71875}
  assert round(cfg.hparams["min_dim"] * 32) == 23  # the old variant's side round(sqrt(0.5 * 32**2))
  van = seeds.BY_NAME["patch_augment.fgsm.cifar10.resnet20v2.vanilla"]
  assert van.expected == {"fgsm_cleverhans_eps0.001_top1": 64.3, "fgsm_cleverhans_eps0.03_top1": 13.8}


def test_puzzlemix_entries():
  adv = seeds.BY_NAME["puzzlemix.cifar100.preactresnet18.puzzlemix_adv_1200ep"]
  assert adv.expected == {"test_top1": 80.34, "fgsm_8_255_top1": 42.89}
  cfg = _parseable(adv)
  assert (cfg.dataset, cfg.labels_per_class, cfg.valid_labels_per_class, cfg.batch_size, cfg.loss) == ("cifar100", 500, 0, 100, "bce")
  assert (cfg.epochs, cfg.schedule, cfg.learning_rate, cfg.fsgm_attack) == (1200, (400, 800), 0.1, True)
  assert cfg.hparams["adv_p"] == 0.1 and cfg.hparams["adv_eps"] == 10.0 and cfg.hparams["t_size"] == 4
  assert cfg.hparams["beta"] == 1.2 and cfg.hparams["gamma"] == 0.5 and cfg.hparams["eta"] == 0.2
  short = _parse(seeds.BY_NAME["puzzlemix.cifar100.wrn28_10.cutmix_400ep"])
  assert short.hparams == {"alpha": 1.0, "prob": 1.0, "box_rule": "puzzlemix"} and short.epochs == 400
  assert not short.fsgm_attack  # its main.py attacks only when --adv_p > 0
  hidden = _parse(seeds.BY_NAME["puzzlemix.cifar100.preactresnet18.manifold_mixup_1200ep"])
  assert hidden.hparams == {"alpha": 2.0, "sites": ("input", "layer1", "layer2")}


def test_ipmix_entries():
  exp = seeds.BY_NAME["ipmix.cifar10.wrn40_4.ipmix"]
  assert exp.dialect == "ipmix" and exp.argv == ("--dataset", "cifar10", "--model", "wrn")  # its README's line
  cfg = runner.config(exp, data_dir="/data", root_dir="/tmp/root", mixing_set="/mix")
  assert (cfg.jsd, cfg.lr_schedule, cfg.decay, cfg.crop_padding, cfg.loss, cfg.batch_size, cfg.epochs) == (
    True,
    "cosine",
    5e-4,
    4,
    "ce",
    128,
    100,
  )
  assert (cfg.arch, cfg.mixing_set, cfg.data_dir, cfg.run_dir()) == ("wrn40_4", "/mix", "/data", "/tmp/root/ipmix.cifar10.wrn40_4.ipmix")
  assert not _parse(seeds.BY_NAME["ipmix.cifar100.wrn40_4.ipmix_nojsd"]).jsd
  assert _parse(seeds.BY_NAME["ipmix.cifar100.resnext29.ipmix"]).arch == "resnext29"
  exp = seeds.BY_NAME["ipmix.imagenet.resnet50.ipmix_180ep"]
  assert exp.dialect == "ipmix" and exp.argv == ("--num-classes", "1000")  # its README's imagenet.py line, paths aside
  imagenet = runner.config(exp, data_dir="/data", root_dir="/tmp/root", mixing_set="/mix")
  # imagenet.py's defaults: ResNet-50, 180 epochs, batch 128 (512 to evaluate), lr 0.01, wd 5e-4, --beta 4, --aug-severity 1
  assert (imagenet.dataset, imagenet.data_dir, imagenet.arch, imagenet.epochs, imagenet.batch_size, imagenet.eval_batch_size) == (
    "imagenet2012",
    "/data",
    "resnet50",
    180,
    128,
    512,
  )
  assert (imagenet.learning_rate, imagenet.decay, imagenet.jsd, imagenet.hparams["beta"], imagenet.hparams["severity"]) == (
    0.01,
    5e-4,
    True,
    4,
    1,
  )


def test_puzzlemix_tiny_imagenet_and_imagenet_entries():
  tiny = seeds.BY_NAME["puzzlemix.tiny-imagenet-200.preactresnet18.puzzlemix_1200ep"]
  assert tiny.dialect == "puzzlemix" and tiny.expected == {"test_top1": 63.48, "test_top5": 81.05, "fgsm_top1": 7.48}
  assert "--graph" in tiny.argv and "--gammas" in tiny.argv  # its own flags
  cfg = _parse(tiny)
  assert (cfg.dataset, cfg.arch, cfg.train, cfg.epochs, cfg.crop_padding, cfg.clean_lam) == (
    "tiny-imagenet-200",
    "preactresnet18_64",
    "puzzlemix",
    1200,
    4,
    1.0,
  )
  assert _parse(seeds.BY_NAME["puzzlemix.tiny-imagenet-200.preactresnet18.cutmix_1200ep"]).hparams["box_rule"] == "puzzlemix"
  entry = seeds.BY_NAME["puzzlemix.imagenet.resnet50.puzzlemix_300ep"]
  assert entry.dialect == "puzzlemix" and "--net_type" in entry.argv  # its imagenet/README.md line
  imagenet = _parse(entry)
  # imagenet/train.py: x0.1 every 75 of 300 epochs, CE, Nesterov, evaluation batch 256 // 4, neigh_size capped at 2
  assert (imagenet.arch, imagenet.epochs, imagenet.schedule, imagenet.loss, imagenet.batch_size, imagenet.eval_batch_size) == (
    "resnet50",
    300,
    (75, 150, 225),
    "ce",
    256,
    64,
  )
  assert imagenet.train == "puzzlemix" and imagenet.hparams["neigh_size"] == 2 and imagenet.data_dir == "/data"
  cut = _parse(seeds.BY_NAME["puzzlemix.imagenet.resnet50.cutmix_300ep"])
  assert cut.train == "cutmix" and cut.hparams == {"alpha": 1.0, "prob": 1.0}  # rand_bbox: the clovaai box rule


def test_extra_flags_override():
  cfg = _parse(seeds.BY_NAME["patchup.cifar10.preactresnet18.vanilla"], extra=["--epochs", "2", "--max_steps_per_epoch", "3"])
  assert (cfg.epochs, cfg.max_steps_per_epoch) == (2, 3)


def test_select_patterns():
  got = runner.select(["patchup.cifar10.*.mixup"])
  assert [e.name for e in got] == [f"patchup.cifar10.{a}.mixup" for a in ("preactresnet18", "preactresnet34", "wrn28_10")]
  with pytest.raises(ValueError, match="matches no experiment"):
    runner.select(["nope.*"])


def test_dry_run_prints_commands(capsys):
  names = ["patchup.cifar10.wrn28_10.patchup_hard", "patch_augment.cifar10.resnet20v1.vanilla"]
  assert runner.main(["--only", *names, "--dry_run", "--data_dir", "/d", "--root_dir", "/r", "--", "--epochs", "1"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2
  for line, name, program in zip(lines, names, ("jaxmix seed patchup ", "jaxmix train "), strict=True):
    assert line.startswith(program)
    assert f"--job_id {name}" in line and "--data_dir /d" in line and "--root_dir /r" in line and line.endswith("--epochs 1")
  cfg, _, _ = dialects.parse("patchup", lines[0].split()[3:])  # the printed line, read back as jaxmix seed reads it
  assert cfg.hparams["mode"] == "hard" and cfg.epochs == 1 and cfg.data_dir == "/d"
  args = jtrain.build_parser().parse_args(lines[1].split()[2:])
  assert jtrain.config_from_args(args).train == "vanilla"


def test_runner_list_and_refusals(capsys):
  assert runner.main(["--list", "--only", "puzzlemix.*"]) == 0
  out = capsys.readouterr().out
  assert "fgsm_8_255_top1 42.89" in out and "snu-mllab/PuzzleMix: 25" in out
  assert runner.main([]) == 2  # no --only: refuses to run everything
  assert runner.main(["--only", "nope"]) == 2


def test_report_reads_summaries(tmp_path, capsys):
  name = "puzzlemix.cifar100.preactresnet18.puzzlemix_adv_1200ep"
  os.makedirs(tmp_path / name)
  summary = {"test": {"top1": 79.5}, "robustness": {"fgsm": {"pixel": {"8/255": {"top1": 40.25}}}}}
  (tmp_path / name / "summary.json").write_text(json.dumps(summary))
  assert runner.main(["--report", "--only", name, "puzzlemix.cifar100.wrn28_10.vanilla_400ep", "--root_dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert f"| {name} | test_top1 80.34, fgsm_8_255_top1 42.89 | 79.50 | 40.25 | finished |" in out
  assert "| puzzlemix.cifar100.wrn28_10.vanilla_400ep | - |  |  | not run |" in out


# ----------------------------------------------------------------------------
# CPU benchmark helpers


def test_balanced_indices():
  labels = np.repeat(np.arange(10), 1000)  # class-sorted, as the class-folder test set
  idx = cb.balanced_indices(labels, 500, 10)
  assert len(idx) == 500 and len(np.unique(idx)) == 500
  assert np.bincount(labels[idx], minlength=10).tolist() == [50] * 10
  assert np.array_equal(idx, cb.balanced_indices(labels, 500, 10))


def _record(method, seed, top1, ece=2.0, fgsm=10.0, corr=50.0):
  return {
    "method": method,
    "seed": seed,
    "test_top1": top1,
    "ece": ece,
    "fgsm_top1": fgsm,
    "corruption_top1": corr,
    "overconfidence": -3.0,
    "timing": {"train_wall_s": 100.0 + seed, "train_cpu_s": 150.0, "eval_wall_s": 20.0, "eval_cpu_s": 30.0},
  }


def test_aggregate_known_answer():
  recs = [_record("vanilla", 0, 60.0), _record("vanilla", 1, 62.0), _record("mixup", 0, 58.0)]
  agg = cb.aggregate(recs, ("vanilla", "mixup", "cutmix"))
  assert list(agg) == ["vanilla", "mixup"]
  v = agg["vanilla"]["test_top1"]
  assert v["mean"] == pytest.approx(61.0) and v["sd"] == pytest.approx(np.sqrt(2.0)) and (v["min"], v["max"]) == (60.0, 62.0)
  assert agg["mixup"]["test_top1"]["sd"] == 0.0 and agg["mixup"]["n_seeds"] == 1
  assert agg["vanilla"]["train_wall_s_mean"] == pytest.approx(100.5)


def test_aggregate_counts_the_time_before_a_resume():
  # A resumed run's last train() call only saw its tail (30 s); the trainer's own
  # clock, carried in the checkpoint, saw all of it (400 s).
  resumed = _record("ipmix", 0, 50.0)
  resumed["timing"] |= {"train_wall_s": 30.0, "train_seconds_in_summary": 400.0}
  agg = cb.aggregate([resumed, _record("ipmix", 1, 52.0)], ("ipmix",))
  assert agg["ipmix"]["train_wall_s_mean"] == pytest.approx((400.0 + 101.0) / 2)


def test_outputs_written(tmp_path):
  recs = [_record("vanilla", 0, 60.0), _record("vanilla", 1, 62.0), _record("mixup", 0, 58.0, fgsm=12.0)]
  args = cb.build_parser().parse_args(["--data_dir", "/d", "--quick", "--out_dir", str(tmp_path), "--root_dir", str(tmp_path / "r")])
  s = cb.settings_from_args(args)
  assert (s.methods, s.seeds, s.epochs) == (("vanilla", "mixup"), (0,), 1)
  meta = {"title": "t", "date": "d", "machine": "m", "loadavg_start": "0", "command": "c", "settings": cb.dataclasses.asdict(s)}
  cb.write_outputs(s, recs, meta)
  table = (tmp_path / "table.md").read_text()
  assert "| vanilla | 2 | 61.00 ± 1.41 |" in table and "| mixup | 1 | 58.00 ± 0.00 |" in table
  assert json.loads((tmp_path / "summary.json").read_text())["methods"]["mixup"]["fgsm_top1"]["mean"] == 12.0
  assert len(json.loads((tmp_path / "runs.json").read_text())) == 3
  assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_configs_are_valid(tmp_path):
  args = cb.build_parser().parse_args(["--data_dir", "/d", "--root_dir", str(tmp_path)])
  s = cb.settings_from_args(args)
  assert s.methods == tuple(jaxmix.METHODS) and len(s.seeds) >= 2
  for method in s.methods:
    cfg = cb.train_config(s, method, 1)
    assert cfg.train == method and cfg.arch == "preactresnet_small" and cfg.labels_per_class == s.labels_per_class
    assert cfg.jsd == (method == "ipmix") and cfg.valid_labels_per_class == 0
    assert cfg.run_dir() == os.path.join(str(tmp_path), f"{method}_seed1")
    jtrain.make_optimizer(cfg, 10)
  with pytest.raises(ValueError, match="not registered"):
    cb.settings_from_args(cb.build_parser().parse_args(["--data_dir", "/d", "--methods", "vanilla", "nosuch"]))


def test_overfit_preset_one_subset_for_every_seed_and_train_columns(tmp_path):
  s = cb.settings_from_args(cb.build_parser().parse_args(["--data_dir", CIFAR_DIR, "--preset", "overfit"]))
  assert (s.labels_per_class, s.epochs, s.subset_seed, s.train_accuracy, s.seeds) == (200, 100, 0, True, (0, 1, 2))
  assert s.root_dir == os.path.join("runs", "cpu_benchmark_overfit")
  assert s.out_dir.endswith(os.path.join("results", "cpu_benchmark_overfit"))
  cfgs = [cb.train_config(s, "vanilla", seed) for seed in (0, 1)]
  assert [c.seed for c in cfgs] == [0, 1] and {c.subset_seed for c in cfgs} == {0}
  first, second = (jtrain.config.load_data(c).train for c in cfgs)
  assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
  assert np.array_equal(np.asarray(first.labels), np.asarray(second.labels))
  assert np.bincount(np.asarray(first.labels)).tolist() == [200] * 10
  default = cb.settings_from_args(cb.build_parser().parse_args(["--data_dir", CIFAR_DIR]))
  a, b = (jtrain.config.load_data(cb.train_config(default, "vanilla", seed)).train.images for seed in (0, 1))
  assert not np.array_equal(np.asarray(a[:50]), np.asarray(b[:50]))  # the 14-epoch table: a subset per seed, as before
  recs = [_record("vanilla", 0, 60.0) | {"train_top1": 99.0, "gap": 39.0}, _record("mixup", 0, 61.0) | {"train_top1": 90.0, "gap": 29.0}]
  meta = {"title": "t", "date": "d", "machine": "m", "loadavg_start": "0", "command": "c", "settings": cb.dataclasses.asdict(s)}
  cb.write_outputs(dataclasses.replace(s, out_dir=str(tmp_path)), recs, meta)
  table = (tmp_path / "table.md").read_text()
  assert "final train top-1 (%)" in table and "| mixup | 1 | 61.00 ± 0.00 |" in table and "90.00 ± 0.00 | 29.00 ± 0.00 |" in table
  assert "the same subset for every run" in table


def _fake_benchmark(monkeypatch, fake_run):
  """``cb.main`` without data or training: a 20-image test split, ``fake_run`` for ``run_one``."""
  from jaxmix.training import data as jdata

  class _Split:
    images = np.zeros((20, 32, 32, 3), np.uint8)
    labels = np.repeat(np.arange(10), 2)

  class _Data:
    test = _Split()

  monkeypatch.setattr(jdata, "load", lambda *a, **k: _Data())
  monkeypatch.setattr(cb, "run_one", fake_run)


def test_main_survives_a_failing_method(tmp_path, monkeypatch):
  def fake_run(s, method, seed, test):
    if method == "mixup":
      raise ValueError("boom")
    return _record(method, seed, 60.0 + seed)

  _fake_benchmark(monkeypatch, fake_run)
  out = tmp_path / "out"
  argv = ["--data_dir", "/d", "--quick", "--seeds", "0", "1", "--root_dir", str(tmp_path / "r"), "--out_dir", str(out)]
  assert cb.main(argv) == 1
  summary = json.loads((out / "summary.json").read_text())
  assert list(summary["methods"]) == ["vanilla"] and summary["methods"]["vanilla"]["n_seeds"] == 2
  assert [f["seed"] for f in summary["meta"]["failures"]] == [0, 1]
  assert "SMOKE RUN" in summary["meta"]["title"]
  assert summary["meta"]["sum_run_wall_s"] == pytest.approx(241.0) and summary["meta"]["sum_run_cpu_s"] == pytest.approx(360.0)
  assert "FAILED: mixup seed 0: ValueError: boom" in (out / "table.md").read_text()


@pytest.mark.slow
def test_run_one_trains_evaluates_caches_and_backfills(tmp_path):
  """One real (tiny) benchmark run: trains on the CIFAR-10 zips, evaluates, caches eval.json."""
  from jaxmix.training import data as jdata

  argv = ["--data_dir", CIFAR_DIR, "--root_dir", str(tmp_path), "--labels_per_class", "2", "--epochs", "1", "--batch_size", "10"]
  argv += ["--preset", "overfit"]  # its fixed subset and the training accuracy, at a tiny size
  argv += ["--fgsm_examples", "20", "--corruption_examples", "10", "--corruptions", "contrast", "--widths", "8", "8", "8", "8"]
  s = cb.settings_from_args(cb.build_parser().parse_args(argv))
  test = jdata.load("cifar10", CIFAR_DIR).test
  idx = np.linspace(0, len(test.labels) - 1, 200).astype(int)  # 20 per class: the test set is class-sorted
  test = (np.asarray(test.images)[idx], np.asarray(test.labels)[idx])
  rec = cb.run_one(s, "vanilla", 0, test, log=lambda *a: None)
  assert rec["test_n"] == 200 and rec["fgsm_n"] == 20 and rec["corruption_n"] == 10
  assert set(rec["corruptions"]) == {"contrast"} and 0.0 <= rec["test_top1"] <= 100.0
  assert rec["overconfidence"] == pytest.approx(rec["mean_confidence"] - rec["test_top1"])
  assert 0.0 <= rec["train_top1"] <= 100.0 and rec["gap"] == pytest.approx(rec["train_top1"] - rec["test_top1"])
  eval_path = tmp_path / "vanilla_seed0" / "eval.json"
  assert json.loads(eval_path.read_text()) == rec
  assert cb.run_one(s, "vanilla", 0, test) == rec  # finished: read back, not retrained
  # An eval.json from before the confidence was recorded gets it added from the checkpoint.
  old = {k: v for k, v in rec.items() if k not in ("mean_confidence", "overconfidence")}
  eval_path.write_text(json.dumps(old))
  again = cb.run_one(s, "vanilla", 0, test, log=lambda *a: None)
  assert again["mean_confidence"] == pytest.approx(rec["mean_confidence"], abs=1e-3)
  assert json.loads(eval_path.read_text())["overconfidence"] == pytest.approx(rec["overconfidence"], abs=1e-3)


def test_main_keeps_the_recorded_runs_of_another_machine(tmp_path, monkeypatch):
  # The results directory survives (it is committed) but the run directories do not:
  # a rerun must train only what is missing and never write fewer records.
  trained, on_disk = [], []
  out = tmp_path / "out"

  def fake_run(s, method, seed, test):
    trained.append((method, seed))
    if (out / "runs.json").exists():
      on_disk.append(len(json.loads((out / "runs.json").read_text())))
    return _record(method, seed, 60.0 + seed)

  _fake_benchmark(monkeypatch, fake_run)
  argv = ["--data_dir", "/d", "--quick", "--seeds", "0", "1", "--root_dir", str(tmp_path / "r"), "--out_dir", str(out)]
  assert cb.main(argv) == 0 and len(trained) == 4
  runs = json.loads((out / "runs.json").read_text())
  runs = [r for r in runs if (r["method"], r["seed"]) not in {("vanilla", 0), ("mixup", 1)}]  # not finished yet
  (out / "runs.json").write_text(json.dumps(runs))
  trained.clear()
  on_disk.clear()
  assert cb.main(["--data_dir", "/elsewhere", *argv[2:]]) == 0  # another machine: data elsewhere, no run dirs
  assert trained == [("vanilla", 0), ("mixup", 1)]
  assert on_disk == [2, 3]  # the partial writes keep every recorded run
  assert [(r["method"], r["seed"]) for r in json.loads((out / "runs.json").read_text())] == [
    ("vanilla", 0),
    ("mixup", 0),
    ("vanilla", 1),
    ("mixup", 1),
  ]
  trained.clear()
  assert cb.main([*argv, "--epochs", "2"]) == 0  # other settings: the old records are not these runs
  assert len(trained) == 4
