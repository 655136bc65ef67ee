"""Tests of jaxmix.evaluate: metrics, calibration, FGSM / PGD, evaluate_all and the eval CLI."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxmix import evaluation as ev
from jaxmix.evaluation import cli as eval_cli

H = W = 8
C = 3
K = 4
MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)

_W = jnp.asarray(np.random.default_rng(0).normal(size=(H * W * C, K)).astype(np.float32) * 0.05)


@jax.jit
def linear_logits(x):
  return x.reshape(x.shape[0], -1) @ _W


def _analytic_grad(x, y):
  """d mean CE(x W, y) / dx for the linear model."""
  logits = linear_logits(x)
  p = jax.nn.softmax(logits)
  return ((p - jax.nn.one_hot(y, K)) @ _W.T).reshape(x.shape) / x.shape[0]


def _data(n=24, seed=1):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, H, W, C), dtype=np.uint8)
  labels = rng.integers(0, K, n).astype(np.int32)
  return images, labels


# ----------------------------------------------------------------------------
# Metrics


def test_topk_and_ce():
  logits = jnp.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
  labels = jnp.array([1, 3])
  np.testing.assert_array_equal(ev.top_k_correct(logits, labels, 1), [False, True])
  np.testing.assert_array_equal(ev.top_k_correct(logits, labels, 2), [True, True])
  np.testing.assert_array_equal(ev.top_k_correct(logits, labels, 5), [True, True])  # k capped at K
  ce = ev.cross_entropy(logits, labels)
  lse = np.log(np.exp([3.0, 2.0, 1.0, 0.0]).sum())
  np.testing.assert_allclose(ce, [lse - 2.0, lse - 3.0], rtol=1e-6)
  m = ev.classification_metrics(logits, labels, calibration=False)
  assert m["top1"] == 50.0 and m["top5"] == 100.0


def test_ece_of_calibrated_predictor_is_near_zero():
  rng = np.random.default_rng(0)
  n = 40000
  conf = rng.uniform(0.5, 1.0, n)
  labels = (rng.uniform(size=n) >= conf).astype(np.int32)  # class 0 with probability conf
  probs = np.stack([conf, 1 - conf], -1).astype(np.float32)
  ece = float(ev.expected_calibration_error(probs, labels))
  assert ece < 0.01
  rms = float(ev.rms_calibration_error(probs, labels))
  assert rms < 0.05  # bins of 100: sampling noise ~ sqrt(p(1-p)/100)


def test_mean_confidence_says_over_or_under_confident():
  # Two examples, both predicted class 0 with p = 0.9 and 0.6; one is right.
  logits = jnp.log(jnp.array([[0.9, 0.1], [0.6, 0.4]]))
  m = ev.classification_metrics(logits, jnp.array([0, 1]))
  assert m["mean_confidence"] == pytest.approx(75.0, abs=1e-4) and m["top1"] == 50.0  # over-confident by 25 points
  assert "mean_confidence" not in ev.classification_metrics(logits, jnp.array([0, 1]), calibration=False)


def test_ece_of_overconfident_predictor_hand_computed():
  # 4 examples at confidence 0.95 (3 correct) and 4 at 0.65 (2 correct):
  # ECE = 0.5 |0.95 - 0.75| + 0.5 |0.65 - 0.5| = 0.175.
  conf = np.array([0.95] * 4 + [0.65] * 4)
  probs = np.stack([conf, 1 - conf], -1).astype(np.float32)
  labels = np.array([0, 0, 0, 1, 0, 0, 1, 1])
  np.testing.assert_allclose(float(ev.expected_calibration_error(probs, labels)), 0.175, atol=1e-6)
  # Always 0.9 confident, right half the time: ECE = 0.4.
  probs = np.tile([[0.9, 0.1]], (10, 1)).astype(np.float32)
  np.testing.assert_allclose(float(ev.expected_calibration_error(probs, np.arange(10) % 2)), 0.4, atol=1e-6)
  # jit-friendly.
  np.testing.assert_allclose(float(jax.jit(ev.expected_calibration_error)(probs, np.arange(10) % 2)), 0.4, atol=1e-6)


def _official_calib_err(confidence, correct, p="2", beta=100):
  """Transcription of Hendrycks' calibration_tools.calib_err (the reference)."""
  idxs = np.argsort(confidence, kind="stable")
  confidence = confidence[idxs]
  correct = correct[idxs]
  bins = [[i * beta, (i + 1) * beta] for i in range(len(confidence) // beta)]
  bins[-1] = [bins[-1][0], len(confidence)]
  cerr = 0
  total = len(confidence)
  for i in range(len(bins) - 1):
    bc = confidence[bins[i][0] : bins[i][1]]
    bk = correct[bins[i][0] : bins[i][1]]
    diff = np.abs(np.nanmean(bc) - np.nanmean(bk))
    cerr += len(bc) / total * (np.square(diff) if p == "2" else diff)
  return np.sqrt(cerr) if p == "2" else cerr


def test_rms_calibration_error_matches_official_calib_err():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(1234, 5)) * 3
  labels = rng.integers(0, 5, 1234)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32)))
  conf = probs.max(-1)
  correct = (probs.argmax(-1) == labels).astype(np.float64)
  np.testing.assert_allclose(float(ev.rms_calibration_error(probs, labels)), _official_calib_err(conf, correct), rtol=1e-5)
  np.testing.assert_allclose(float(ev.rms_calibration_error(probs, labels, p=1)), _official_calib_err(conf, correct, "1"), rtol=1e-5)
  # Counting the last bin changes the value (the official code skips it).
  assert float(ev.rms_calibration_error(probs, labels, include_last_bin=True)) != pytest.approx(
    float(ev.rms_calibration_error(probs, labels))
  )
  # Below 2 * beta the official value is 0; below beta it is an error.
  assert float(ev.rms_calibration_error(probs[:150], labels[:150])) == 0.0
  with pytest.raises(ValueError, match="beta"):
    ev.rms_calibration_error(probs[:50], labels[:50])


