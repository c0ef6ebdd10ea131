"""Affine repository: determinism, no clipping, binary output, area under scaling, files written."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from cbir_dist.errors import InputError
from cbir_dist.evaluation.affine import (
    VARIANTS,
    AffineParams,
    affine_variants,
    apply_affine,
    background_value,
    draw_affine_params,
    write_affine_repository,
)
from cbir_dist.features.descriptors.fourier_shape import fourier_shape_descriptor


def _shape(h=80, w=100, dark=False):
    img = np.zeros((h, w), np.uint8)
    cv2.fillPoly(img, [np.array([[10, 10], [60, 15], [85, 70], [30, 60], [20, 35]], np.int32)], 255)
    cv2.circle(img, (75, 20), 8, 255, -1)
    return 255 - img if dark else img


def _area(img, fg=255):
    return int((img == fg).sum())


def test_variants_deterministic_given_seed():
    img = _shape()
    a = affine_variants(img, np.random.default_rng(5))
    b = affine_variants(img, np.random.default_rng(5))
    c = affine_variants(img, np.random.default_rng(6))
    assert list(a) == list(VARIANTS)
    for k in VARIANTS:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(a[k].shape != c[k].shape or not np.array_equal(a[k], c[k]) for k in VARIANTS)


def test_params_ranges():
    for seed in range(20):
        p = draw_affine_params(np.random.default_rng(seed))
        assert p["rotation"].scale == 1 and 15 <= p["rotation"].angle <= 345
        assert p["translation"].angle == 0 and 0.1 <= abs(p["translation"].dx) <= 0.3
        s = p["scaling"].scale
        assert p["scaling"].angle == 0 and (0.5 <= s <= 0.8 or 1.25 <= s <= 2.0)
        q = p["combined"]
        assert q.angle != 0 and q.scale != 1 and q.dx != 0 and q.dy != 0
    with pytest.raises(TypeError, match="Generator"):
        draw_affine_params(5)


@pytest.mark.parametrize("dark", [False, True])
def test_variants_stay_binary_unclipped_and_keep_area(dark):
    img = _shape(dark=dark)
    fg = 0 if dark else 255
    bg = 255 - fg
    area = _area(img, fg)
    params = draw_affine_params(np.random.default_rng(11))
    for name in VARIANTS:
        out = apply_affine(img, params[name])
        assert set(np.unique(out).tolist()) <= {0, 255}, name
        # nothing clipped: the one-pixel frame is all background
        frame = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]])
        assert (frame == bg).all(), name
        expected = area * params[name].scale ** 2
        assert _area(out, fg) == pytest.approx(expected, rel=0.06), name


def test_scaling_scales_area_by_s_squared():
    img = _shape()
    for s in (0.5, 0.7, 1.4, 2.0):
        out = apply_affine(img, AffineParams(scale=s))
        assert _area(out) == pytest.approx(_area(img) * s * s, rel=0.05), s


def test_translation_moves_the_shape_by_the_shift():
    img = _shape()
    h, w = img.shape
    plain = apply_affine(img, AffineParams())
    moved = apply_affine(img, AffineParams(dx=0.2, dy=-0.3))
    assert moved.shape == plain.shape  # same canvas; the margin absorbs the shift
    ys, xs = np.nonzero(plain)
    ym, xm = np.nonzero(moved)
    assert xm.mean() - xs.mean() == pytest.approx(0.2 * w, abs=0.5)
    assert ym.mean() - ys.mean() == pytest.approx(-0.3 * h, abs=0.5)
    assert _area(moved) == _area(img)


def test_rgb_background_and_descriptor_invariance():
    img = np.repeat(_shape(dark=True)[..., None], 3, axis=2)
    np.testing.assert_array_equal(background_value(img), [255, 255, 255])
    f0 = fourier_shape_descriptor(img)
    for name, out in affine_variants(img, np.random.default_rng(3)).items():
        assert out.ndim == 3 and out.shape[2] == 3
        f = fourier_shape_descriptor(out)
        assert np.linalg.norm(f - f0) / np.linalg.norm(f0) < 0.1, name


def test_write_repository(tmp_path):
    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(2):
            img = _shape()
            img = np.roll(img, 3 * i, axis=1) if cls == "a" else 255 - img
            Image.fromarray(img).save(src / cls / f"{cls}-{i}.gif")
    written = write_affine_repository(src, tmp_path / "dst", seed=1)
    assert len(written) == 4 * 5
    names = sorted(p.name for p in (tmp_path / "dst" / "a").iterdir())
    assert sum(n.startswith("a-0__") for n in names) == 5
    for v in ("original", *VARIANTS):
        assert any(n.startswith(f"a-0__{v}") for n in names), v
    orig = np.asarray(Image.open(tmp_path / "dst" / "a" / "a-0__original.png"))
    np.testing.assert_array_equal(orig, _shape())
    rows = (tmp_path / "dst" / "affine_params.csv").read_text().splitlines()
    assert rows[0].startswith("source,variant") and len(rows) == 21
    # rerun: byte-identical files
    again = write_affine_repository(src, tmp_path / "dst2", seed=1)
    for p, q in zip(written, again):
        assert open(p, "rb").read() == open(q, "rb").read()
    with pytest.raises(InputError):
        write_affine_repository(tmp_path / "empty_does_not_exist", tmp_path / "x")


def test_apply_affine_validation():
    with pytest.raises(TypeError, match="uint8"):
        apply_affine(np.zeros((10, 10), np.float32), AffineParams())
    with pytest.raises(ValueError, match="shape"):
        apply_affine(np.zeros((10, 10, 4), np.uint8), AffineParams())
