"""Training: the method registry, models, input pipeline, train step, checkpoints and loop.

Built on :mod:`jaxmix.ops` (and :mod:`jaxmix.evaluation`'s metrics and protocols, for
the PatchUp ``--fsgm_attack`` / ``--affine_test`` evaluation at the end of a run):

* :mod:`~jaxmix.training.registry`: method name -> op, site, recipe defaults, flags.
* :mod:`~jaxmix.training.models`: the Flax models of the seed recipes, with the mixing hook.
* :mod:`~jaxmix.training.data`: deterministic, resumable host input pipelines.
* :mod:`~jaxmix.training.step`: the data-parallel ``(state, batch, key) -> (state, metrics)``.
* :mod:`~jaxmix.training.config`: ``TrainConfig``, its command line, and what derives from it.
* :mod:`~jaxmix.training.checkpoint`: save / restore / run directories / restore-for-eval.
* :mod:`~jaxmix.training.loop`: ``train(config)`` and ``jaxmix train``.
"""

from jaxmix.training import checkpoint, config, data, loop, models, registry, step
from jaxmix.training.checkpoint import restore_for_eval
from jaxmix.training.config import TrainConfig, build_parser, config_from_args, make_optimizer
from jaxmix.training.loop import train
from jaxmix.training.models import ARCHS, get_model
from jaxmix.training.registry import METHODS, Method, get_method
from jaxmix.training.step import StepConfig, TrainState, init_state, make_eval_step, make_mesh, make_train_step

__all__ = (
  "ARCHS",
  "METHODS",
  "Method",
  "StepConfig",
  "TrainConfig",
  "TrainState",
  "build_parser",
  "checkpoint",
  "config",
  "config_from_args",
  "data",
  "get_method",
  "get_model",
  "init_state",
  "loop",
  "make_eval_step",
  "make_mesh",
  "make_optimizer",
  "make_train_step",
  "models",
  "registry",
  "restore_for_eval",
  "step",
  "train",
)