def test_rms_overconfident_hand_computed():
  # 300 examples at confidence 0.9, right half the time in every bin.
  probs = np.tile([[0.9, 0.1]], (300, 1)).astype(np.float32)
  labels = np.arange(300) % 2  # every bin: 50 % correct
  # Bins [0, 100), [100, 200), [200, 300) (the last one skipped): sqrt(200/300 * 0.4^2).
  np.testing.assert_allclose(float(ev.rms_calibration_error(probs, labels)), np.sqrt(200 / 300 * 0.16), rtol=1e-5)
  np.testing.assert_allclose(float(ev.rms_calibration_error(probs, labels, include_last_bin=True)), 0.4, rtol=1e-5)


# ----------------------------------------------------------------------------
# Attacks


def test_fgsm_patchup_moves_by_eps_sign_and_batch_clamp():
  rng = np.random.default_rng(4)
  x = rng.uniform(-1, 1, (4, H, W, C)).astype(np.float32)
  x[0, 0, 0, 0], x[1, 0, 0, 0] = 3.0, -3.0  # the batch range is [-3, 3]
  y = jnp.array([0, 1, 2, 3])
  eps = 0.1
  adv = np.asarray(ev.fgsm_patchup(linear_logits, x, y, epsilon=eps))
  sign = np.sign(np.asarray(_analytic_grad(jnp.asarray(x), y)))
  interior = np.abs(x) < 2.5
  np.testing.assert_allclose((adv - x)[interior], (eps * sign)[interior], atol=1e-6)
  # Pixels at the batch extremes cannot leave [min, max] of the batch.
  assert adv[0, 0, 0, 0] == pytest.approx(min(3.0, 3.0 + eps * sign[0, 0, 0, 0]))
  assert adv[1, 0, 0, 0] == pytest.approx(max(-3.0, -3.0 + eps * sign[1, 0, 0, 0]))
  # The clamp is batch-wide, not per image: image 2 (range within [-1, 1]) moves past its own max.
  top = np.unravel_index(np.argmax(x[2]), x[2].shape)
  if sign[2][top] > 0:
    assert adv[2][top] > x[2].max()


