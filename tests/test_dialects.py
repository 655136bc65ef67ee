"""``jaxmix seed``: the seed READMEs' command lines parse and resolve to what the official scripts train.

The expected values are read in the official code (PatchUp's and Puzzle Mix's
``main.py``, IPMix's ``cifar.py``), not produced by jaxmix.
"""

import json
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CIFAR_DIR

import jaxmix
from jaxmix import dialects

PATCHUP_README = {
  # PatchUp README, "PatchUp" soft (PreActResNet18 and WRN-28-10), "Manifold Mixup", "CutMix", "Cutout", "DropBlock", CIFAR-100 affine.
  "patchup_soft": "--dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 "
  "--valid_labels_per_class 500 --arch <X>  --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 "
  "1500 --step_factors 0.1 0.1 0.1 --train patchup --alpha 2.0 --patchup_type soft --patchup_block 7 --patchup_prob 1.0 "
  "--gamma 0.75 --job_id <JobID>",
  "manifold": "--dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/manifold/ --labels_per_class 5000 "
  "--valid_labels_per_class 500 --arch <X>  --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 "
  "1500 --step_factors 0.1 0.1 0.1 --train manifold_mixup --alpha 1.5 --job_id <JobID>",
  "cutmix": "--dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/manifold/ --labels_per_class 5000 "
  "--valid_labels_per_class 500 --arch <X>  --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 "
  "1500 --step_factors 0.1 0.1 0.1 --train cutmix --cutmix_prob 0.4 --job_id <JobID>",
  "cutout_wrn": "--dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 "
  "--valid_labels_per_class 500 --arch wrn28_10  --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 "
  "--step_factors 0.1 0.1 --train cutout --cutout 8 --job_id <JobID>",
  "affine_wrn": "--dataset cifar100 --data_dir ./data/cifar100/ --affine_test --affine_path ./data/test/affine/  --root_dir "
  "./experiments/patchup/soft/ --labels_per_class 500 --valid_labels_per_class 50 --arch wrn28_10  --learning_rate 0.1 --momentum 0.9 "
  "--decay 0.0001 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1 --train patchup --alpha 2.0 --patchup_type soft "
  "--patchup_block 7 --patchup_prob 1.0 --gamma 0.25 --job_id <JobID>",
}

PUZZLEMIX_README = {
  "adv": "--dataset cifar100 --data_dir [data_path] --root_dir [save_path] --labels_per_class 500 --arch preactresnet18  "
  "--learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 1200 --schedule 400 800 --gammas 0.1 0.1 --train mixup "
  "--mixup_alpha 1.0 --graph True --n_labels 3 --eta 0.2 --beta 1.2 --gamma 0.5 --neigh_size 4 --transport True --t_size 4 "
  "--t_eps 0.8 --adv_p 0.1 --adv_eps 10.0",
  "box": "--dataset cifar100 --data_dir [data_path] --root_dir [save_path] --labels_per_class 500 --arch preactresnet18  "
  "--learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 1200 --schedule 400 800 --gammas 0.1 0.1 --train mixup "
  "--mixup_alpha 1.0 --box True",
  "hidden": "--dataset cifar100 --data_dir [data_path] --root_dir [save_path] --labels_per_class 500 --arch preactresnet18  "
  "--learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 1200 --schedule 400 800 --gammas 0.1 0.1 --train mixup_hidden "
  "--mixup_alpha 2.0",
  "tiny": "--dataset tiny-imagenet-200 --data_dir [data_path] --root_dir [save_path] --labels_per_class 500 --arch preactresnet18  "
  "--learning_rate 0.2 --momentum 0.9 --decay 0.0001 --epochs 1200 --schedule 600 900 --gammas 0.1 0.1 --train mixup "
  "--mixup_alpha 1.0 --graph True --n_labels 3 --eta 0.2 --beta 1.2 --gamma 0.5 --neigh_size 4 --transport True --t_eps 0.8 "
  "--clean_lam 1",
}

