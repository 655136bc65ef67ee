"""Fault injection: every state a kill can leave resumes, NaNs never reach a checkpoint,
damaged checkpoints are skipped, and bad settings are clear errors before any work.

Each case reproduces a failure a fault probe found; the README's "What survives what"
table lists them.
"""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import CIFAR_DIR

import jaxmix
from jaxmix import training
from jaxmix.evaluation import cli as eval_cli
from jaxmix.training import checkpoint as ckpt

SMALL = {"widths": [8, 8, 16, 16], "blocks": [1, 1, 1, 1]}


def _cfg(root, job, **kw) -> training.TrainConfig:
  base = dict(
    dataset="cifar10",
    data_dir=CIFAR_DIR,
    root_dir=str(root),
    job_id=job,
    labels_per_class=3,
    valid_labels_per_class=2,
    arch="preactresnet_small",
    model_kwargs=SMALL,
    train="mixup",
    epochs=2,
    batch_size=10,
    eval_batch_size=40,
    max_eval_examples=40,
    num_devices=2,
    print_freq=1,
    lr_schedule="cosine",
  )
  base.update(kw)
  return training.TrainConfig(**base)


def _params(run_dir, sub="checkpoints"):
  manager = ckpt.checkpoint_manager(os.path.join(run_dir, sub), 5)
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(), meta=ocp.args.JsonRestore()))
  return step, [np.asarray(x) for x in jax.tree.leaves(restored.state["params"])]


def _steps(run_dir, sub):
  path = os.path.join(run_dir, sub)
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """One uninterrupted run: the reference every damaged copy must end equal to."""
  root = tmp_path_factory.mktemp("runs")
  summary = training.train(_cfg(root, "ref"))
  return root, summary


def _copy(finished, tmp_path, name):
  root, _ = finished
  shutil.copytree(os.path.join(root, "ref"), tmp_path / name)
  return str(tmp_path / name)


def _last(run_dir, sub):
  return os.path.join(run_dir, sub, str(_steps(run_dir, sub)[-1]))


# Each function turns a finished run into a state that a kill (or a disk fault) can leave.
def _kill_before_summary(run_dir):
  os.remove(os.path.join(run_dir, "summary.json"))


def _half_written_summary(run_dir):
  with open(os.path.join(run_dir, "summary.json"), "r+") as f:
    f.truncate(25)


def _half_written_log_line(run_dir):
  path = os.path.join(run_dir, "metrics.jsonl")
  lines = open(path).read().splitlines(keepends=True)
  with open(path, "w") as f:
    f.writelines(lines[:-1])
    f.write(lines[-1][:30])
  os.remove(os.path.join(run_dir, "summary.json"))
  shutil.rmtree(_last(run_dir, "checkpoints"))  # the epoch whose record was cut is redone


def _best_without_periodic(run_dir):
  """The old save order killed between best/N and checkpoints/N (N = the best epoch's step):
  every resume used to die on orbax's 'Checkpoint for step N already exists'."""
  os.remove(os.path.join(run_dir, "summary.json"))
  best = _steps(run_dir, "best")[-1]
  for step in _steps(run_dir, "checkpoints"):
    if step >= best:
      shutil.rmtree(os.path.join(run_dir, "checkpoints", str(step)))


def _periodic_without_best(run_dir):
  """The new save order killed between checkpoints/N and best/N (N = the best epoch's step)."""
  os.remove(os.path.join(run_dir, "summary.json"))
  best = _steps(run_dir, "best")[-1]
  for step in _steps(run_dir, "checkpoints"):
    if step > best:
      shutil.rmtree(os.path.join(run_dir, "checkpoints", str(step)))
  shutil.rmtree(os.path.join(run_dir, "best"))


def _partial_orbax_save(run_dir):
  """A kill inside orbax's save: its temporary folder remains, the step is not committed."""
  os.remove(os.path.join(run_dir, "summary.json"))
  last = _last(run_dir, "checkpoints")
  shutil.copytree(last, last + ".orbax-checkpoint-tmp-123")
  shutil.rmtree(last)


