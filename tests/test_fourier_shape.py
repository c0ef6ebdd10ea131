"""Centroid-distance Fourier shape descriptor: invariances on drawn silhouettes, polarity, errors, MPEG-7 smoke."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import shared_path

from cbir_dist.features.descriptors import fourier_shape as fsd
from cbir_dist.features.descriptors.fourier_shape import (
    contour_descriptor,
    dim,
    foreground_mask,
    fourier_shape_descriptor,
    shape_contour,
)

# Tolerances, relative L2 error ||f(T x) - f(x)|| / ||f(x)|| with the default parameters, measured on
# the four shapes below (worst cases seen: rotation 0.043 and 0.5x scaling 0.056, both on the star,
# whose sharp tips rasterise differently at each pose). Different shapes are >= 0.6 apart.
ROT_TOL = 0.06
SCALE_TOL = 0.08
START_TOL = 0.02
EXACT_TOL = 1e-6
DIFFERENT_MIN = 0.3

_SHIFT = 8  # fixed-point bits for sub-pixel polygon vertices in cv2.fillPoly


def _theta(n=400):
    return np.linspace(0, 2 * np.pi, n, endpoint=False)


def _ellipse():
    t = _theta()
    return np.c_[50 * np.cos(t), 25 * np.sin(t)]


def _star():
    k = np.arange(10)
    r = np.where(k % 2 == 0, 55.0, 25.0)
    a = k * 2 * np.pi / 10
    return np.c_[r * np.cos(a), r * np.sin(a)]


def _ell():
    return np.array([[-40, -50], [-10, -50], [-10, 20], [40, 20], [40, 50], [-40, 50]], float)


def _blob():
    g = np.random.default_rng(0)
    amp, ph = g.uniform(0.05, 0.2, 5), g.uniform(0, 2 * np.pi, 5)
    t = _theta()
    r = 45 * (1 + sum(amp[i] * np.cos((i + 2) * t + ph[i]) for i in range(5)))
    return np.c_[r * np.cos(t), r * np.sin(t)]


SHAPES = {"ellipse": _ellipse(), "star": _star(), "L": _ell(), "blob": _blob()}


def draw(pts, angle=0.0, scale=1.0, shift=(0.0, 0.0), size=256, dark=False, rgb=False):
    """Fill the polygon ``pts`` (centred on 0) rotated, scaled and shifted on a size x size canvas."""
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    p = (np.asarray(pts, float) @ rot.T) * scale + size / 2 + np.asarray(shift, float)
    img = np.zeros((size, size), np.uint8)
    cv2.fillPoly(img, [np.round(p * (1 << _SHIFT)).astype(np.int32)], 255, shift=_SHIFT)
    if dark:
        img = 255 - img
    return np.repeat(img[..., None], 3, axis=2) if rgb else img


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def base():
    return {name: fourier_shape_descriptor(draw(p)) for name, p in SHAPES.items()}


def test_output_dtype_shape_and_dim():
    f = fourier_shape_descriptor(draw(_ellipse(), rgb=True))
    assert f.dtype == np.float32 and f.shape == (10,) == (dim(),)
    g = fourier_shape_descriptor(draw(_ellipse()), n_coeffs=20, extreme_points=True)
    assert g.shape == (dim(n_coeffs=20, extreme_points=True),) == (24,)
    assert dim(n_coeffs=7, extreme_points=False, sigma=3) == 7


def test_circle_has_flat_spectrum():
    # a disc's centroid distance is constant, so every normalised harmonic is ~0
    img = np.zeros((200, 200), np.uint8)
    cv2.circle(img, (100, 100), 70, 255, -1)
    assert np.abs(fourier_shape_descriptor(img)).max() < 0.01
    # an ellipse with axes 2:1 has a dominant 2nd harmonic (r(t) has two lobes per turn)
    f = fourier_shape_descriptor(draw(_ellipse()))
    assert np.argmax(f) == 1 and f[1] > 5 * f[0]


def test_single_harmonic_contour_concentrates_in_that_coefficient():
    # r(t) = 10 + 2 cos 3t: |a_3| / |a_0| dominates (about 0.1 before arc-length resampling)
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    r = 10 + 2 * np.cos(3 * t)
    c = np.c_[r * np.sin(t), r * np.cos(t)]
    f = contour_descriptor(c, n_coeffs=5, sigma=0, n_points=64)
    # only the 3rd harmonic is present (up to the arc-length resampling and centroid shift)
    assert np.argmax(f) == 2 and f[2] > 0.05
    assert np.delete(f, 2).max() < 0.25 * f[2]


def test_hand_computed_plus_sign():
    # a plus sign of 12 unit edges: with n_points=12 and no smoothing the resampled points are its
    # vertices; the centroid is (1.5, 1.5) and r(t) repeats [A, A, B] four times with
    # A = sqrt(0.5^2 + 1.5^2), B = sqrt(0.5^2 + 0.5^2). Then |a_0| = 4 (2A + B), |a_4| = 4 |A - B|
    # (a 3-periodic signal has energy only at multiples of 12 / 3 = 4), every other |a_n| = 0.
    v = [(1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3), (1, 2), (0, 2), (0, 1), (1, 1)]
    a, b = np.hypot(0.5, 1.5), np.hypot(0.5, 0.5)
    f = contour_descriptor(np.array(v, float), n_coeffs=6, sigma=0, n_points=12)
    expected = np.zeros(6)
    expected[3] = abs(a - b) / (2 * a + b)  # = 0.2260
    np.testing.assert_allclose(f, expected, atol=1e-6)


@pytest.mark.parametrize("name", list(SHAPES))
def test_rotation_invariance(base, name):
    for angle in (17, 45, 90, 133, 200, 301):
        assert rel(fourier_shape_descriptor(draw(SHAPES[name], angle=angle)), base[name]) < ROT_TOL, angle


@pytest.mark.parametrize("name", list(SHAPES))
def test_scale_invariance(base, name):
    for s in (0.5, 0.75, 1.5, 2.0):
        img = draw(SHAPES[name], scale=s, size=int(256 * max(1.0, s)))
        assert rel(fourier_shape_descriptor(img), base[name]) < SCALE_TOL, s


@pytest.mark.parametrize("name", list(SHAPES))
def test_translation_invariance_is_exact_for_integer_shifts(base, name):
    for shift in ((-60, 30), (40, -70)):
        assert rel(fourier_shape_descriptor(draw(SHAPES[name], shift=shift)), base[name]) < EXACT_TOL


@pytest.mark.parametrize("name", list(SHAPES))
def test_start_point_and_direction_invariance(name):
    c = shape_contour(draw(SHAPES[name]))
    f = contour_descriptor(c)
    for s in (1, len(c) // 3, len(c) // 2 + 7):
        assert rel(contour_descriptor(np.roll(c, s, axis=0)), f) < START_TOL, s
    assert rel(contour_descriptor(c[::-1]), f) < START_TOL


def test_different_shapes_are_far_apart(base):
    names = list(base)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert rel(base[a], base[b]) > DIFFERENT_MIN, (a, b)
    # and farther than any transformed copy of the same shape is from its original
    assert DIFFERENT_MIN > max(ROT_TOL, SCALE_TOL)


@pytest.mark.parametrize("name", list(SHAPES))
def test_polarity_auto_matches_bright_on_dark(base, name):
    dark = draw(SHAPES[name], dark=True, rgb=True)
    assert rel(fourier_shape_descriptor(dark), base[name]) < EXACT_TOL
    assert rel(fourier_shape_descriptor(dark, foreground="dark"), base[name]) < EXACT_TOL
    # forcing the wrong polarity traces the canvas frame instead: a different (square) descriptor
    assert rel(fourier_shape_descriptor(dark, foreground="bright"), base[name]) > DIFFERENT_MIN


def test_auto_polarity_uses_border_not_area():
    # a bright shape covering 75 % of the image is still the foreground: the border is dark
    img = np.zeros((64, 64), np.uint8)
    img[4:60, 4:60] = 255
    m = foreground_mask(img)
    assert m[32, 32] and not m[0, 0] and m.mean() > 0.7


def test_shape_touching_border_gets_closed_contour():
    img = np.zeros((64, 64), np.uint8)
    img[:, 20:40] = 255  # a bar crossing the image top to bottom
    img[0:5, :] = 0
    img[20:64, 30:64] = 255  # touches bottom and right edges
    c = shape_contour(img)
    assert c[:, 0].max() >= 62.5 and c[:, 1].max() >= 62.5  # reaches the border
    assert np.isfinite(fourier_shape_descriptor(img)).all()


def test_largest_region_wins_and_holes_are_ignored():
    img = np.zeros((120, 120), np.uint8)
    cv2.circle(img, (60, 60), 40, 255, -1)
    ring = img.copy()
    cv2.circle(ring, (60, 60), 15, 0, -1)  # a hole
    ring[5:9, 5:9] = 255  # a speck
    assert rel(fourier_shape_descriptor(ring), fourier_shape_descriptor(img)) < EXACT_TOL


def test_numeric_threshold():
    img = np.full((64, 64), 10, np.uint8)
    img[10:40, 10:30] = 100  # rectangle
    img[45:60, 45:60] = 200  # brighter square
    # t=150 keeps only the square; t=50 keeps both and the rectangle is larger
    sq = shape_contour(img, threshold=150)
    both = shape_contour(img, threshold=50)
    assert sq[:, 0].min() > 44 and both[:, 0].max() < 41


def test_extreme_points_invariance():
    f0 = fourier_shape_descriptor(draw(_ell()), extreme_points=True)
    e0 = f0[-4:]
    assert e0[0] >= e0[1] and e0[2] >= e0[3] and e0.min() > 0.5
    for angle, s in ((33, 1.0), (120, 1.5), (250, 0.75)):
        img = draw(_ell(), angle=angle, scale=s, size=int(256 * max(1.0, s)))
        e = fourier_shape_descriptor(img, extreme_points=True)[-4:]
        assert rel(e, e0) < 0.05, (angle, s)
    # mirror image: same features
    mirrored = draw(_ell() * np.array([-1.0, 1.0]))
    assert rel(fourier_shape_descriptor(mirrored, extreme_points=True)[-4:], e0) < 0.05


def test_no_foreground_errors():
    with pytest.raises(ValueError, match="constant"):
        fourier_shape_descriptor(np.zeros((32, 32), np.uint8))
    img = np.zeros((32, 32), np.uint8)
    img[10:20, 10:20] = 200
    with pytest.raises(ValueError, match="no foreground"):
        fourier_shape_descriptor(img, threshold=250)


def test_input_validation():
    img = draw(_ellipse())
    with pytest.raises(TypeError, match="uint8"):
        fourier_shape_descriptor(img.astype(np.float32))
    with pytest.raises(ValueError, match="at least 16"):
        fourier_shape_descriptor(img[:15])
    with pytest.raises(ValueError, match="shape"):
        fourier_shape_descriptor(np.zeros((32, 32, 4), np.uint8))
    with pytest.raises(ValueError, match="n_points // 2"):
        fourier_shape_descriptor(img, n_coeffs=65, n_points=128)
    with pytest.raises(ValueError, match="sigma"):
        fourier_shape_descriptor(img, sigma=-1)
    with pytest.raises(ValueError, match="foreground"):
        fourier_shape_descriptor(img, foreground="white")
    with pytest.raises(ValueError, match="threshold"):
        fourier_shape_descriptor(img, threshold="mean")
    with pytest.raises(ValueError, match="contour"):
        contour_descriptor(np.zeros((2, 2)))


def test_smoothing_damps_high_harmonics():
    img = draw(_star())
    f0, f4 = (fourier_shape_descriptor(img, sigma=s, n_coeffs=30) for s in (0, 4))
    assert 0 < rel(f4[:10], f0[:10]) < 0.1  # the 10 kept harmonics barely move
    assert f4[4] < f0[4]  # the star's 5-fold harmonic shrinks as the tips round
    assert f4[10:].sum() < 0.8 * f0[10:].sum()  # and the high harmonics lose > 20 %


def test_module_import_is_light():
    assert "cv2" not in vars(fsd) and "skimage" not in vars(fsd)


@pytest.mark.integration
def test_mpeg7_same_class_closer_than_other_class():
    from cbir_dist.io.images import read_image

    root = shared_path("data", "mpeg7")
    a1, a2 = (fourier_shape_descriptor(read_image(root / "apple" / f"apple-{i}.gif")) for i in (1, 2))
    b = fourier_shape_descriptor(read_image(root / "bat" / "bat-1.gif"))
    assert np.linalg.norm(a1 - a2) < np.linalg.norm(a1 - b)
