"""Peak host memory of a short `jaxmix train` run against the size of its image folder.

Generates class folders of 128x128 JPEGs (10 classes; ``--sizes``, default 2,000 and
20,000 training images, plus 500 test images each), then runs, for each folder, a short
``jaxmix train --dataset folder`` (``preactresnet_small``, a few steps) twice: cold (the
first run decodes the folder into the on-disk cache) and warm (the cache is there). A
sampler reads ``RssAnon`` (resident anonymous memory: the heap, not the page cache of
memory-mapped files) of the run's process and all its children from ``/proc`` every
20 ms and keeps the peak. Decoded, 18,000 more 128x128 images are 885 MB; bounded
input shows as the same peak for both folders.

Usage:
  python benchmarks/input_memory.py [--sizes 2000 20000] [--steps 5] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def _rss_anon_kb(pid: int) -> int:
  """RssAnon of ``pid`` and every descendant, in kB (0 for processes that are gone)."""
  total, todo = 0, [pid]
  while todo:
    p = todo.pop()
    try:
      with open(f"/proc/{p}/status") as f:
        for line in f:
          if line.startswith("RssAnon:"):
            total += int(line.split()[1])
      with open(f"/proc/{p}/task/{p}/children") as f:
        todo += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
      pass
  return total


def peak_rss_anon(cmd: list, env: dict, period: float = 0.02) -> tuple[float, float, str]:
  """Runs ``cmd``; returns ``(peak RssAnon in MB, wall seconds, output tail)``."""
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  peak = [0]

  def sample():
    while proc.poll() is None:
      peak[0] = max(peak[0], _rss_anon_kb(proc.pid))
      time.sleep(period)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  out, _ = proc.communicate()
  sampler.join()
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
  return peak[0] / 1024, time.perf_counter() - t0, out[-400:]


def make_folder(root: str, n_train: int, n_test: int = 500, size: int = 128, classes: int = 10) -> None:
  """``root/{train,test}/c<k>/<i>.jpg``: smooth random 128x128 JPEGs (quality 90)."""
  from PIL import Image

  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)  # upsampled: JPEG sizes of natural images
  for split, n in (("train", n_train), ("test", n_test)):
    for i in range(n):
      d = os.path.join(root, split, f"c{i % classes}")
      os.makedirs(d, exist_ok=True)
      img = Image.fromarray(base[i % 64]).resize((size, size), Image.BILINEAR)
      arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, (size, size, 3))
      buf = io.BytesIO()
      Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
      with open(os.path.join(d, f"{i}.jpg"), "wb") as f:
        f.write(buf.getvalue())


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--work", default=None, help="where folders, caches and runs go (default: a temporary directory)")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args(argv)
  work = args.work or tempfile.mkdtemp(prefix="jaxmix-mem-")
  results = []
  for n in args.sizes:
    root = os.path.join(work, f"folder{n}")
    if not os.path.isdir(root):
      t0 = time.perf_counter()
      make_folder(root, n)
      print(f"generated {n} + 500 JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
    env = {**os.environ, "JAXMIX_CACHE_DIR": os.path.join(work, f"cache{n}"), "JAX_PLATFORMS": "cpu"}
    for phase in ("cold", "warm"):
      cmd = [
        sys.executable,
        "-c",
        "import sys; from jaxmix.cli import main; sys.exit(main())",
        "train",
        "--dataset=folder",
        f"--data_dir={root}",
        "--arch=preactresnet_small",
        "--train=mixup",
        "--epochs=1",
        f"--max_steps_per_epoch={args.steps}",
        "--batch_size=32",
        "--eval_batch_size=100",
        "--max_eval_examples=200",
        f"--root_dir={os.path.join(work, 'runs')}",
        f"--job_id=n{n}-{phase}",
        "--compilation_cache=off",
      ]
      peak, wall, _ = peak_rss_anon(cmd, env)
      results.append({"images": n, "phase": phase, "peak_rss_anon_mb": round(peak, 1), "wall_s": round(wall, 1)})
      print(f"{n:>6} images, {phase}: peak RssAnon {peak:.1f} MB, wall {wall:.1f} s", flush=True)
  print("\n| training images | run | peak RssAnon (MB) | wall (s) |\n| --- | --- | --- | --- |")
  for r in results:
    print(f"| {r['images']} | {r['phase']} | {r['peak_rss_anon_mb']} | {r['wall_s']} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"machine": os.uname().nodename, "date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