def test_fgsm_patchup_batch_range_clamp_known_answer():
  # Image 0 lies in [-1, 0.95], image 1 in [-0.95, 1]: the batch range is [-1, 1].
  eps = 0.2
  y = jnp.array([0, 1])
  for q in range(H * W * C):  # a pixel of image 0 whose gradient sign is +1
    x = np.full((2, H, W, C), -1.0, np.float32)
    x[1] = 1.0
    x[1].reshape(-1)[q] = -0.95
    x[0].reshape(-1)[q] = 0.95
    sign = np.sign(np.asarray(_analytic_grad(jnp.asarray(x), y)))
    if sign[0].reshape(-1)[q] > 0:
      break
  adv = np.asarray(ev.fgsm_patchup(linear_logits, x, y, epsilon=eps))
  np.testing.assert_allclose(adv, np.clip(x + eps * sign, -1.0, 1.0), atol=1e-6)
  # Batch-wide clamp: the 0.95 pixel reaches 1.0, above its own image's maximum.
  assert adv[0].reshape(-1)[q] == pytest.approx(1.0)
  assert adv[0].max() > x[0].max()


def test_fgsm_eps_zero_is_identity():
  x = jnp.asarray(np.random.default_rng(5).normal(size=(3, H, W, C)).astype(np.float32))
  y = jnp.array([0, 1, 2])
  np.testing.assert_array_equal(ev.fgsm_patchup(linear_logits, x, y, epsilon=0.0), x)


def test_fgsm_pixel_and_pgd_stay_in_bounds():
  rng = np.random.default_rng(6)
  x01 = rng.uniform(0, 1, (5, H, W, C)).astype(np.float32)
  x01[0] = 0.0
  y = jnp.array([0, 1, 2, 3, 0])
  eps = 8 / 255
  adv = np.asarray(ev.fgsm_pixel(linear_logits, x01, y, epsilon=eps, mean=MEAN, std=STD))
  assert adv.min() >= 0.0 and adv.max() <= 1.0
  # Where no clip happens the step is exactly eps * sign(grad wrt pixels).
  g = jax.grad(lambda z: jnp.mean(ev.cross_entropy(linear_logits((z - jnp.array(MEAN)) / jnp.array(STD)), y)))(jnp.asarray(x01))
  free = (x01 > 0.05) & (x01 < 0.95)
  np.testing.assert_allclose((adv - x01)[free], (eps * np.sign(np.asarray(g)))[free], atol=1e-6)

  pgd = dict(epsilon=4 / 255, step_size=2 / 255, num_steps=5, mean=MEAN, std=STD)
  a = np.asarray(ev.pgd_pixel(jax.random.key(0), linear_logits, x01, y, **pgd))
  b = np.asarray(ev.pgd_pixel(jax.random.key(0), linear_logits, x01, y, **pgd))
  np.testing.assert_array_equal(a, b)
  assert a.min() >= 0.0 and a.max() <= 1.0
  assert np.all(np.abs(a - x01) <= 4 / 255 + 1e-6)
  ce = lambda z: float(jnp.mean(ev.cross_entropy(linear_logits((z - jnp.array(MEAN)) / jnp.array(STD)), y)))  # noqa: E731
  assert ce(a) > ce(x01)
  # The random start: IPMix leaves it unclipped, Puzzle Mix clips it to [0, 1].
  start = dict(epsilon=0.1, step_size=0.1, num_steps=0, mean=MEAN, std=STD)
  raw = np.asarray(ev.pgd_pixel(jax.random.key(1), linear_logits, x01, y, **start))
  assert raw.min() < 0.0 and np.all(np.abs(raw - x01) <= 0.1 + 1e-6)
  clipped = np.asarray(ev.pgd_pixel(jax.random.key(1), linear_logits, x01, y, clip_start=True, **start))
  np.testing.assert_allclose(clipped, np.clip(raw, 0, 1), atol=1e-7)
  # No steps and no random start: the input.
  same = ev.pgd_pixel(
    jax.random.key(0), linear_logits, x01, y, epsilon=0.1, step_size=0.1, num_steps=0, mean=MEAN, std=STD, random_start=False
  )
  np.testing.assert_array_equal(same, x01)


# ----------------------------------------------------------------------------
# evaluate_all and the CLI


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory):
  images, labels = _data(n=24)
  cache = str(tmp_path_factory.mktemp("cache"))
  out = ev.evaluate_all(
    linear_logits,
    images,
    labels,
    mean=MEAN,
    std=STD,
    batch_size=10,
    pgd=["ipmix"],
    corruption_subset=["contrast", "gaussian_noise"],
    cache_dir=cache,
  )
  return images, labels, cache, out


