"""The README's Python examples run as written, and its commands name real entry points."""

import os
import re

import jaxmix
from jaxmix import training as jtrain

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _blocks(lang):
  text = open(README).read()
  return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_python_examples_run():
  namespace = {}
  blocks = _blocks("python")
  assert len(blocks) >= 2
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
  assert float(namespace["loss"]) > 0


def test_train_command_parses_with_real_flags():
  commands = [b for b in _blocks("bash") if "jaxmix train" in b]
  assert commands
  for block in commands:
    argv = block.replace("\\\n", " ").split("jaxmix train", 1)[1].split()
    cfg = jtrain.config_from_args(jtrain.build_parser().parse_args(argv))
    assert cfg.train in jaxmix.METHODS and cfg.arch in jtrain.ARCHS
