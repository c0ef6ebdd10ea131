"""Fringe and irregular masks, mask files, zero-filling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from cbir_dist.damage.masks import (
    FRINGE_FREQUENCIES,
    apply_mask,
    fraction_missing,
    fringe_intensity,
    fringe_mask,
    irregular_mask,
    load_mask,
)
from cbir_dist.errors import ImageDecodeError

SIZES = [(64, 64), (64, 1024), (1024, 64), (100, 77), (255, 256), (480, 640), (1024, 1024)]


@pytest.mark.parametrize("height,width", SIZES)
def test_fringe_missing_fraction_matches_parameter(height, width):
    big = height * width > 300_000  # keep the 1024 px case to a few seconds
    configs = ((0, 0), (137, 2.0)) if big else ((0, 0), (90, 0.3), (45, math.pi / 2), (137, 2.0))
    worst = 0.0
    for f in FRINGE_FREQUENCIES:
        for angle, phase in configs:
            for target in (0.25,) if big else (0.1, 0.25, 0.5):
                known = fringe_mask(height, width, f, target, angle=angle, phase=phase)
                assert known.dtype == bool and known.shape == (height, width)
                worst = max(worst, abs(fraction_missing(known) - target))
    assert worst <= 0.02


def test_fringe_symmetric_ties_do_not_break_the_fraction():
    # cos² at symmetric columns is equal to the last bit: splitting ties by column keeps the
    # error at half a column (1/128) where thresholding on intensity alone was 0.022 off.
    known = fringe_mask(64, 64, 3, 0.1)
    assert abs(fraction_missing(known) - 0.1) <= 1 / 128 + 1e-12


def test_fringe_axis_aligned_stripes_are_whole_columns_and_rows():
    vertical = fringe_mask(64, 96, 2, angle=0)
    assert (vertical == vertical[:1]).all()  # every row identical: stripes are columns
    horizontal = fringe_mask(96, 64, 2, angle=90)
    assert (horizontal == horizontal[:, :1]).all()


def _runs(line: np.ndarray) -> int:
    """Number of runs of missing (False) pixels along a 1-D line."""
    miss = ~line
    return int(miss[0]) + int(np.count_nonzero(miss[1:] & ~miss[:-1]))


def test_fringe_frequency_sets_number_of_stripes():
    # phase pi/2 puts dark fringes at both borders, so f fringes give f whole bright stripes.
    for f in (1, 2, 3, 4, 5, 6):
        row = fringe_mask(32, 600, f, phase=math.pi / 2)[0]
        assert _runs(row) == f
    # Half a fringe: one band at the left border where cos² peaks.
    row = fringe_mask(32, 600, 0.5)[0]
    assert _runs(row) == 1 and not row[0] and row[-1]
    # Higher frequency, thinner stripes.
    widths = [np.count_nonzero(~fringe_mask(32, 600, f, phase=math.pi / 2)[0]) / f for f in (1, 2, 4)]
    assert widths[0] > widths[1] > widths[2]


def test_fringe_missing_pixels_are_the_brightest():
    intensity = fringe_intensity(80, 120, 3, angle=30, phase=0.7)
    known = fringe_mask(80, 120, 3, 0.25, angle=30, phase=0.7)
    assert intensity[~known].min() >= intensity[known].max() - 1e-9
    assert intensity.min() >= 0 and intensity.max() <= 1


def test_fringe_angle_rotates_pattern():
    a = fringe_mask(64, 64, 2, angle=0)
    b = fringe_mask(64, 64, 2, angle=90)
    np.testing.assert_array_equal(a, b.T)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(frequency=0), "frequency"),
        (dict(frequency=-1), "frequency"),
        (dict(frequency=2, missing_fraction=0), "missing_fraction"),
        (dict(frequency=2, missing_fraction=1), "missing_fraction"),
        (dict(frequency=2, height=7), "height"),
        (dict(frequency=2, width=4), "width"),
    ],
)
def test_fringe_errors(kwargs, match):
    args = dict(height=32, width=32) | kwargs
    with pytest.raises(ValueError, match=match):
        fringe_mask(**args)


def test_irregular_mask_fraction_in_range_and_reproducible():
    fracs = []
    for seed in range(40):
        r = np.random.default_rng(seed)
        h, w = (int(v) for v in r.integers(8, 200, 2))
        known = irregular_mask(h, w, r)
        assert known.dtype == bool and known.shape == (h, w)
        fracs.append(fraction_missing(known))
    assert min(fracs) >= 0.05 and max(fracs) <= 0.45
    assert np.std(fracs) > 0.05  # the target fraction really varies
    np.testing.assert_array_equal(irregular_mask(64, 80, 7), irregular_mask(64, 80, 7))
    assert not np.array_equal(irregular_mask(64, 80, 7), irregular_mask(64, 80, 8))


def test_irregular_mask_custom_range_and_errors():
    for seed in range(10):
        frac = fraction_missing(irregular_mask(96, 96, seed, min_missing=0.3, max_missing=0.35))
        assert 0.3 <= frac <= 0.35
    with pytest.raises(ValueError, match="min_missing"):
        irregular_mask(32, 32, 0, min_missing=0.5, max_missing=0.2)
    with pytest.raises(ValueError, match="max_strokes"):
        irregular_mask(32, 32, 0, max_strokes=0)
    with pytest.raises(ValueError, match="height"):
        irregular_mask(4, 32, 0)


def test_load_mask_white_known_black_missing(tmp_path):
    grey = np.zeros((20, 30), np.uint8)
    grey[:, 15:] = 255
    grey[0, 0] = 128  # exactly the threshold: known
    grey[1, 0] = 127
    path = tmp_path / "m.png"
    Image.fromarray(grey).save(path)
    known = load_mask(path)
    assert known.dtype == bool and known.shape == (20, 30)
    assert known[:, 15:].all() and known[0, 0] and not known[1, 0] and not known[2:, :15].any()
    resized = load_mask(path, shape=(40, 60))
    assert resized.shape == (40, 60)
    assert resized[:, 30:].all() and not resized[4:, :30].any()


def test_load_mask_rgb_and_errors(tmp_path):
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[5:] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    known = load_mask(tmp_path / "rgb.png")
    assert known[5:].all() and not known[:5].any()
    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "absent.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError):
        load_mask(tmp_path / "bad.png")


def test_apply_mask_zero_fills_missing(rgb_image):
    known = fringe_mask(*rgb_image.shape[:2], 2)
    out = apply_mask(rgb_image, known)
    assert out.dtype == rgb_image.dtype and out.shape == rgb_image.shape
    assert (out[~known] == 0).all()
    np.testing.assert_array_equal(out[known], rgb_image[known])
    grey = rgb_image[..., 0]
    np.testing.assert_array_equal(apply_mask(grey, known)[known], grey[known])
    assert rgb_image[~known].any()  # input untouched
    with pytest.raises(TypeError, match="bool"):
        apply_mask(rgb_image, known.astype(np.uint8))
    with pytest.raises(ValueError, match="shape"):
        apply_mask(rgb_image, known[:-1])