def test_evaluate_all_structure_and_consistency(small_eval):
  images, labels, _, out = small_eval
  json.dumps(out, allow_nan=False)
  assert out["n_examples"] == 24
  logits = ev.predict(linear_logits, images, mean=MEAN, std=STD, batch_size=7)
  assert out["clean"]["top1"] == pytest.approx(100.0 * np.mean(logits.argmax(-1) == labels))
  # FGSM with eps 0 is clean accuracy and clean CE.
  assert out["fgsm"]["patchup"]["0"]["top1"] == pytest.approx(out["clean"]["top1"])
  assert out["fgsm"]["patchup"]["0"]["ce"] == pytest.approx(out["clean"]["ce"], rel=1e-5)
  assert set(out["fgsm"]["patchup"]) == {"0", "0.05", "0.1", "0.12", "0.15", "0.18", "0.2"}
  assert set(out["fgsm"]["pixel"]) == {"4/255", "8/255"}
  # Larger eps, larger loss (a linear model: the loss is convex along the step).
  ces = [out["fgsm"]["patchup"][k]["ce"] for k in ("0", "0.05", "0.1", "0.2")]
  assert ces == sorted(ces)
  assert out["pgd"]["ipmix"]["ce"] >= out["clean"]["ce"]
  assert set(out["deformed"]) == {
    "rotate_20",
    "rotate_40",
    "shear_28_6",
    "rotate_57_3",
    "zoom_60",
    "zoom_80",
    "zoom_120",
    "zoom_140",
    "mean_top1",
  }
  cc = out["corruptions"]
  assert set(cc["per_corruption"]) == {"contrast", "gaussian_noise"}
  assert len(cc["per_corruption"]["contrast"]["top1_by_severity"]) == 5
  assert cc["mean_top1"] == pytest.approx(np.mean([v["top1"] for v in cc["per_corruption"].values()]))
  assert cc["mean_corruption_error"] == pytest.approx(100 - cc["mean_top1"])
  assert out["clean"]["rms_calibration_error"] is None  # fewer than 100 examples


def test_evaluate_all_uses_cache_and_max_examples(small_eval, monkeypatch):
  images, labels, cache, out = small_eval
  from jaxmix.evaluation import corruptions, deform

  monkeypatch.setattr(deform, "deform", lambda *a, **k: (_ for _ in ()).throw(AssertionError("not cached")))
  monkeypatch.setattr(corruptions, "corrupt", lambda *a, **k: (_ for _ in ()).throw(AssertionError("not cached")))
  again = ev.evaluate_all(
    linear_logits,
    images,
    labels,
    mean=MEAN,
    std=STD,
    batch_size=10,
    fgsm=False,
    corruption_subset=["contrast", "gaussian_noise"],
    cache_dir=cache,
  )
  assert again["deformed"] == out["deformed"]
  assert again["corruptions"] == out["corruptions"]
  small = ev.evaluate_all(
    linear_logits, images, labels, mean=MEAN, std=STD, batch_size=10, fgsm=False, deformed=False, corruptions=False, max_examples=5
  )
  assert small["n_examples"] == 5 and set(small) == {"n_examples", "batch_size", "seconds", "clean"}


def test_evaluate_all_real_cifar_c_folder(tmp_path):
  images, labels = _data(n=6, seed=2)
  for name in ("contrast", "fog"):
    np.save(tmp_path / f"{name}.npy", np.concatenate([images] * 5))
  np.save(tmp_path / "labels.npy", np.concatenate([labels] * 5).astype(np.uint8))
  out = ev.evaluate_all(
    linear_logits, images, labels, mean=MEAN, std=STD, batch_size=4, fgsm=False, deformed=False, cifar_c_dir=str(tmp_path)
  )
  cc = out["corruptions"]
  assert cc["source"].startswith("npy:") and set(cc["per_corruption"]) == {"contrast", "fog"}
  # The "corrupted" files hold the clean images: every severity scores clean accuracy.
  for v in cc["per_corruption"].values():
    assert v["top1_by_severity"] == [pytest.approx(out["clean"]["top1"])] * 5


