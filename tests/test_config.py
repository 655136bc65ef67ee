"""The run configuration is written once: the command line agrees with ``TrainConfig``."""

import dataclasses

import pytest

from jaxmix import training
from jaxmix.training import config as jconfig
from jaxmix.training.registry import HPARAM_FLAGS, METHODS


def test_parser_defaults_are_the_dataclass_defaults():
  """``jaxmix train`` with no flag gives exactly ``TrainConfig()`` (help shows the same defaults)."""
  parsed = jconfig.config_from_args(jconfig.build_parser().parse_args([]))
  assert parsed == training.TrainConfig()


def test_help_shows_each_field_with_its_default():
  text = jconfig.build_parser().format_help()
  for field in dataclasses.fields(training.TrainConfig):
    if not field.metadata["cli"]:
      continue
    assert f"--{field.name}" in text, field.name
  assert "--manualSeed" in text and "(default: 400)" in text  # --epochs


@pytest.mark.parametrize(
  "argv, field, value",
  [
    (["--manualSeed", "7"], "seed", 7),
    (["--epochs", "3"], "epochs", 3),
    (["--schedule", "1", "2", "3", "--step_factors", "0.1", "0.2", "0.3"], "schedule", (1, 2, 3)),
    (["--nesterov", "False"], "nesterov", False),
    (["--flip", "false"], "flip", False),
    (["--affine_test"], "affine_test", True),
    (["--model_kwargs", '{"widths": [8, 8, 16, 16]}'], "model_kwargs", {"widths": [8, 8, 16, 16]}),
    (["--dataset", "svhn"], "dataset", "svhn_cropped"),
  ],
)
def test_flags_set_their_field(argv, field, value):
  cfg = jconfig.config_from_args(jconfig.build_parser().parse_args(argv))
  assert getattr(cfg, field) == value


def test_method_flags_come_from_the_registry():
  """Every method's flags set its op keywords; flags of other methods are left out of ``hparams``."""
  parser = jconfig.build_parser()
  argv = ["--train", "puzzlemix", "--pm_beta", "0.8", "--transport", "False", "--cutmix_prob", "0.3"]
  cfg = jconfig.config_from_args(parser.parse_args(argv))
  assert cfg.hparams == {"beta": 0.8, "transport": False}
  cfg = jconfig.config_from_args(parser.parse_args(["--train", "cutmix", "--cutmix_prob", "0.3", "--alpha", "0.5"]))
  assert cfg.hparams == {"prob": 0.3, "alpha": 0.5}
  import inspect

  from jaxmix.ops import hook

  for method in METHODS.values():
    accepted = hook.method_defaults(method.name) if method.site == "hidden" else inspect.signature(method.op).parameters
    for flag, keyword in method.flags.items():
      assert flag in HPARAM_FLAGS
      assert keyword in accepted or keyword in ("adv_p", "adv_eps"), (method.name, flag)  # Puzzle Mix's train-batch keywords


def test_step_config_is_derived_from_the_run_config():
  cfg = training.TrainConfig(train="cutmix", hparams={"alpha": 0.5}, loss="ce", mix_group_size=4, l2_conv=1e-4)
  step = jconfig.step_config(cfg, 10, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
  assert dict(step.hparams) == {"alpha": 0.5, "prob": 0.5}
  assert (step.method, step.loss, step.group_size, step.l2_conv, step.num_classes) == ("cutmix", "ce", 4, 1e-4, 10)


def test_config_file_sets_the_run_and_flags_override_it(tmp_path):
  import json

  saved = training.TrainConfig(train="cutmix", hparams={"alpha": 0.3}, epochs=7, arch="preactresnet_small", schedule=(3, 5))
  path = tmp_path / "config.json"
  path.write_text(json.dumps(dataclasses.asdict(saved)))
  cfg, _ = jconfig.parse_args(["--config", str(path)])
  assert cfg == saved  # a run's config.json is a valid --config
  cfg, _ = jconfig.parse_args(["--config", str(path), "--epochs", "2", "--cutmix_prob", "0.9"])
  assert cfg.epochs == 2 and cfg.schedule == (3, 5) and cfg.hparams == {"alpha": 0.3, "prob": 0.9}
  cfg, _ = jconfig.parse_args(["--config", str(path), "--train", "mixup"])
  assert cfg.hparams == {}  # another method: the file's hyper-parameters do not apply
  with pytest.raises(SystemExit):
    jconfig.parse_args(["--config", str(tmp_path / "missing.json")])


def test_ipmix_recipe_fills_what_the_command_line_does_not_give():
  """`--train ipmix` alone trains as the official cifar.py: JSD, CE, padding 4, WRN-40-4, cosine."""
  cfg, _ = jconfig.parse_args(["--train", "ipmix"])
  official = {"jsd": True, "loss": "ce", "crop_padding": 4, "arch": "wrn40_4", "lr_schedule": "cosine", "decay": 5e-4}
  assert {k: getattr(cfg, k) for k in official} == official
  assert (cfg.batch_size, cfg.epochs, cfg.learning_rate, cfg.nesterov) == (128, 100, 0.1, True)
  cfg, _ = jconfig.parse_args(["--train", "ipmix", "--loss", "bce", "--jsd", "False", "--arch", "preactresnet18", "--epochs", "3"])
  assert (cfg.loss, cfg.jsd, cfg.arch, cfg.epochs, cfg.crop_padding) == ("bce", False, "preactresnet18", 3, 4)
  cfg, _ = jconfig.parse_args(["--train", "cutmix"])
  assert cfg == dataclasses.replace(training.TrainConfig(), train="cutmix")  # methods without a recipe: the defaults


def test_print_config_shows_sites_and_the_official_switches(capsys):
  assert training.loop.cli_main(["--train", "manifold_mixup", "--print_config"]) == 0
  shown = __import__("json").loads(capsys.readouterr().out)
  assert shown["hparams"]["sites"] == ["input", "layer1", "layer2"] and shown["hparams"]["alpha"] == 2.0
  argv = ["--train", "manifold_mixup", "--mm_sites", "input", "conv1", "layer1", "--print_config"]
  assert training.loop.cli_main(argv) == 0
  assert __import__("json").loads(capsys.readouterr().out)["hparams"]["sites"] == ["input", "conv1", "layer1"]
  cfg, _ = jconfig.parse_args(["--train", "cutout", "--cutout", "16", "--cutout_shared"])
  assert cfg.hparams == {"size": 16, "shared": True}
  cfg, _ = jconfig.parse_args(["--train", "patchup", "--arch", "wrn28_10", "--wrn_target_bug", "True"])
  assert cfg.hparams == {"wrn_target_bug": True}
  with pytest.raises(SystemExit):
    jconfig.parse_args(["--train", "manifold_mixup", "--mm_sites", "input", "layer9"])
