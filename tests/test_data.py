"""Tests of jaxmix.data: offline/tfds loading, subsets, deterministic resumable batches."""

import io
import os
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CIFAR_DIR
from PIL import Image
from scipy import stats

from jaxmix.training import data

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def cifar():
  if not os.path.isdir(CIFAR_DIR):
    pytest.skip(f"real CIFAR-10 zips not found at {CIFAR_DIR}")
  return data.load("cifar10", CIFAR_DIR, labels_per_class=10, valid_labels_per_class=5, seed=3)


@pytest.fixture(scope="module")
def toy():
  """100 images without zero pixels; the label of an image is its index."""
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, size=(100, 8, 8, 3), dtype=np.uint8)
  return data.Split(images, np.arange(100, dtype=np.int32))


def _png(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def _write_folder(root, n_per_class=2, num_classes=10, size=8, offset=0):
  """A class-folder dir ``root/{train,test}/c<k>/<i>.png``; returns the expected arrays."""
  rng = np.random.default_rng(offset)
  out = {}
  for split in ("train", "test"):
    images, labels = [], []
    for k in range(num_classes):
      os.makedirs(os.path.join(root, split, f"c{k}"), exist_ok=True)
      for i in range(n_per_class):
        img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        with open(os.path.join(root, split, f"c{k}", f"{i}.png"), "wb") as f:
          f.write(_png(img))
        images.append(img)
        labels.append(k)
    out[split] = (np.stack(images), np.array(labels))
  return out


# --------------------------------------------------------------------------- loading


def test_real_cifar_zips_offline(cifar):
  assert cifar.name == "cifar10" and cifar.num_classes == 10
  assert cifar.class_names == CIFAR_CLASSES
  assert cifar.test.images.shape == (10000, 32, 32, 3) and cifar.test.images.dtype == np.uint8
  assert cifar.test.labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(cifar.test.labels), [1000] * 10)
  assert cifar.train.images.shape == (100, 32, 32, 3) and cifar.valid.images.shape == (50, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(cifar.train.labels), [10] * 10)
  np.testing.assert_array_equal(np.bincount(cifar.valid.labels), [5] * 10)
  np.testing.assert_allclose(cifar.mean, np.array([125.3, 123.0, 113.9]) / 255)
  np.testing.assert_allclose(cifar.std, np.array([63.0, 62.1, 66.7]) / 255)
  # Label order = alphabetical folders, and decoding is bit-identical to PIL.
  with zipfile.ZipFile(os.path.join(CIFAR_DIR, "test.zip")) as z:
    for k, name in [(0, "test/airplane/0000.jpg"), (3 * 1000 + 7, "test/cat/0007.jpg"), (9999, "test/truck/0999.jpg")]:
      expected = np.asarray(Image.open(io.BytesIO(z.read(name))).convert("RGB"))
      np.testing.assert_array_equal(cifar.test.images[k], expected)
      assert CIFAR_CLASSES[cifar.test.labels[k]] == name.split("/")[1]


def test_real_cifar_subsets_deterministic_and_disjoint(cifar):
  again = data.load("cifar10", CIFAR_DIR, labels_per_class=10, valid_labels_per_class=5, seed=3)
  np.testing.assert_array_equal(again.train.images, cifar.train.images)
  np.testing.assert_array_equal(again.valid.labels, cifar.valid.labels)
  other = data.load("cifar10", CIFAR_DIR, labels_per_class=10, valid_labels_per_class=5, seed=4)
  assert not np.array_equal(other.train.images, cifar.train.images)
  train_rows = {x.tobytes() for x in cifar.train.images}
  assert not train_rows & {x.tobytes() for x in cifar.valid.images}
  # Validation is taken first: it does not depend on labels_per_class.
  bigger = data.load("cifar10", CIFAR_DIR, labels_per_class=20, valid_labels_per_class=5, seed=3)
  np.testing.assert_array_equal(bigger.valid.images, cifar.valid.images)
  assert train_rows <= {x.tobytes() for x in bigger.train.images}
  assert data.load("cifar10", CIFAR_DIR, labels_per_class=10, seed=3).valid is None