IPMIX_README = "--dataset cifar100 --data-path ./data --mixing-set ./mixing_set --model wrn"


def _parse(repo, line):
  line = line.replace("<X>", "preactresnet18").replace("<JobID>", "j").replace("[data_path]", "d").replace("[save_path]", "r")
  return dialects.parse(repo, shlex.split(line))


def test_patchup_commands_train_what_its_main_py_trains():
  cfg, _, _ = _parse("patchup", PATCHUP_README["patchup_soft"])
  assert (cfg.train, cfg.loss, cfg.crop_padding, cfg.flip, cfg.epochs, cfg.schedule) == ("patchup", "bce", 2, True, 2000, (500, 1000, 1500))
  assert cfg.hparams["sites"] == ("input", "conv1", "layer1") and cfg.hparams["wrn_target_bug"] is False  # layer_mix in {0..k=2}
  assert (cfg.hparams["gamma"], cfg.hparams["prob"], cfg.valid_labels_per_class) == (0.75, 1.0, 500)
  cfg, _, _ = _parse("patchup", PATCHUP_README["manifold"])
  assert cfg.hparams == {"alpha": 1.5, "sites": ("input", "conv1", "layer1")}  # its models' k indexing, not {input, layer1, layer2}
  cfg, _, _ = _parse("patchup", PATCHUP_README["cutmix"])
  assert cfg.hparams == {"alpha": 1.0, "prob": 0.4}  # CutMix(beta=1.) whatever --alpha (default 0.0) says
  cfg, _, _ = _parse("patchup", PATCHUP_README["cutout_wrn"])
  assert cfg.hparams == {"size": 8, "shared": True}  # modules/cutout.py on the batch: one hole for all
  cfg, _, _ = _parse("patchup", PATCHUP_README["affine_wrn"])
  assert cfg.affine_test and cfg.hparams["wrn_target_bug"] and cfg.dataset == "cifar100" and cfg.hparams["gamma"] == 0.25


def test_patchup_defaults_are_its_main_py_defaults():
  cfg, _, _ = dialects.parse("patchup", ["--train", "dropblock"])
  assert cfg.hparams == {"block_size": 7, "keep_prob": 0.9, "drop_block_all": False, "sites": ("conv1", "layer1")}
  cfg, _, _ = dialects.parse("patchup", ["--train", "patchup"])
  assert (cfg.hparams["gamma"], cfg.hparams["prob"]) == (0.9, 0.7)  # main.py: --gamma .9 --patchup_prob .7
  assert (cfg.labels_per_class, cfg.epochs, cfg.batch_size, cfg.print_freq) == (5000, 400, 100, 100)
  cfg, _, _ = dialects.parse("patchup", ["--dataset", "svhn", "--train", "cutout"])
  assert (cfg.dataset, cfg.flip, cfg.hparams["size"]) == ("svhn_cropped", False, 8)


def test_puzzlemix_commands_train_what_its_main_py_trains():
  cfg, _, _ = _parse("puzzlemix", PUZZLEMIX_README["adv"])
  assert cfg.train == "puzzlemix" and cfg.step_factors == (0.1, 0.1) and cfg.schedule == (400, 800)
  hp = cfg.hparams
  assert (hp["alpha"], hp["t_size"], hp["adv_p"], hp["adv_eps"], hp["beta"], hp["n_labels"]) == (1.0, 4, 0.1, 10.0, 1.2, 3)
  cfg, _, _ = _parse("puzzlemix", PUZZLEMIX_README["box"])
  assert cfg.train == "cutmix" and cfg.hparams == {"alpha": 1.0, "prob": 1.0, "box_rule": "puzzlemix"}  # its mixup_box, every batch
  cfg, _, _ = _parse("puzzlemix", PUZZLEMIX_README["hidden"])
  assert cfg.train == "manifold_mixup" and cfg.hparams == {"alpha": 2.0, "sites": ("input", "layer1", "layer2")}
  cfg, _, _ = _parse("puzzlemix", PUZZLEMIX_README["tiny"])
  assert (cfg.dataset, cfg.clean_lam, cfg.learning_rate, cfg.hparams["t_size"]) == ("tiny-imagenet-200", 1.0, 0.2, -1)
  # Its main.py at 64x64: a stride-2 stem, the whole training set, no validation split.
  assert cfg.loss == "bce" and cfg.arch == "preactresnet18_64" and cfg.crop_padding == 4
  assert cfg.labels_per_class is None and cfg.valid_labels_per_class == 0