@pytest.mark.slow
@pytest.mark.parametrize(
  "damage",
  [
    _kill_before_summary,
    _half_written_summary,
    _half_written_log_line,
    _best_without_periodic,
    _periodic_without_best,
    _partial_orbax_save,
  ],
)
def test_any_kill_state_resumes_to_the_same_run(finished, tmp_path, damage):
  root, summary = finished
  ref = os.path.join(root, "ref")
  run_dir = _copy(finished, tmp_path, "run")
  damage(run_dir)
  again = training.train(_cfg(tmp_path, "run"))
  assert again["test"] == summary["test"] and again["step"] == summary["step"]
  step_a, params_a = _params(ref)
  step_b, params_b = _params(run_dir)
  assert step_a == step_b
  for a, b in zip(params_a, params_b, strict=True):
    np.testing.assert_array_equal(a, b)
  records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  assert [r["epoch"] for r in records] == [0, 1]


def _corrupt_newest(run_dir, how):
  last = _last(run_dir, "checkpoints")
  files = sorted(
    os.path.join(r, f) for r, _, fs in os.walk(os.path.join(last, "state")) for f in fs if os.path.getsize(os.path.join(r, f)) > 100
  )
  target = max(files, key=os.path.getsize)
  if how == "truncate":
    with open(target, "r+b") as f:
      f.truncate(os.path.getsize(target) // 2)
  elif how == "flip":
    with open(target, "r+b") as f:
      f.seek(os.path.getsize(target) // 2)
      byte = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([byte[0] ^ 0xFF]))
  else:  # garbled metadata
    with open(os.path.join(last, "meta", "metadata"), "w") as f:
      f.write("{\n")
  return last


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "flip", "metadata"])
def test_damaged_newest_checkpoint_is_reported_and_the_older_one_used(finished, tmp_path, capsys, how):
  run_dir = _copy(finished, tmp_path, "run")
  os.remove(os.path.join(run_dir, "summary.json"))
  last = _corrupt_newest(run_dir, how)
  again = training.train(_cfg(tmp_path, "run"))
  out = capsys.readouterr().out
  assert last in out and "damaged" in out
  assert os.path.isdir(last + ".corrupt")  # set aside, and the step saved again
  _, summary = finished
  assert again["test"] == summary["test"]


@pytest.mark.slow
def test_eval_falls_back_from_a_damaged_best_checkpoint(finished, tmp_path, capsys):
  run_dir = _copy(finished, tmp_path, "run")
  best = _last(run_dir, "best")
  for r, _, fs in os.walk(os.path.join(best, "state")):
    for f in fs:
      with open(os.path.join(r, f), "r+b") as fh:
        fh.truncate(1)
  argv = ["--checkpoint", run_dir, "--max_examples", "20", "--no_fgsm", "--no_deformed", "--no_corruptions", "--batch_size", "10"]
  assert eval_cli.cli_main(argv) == 0
  captured = capsys.readouterr()
  assert best in captured.err and "clean: top1" in captured.out


@pytest.mark.slow
def test_nan_never_reaches_a_checkpoint(tmp_path):
  cfg = _cfg(tmp_path, "nan", learning_rate=1e30, lr_schedule="step", save_every_steps=1, keep_checkpoints=1)
  with pytest.raises(ValueError, match="NaN/inf") as info:
    training.train(cfg)
  run_dir = cfg.run_dir()
  steps = _steps(run_dir, "checkpoints")
  assert "no checkpoint was saved yet" in str(info.value) if not steps else f"/{steps[-1]} (step {steps[-1]})" in str(info.value)
  for step in steps:
    manager = ckpt.checkpoint_manager(os.path.join(run_dir, "checkpoints"), 5)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(), meta=ocp.args.JsonRestore())).state
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state["params"]))
  with pytest.raises(ValueError, match="NaN/inf"):  # a resume stops again instead of loading a NaN state
    training.train(cfg)