def test_evaluate_all_rejects_bad_input():
  images, labels = _data(n=4)
  with pytest.raises(ValueError, match="uint8"):
    ev.evaluate_all(linear_logits, images.astype(np.float32), labels, mean=MEAN, std=STD)
  with pytest.raises(ValueError, match="labels"):
    ev.evaluate_all(linear_logits, images, labels[:3], mean=MEAN, std=STD)
  with pytest.raises(ValueError, match="batch_size"):
    ev.evaluate_all(linear_logits, images, labels, mean=MEAN, std=STD, batch_size=0)
  with pytest.raises(ValueError, match="max_examples"):
    ev.evaluate_all(linear_logits, images, labels, mean=MEAN, std=STD, max_examples=0)


def test_cli_main_with_restored_run(tmp_path, monkeypatch, capsys):
  from jaxmix.training import checkpoint

  monkeypatch.setenv("JAXMIX_EVAL_CACHE", str(tmp_path / "cache"))

  images, labels = _data(n=12, seed=7)
  data = types.SimpleNamespace(test=types.SimpleNamespace(images=images, labels=labels), mean=MEAN, std=STD, num_classes=K)
  seen = {}

  def fake_restore(run_dir, ema=False):
    seen["run_dir"] = run_dir
    return linear_logits, data, None

  monkeypatch.setattr(checkpoint, "restore_for_eval", fake_restore)
  out = tmp_path / "m.json"
  frost = tmp_path / "frost"
  frost.mkdir()
  Image.fromarray(np.full((60, 70, 3), 100, np.uint8)).save(frost / "frost1.png")
  argv = ["--checkpoint", str(tmp_path), "--out", str(out), "--max_examples", "8", "--batch_size", "4"]
  code = eval_cli.cli_main(argv + ["--corruptions", "contrast", "frost", "--frost_dir", str(frost)])
  assert code == 0 and seen["run_dir"] == str(tmp_path)
  metrics = json.loads(out.read_text())
  assert metrics["n_examples"] == 8
  assert set(metrics) >= {"clean", "fgsm", "deformed", "corruptions", "checkpoint"}
  assert set(metrics["corruptions"]["per_corruption"]) == {"contrast", "frost"}
  assert "FGSM" in capsys.readouterr().out
  code = eval_cli.cli_main(["--checkpoint", str(tmp_path), "--no_corruptions", "--no_deformed", "--no_fgsm"])
  assert code == 0
  default = json.loads((tmp_path / "eval_metrics.json").read_text())
  assert set(default) == {"n_examples", "batch_size", "seconds", "clean", "checkpoint", "weights"}
  # Generated sets went to the shared cache, not the run directory.
  assert any(f.startswith("deformed_") for f in os.listdir(tmp_path / "cache"))


@pytest.mark.slow
def test_cli_end_to_end_on_a_trained_run(tmp_path, monkeypatch):
  """``jaxmix train`` (one tiny epoch on the real CIFAR-10 zips) then ``jaxmix eval --checkpoint``."""
  from conftest import CIFAR_DIR

  from jaxmix.training import loop as train

  if not os.path.exists(os.path.join(CIFAR_DIR, "test.zip")):
    pytest.skip("CIFAR-10 zips not available")
  monkeypatch.setenv("JAXMIX_EVAL_CACHE", str(tmp_path / "cache"))
  args = ["--dataset", "cifar10", "--data_dir", CIFAR_DIR, "--labels_per_class", "2", "--valid_labels_per_class", "1"]
  args += ["--arch", "preactresnet_small", "--model_kwargs", json.dumps({"widths": [4, 4, 8, 8], "blocks": [1, 1, 1, 1]})]
  args += ["--batch_size", "10", "--epochs", "1", "--eval_batch_size", "50", "--max_eval_examples", "50", "--train", "mixup"]
  args += ["--root_dir", str(tmp_path), "--job_id", "run", "--num_devices", "1"]
  assert train.cli_main(args) == 0
  run_dir = str(tmp_path / "run")
  out = tmp_path / "metrics.json"
  assert (
    eval_cli.cli_main(["--checkpoint", run_dir, "--out", str(out), "--max_examples", "20", "--batch_size", "10", "--corruptions", "fog"])
    == 0
  )
  metrics = json.loads(out.read_text())
  assert metrics["n_examples"] == 20
  assert 0.0 <= metrics["clean"]["top1"] <= 100.0
  assert metrics["fgsm"]["patchup"]["0"]["top1"] == pytest.approx(metrics["clean"]["top1"])
  assert len(metrics["deformed"]) == 9 and set(metrics["corruptions"]["per_corruption"]) == {"fog"}