def test_ipmix_command_trains_what_its_cifar_py_trains():
  cfg, _, notes = dialects.parse("ipmix", shlex.split(IPMIX_README))
  assert (cfg.jsd, cfg.loss, cfg.lr_schedule, cfg.nesterov, cfg.crop_padding) == (True, "ce", "cosine", True, 4)
  assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.decay, cfg.eval_batch_size) == (100, 128, 0.1, 5e-4, 1000)
  assert cfg.arch == "wrn40_4" and cfg.model_kwargs == {"depth": 40, "widen_factor": 4}
  assert cfg.hparams == {"k": 3, "depth": 3, "beta": 3.0, "severity": 3, "overflow": "wrap"} and cfg.data_dir == "./data"
  assert any("droprate" in n for n in notes) and cfg.mixing_set == "./mixing_set"  # its pictures are read
  cfg, _, _ = dialects.parse("ipmix", shlex.split(IPMIX_README) + ["--no-jsd", "-e", "5", "--k", "2"])
  assert (cfg.jsd, cfg.epochs, cfg.hparams["k"]) == (False, 5, 2)


IPMIX_IMAGENET_README = (
  "--data-standard /in/train --data-val /in/val --imagenet-r-dir /in-r --imagenet-c-dir /in-c --mixing-set ./mixing_set --num-classes 1000"
)


def test_ipmix_imagenet_command_trains_what_its_imagenet_py_trains(capsys):
  cfg, _, notes = dialects.parse("ipmix", shlex.split(IPMIX_IMAGENET_README))  # its required --num-classes says imagenet.py
  # imagenet.py: ResNet-50, 180 epochs, batch 128 / 512, SGD Nesterov lr 0.01, wd 5e-4, per-step cosine, CE, JSD, --beta 4, severity 1
  got = (cfg.dataset, cfg.data_dir, cfg.arch, cfg.epochs, cfg.batch_size, cfg.eval_batch_size)
  assert got == ("imagenet2012", "/in", "resnet50", 180, 128, 512)
  assert (cfg.learning_rate, cfg.decay, cfg.nesterov, cfg.lr_schedule, cfg.loss, cfg.jsd) == (0.01, 5e-4, True, "cosine", "ce", True)
  patch_sizes = (4, 8, 16, 32, 64, 224)  # its ipmix(): patch_sizes = [4, 8, 16, 32, 64, 224]
  assert cfg.hparams == {"k": 3, "depth": 3, "beta": 4.0, "severity": 1, "overflow": "wrap", "patch_sizes": patch_sizes}
  assert cfg.mixing_set == "./mixing_set"
  assert any("--imagenet-r-dir ignored" in n for n in notes) and cfg.root_dir == "checkpoints/TEMP"
  explicit, _, _ = dialects.parse("ipmix", ["imagenet.py", *shlex.split(IPMIX_IMAGENET_README), "--no-jsd", "--lr", "0.1", "-b", "256"])
  assert (explicit.jsd, explicit.learning_rate, explicit.batch_size) == (False, 0.1, 256)
  for bad, word in (
    (["--num-classes", "200"], "--num-classes"),
    (["--all-ops"], "--all-ops"),
    (["-a", "resnet18"], "resnet18"),
    (["--data-val", "/elsewhere/validation"], "--data-val"),
  ):
    assert dialects.cli_main(["ipmix", *shlex.split(IPMIX_IMAGENET_README), *bad]) == 2
    assert word in capsys.readouterr().err
  with pytest.raises(SystemExit):  # a cifar.py flag is not an imagenet.py flag
    dialects.parse("ipmix", ["imagenet.py", *shlex.split(IPMIX_IMAGENET_README), "--data-path", "x"])