@pytest.mark.parametrize(
  "change, flag",
  [
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"epochs": -1}, "epochs"),
    ({"print_freq": 0}, "print_freq"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"max_eval_examples": -1}, "max_eval_examples"),
    ({"model_kwargs": {"foo": 1}}, "model_kwargs"),
    ({"model_kwargs": [1, 2]}, "model_kwargs"),
    ({"batch_size": 0}, "batch_size"),
    ({"label_smoothing": 1.5}, "label_smoothing"),
  ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, change, flag):
  cfg = dataclasses.replace(_cfg(tmp_path, "bad"), **change)
  with pytest.raises(ValueError, match=flag):
    training.train(cfg)
  assert not os.path.exists(cfg.run_dir())


def test_failed_start_does_not_block_the_corrected_command(tmp_path):
  """A batch larger than the data fails after loading it, but before the run directory exists."""
  with pytest.raises(ValueError, match="batch_size"):
    training.train(_cfg(tmp_path, "run", batch_size=1000))
  assert not os.path.exists(tmp_path / "run")


def test_cli_bad_flags_are_clear_errors(tmp_path, capsys):
  base = ["--root_dir", str(tmp_path), "--arch", "preactresnet_small", "--data_dir", CIFAR_DIR]
  for extra, flag in (
    (["--epochs", "-1"], "--epochs"),
    (["--model_kwargs", "[1, 2]"], "--model_kwargs"),
    (["--print_freq", "0"], "--print_freq"),
  ):
    assert training.loop.cli_main(base + extra) == 2
    assert flag in capsys.readouterr().err
  assert not os.listdir(tmp_path)


def test_empty_data_dir_is_an_immediate_error(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="--download"):
    jaxmix.data.load("cifar10", str(empty))


def test_folder_of_another_dataset_is_refused():
  with pytest.raises(ValueError, match="cifar10"):
    jaxmix.data.load("svhn", CIFAR_DIR, labels_per_class=1)


def test_eval_rejects_non_positive_sizes(capsys):
  for flag in ("--max_examples", "--batch_size"):
    with pytest.raises(SystemExit):
      eval_cli.cli_main(["--checkpoint", "x", flag, "0"])
    assert flag in capsys.readouterr().err


def test_eval_summary_reports_non_finite_losses():
  images = np.zeros((8, 8, 8, 3), np.uint8)
  labels = np.arange(8) % 2
  nan_logits = lambda x: jax.numpy.full((x.shape[0], 2), jax.numpy.nan)  # noqa: E731
  metrics = jaxmix.evaluate_all(
    nan_logits, images, labels, mean=(0.5,) * 3, std=(0.2,) * 3, batch_size=4, fgsm=False, deformed=False, corruptions=False
  )
  assert metrics["clean"]["ce"] is None
  assert "CE n/a" in jaxmix.evaluation.format_summary(metrics)


# ----------------------------------------------------------------------------
# The API cases


def test_one_hot_rejects_concrete_out_of_range_labels():
  with pytest.raises(ValueError, match=r"\[0, 9\]"):
    jaxmix.one_hot(np.array([10, -1]), 10)
  traced = jax.jit(lambda y: jaxmix.one_hot(y, 10))(np.array([3, 4]))  # traced values are not checked
  assert traced.shape == (2, 10)


@pytest.mark.parametrize("op", [jaxmix.mixup, jaxmix.cutmix, jaxmix.cutout, jaxmix.patch_augment, jaxmix.ipmix])
def test_a_non_key_first_argument_is_a_type_error_naming_key(op):
  x = np.zeros((2, 8, 8, 3), np.float32)
  with pytest.raises(TypeError, match="key must be a PRNG key"):
    op(3, x, jaxmix.one_hot(np.array([0, 1]), 2))


@pytest.mark.parametrize("shape", [(2, 24, 40, 3), (2, 32, 24, 3), (2, 8, 8, 3), (2, 8, 13, 3)])
@pytest.mark.parametrize("op", [jaxmix.patch_augment, jaxmix.ipmix])
def test_default_settings_work_on_non_square_images(op, shape):
  x = np.full(shape, 0.5, np.float32)
  res = op(jax.random.key(0), x, jaxmix.one_hot(np.array([0, 1]), 2))
  assert res.images.shape == shape and np.all(np.isfinite(np.asarray(res.images)))


