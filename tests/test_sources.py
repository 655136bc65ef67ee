"""Data sets beyond CIFAR: Tiny-ImageNet and ImageNet-style folders, the on-disk cache, TF-free input."""

import io
import json
import math
import os
import random
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from jaxmix.training import data, sources

WNIDS = tuple(f"n{k:08d}" for k in range(200))


def _jpeg(array, quality=90) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _write_tiny(root, per_class=1, n_val=12, seed=0):
  """Tiny-ImageNet-200 as it unpacks (200 classes, 64x64 JPEGs), small; returns val labels."""
  rng = np.random.default_rng(seed)
  (root / "val" / "images").mkdir(parents=True)
  (root / "test" / "images").mkdir(parents=True)
  (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
  for k, w in enumerate(WNIDS):
    (root / "train" / w / "images").mkdir(parents=True)
    (root / "train" / w / f"{w}_boxes.txt").write_text("")
    for i in range(per_class):
      img = np.full((64, 64, 3), k, np.uint8) + rng.integers(0, 8, (64, 64, 3), dtype=np.uint8)
      (root / "train" / w / "images" / f"{w}_{i}.JPEG").write_bytes(_jpeg(img))
  labels, lines = [], []
  for i in range(n_val):
    k = int(rng.integers(0, 200))
    (root / "val" / "images" / f"val_{i}.JPEG").write_bytes(_jpeg(np.full((64, 64, 3), k, np.uint8)))
    lines.append(f"val_{i}.JPEG\t{WNIDS[k]}\t0\t0\t63\t63")
    labels.append(k)
  (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
  (root / "test" / "images" / "test_0.JPEG").write_bytes(_jpeg(np.zeros((64, 64, 3), np.uint8)))
  return np.array(labels)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMIX_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache"


def test_tiny_imagenet_layout_dir_and_zip(tmp_path, cache):
  root = tmp_path / "tiny-imagenet-200"
  val_labels = _write_tiny(root)
  ds = data.load("tiny-imagenet-200", str(tmp_path))  # the parent folder works too
  assert ds.num_classes == 200 and ds.class_names == WNIDS and ds.image_size == 64
  assert ds.mean == ds.std == (0.5, 0.5, 0.5)
  assert ds.train.images.shape == (200, 64, 64, 3) and isinstance(ds.train.images, np.memmap)
  np.testing.assert_array_equal(ds.train.labels, np.arange(200))  # wnids.txt order
  np.testing.assert_array_equal(ds.test.labels, val_labels)  # val, labelled by val_annotations.txt
  # Pixels are the JPEGs as Pillow decodes them.
  raw = (root / "val" / "images" / "val_3.JPEG").read_bytes()
  np.testing.assert_array_equal(ds.test.images[3], np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")))
  zpath = tmp_path / "tiny-imagenet-200.zip"
  with zipfile.ZipFile(zpath, "w") as z:
    for f in root.rglob("*"):
      if f.is_file():
        z.write(f, str(f.relative_to(tmp_path)))
  from_zip = data.load("tiny-imagenet", str(zpath), labels_per_class=1)
  np.testing.assert_array_equal(from_zip.test.images, ds.test.images)
  np.testing.assert_array_equal(np.sort(from_zip.train.labels), ds.train.labels)


def test_tiny_imagenet_errors_name_the_file(tmp_path, cache):
  root = tmp_path / "tiny-imagenet-200"
  _write_tiny(root, n_val=3)
  (root / "val" / "images" / "val_9.JPEG").write_bytes(_jpeg(np.zeros((64, 64, 3), np.uint8)))
  with pytest.raises(ValueError, match=r"1 val images have no line in val/val_annotations.txt, e.g. \['val_9.JPEG'\]"):
    data.load("tiny-imagenet-200", str(root))
  (root / "val" / "images" / "val_9.JPEG").unlink()
  (root / "val" / "images" / "val_2.JPEG").unlink()
  with pytest.raises(ValueError, match="line 3 names 'val_2.JPEG', which is not in val/images/"):
    data.load("tiny-imagenet-200", str(root))
  (root / "wnids.txt").unlink()
  with pytest.raises(ValueError, match="no wnids.txt"):
    data.load("tiny-imagenet-200", str(root))
  with pytest.raises(ValueError, match="pass --data_dir"):
    data.load("tiny-imagenet-200")


def _write_imagenet_style(root, num_classes=3, per_class=4, split_names=("train", "val"), seed=0):
  rng = np.random.default_rng(seed)
  for split in split_names:
    for k in range(num_classes):
      d = root / split / f"n{k:08d}"
      d.mkdir(parents=True)
      for i in range(per_class):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))  # any size, any aspect
        (d / f"{split}_{k}_{i}.JPEG").write_bytes(_jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))


