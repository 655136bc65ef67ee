"""The benchmarks run: `gpu.py` end to end in its tiny CPU setting without TensorFlow, `ops.py` on a chosen op."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

_RUN = """
import runpy, sys
sys.modules["tensorflow"] = None  # importing TensorFlow now fails: the benchmark must not need it
sys.argv = ["gpu.py", sys.argv[1], "--tiny"]
runpy.run_path("benchmarks/gpu.py", run_name="__main__")
"""


def test_gpu_benchmark_tiny_setting_writes_json_and_table(tmp_path):
  out = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  (name,) = os.listdir(tmp_path)
  assert name.startswith("gpu_") and name.endswith(".json")
  result = json.loads((tmp_path / name).read_text())
  assert result["tiny"] and result["platform"] == "cpu" and not result["skipped"]
  groups = {(r["dtype"], r["method"]) for r in result["train_step"]}
  assert groups == {("float32", "vanilla"), ("float32", "mixup"), ("bfloat16", "vanilla")}
  for r in result["train_step"]:
    assert r["img_per_s"] > 0 and r["compile_s"] > 0 and r["ratio"] > 0
    if r["method"] == "vanilla":
      assert r["ratio"] == 1.0
  assert {r["op"] for r in result["input_ops"]} == {"mixup", "cutmix"} and all(r["jaxmix_ms"] > 0 for r in result["input_ops"])
  assert "| model | image | batch | dtype | method |" in out.stdout and "| input op |" in out.stdout


def _load_benchmark(name):
  spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "benchmarks")) if f.endswith(".py")))
def test_every_benchmark_script_imports_and_has_a_main(name):
  # A renamed module or helper breaks a benchmark at import time, long before anyone runs it.
  assert callable(_load_benchmark(name).main)


def test_ops_benchmark_times_the_chosen_ops_beside_the_baselines(capsys):
  ops = _load_benchmark("ops")
  ops.main(["--rounds", "1", "--shapes", "small", "--no-timm", "--ops", "mixup"])
  out = capsys.readouterr().out
  cases = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and not line.startswith("| case")]
  assert cases == ["bound: a + b", "bound: 0.3 a + 0.7 b", "bound: images + labels", "bound: x[perm]", "floor: jitted call", "mixup"]
  assert "mixup: jaxmix / runtime floor" in out and "cutmix:" not in out


def test_ops_benchmark_cycles_through_more_batches_than_a_cache_holds():
  ops = _load_benchmark("ops")
  for shape in ops.SHAPES.values():
    n = ops.fresh_batches(shape)
    assert n >= 2 and n * 4 * np.prod(shape) >= ops.MIN_BYTES >= 32 << 20


def test_ops_benchmark_gives_every_call_the_next_batch(monkeypatch):
  ops = _load_benchmark("ops")
  seen = []

  def fake_run(fn, make_args, i):
    seen.append(id(next(a for a in make_args(i) if getattr(a, "ndim", 0) == 4)))  # the images the call reads first
    return 1e-3

  monkeypatch.setattr(ops, "_run_once", fake_run)
  ops.measure(ops.SHAPES["small"], rounds=1, calls=2, use_timm=False, full=False, ops={"mixup": ops.OPS["mixup"]})
  timed = seen[3 * 6 :]  # after three warm-up calls of each of the 6 cases
  assert len(timed) == 12 and all(a != b for a, b in zip(timed[:-1], timed[1:], strict=True))  # consecutive calls: other batches


def test_ops_benchmark_names_an_unknown_op_or_shape(capsys):
  ops = _load_benchmark("ops")
  for argv, name in ((["--ops", "mixup,mixpu"], "--ops"), (["--shapes", "tiny"], "--shapes")):
    with pytest.raises(SystemExit) as exit_:
      ops.main(argv)
    assert exit_.value.code == 2 and name in capsys.readouterr().err
