"""``jaxmix show`` on the real CIFAR-10 test zip, a class-folder directory, and bad paths."""

import importlib.util
import os
import zipfile

import numpy as np
import pytest
from conftest import CIFAR_DIR
from PIL import Image

import jaxmix
from jaxmix import cli, gallery

TEST_ZIP = os.path.join(CIFAR_DIR, "test.zip")


def _expected_rows():
  rows = 5  # originals, mixup, cutmix, cutout, patch_augment
  if "puzzlemix" in jaxmix.__all__ and "saliency" in jaxmix.__all__:
    rows += 1
  if "ipmix" in jaxmix.__all__:
    rows += 2 if importlib.util.find_spec("jaxmix.fractals") is not None else 1
  return rows


@pytest.mark.skipif(not os.path.exists(TEST_ZIP), reason="needs shared/data/cifar10/test.zip")
def test_show_on_cifar_zip_writes_the_grid(tmp_path, capsys):
  out = tmp_path / "gallery.png"
  assert cli.main(["show", "--images", TEST_ZIP, "--out", str(out), "--n", "3", "--seed", "1"]) == 0
  assert "wrote" in capsys.readouterr().out
  png = Image.open(out)
  assert png.format == "PNG" and png.mode == "RGB"
  assert png.size == gallery.layout(_expected_rows(), 3, 32, 32, 4)
  pixels = np.asarray(png)
  originals, names = gallery.load_images(TEST_ZIP, 3)
  assert names == sorted(names) and len(set(names)) == 3
  for col in range(3):
    x0, y0 = gallery.tile_origin(0, col, 32, 32, 4)
    tile = pixels[y0 : y0 + 128, x0 : x0 + 128]
    expect = np.kron(np.round(originals[col] * 255).astype(np.uint8), np.ones((4, 4, 1), np.uint8))
    np.testing.assert_array_equal(tile, expect)  # the originals row, upscaled nearest
    x0, y0 = gallery.tile_origin(1, col, 32, 32, 4)
    assert not np.array_equal(pixels[y0 : y0 + 128, x0 : x0 + 128], expect)  # mixup changed it


def test_load_images_from_a_class_folder_directory(tmp_path):
  rng = np.random.default_rng(0)
  for cls in ("zebra", "ant", "bee"):
    os.makedirs(tmp_path / "root" / cls)
    for i in (2, 1):
      Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "root" / cls / f"{i:04d}.png")
  (tmp_path / "root" / "README.txt").write_text("not an image")
  images, names = gallery.load_images(str(tmp_path), 2)
  assert names == ["ant", "bee"]
  assert images.shape == (2, 12, 20, 3) and images.dtype == np.float32
  first = np.asarray(Image.open(tmp_path / "root" / "ant" / "0001.png"), np.float32) / 255
  np.testing.assert_array_equal(images[0], first)
  with pytest.raises(gallery.GalleryError, match="--n 4 needs at least 4"):
    gallery.load_images(str(tmp_path), 4)


def test_missing_and_corrupt_paths_give_clear_errors(tmp_path, capsys):
  assert gallery.cli_main(["--images", str(tmp_path / "nope.zip"), "--out", str(tmp_path / "g.png")]) == 2
  assert "no such file or directory" in capsys.readouterr().err
  bad = tmp_path / "bad.zip"
  bad.write_bytes(b"this is not a zip")
  assert gallery.cli_main(["--images", str(bad), "--out", str(tmp_path / "g.png")]) == 2
  assert "readable zip" in capsys.readouterr().err
  broken = tmp_path / "broken.zip"
  with zipfile.ZipFile(broken, "w") as z:
    z.writestr("test/cat/0001.jpg", b"not a jpeg")
    z.writestr("test/dog/0001.jpg", b"not a jpeg")
  assert gallery.cli_main(["--images", str(broken), "--out", str(tmp_path / "g.png"), "--n", "2"]) == 2
  err = capsys.readouterr().err
  assert "cannot decode image" in err and "test/cat/0001.jpg" in err
  assert not (tmp_path / "g.png").exists()