def test_imagenet_style_folder_any_size(tmp_path, cache):
  root = tmp_path / "imagenet"
  _write_imagenet_style(root)
  with pytest.raises(ValueError, match="all images must share one size.*--image_size"):
    data.load("folder", str(root))
  ds = data.load("folder", str(root), image_size=32, valid_labels_per_class=1)
  assert ds.num_classes == 3 and ds.image_size == 32 and ds.augment == "crop_flip"
  assert ds.train.images.shape == (9, 32, 32, 3) and ds.valid.images.shape == (3, 32, 32, 3)
  assert ds.test.images.shape == (12, 32, 32, 3)
  # Shorter side resized to 32 (bilinear, antialiased), centre crop, as torchvision's Resize + CenterCrop.
  raw = (root / "val" / "n00000001" / "val_1_2.JPEG").read_bytes()
  img = Image.open(io.BytesIO(raw)).convert("RGB")
  w, h = img.size
  nw, nh = (32, int(32 * h / w)) if w <= h else (int(32 * w / h), 32)
  top, left = int(round((nh - 32) / 2)), int(round((nw - 32) / 2))
  expected = np.asarray(img.resize((nw, nh), Image.BILINEAR))[top : top + 32, left : left + 32]
  np.testing.assert_array_equal(ds.test.images[4 + 2], expected)
  # The inception recipe: training images kept at 32 / 0.875 = 37 for the random-resized
  # crop, evaluation images resized to 37 and centre-cropped to 32 (valid: the same crop).
  inc = data.load("folder", str(root), image_size=32, augment="inception", valid_labels_per_class=1)
  assert inc.train.images.shape[1:] == (37, 37, 3) and inc.test.images.shape[1:] == (32, 32, 3)
  assert inc.valid.images.shape[1:] == (32, 32, 3) and isinstance(inc.valid.images, np.memmap)
  np.testing.assert_array_equal(inc.valid.images, np.asarray(inc.valid.images))
  batches = list(data.train_batches(inc.train, batch_size=3, seed=1, epoch=0, random_resized_crop=32))
  assert len(batches) == 3 and batches[0]["image"].shape == (3, 32, 32, 3)
  again = list(data.train_batches(inc.train, batch_size=3, seed=1, epoch=0, random_resized_crop=32, start_step=1, workers=1))
  for a, b in zip(batches[1:], again, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
  other = list(data.train_batches(inc.train, batch_size=3, seed=1, epoch=1, random_resized_crop=32))
  assert not np.array_equal(other[0]["image"], batches[0]["image"])


def test_random_resized_crop_box_follows_torchvision():
  rng = np.random.default_rng(0)
  areas, ratios = [], []
  for _ in range(2000):
    i, j, h, w = data._crop_box(60, 80, rng.random((10, 4)))
    assert 0 <= i <= 60 - h and 0 <= j <= 80 - w and h > 0 and w > 0
    areas.append(h * w / (60 * 80))
    ratios.append(w / h)
  assert 0.07 <= min(areas) and max(areas) <= 1.0
  assert 3 / 4 - 0.05 <= min(ratios) and max(ratios) <= 4 / 3 + 0.05
  # torchvision's RandomResizedCrop.get_params, transcribed with the random module: same area distribution.
  py = random.Random(1)
  ref = []
  for _ in range(4000):
    for _ in range(10):
      target = 60 * 80 * py.uniform(0.08, 1.0)
      ratio = math.exp(py.uniform(math.log(3 / 4), math.log(4 / 3)))
      w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
      if 0 < w <= 80 and 0 < h <= 60:
        ref.append(h * w / (60 * 80))
        break
    else:
      ref.append(1.0)
  assert stats.ks_2samp(areas, ref).pvalue > 0.01
  # Ten rejected tries (area too big for the image) fall back to the centre crop with the ratio clamped.
  assert data._crop_box(10, 100, np.ones((10, 4)) * 0.999) == (0, 43, 10, 13)
  assert data._crop_box(50, 50, np.ones((10, 4)) * 0.999) == (0, 0, 50, 50)


def test_decoders_agree_with_tensorflow(tmp_path):
  """The same pixels whichever library decodes: Pillow here, TF's accurate IDCT in tf.data pipelines."""
  tf = pytest.importorskip("tensorflow")
  rng = np.random.default_rng(5)
  for shape, quality in (((33, 47, 3), 75), ((64, 64, 3), 95), ((20, 31, 3), 50)):
    blob = _jpeg(rng.integers(0, 256, shape, dtype=np.uint8), quality)
    ours = sources.decode(blob)
    theirs = tf.io.decode_jpeg(blob, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(ours, theirs)
  with pytest.raises(ValueError):
    sources.decode(b"\x89PNG not really")


def test_cache_is_memory_mapped_and_subsets_stay_on_disk(tmp_path, cache):
  root = tmp_path / "imagenet"
  _write_imagenet_style(root, per_class=6)
  ds = data.load("folder", str(root), image_size=16, labels_per_class=3, valid_labels_per_class=2)
  for split in (ds.train, ds.valid, ds.test):
    assert isinstance(split.images, np.memmap) and not split.images.flags.writeable
  full = data.load("folder", str(root), image_size=16)
  rows = {x.tobytes() for x in full.train.images}
  assert {x.tobytes() for x in ds.train.images} <= rows and {x.tobytes() for x in ds.valid.images} <= rows
  entries = sorted(os.listdir(cache))
  assert len(entries) == 2 and not [e for e in entries if "tmp" in e]
  # A new size is a new entry; the old ones stay valid.
  data.load("folder", str(root), image_size=20)
  assert len(os.listdir(cache)) == 4


def test_trains_from_a_folder_without_tensorflow(tmp_path, cache):
  """`jaxmix train --dataset folder` in a process where TensorFlow cannot be imported."""
  root = tmp_path / "imagenet"
  _write_imagenet_style(root, num_classes=2, per_class=4, split_names=("train", "test"))
  # None in sys.modules: `import tensorflow` fails and find_spec reports it absent, as in a venv without it.
  block = (
    "import sys\nsys.modules.update(tensorflow=None, tensorflow_datasets=None)\nfrom jaxmix.cli import main\nsys.exit(main(sys.argv[1:]))\n"
  )
  args = [
    "train",
    "--dataset=folder",
    f"--data_dir={root}",
    "--image_size=16",
    "--arch=preactresnet_small",
    "--train=mixup",
    "--epochs=1",
    "--batch_size=4",
    "--eval_batch_size=8",
    f"--root_dir={tmp_path / 'runs'}",
    "--job_id=notf",
    "--compilation_cache=off",
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  out = subprocess.run([sys.executable, "-c", block, *args], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert os.path.exists(tmp_path / "runs" / "notf" / "summary.json")
  assert "folder (8 train / 0 valid / 8 test)" in out.stdout


def test_tfds_imagenet2012_and_any_tfds_name_with_mock_data(cache):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    imagenet = data.load("imagenet", image_size=32)
    other = data.load("tfds:imagenette", image_size=24)
  assert imagenet.name == "imagenet2012" and imagenet.num_classes == 1000 and imagenet.augment == "inception"
  assert imagenet.train.images.shape == (6, 37, 37, 3) and imagenet.test.images.shape == (6, 32, 32, 3)
  assert imagenet.mean == (0.485, 0.456, 0.406) and isinstance(imagenet.train.images, np.memmap)
  assert other.name == "tfds:imagenette" and other.num_classes == 10 and other.test.images.shape == (6, 24, 24, 3)
  with pytest.raises(ValueError, match="tfds:NAME needs"):
    data.load("tfds:")


def _write_pictures(root, n=5, seed=3):
  rng = np.random.default_rng(seed)
  (root / "any" / "nested").mkdir(parents=True)
  for i in range(n):
    h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
    where = root / "any" / ("nested" if i % 2 else "") / f"p{i}.png"
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(where)
  (root / "notes.txt").write_text("not a picture")


def test_mixing_side_is_the_official_resize():
  from jaxmix.training import loop

  # cifar.py: Resize(36) + RandomCrop(32); imagenet.py: Resize(256) + RandomCrop(224)
  assert (loop.mixing_side(32, "crop_flip"), loop.mixing_side(224, "inception"), loop.mixing_side(64, "crop_flip")) == (36, 256, 72)


def test_mixing_pictures_resized_then_cropped_per_example(tmp_path):
  """IPMix's --mixing-set: Resize(36) (shorter side, aspect kept), then a random 32x32 crop per draw."""
  _write_pictures(tmp_path / "set")
  pictures = sources.load_pictures(str(tmp_path / "set"), short_side=36)
  assert len(pictures) == 5 and all(min(p.shape[:2]) == 36 and p.dtype == np.uint8 for p in pictures)
  assert any(max(p.shape[:2]) > 36 for p in pictures)
  toy = data.Split(np.zeros((12, 32, 32, 3), np.uint8), np.arange(12, dtype=np.int32))
  kw = dict(batch_size=4, seed=2, epoch=0, mixing_pictures=pictures)
  batches = list(data.train_batches(toy, **kw))
  assert all(b["mixing"].shape == (4, 32, 32, 3) and b["mixing"].dtype == np.uint8 for b in batches)

  def crop_of_some_picture(crop):
    for p in pictures:
      for t in range(p.shape[0] - 31):
        for s in range(p.shape[1] - 31):
          if np.array_equal(p[t : t + 32, s : s + 32], crop):
            return True
    return False

  assert all(crop_of_some_picture(c) for c in batches[0]["mixing"])
  resumed = list(data.train_batches(toy, start_step=2, **kw))
  np.testing.assert_array_equal(resumed[0]["mixing"], batches[2]["mixing"])
  assert not np.array_equal(batches[0]["mixing"], batches[1]["mixing"])
  with pytest.raises(FileNotFoundError, match="nowhere"):
    sources.load_pictures(str(tmp_path / "nowhere"), 36)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no picture"):
    sources.load_pictures(str(tmp_path / "empty"), 36)
  with pytest.raises(ValueError, match="at least 64x64"):
    list(data.train_batches(data.Split(np.zeros((4, 64, 64, 3), np.uint8), np.zeros(4, np.int32)), **{**kw, "batch_size": 2}))


def test_ipmix_step_mixes_with_the_batch_pictures():
  """The train step hands batch['mixing'] to IPMix (one picture per example): other pictures, other loss."""
  import jax
  import jax.numpy as jnp

  from jaxmix import training as jtrain
  from jaxmix.training import models
  from jaxmix.training import step as ts

  cfg = jtrain.TrainConfig(arch="preactresnet_small", train="ipmix", batch_size=4, model_kwargs={"widths": [4, 4, 4, 4]})
  model = models.get_model(cfg.arch, 10, **cfg.model_kwargs)
  loss_fn = ts.make_loss_fn(model, jtrain.config.step_config(cfg, 10, (0.5,) * 3, (0.25,) * 3))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
  labels = jnp.arange(4, dtype=jnp.int32)
  run = jax.jit(lambda m: loss_fn(variables["params"], variables["batch_stats"], images, labels, jax.random.key(1), 0, m)[0])
  dark, bright = jnp.zeros((4, 16, 16, 3), jnp.uint8), jnp.full((4, 16, 16, 3), 255, jnp.uint8)
  assert float(run(dark)) != float(run(bright))
  assert float(run(dark)) == float(run(jnp.zeros((4, 16, 16, 3), jnp.uint8)))


def test_tiny_imagenet_trains_with_the_puzzlemix_recipe_and_reports_val_top1(tmp_path, cache):
  """Tiny-ImageNet in its real layout, Puzzle Mix's Tiny-ImageNet recipe (stride-2 stem, padding 4), at toy width."""
  from jaxmix import training as jtrain

  _write_tiny(tmp_path / "tiny-imagenet-200", n_val=10)
  cfg = jtrain.TrainConfig(
    dataset="tiny-imagenet-200",
    data_dir=str(tmp_path),
    arch="preactresnet_small",
    model_kwargs={"stem_stride": 2, "widths": [4, 4, 4, 4]},
    train="puzzlemix",
    hparams={"alpha": 1.0, "transport": True, "t_eps": 0.8},
    clean_lam=1.0,
    crop_padding=4,
    epochs=1,
    batch_size=16,
    max_steps_per_epoch=2,
    eval_batch_size=16,
    num_devices=1,
    root_dir=str(tmp_path / "runs"),
    job_id="tiny",
    learning_rate=0.2,
  )
  summary = jtrain.train(cfg)
  assert 0 <= summary["test"]["top1"] <= 100 and "top5" in summary["test"]  # on val/, labelled by val_annotations.txt
  assert json.load(open(tmp_path / "runs" / "tiny" / "config.json"))["dataset"] == "tiny-imagenet-200"
