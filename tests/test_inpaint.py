"""Classical inpainters and the name registry."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import cbir_dist.damage.inpaint as inpaint
from cbir_dist.damage.inpaint import Inpainter, available_inpainters, get_inpainter
from cbir_dist.damage.masks import fringe_mask, irregular_mask

CLASSICAL = ["none", "telea", "ns", "biharmonic"]


@pytest.fixture
def smooth_image() -> np.ndarray:
    """A 48 x 64 RGB ramp: the missing pixels are predictable from their neighbours."""
    yy, xx = np.mgrid[0:48, 0:64]
    return np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=2).astype(np.uint8)


def _mean_error(out: np.ndarray, ref: np.ndarray, known: np.ndarray) -> float:
    return float(np.abs(out.astype(int) - ref.astype(int))[~known].mean())


@pytest.mark.parametrize("name", CLASSICAL)
def test_known_pixels_unchanged_and_output_contract(name, rgb_image):
    known = irregular_mask(*rgb_image.shape[:2], 3)
    damaged = rgb_image.copy()
    damaged[~known] = 77  # values under missing pixels must never leak through
    before = damaged.copy()
    inp = get_inpainter(name)
    assert isinstance(inp, Inpainter) and inp.name == name
    out = inp(damaged, known)
    assert out.dtype == np.uint8 and out.shape == rgb_image.shape
    np.testing.assert_array_equal(out[known], rgb_image[known])
    np.testing.assert_array_equal(damaged, before)  # input not modified
    other = damaged.copy()
    other[~known] = 200
    np.testing.assert_array_equal(inp(other, known), out)


@pytest.mark.parametrize("name", CLASSICAL)
def test_grey_images_stay_grey(name, rgb_image):
    grey = rgb_image[..., 1].copy()
    known = fringe_mask(*grey.shape, 2)
    out = get_inpainter(name)(grey, known)
    assert out.shape == grey.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[known], grey[known])
    single = get_inpainter(name)(grey[..., None], known)
    assert single.shape == grey.shape + (1,)


@pytest.mark.parametrize("name", CLASSICAL)
def test_all_known_and_nothing_known(name, rgb_image):
    inp = get_inpainter(name)
    everything = np.ones(rgb_image.shape[:2], bool)
    out = inp(rgb_image, everything)
    np.testing.assert_array_equal(out, rgb_image)
    assert out is not rgb_image
    nothing = np.zeros(rgb_image.shape[:2], bool)
    np.testing.assert_array_equal(inp(rgb_image, nothing), np.zeros_like(rgb_image))


def test_none_is_the_destroyed_image(smooth_image):
    known = fringe_mask(48, 64, 3)
    out = get_inpainter("none")(smooth_image, known)
    assert (out[~known] == 0).all()


@pytest.mark.parametrize("name", ["telea", "ns", "biharmonic"])
def test_fills_smooth_image_far_better_than_zero_fill(name, smooth_image):
    known = fringe_mask(48, 64, 3)
    zero = _mean_error(get_inpainter("none")(smooth_image, known), smooth_image, known)
    filled = _mean_error(get_inpainter(name)(smooth_image, known), smooth_image, known)
    assert zero > 50
    assert filled < 6, f"{name}: mean abs error {filled:.2f} on a linear ramp"


def test_biharmonic_is_exact_on_a_linear_ramp_inside_the_image(smooth_image):
    # A linear function is biharmonic, so an interior hole is filled exactly up to rounding.
    known = np.ones((48, 64), bool)
    known[12:36, 16:48] = False
    out = get_inpainter("biharmonic", max_side=None)(smooth_image, known)
    assert np.abs(out.astype(int) - smooth_image.astype(int)).max() <= 1


def test_biharmonic_downscaled_path_keeps_known_pixels(smooth_image):
    known = irregular_mask(48, 64, 5)
    full = get_inpainter("biharmonic", max_side=None)(smooth_image, known)
    small = get_inpainter("biharmonic", max_side=32)(smooth_image, known)
    np.testing.assert_array_equal(small[known], smooth_image[known])
    assert _mean_error(small, smooth_image, known) < 8
    assert not np.array_equal(small, full)  # really took the downscaled route


def test_radius_option_changes_result(rgb_image):
    known = fringe_mask(*rgb_image.shape[:2], 1)
    a = get_inpainter("telea", radius=1)(rgb_image, known)
    b = get_inpainter("telea", radius=9)(rgb_image, known)
    assert not np.array_equal(a, b)
    assert get_inpainter("ns").radius == 5.0
    with pytest.raises(ValueError, match="radius"):
        get_inpainter("telea", radius=0)


def test_registry_names_and_errors():
    assert available_inpainters() == ["none", "telea", "ns", "biharmonic", "two-stage"]
    with pytest.raises(ValueError, match="none, telea, ns, biharmonic, two-stage"):
        get_inpainter("deepfill")
    with pytest.raises(TypeError):
        get_inpainter("none", radius=3)
    with pytest.raises(ValueError, match="max_side"):
        get_inpainter("biharmonic", max_side=4)


def test_two_stage_is_loaded_lazily(monkeypatch):
    fake = types.ModuleType("cbir_dist.damage.inpaint._fake_two_stage")
    calls = []
    fake.load_two_stage = lambda **kw: calls.append(kw) or "model"
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(inpaint, "TWO_STAGE_MODULE", fake.__name__)
    assert get_inpainter("two-stage", device="cpu") == "model"
    assert calls == [{"device": "cpu"}]


def test_two_stage_missing_module_raises_clear_error(monkeypatch):
    monkeypatch.setattr(inpaint, "TWO_STAGE_MODULE", "cbir_dist.damage.inpaint._absent_module")
    with pytest.raises(ImportError, match="two-stage.*classical"):
        get_inpainter("two-stage")


@pytest.mark.parametrize("name", CLASSICAL)
def test_input_validation(name, rgb_image):
    inp = get_inpainter(name)
    known = np.ones(rgb_image.shape[:2], bool)
    with pytest.raises(TypeError, match="uint8"):
        inp(rgb_image.astype(np.float32), known)
    with pytest.raises(TypeError, match="bool"):
        inp(rgb_image, known.astype(np.uint8))
    with pytest.raises(ValueError, match="mask has shape"):
        inp(rgb_image, known[:, :-1])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        inp(np.zeros((8, 8, 4), np.uint8), np.ones((8, 8), bool))
