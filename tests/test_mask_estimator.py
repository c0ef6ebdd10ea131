"""The mask estimator (issue 21): pre/post-processing, runtimes, weights, the training job, the shipped network."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cbir_dist.damage import detect  # noqa: E402
from cbir_dist.damage.detect import (  # noqa: E402
    MaskEstimator,
    as_rgb,
    classical_known_mask,
    drop_small_regions,
    load_estimator,
)
from cbir_dist.damage.detect_net import build_model  # noqa: E402
from cbir_dist.damage.masks import fringe_mask  # noqa: E402
from cbir_dist.errors import UsageError, WeightsError  # noqa: E402
from cbir_dist.training.mask_estimator import (  # noqa: E402
    MaskTrainConfig,
    export,
    fill_holes,
    iou_missing,
    simulate_damage,
)


def textured(h=96, w=128, seed=0):
    """A bright textured photo (no dark pixels), smooth enough to look like one."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.uint8)
    img = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    return (60 + img.astype(np.uint16) * 180 // 255).astype(np.uint8)


def random_weights(tmp_path, seed=0):
    torch.manual_seed(seed)
    cfg = MaskTrainConfig(images_dirs=("x",), out=str(tmp_path))
    path = tmp_path / "me.pt"
    export(build_model(cfg.model_config).eval(), path, cfg, 0, {}, 0)
    return path


def test_as_rgb_takes_grey_rgba_and_refuses_other_dtypes():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb(grey).shape == (3, 4, 3) and (as_rgb(grey)[..., 2] == grey).all()
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert as_rgb(rgba).shape == (3, 4, 3)
    with pytest.raises(ValueError, match="uint8"):
        as_rgb(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        as_rgb(np.zeros((3, 4, 2), np.uint8))


def test_small_regions_are_dropped_large_ones_kept():
    missing = np.zeros((100, 100), bool)
    missing[10:12, 10:12] = True  # 4 px: a speck (< 0.1 % of 10,000 = 10 px)
    missing[50:60, :] = True
    out = drop_small_regions(missing, 0.001)
    assert not out[10:12, 10:12].any() and out[50:60].all() and out.sum() == 1000


@pytest.mark.parametrize("frequency,angle", [(0.5, 0.0), (2.0, 0.0), (6.0, 0.0), (3.0, 90.0), (1.5, 30.0)])
def test_stripes_are_snapped_to_whole_lines_and_lost_parts_follow_them(frequency, angle):
    known = fringe_mask(128, 160, frequency, 0.25, angle=angle, phase=0.4)
    missing = ~known
    missing[60:90, 20:40] &= np.random.default_rng(0).random((30, 20)) < 0.5  # a patch half lost
    if angle == 0.0 and frequency > 1:
        missing[:30, :] = False  # the top of every band lost (a black background the network missed)
    snapped = detect.snap_stripes(missing)
    assert snapped is not None
    assert iou_missing(~snapped, known) > (0.97 if angle % 90 == 0 else 0.95)


def test_free_form_holes_are_not_snapped():
    from cbir_dist.damage.masks import irregular_mask

    for seed in range(10):
        assert detect.snap_stripes(~irregular_mask(128, 128, np.random.default_rng(seed))) is None


def test_the_fill_is_told_from_a_sky_or_shadow_beside_it():
    img = textured(96, 128).copy()
    candidates = np.zeros((96, 128), bool)
    candidates[:, 10:30] = True    # a black band ...
    img[:, 10:30] = 0
    candidates[:40, 30:70] = True  # ... touching a flat blue sky the network also marked
    img[:40, 30:70] = (30, 60, 200)
    candidates[60:80, 30:50] = True  # and a textured patch beside it
    colour = detect.fill_colour(img, candidates)
    assert (colour == 0).all() and detect.is_fill_colour(colour)
    kept = detect.filled_regions(candidates, img, colour)
    assert kept[:, 10:30].all()
    assert not kept[:40, 40:70].any() and not kept[60:80, 40:50].any()  # beyond the edge's reach
    assert not detect.is_fill_colour(np.array([30, 60, 200], np.uint8))


def test_the_classical_baseline_finds_a_black_band_and_is_fooled_by_shadows():
    img = textured()
    known = fringe_mask(96, 128, 1.0)
    assert iou_missing(classical_known_mask(fill_holes(img, known, 0)), known) > 0.99
    dark = img.copy()
    dark[:40] = 5  # a shadow: the baseline cannot tell it from a hole
    assert (~classical_known_mask(dark)).mean() > 0.3


def test_network_output_has_the_input_size_for_any_photo(tmp_path):
    est = load_estimator(random_weights(tmp_path), runtime="torch")
    for shape in ((37, 53, 3), (1, 1, 3), (20, 30)):
        img = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
        known = est(img)
        assert known.dtype == bool and known.shape == shape[:2]
    small = MaskEstimator(est.model, max_side=32)
    big = np.random.default_rng(1).integers(0, 256, (70, 90, 3)).astype(np.uint8)
    assert small.probabilities(big).shape == (70, 90)


def test_onnx_runtime_and_torch_give_the_same_probabilities(tmp_path):
    pytest.importorskip("onnxruntime")
    weights = random_weights(tmp_path)
    ort_est = load_estimator(weights, runtime="onnx", num_threads=1)
    torch_est = load_estimator(weights, runtime="torch")
    assert ort_est.runtime == "onnxruntime" and torch_est.runtime == "torch"
    img = textured(80, 112)
    a, b = ort_est.probabilities(img), torch_est.probabilities(img)
    assert np.abs(a - b).max() < 1e-4


def test_weights_are_verified(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_estimator(tmp_path / "none.pt")
    weights = random_weights(tmp_path)
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta["model"]["architecture"] == "MaskNet" and len(meta["sha256"]) == 64
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(WeightsError, match="sha256"):
        load_estimator(weights)


def test_unknown_model_config_is_refused():
    with pytest.raises(UsageError, match="unknown"):
        build_model({"width": 3})


def test_simulated_damage_marks_what_it_fills():
    cfg = MaskTrainConfig(images_dirs=("x",), out="x", intact_prob=0.0, resize_prob=0.0, jpeg_prob=0.0)
    patch = textured(64, 64)
    seen_fills = set()
    for seed in range(30):
        damaged, known = simulate_damage(patch, np.random.default_rng(seed), cfg)
        assert damaged.shape == (64, 64, 3) and known.shape == (64, 64) and (~known).any()
        holes = damaged[~known]
        if (damaged[known] == patch[known]).all():  # colour crops (5 % grey) keep their known pixels
            assert (holes == holes[0]).all()  # one flat fill
            seen_fills.add(tuple(holes[0]))
    assert (0, 0, 0) in seen_fills and len(seen_fills) >= 3
    intact = MaskTrainConfig(images_dirs=("x",), out="x", intact_prob=1.0)
    assert simulate_damage(patch, np.random.default_rng(0), intact)[1].all()


def _image_set(root, n=6):
    import cv2

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / c / f"{i}.png"), textured(72, 72, seed=10 * i + ord(c)))
    return root


def test_training_resumes_bit_for_bit_and_exports_weights_with_provenance(tmp_path):
    from cbir_dist.training.mask_estimator import train_mask_estimator

    data = _image_set(tmp_path / "data")
    common = dict(images_dirs=(str(data),), batch_size=2, crop_min=32, crop_max=48, steps=4, val_every=0,
                  val_images=2, num_threads=1, checkpoint_every=1)
    straight = train_mask_estimator(MaskTrainConfig(out=str(tmp_path / "a"), **common))
    train_mask_estimator(MaskTrainConfig(out=str(tmp_path / "b"), steps_this_session=2, **common))
    resumed = train_mask_estimator(MaskTrainConfig(out=str(tmp_path / "b"), **common))
    assert straight["step"] == resumed["step"] == 4
    sa = torch.load(tmp_path / "a" / "mask_estimator.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "mask_estimator.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert straight["sha256"] == resumed["sha256"]
    assert "iou_mean" in straight["final_validation"] and "intact_missing_mean" in straight["final_validation"]
    assert load_estimator(tmp_path / "a" / "mask_estimator.pt")(textured()).shape == (96, 128)
    with pytest.raises(UsageError, match="other training settings"):
        train_mask_estimator(MaskTrainConfig(out=str(tmp_path / "b"), **{**common, "lr": 1e-4, "steps": 5}))


def test_the_cli_trains_and_says_where_the_weights_are(tmp_path, capsys):
    from cbir_dist.cli import main

    data = _image_set(tmp_path / "data", n=3)
    rc = main(["train-mask-estimator", str(data), "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2",
               "--crop-min", "32", "--crop-max", "48", "--val-images", "1", "--threads", "1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 2 and (tmp_path / "run" / "mask_estimator.pt").is_file()


# --- the shipped network ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    if not detect.DEFAULT_WEIGHTS.is_file():
        pytest.fail(f"{detect.DEFAULT_WEIGHTS} is not shipped")
    return load_estimator(num_threads=1)


@pytest.mark.parametrize("frequency", [0.5, 2.0, 6.0])
def test_the_shipped_network_finds_a_zero_filled_fringe_mask_after_jpeg(shipped, frequency):
    from cbir_dist.training.mask_estimator import jpeg

    img = textured(128, 160, seed=3)
    known = fringe_mask(128, 160, frequency, 0.25, phase=0.7)
    assert iou_missing(shipped(jpeg(fill_holes(img, known, 0), 80)), known) > 0.9


def test_the_shipped_network_invents_no_holes_in_an_undamaged_photo(shipped):
    from cbir_dist.training.mask_estimator import jpeg

    assert (~shipped(jpeg(textured(128, 160, seed=4), 80))).mean() < 0.005


def test_estimate_known_mask_is_the_shipped_network(shipped, monkeypatch):
    monkeypatch.setattr(detect, "_ESTIMATOR", None)
    img = textured(64, 64, seed=5)
    known = fringe_mask(64, 64, 1.0)
    damaged = fill_holes(img, known, 0)
    assert (detect.estimate_known_mask(damaged) == shipped(damaged)).all()
