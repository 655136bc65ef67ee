"""The ``jaxmix`` command: ``jaxmix {show,train,eval} ...``.

Each subcommand lives in its own module with its own argument parser; this file
only dispatches, so ``jaxmix show`` never imports TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

_COMMANDS = {
  "show": ("jaxmix.gallery", "write a PNG grid of every op applied to real images"),
  "train": ("jaxmix.training.loop", "train a classifier with a mixing method (PatchUp main.py flags)"),
  "seed": ("jaxmix.dialects", "run a seed repository's command line verbatim: jaxmix seed patchup|puzzlemix|ipmix ..."),
  "eval": ("jaxmix.evaluation.cli", "evaluate a checkpoint: clean, FGSM, deformed, corruptions, calibration"),
}


def _usage() -> str:
  lines = ["usage: jaxmix <command> [options]", "", "commands:"]
  lines += [f"  {name:<6} {help_}" for name, (_, help_) in _COMMANDS.items()]
  lines += ["", "Run 'jaxmix <command> --help' for the options of a command; --verbose (or JAXMIX_VERBOSE=1) shows TensorFlow's logs."]
  return "\n".join(lines)


def _quiet(argv: list) -> list:
  """Hides TensorFlow's C++ start-up log lines unless ``--verbose`` or ``JAXMIX_VERBOSE=1``.

  Returns ``argv`` without ``--verbose``. A ``TF_CPP_MIN_LOG_LEVEL`` the user set is kept.
  """
  verbose = "--verbose" in argv or os.environ.get("JAXMIX_VERBOSE", "") not in ("", "0")
  if not verbose:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)
  return [a for a in argv if a != "--verbose"]


def main(argv=None) -> int:
  """Entry point of the ``jaxmix`` console script."""
  argv = _quiet(list(sys.argv[1:] if argv is None else argv))
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in _COMMANDS:
    print(f"jaxmix: unknown command {name!r}.\n\n{_usage()}", file=sys.stderr)
    return 2
  module = importlib.import_module(_COMMANDS[name][0])
  return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
  sys.exit(main())