def test_checked_mode_turns_traced_out_of_range_lam_and_perm_into_errors():
  x = np.ones((4, 8, 8, 3), np.float32)
  y = jaxmix.one_hot(np.arange(4) % 2, 2)
  mix = jax.jit(jaxmix.checked(jaxmix.mixup))
  err, res = mix(jax.random.key(0), x, y, lam=np.float32(0.25))
  err.throw()
  np.testing.assert_allclose(res.lam, 0.25)
  err, _ = mix(jax.random.key(0), x, y, lam=np.float32(1.5))
  with pytest.raises(Exception, match="lam must lie in"):
    err.throw()
  err, _ = mix(jax.random.key(0), x, y, perm=np.array([0, 1, 2, 9]))
  with pytest.raises(Exception, match="perm values must lie in"):
    err.throw()


@pytest.mark.slow
def test_ema_weights_are_checkpointed_resumed_and_evaluated(tmp_path):
  cfg = _cfg(tmp_path, "ema", ema_decay=0.5, epochs=1)
  summary = training.train(cfg)
  assert set(summary["test_ema"]) == set(summary["test"])
  records = [json.loads(line) for line in open(os.path.join(cfg.run_dir(), "metrics.jsonl"))]
  assert "test_ema" in records[0] and "valid_ema" in records[0]
  raw_fn, data, _ = training.restore_for_eval(cfg.run_dir())
  ema_fn, _, _ = training.restore_for_eval(cfg.run_dir(), ema=True)
  x = jaxmix.normalize(data.test.images[:4], data.mean, data.std)
  assert not np.allclose(raw_fn(x), ema_fn(x))
  os.remove(os.path.join(cfg.run_dir(), "summary.json"))
  again = training.train(cfg)  # restores a state with an EMA in it
  assert again["test_ema"] == summary["test_ema"]


@pytest.mark.slow
def test_tensorboard_events_are_exact_across_a_kill_and_resume(tmp_path):
  from jaxmix.training.tensorboard import read_scalars

  cfg = _cfg(tmp_path, "tb", tensorboard=True)
  training.train(cfg)
  ref = {(tag, step): value for tag, step, value in read_scalars(cfg.run_dir())}
  assert {"train/loss", "train/accuracy", "train/learning_rate", "valid/top1", "test/top1"} <= {t for t, _ in ref}
  assert ("test/top1", 6) in ref and ("train/loss", 1) in ref
  _half_written_log_line(cfg.run_dir())  # the last epoch's checkpoint gone after its events were written
  training.train(cfg)
  again = read_scalars(cfg.run_dir())
  pairs = [(tag, step) for tag, step, _ in again]
  assert len(pairs) == len(set(pairs)), "a step was logged twice"
  assert {(tag, step): value for tag, step, value in again} == ref


@pytest.mark.slow
def test_disk_full_during_a_save_is_a_clear_error_and_the_run_resumes(finished, tmp_path, monkeypatch, capsys):
  cfg = _cfg(tmp_path, "disk")
  config = tmp_path / "config.json"
  config.write_text(json.dumps(dataclasses.asdict(cfg)))
  real, calls = ckpt.save, []

  def save_until_the_disk_fills(manager, state, meta):
    calls.append(int(state.step))
    if len(calls) == 2:
      raise OSError(28, "No space left on device")
    return real(manager, state, meta)

  monkeypatch.setattr(ckpt, "save", save_until_the_disk_fills)
  assert training.loop.cli_main(["--config", str(config)]) == 2
  assert "No space left on device" in capsys.readouterr().err
  monkeypatch.setattr(ckpt, "save", real)
  assert training.loop.cli_main(["--config", str(config)]) == 0
  root, _ = finished
  for a, b in zip(_params(os.path.join(root, "ref"))[1], _params(cfg.run_dir())[1], strict=True):
    np.testing.assert_array_equal(a, b)