PUZZLEMIX_IMAGENET_README = (  # imagenet/README.md
  "--net_type resnet --dataset imagenet --batch_size 256 --lr 0.1 --depth 50 --epochs 300 --expname ResNet50 -j 40 --beta 1.0 "
  "--mixup_prob 1.0 --method puzzle --transport True --no-verbose"
)


def test_puzzlemix_imagenet_command_trains_what_its_train_py_trains(capsys):
  cfg, _, notes = dialects.parse("puzzlemix", shlex.split(PUZZLEMIX_IMAGENET_README))  # --net_type says imagenet/train.py
  # train.py: lam ~ Beta(--beta), block count 2 ** randint(1, 5), neigh_size min(4, 2) on ImageNet, no t_size (the block grid)
  assert cfg.train == "puzzlemix" and cfg.hparams["alpha"] == 1.0 and cfg.hparams["neigh_size"] == 2 and "t_size" not in cfg.hparams
  assert (cfg.hparams["beta"], cfg.hparams["gamma"], cfg.hparams["eta"], cfg.hparams["t_eps"]) == (1.2, 0.5, 0.2, 0.8)  # --p_* defaults
  # adjust_learning_rate: x0.1 every 75 epochs of 300; SGD Nesterov, wd 1e-4, CE; validation batch batch_size // 4
  assert (cfg.schedule, cfg.step_factors, cfg.learning_rate, cfg.decay, cfg.nesterov, cfg.loss) == (
    (75, 150, 225),
    (0.1, 0.1, 0.1),
    0.1,
    1e-4,
    True,
    "ce",
  )
  assert (cfg.dataset, cfg.arch, cfg.batch_size, cfg.eval_batch_size, cfg.job_id) == (
    "imagenet2012",
    "resnet50",
    256,
    64,
    "ResNet50puzzle_tp_prob_1.0",  # its args.expname
  )
  assert any("--workers ignored" in n for n in notes) and any("ColorJitter" in n for n in notes)
  # Its clean loss is clean_lam * CE; jaxmix's is 2 clean_lam / K * CE: 0.5 becomes 250. Its expname names the seed.
  clean, _, _ = dialects.parse("puzzlemix", [*shlex.split(PUZZLEMIX_IMAGENET_README), "--clean_lam", "0.5", "--seed", "2"])
  assert clean.clean_lam == 250.0 and 2 * clean.clean_lam / 1000 == 0.5
  assert (clean.job_id, clean.seed) == ("ResNet50puzzle_tp_prob_1.0_clean_0.5_seed2", 2)
  cut, _, _ = dialects.parse("puzzlemix", ["train.py", *shlex.split(PUZZLEMIX_IMAGENET_README.replace("puzzle", "cut")), "--epochs", "90"])
  assert cut.train == "cutmix" and cut.hparams == {"alpha": 1.0, "prob": 1.0} and cut.schedule == (30, 60)  # x0.1 every 30
  bad_values = (
    (["--net_type", "pyramidnet"], "--net_type"),
    (["--dataset", "cifar100"], "cifar100"),
    (["--mixup_prob", "0.5"], "mixup_prob"),
  )
  for bad, word in bad_values:
    assert dialects.cli_main(["puzzlemix", *shlex.split(PUZZLEMIX_IMAGENET_README), *bad]) == 2
    assert word in capsys.readouterr().err