def test_subset_indices_follow_patchup():
  rng = np.random.default_rng(1)
  labels = rng.permutation(np.repeat(np.arange(10), 50))
  train, valid = data._subset_indices(labels, 10, 20, 5, seed=7)
  assert len(set(train)) == 200 and len(set(valid)) == 50 and not set(train) & set(valid)
  np.testing.assert_array_equal(np.bincount(labels[train]), [20] * 10)
  np.testing.assert_array_equal(np.bincount(labels[valid]), [5] * 10)
  # One shuffle; per class the first n_valid go to validation, the next n to training.
  train_all, valid_same = data._subset_indices(labels, 10, None, 5, seed=7)
  np.testing.assert_array_equal(valid_same, valid)
  for c in range(10):
    head = train_all[labels[train_all] == c][:20]
    np.testing.assert_array_equal(head, train[labels[train] == c])
  # PatchUp's 5000/500 on 5000 per class trains on 4500: a short class gives what it has.
  short, _ = data._subset_indices(labels, 10, 50, 5, seed=7)
  np.testing.assert_array_equal(np.bincount(labels[short]), [45] * 10)
  with pytest.raises(ValueError, match="valid_labels_per_class=50"):
    data._subset_indices(labels, 10, 1, 50, seed=7)


def test_folder_layouts_and_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMIX_CACHE_DIR", str(tmp_path / "cache"))
  root = tmp_path / "folder"
  expected = _write_folder(str(root))
  ds = data.load("cifar10", str(root))
  for split in ("train", "test"):
    np.testing.assert_array_equal(getattr(ds, split).images, expected[split][0])
    np.testing.assert_array_equal(getattr(ds, split).labels, expected[split][1])
  assert ds.class_names == tuple(f"c{k}" for k in range(10))
  assert len(os.listdir(tmp_path / "cache")) == 2

  # One zip holding root/train and root/test.
  single = tmp_path / "all.zip"
  with zipfile.ZipFile(single, "w") as z:
    for dirpath, _, files in os.walk(root):
      for f in files:
        full = os.path.join(dirpath, f)
        z.write(full, os.path.join("cifar", os.path.relpath(full, root)))
  from_zip = data.load("cifar10", str(single))
  np.testing.assert_array_equal(from_zip.test.images, ds.test.images)
  np.testing.assert_array_equal(from_zip.train.labels, ds.train.labels)

  # The second load reads the cache, without decoding.
  def no_decode(*args):
    raise AssertionError("decoded although cached")

  with monkeypatch.context() as m:
    m.setattr(data.sources, "decode", no_decode)
    cached = data.load("cifar10", str(root))
  np.testing.assert_array_equal(cached.train.images, ds.train.images)
  # Changing a source file invalidates its entry.
  changed = np.full((8, 8, 3), 7, np.uint8)
  path = root / "test" / "c0" / "0.png"
  path.write_bytes(_png(changed))
  os.utime(path, ns=(1, 1))
  np.testing.assert_array_equal(data.load("cifar10", str(root)).test.images[0], changed)


