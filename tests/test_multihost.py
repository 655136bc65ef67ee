"""Multi-host ``jaxmix train``: two real processes against one, and the process flags.

Two processes with two emulated CPU devices each meet through ``jax.distributed``
(coordinator on 127.0.0.1, collectives through gloo) and must train exactly what one
process with four devices trains: the same per-step losses, the same epoch record, the
same final parameters and the same test metrics. Each device holds the same examples in
both layouts, so BatchNorm (per-device batch moments, running statistics averaged over
the devices) agrees too; mixing draws are keyed by global group index.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import CIFAR_DIR

from jaxmix import training as jtrain
from jaxmix.training.tensorboard import read_scalars

ARGS = [
  "--dataset",
  "cifar10",
  "--data_dir",
  CIFAR_DIR,
  "--labels_per_class",
  "2",
  "--valid_labels_per_class",
  "1",
  "--arch",
  "preactresnet_small",
  "--model_kwargs",
  json.dumps({"widths": [8, 8, 8, 8], "blocks": [1, 1, 1, 1]}),  # one kernel shape: few compiles
  "--batch_size",
  "8",
  "--epochs",
  "1",
  "--eval_batch_size",
  "8",
  "--max_eval_examples",
  "16",
  "--train",
  "mixup",
  "--mix_group_size",
  "2",
  "--print_freq",
  "1",
  "--tensorboard",
  "--compilation_cache",
  "off",
]
TIMEOUT = 300  # seconds for all three processes; a hang is killed and reported


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def _run_together(jobs, logs, timeout: float) -> list:
  """Starts every ``(argv, env)`` at once; kills them all (process groups) on a failure or timeout."""
  procs = []
  try:
    for (argv, env), log in zip(jobs, logs, strict=True):
      with open(log, "w") as out:
        procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if any(p.returncode not in (None, 0) for p in procs):
        break  # one failed: the others would wait for it
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  return [p.returncode for p in procs]


def _final_state(run_dir: str):
  manager = jtrain.checkpoint.checkpoint_manager(os.path.join(run_dir, "checkpoints"), 2)
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(), meta=ocp.args.JsonRestore()))
  return step, restored.state


def _close(a, b):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tmp_path):
  if not os.path.exists(os.path.join(CIFAR_DIR, "train.zip")):
    pytest.skip(f"real CIFAR-10 zips not found at {CIFAR_DIR}")
  train = [sys.executable, "-m", "jaxmix.cli", "train", *ARGS, "--root_dir", str(tmp_path)]
  hosts = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2"]
  jobs = [(train + ["--job_id", "one"], _env(4))]
  jobs += [(train + ["--job_id", "two", *hosts, "--process_id", str(i)], _env(2)) for i in range(2)]
  logs = [tmp_path / name for name in ("one.log", "two.0.log", "two.1.log")]
  start = time.monotonic()
  codes = _run_together(jobs, logs, TIMEOUT)
  seconds = time.monotonic() - start
  report = "\n".join(f"--- {log.name} (exit {rc}):\n{log.read_text()[-4000:]}" for log, rc in zip(logs, codes, strict=True))
  assert codes == [0, 0, 0], report
  print(f"three processes in {seconds:.1f}s")

  one, two = tmp_path / "one", tmp_path / "two"
  logs_text = [log.read_text() for log in logs]
  assert "4 device(s)" in logs_text[0] and "4 device(s)" in logs_text[1], report
  assert "epoch" not in logs_text[2] and "done" not in logs_text[2], report  # only process 0 prints

  # The process flags are not part of the run's configuration.
  cfg_one, cfg_two = (json.loads((d / "config.json").read_text()) for d in (one, two))
  assert {k: v for k, v in cfg_one.items() if k != "job_id"} == {k: v for k, v in cfg_two.items() if k != "job_id"}

  # Per-step losses (the running means of the progress lines, at full precision) and the epoch record.
  scalars = [{(tag, step): v for tag, step, v in read_scalars(str(d)) if tag.startswith("train/loss")} for d in (one, two)]
  assert sorted(scalars[0]) == sorted(scalars[1]) and len(scalars[0]) == 2
  _close([scalars[0][k] for k in sorted(scalars[0])], [scalars[1][k] for k in sorted(scalars[0])])
  records = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
  assert len(records[0]) == len(records[1]) == 1
  for split in ("train", "valid", "test"):
    assert sorted(records[0][0][split]) == sorted(records[1][0][split])
    _close([records[0][0][split][k] for k in sorted(records[0][0][split])], [records[1][0][split][k] for k in sorted(records[1][0][split])])

  # The final state (params, BN statistics, optimizer, step, key) of the two checkpoints.
  (step_one, state_one), (step_two, state_two) = _final_state(str(one)), _final_state(str(two))
  assert step_one == step_two == 2
  assert jax.tree.structure(state_one) == jax.tree.structure(state_two)
  for a, b in zip(jax.tree.leaves(state_one), jax.tree.leaves(state_two), strict=True):
    _close(a, b)

  # The test metrics of the summaries.
  tests = [json.loads((d / "summary.json").read_text())["test"] for d in (one, two)]
  assert tests[0]["top1"] == tests[1]["top1"] and tests[0]["top5"] == tests[1]["top5"]
  _close(tests[0]["loss"], tests[1]["loss"])


# ----------------------------------------------------------------------------
# The flags, checked before any process starts.


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--coordinator_address", "127.0.0.1:1234", "--num_processes", "2"], "missing --process_id"),
    (["--num_processes", "2", "--process_id", "0"], "missing --coordinator_address"),
    (["--process_id", "1"], "missing --coordinator_address, --num_processes"),
    (["--coordinator_address", "127.0.0.1:1234", "--num_processes", "2", "--process_id", "2"], "--process_id must be in [0, 2)"),
    (["--coordinator_address", "127.0.0.1:1234", "--num_processes", "2", "--process_id", "-1"], "--process_id must be in [0, 2)"),
    (["--coordinator_address", "127.0.0.1:1234", "--num_processes", "0", "--process_id", "0"], "--num_processes must be >= 1"),
    (["--coordinator_address", "localhost", "--num_processes", "2", "--process_id", "0"], "HOST:PORT"),
  ],
)
def test_process_flags_are_checked_first(tmp_path, capsys, flags, message):
  rc = jtrain.loop.cli_main(["--root_dir", str(tmp_path), *flags])
  assert rc == 2
  assert message in capsys.readouterr().err
  assert not os.listdir(tmp_path)  # nothing was started or written


def test_process_flags_are_not_part_of_the_configuration():
  plain, _ = jtrain.config.parse_args(["--train", "mixup"])
  flags = ["--coordinator_address", "10.0.0.1:1234", "--num_processes", "4", "--process_id", "3", "--distributed"]
  multi, args = jtrain.config.parse_args(["--train", "mixup", *flags])
  assert dataclasses.asdict(plain) == dataclasses.asdict(multi)
  assert (args.coordinator_address, args.num_processes, args.process_id, args.distributed) == ("10.0.0.1:1234", 4, 3, True)


def test_process_flags_reach_jax_distributed(tmp_path, capsys, monkeypatch):
  calls = []

  def fake_initialize(**kwargs):
    calls.append(kwargs)
    raise ValueError("coordinator_address should be defined.")  # what JAX says when it finds no cluster

  monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
  flags = ["--coordinator_address", "127.0.0.1:1234", "--num_processes", "2", "--process_id", "1"]
  assert jtrain.loop.cli_main(["--root_dir", str(tmp_path), *flags]) == 2
  assert calls.pop() == {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
  capsys.readouterr()
  assert jtrain.loop.cli_main(["--root_dir", str(tmp_path), "--distributed"]) == 2
  assert calls.pop() == {}
  assert "found no cluster" in capsys.readouterr().err
  assert jtrain.loop.cli_main(["--root_dir", str(tmp_path), "--print_config"]) == 0
  assert not calls and not os.listdir(tmp_path)