def test_unknown_flags_unsupported_values_and_ignored_flags(capsys):
  with pytest.raises(SystemExit):
    dialects.parse("puzzlemix", ["--train", "mixup", "--mixup_alpha", "1", "--graph_cut", "True"])
  assert "--graph_cut" in capsys.readouterr().err
  assert dialects.cli_main(["ipmix", *shlex.split(IPMIX_README), "--model", "densenet"]) == 2
  assert "densenet" in capsys.readouterr().err
  cfg, _, _ = dialects.parse("ipmix", shlex.split(IPMIX_README) + ["--model", "resnext"])
  assert cfg.arch == "resnext29" and cfg.model_kwargs == {}
  assert dialects.cli_main(["patchup", "--dropout"]) == 2
  assert "dropout" in capsys.readouterr().err
  assert dialects.cli_main(["puzzlemix", "--workers", "8", "--mp", "4", "--print_config"]) == 0
  captured = capsys.readouterr()
  assert "--workers ignored" in captured.err and "--mp ignored" in captured.err
  assert json.loads(captured.out)["train"] == "vanilla"
  assert dialects.cli_main(["timm"]) == 2


def test_patchup_manifold_sites_mix_after_conv1():
  """With PatchUp's sites, layer index 1 mixes the features after conv1 and nothing else."""
  y = jaxmix.one_hot(jnp.arange(4), 4)
  mix_fn, carry = jaxmix.hidden_mix(jax.random.key(0), y, method="manifold_mixup", sites=("input", "conv1", "layer1"), layer=1, lam=0.25)
  h = jnp.arange(4 * 2 * 2 * 1, dtype=jnp.float32).reshape(4, 2, 2, 1)
  same, _ = mix_fn("input", h, carry)
  mixed, _ = mix_fn("conv1", h, carry)
  np.testing.assert_array_equal(same, h)
  np.testing.assert_allclose(mixed, 0.25 * h + 0.75 * h[carry.perm], rtol=1e-6)
  unchanged, _ = mix_fn("layer2", h, carry)
  np.testing.assert_array_equal(unchanged, h)


@pytest.mark.slow
def test_a_patchup_command_trains_through_the_dialect(tmp_path):
  line = PATCHUP_README["cutmix"].replace("./data/cifar10/", CIFAR_DIR).replace("./experiments/manifold/", str(tmp_path))
  line = line.replace("--labels_per_class 5000 --valid_labels_per_class 500", "--labels_per_class 4 --valid_labels_per_class 1")
  line = line.replace("--epochs 2000", "--epochs 1").replace("<X>", "preactresnet18").replace("<JobID>", "smoke")
  argv = shlex.split(line) + ["--batch_size", "20", "--max_steps_per_epoch", "1", "--max_eval_examples", "20", "--num_devices", "2"]
  assert dialects.cli_main(["patchup", *argv]) == 0
  summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
  assert summary["method"] == "cutmix" and summary["hparams"]["prob"] == 0.4


def test_puzzlemix_box_rule_known_answers():
  """Its mixup_box: continuous centre, float side s = side sqrt(1 - lam), edges int(clip(c -+ s / 2))."""
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
  y = jaxmix.one_hot(jnp.arange(4), 4)
  lam = 1 - (5.5 / 16) ** 2  # s = 5.5: an unclipped box spans 5 or 6 rows (clovaai: always 4)
  rows, clovaai = set(), set()
  for seed in range(40):
    res = jaxmix.cutmix(jax.random.key(seed), x, y, lam=lam, box_rule="puzzlemix")
    pasted = np.asarray(res.mask[0]) < 0.5
    assert (np.asarray(res.mask) == np.asarray(res.mask[0])).all()  # one box for the batch
    np.testing.assert_allclose(res.lam, 1 - pasted.mean(), rtol=1e-6)
    rows.add(int(pasted.any(axis=1).sum()))
    ref = jaxmix.cutmix(jax.random.key(seed), x, y, lam=lam)
    clovaai.add(int((np.asarray(ref.mask[0]) < 0.5).any(axis=1).sum()))
  assert {5, 6} <= rows and max(rows) == 6
  assert max(clovaai) == 4
  with pytest.raises(ValueError, match="box_rule"):
    jaxmix.cutmix(jax.random.key(0), x, y, box_rule="timm")