def test_errors_name_the_problem(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMIX_CACHE_DIR", str(tmp_path / "cache"))
  with pytest.raises(ValueError, match="cifar10, cifar100, folder, imagenet, .*tfds:NAME"):
    data.load("mnist", str(tmp_path))
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    data.load("cifar10", missing)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "train.zip").write_bytes(b"this is not a zip archive" * 10)
  (bad / "test.zip").write_bytes(b"neither is this")
  with pytest.raises(ValueError, match="train.zip"):
    data.load("cifar10", str(bad))
  with pytest.raises(ValueError, match="not a zip"):
    data.load("cifar10", str(bad / "train.zip"))
  half = tmp_path / "half"
  (half / "train" / "a").mkdir(parents=True)
  with pytest.raises(ValueError, match="test"):
    data.load("cifar10", str(half))
  root = tmp_path / "folder"
  _write_folder(str(root), n_per_class=1, size=4)
  with pytest.raises(ValueError, match="10 class folders, but cifar100 has 100"):
    data.load("cifar100", str(root))
  (root / "train" / "c3" / "0.png").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
  # An undecodable file is skipped with a warning that counts and names it, on every load.
  for _ in range(2):
    with pytest.warns(UserWarning, match="skipped 1 of 10 files .*c3/0.png"):
      assert len(data.load("cifar10", str(root)).train.labels) == 9
  for f in (root / "test").rglob("*.png"):
    f.write_bytes(b"not an image")
  with pytest.raises(ValueError, match="none of its 10 images could be decoded"):
    data.load("cifar10", str(root))
  _write_folder(str(root), n_per_class=1, size=4)
  (root / "train" / "c3" / "0.png").write_bytes(_png(np.zeros((5, 4, 3), np.uint8)))
  with pytest.raises(ValueError, match="shape"):
    data.load("cifar10", str(root))
  with pytest.raises(ValueError, match="labels_per_class"):
    data.load("cifar10", str(root), labels_per_class=0)


def test_tfds_path_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=40):
    ds = data.load("cifar10")
    svhn = data.load("svhn")
  assert ds.train.images.shape == (40, 32, 32, 3) and ds.train.images.dtype == np.uint8
  assert ds.test.labels.dtype == np.int32 and ds.train.labels.max() < 10
  assert ds.num_classes == len(ds.class_names) == 10 and ds.valid is None
  assert svhn.name == "svhn_cropped" and svhn.mean == (0.5, 0.5, 0.5) and svhn.std == (0.5, 0.5, 0.5)


def test_import_jaxmix_does_not_import_tensorflow():
  code = "import sys, jaxmix, jaxmix.data; assert 'tensorflow' not in sys.modules, 'tf imported'"
  subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


# --------------------------------------------------------------------------- batches


def _collect(split, **kw):
  return list(data.train_batches(split, **kw))


def test_train_batches_shuffle_per_epoch(toy):
  kw = dict(batch_size=16, seed=5, crop_padding=0, flip=False)
  first = _collect(toy, epoch=0, **kw)
  assert data.steps_per_epoch(toy, 16) == len(first) == 6
  for b in first:
    assert b["image"].shape == (16, 8, 8, 3) and b["image"].dtype == np.uint8 and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["image"], toy.images[b["label"]])  # no augmentation: exact rows
  seen = np.concatenate([b["label"] for b in first])
  assert len(set(seen)) == 96  # each example at most once; the remainder is dropped
  again = _collect(toy, epoch=0, **kw)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in again]), seen)
  second = np.concatenate([b["label"] for b in _collect(toy, epoch=1, **kw)])
  assert not np.array_equal(second, seen)
  other_seed = np.concatenate([b["label"] for b in _collect(toy, epoch=0, **{**kw, "seed": 6})])
  assert not np.array_equal(other_seed, seen)


def test_train_batches_resume_is_bit_identical(toy):
  kw = dict(batch_size=16, seed=11, epoch=4, crop_padding=2, flip=True)
  full = _collect(toy, **kw)
  for start in (0, 2, 5, 6):
    resumed = _collect(toy, start_step=start, **kw)
    assert len(resumed) == len(full) - start
    for a, b in zip(resumed, full[start:], strict=True):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  # Host shards of a global batch concatenate to the single-host batch.
  shards = [_collect(toy, num_shards=4, shard_index=i, **kw) for i in range(4)]
  for step, b in enumerate(full):
    np.testing.assert_array_equal(np.concatenate([s[step]["image"] for s in shards]), b["image"])
  with pytest.raises(ValueError, match="start_step"):
    data.train_batches(toy, start_step=7, **kw)


def test_crop_and_flip_are_shifted_copies_with_zero_padding(toy):
  pad = 2
  padded = np.pad(toy.images, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
  offsets = []
  for b in _collect(toy, batch_size=20, seed=1, epoch=0, crop_padding=pad, flip=True):
    for image, label in zip(b["image"], b["label"], strict=True):
      found = [
        (dy, dx, f)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        for f in (0, 1)
        if np.array_equal(image, (lambda c: c[:, ::-1] if f else c)(padded[label, dy : dy + 8, dx : dx + 8]))
      ]
      assert len(found) == 1, found  # pixels are nonzero, so the zero border pins the shift down
      offsets.append(found[0])
  dys, dxs, flips = np.array(offsets).T
  assert set(dys) == set(dxs) == set(range(5)) and 0 < flips.mean() < 1
  # No augmentation asked: the image is the original.
  for b in _collect(toy, batch_size=20, seed=1, epoch=0, crop_padding=0, flip=False):
    np.testing.assert_array_equal(b["image"], toy.images[b["label"]])


def test_augmentation_draws_are_uniform():
  order, dy, dx, flip = data._epoch_plan(20000, 100, seed=2, epoch=3, crop_padding=2)
  np.testing.assert_array_equal(np.sort(order), np.arange(20000))
  for offs in (dy, dx):
    assert stats.chisquare(np.bincount(offs, minlength=5)).pvalue > 1e-3
  assert stats.binomtest(int(flip.sum()), len(flip)).pvalue > 1e-3
  assert abs(stats.pearsonr(dy, dx)[0]) < 0.03
  # Shuffled positions are uniform: the mean position of the first half is central.
  assert abs(order[:10000].mean() - 9999.5) < 4 * 20000 / np.sqrt(12 * 10000)


def test_eval_batches_pad_and_mask(toy):
  batches = list(data.eval_batches(toy, batch_size=32))
  assert len(batches) == 4
  for b in batches:
    assert b["image"].shape == (32, 8, 8, 3) and b["label"].shape == (32,) and b["mask"].dtype == bool
  assert batches[-1]["mask"].sum() == 4 and batches[-1]["mask"][:4].all()
  assert not batches[-1]["image"][4:].any()
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[mask], toy.images)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], toy.labels)


def test_prefetch_to_device_with_sharding(toy):
  batches = list(data.eval_batches(toy, batch_size=16))
  got = list(data.prefetch_to_device(iter(batches), size=2))
  assert len(got) == len(batches) and isinstance(got[0]["image"], jax.Array)
  np.testing.assert_array_equal(got[-1]["label"], batches[-1]["label"])
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = list(data.prefetch_to_device(batches, size=3, sharding=sharding))
  assert sharded[0]["image"].sharding == sharding
  assert len(sharded[0]["image"].addressable_shards) == jax.device_count()
  np.testing.assert_array_equal(sharded[2]["image"], batches[2]["image"])
  if jax.device_count() > 1:
    odd = list(data.eval_batches(toy, batch_size=jax.device_count() + 1))
    with pytest.raises(ValueError, match="divisible"):
      list(data.prefetch_to_device(odd, sharding=sharding))


def test_normalize_and_pixel_mean(toy):
  mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)
  x = toy.images[:4]
  want = (x.astype(np.float32) / 255 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(data.normalize(x, mean, std), want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.jit(data.normalize)(x.astype(np.float32), mean, std), want, rtol=1e-6, atol=1e-6)
  assert data.normalize(x, mean, std).dtype == jnp.float32
  img_mean = data.pixel_mean(toy)
  assert img_mean.shape == (8, 8, 3) and img_mean.dtype == np.float32
  np.testing.assert_allclose(img_mean, toy.images.mean(0) / 255, rtol=1e-6)
  centred = data.normalize(toy.images, img_mean, 1.0)
  np.testing.assert_allclose(centred.mean(0), 0.0, atol=1e-6)
