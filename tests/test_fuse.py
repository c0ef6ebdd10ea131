import json

import numpy as np
import pytest

from cbir_dist.errors import SpecMismatchError
from cbir_dist.features.spec import Block, FeatureSpec


def _spec(mode="balanced", norm="l2", w=(1.0, 0.5)):
    return FeatureSpec((Block("deep", 4, w[0], norm, {"backbone": "x"}), Block("gabor", 2, w[1], norm)), mode=mode)


def test_paper_mode_is_plain_concatenation():
    spec = _spec("paper", "none", (1.0, 1.0))
    a, b = np.arange(8, dtype=np.float32).reshape(2, 4), np.ones((2, 2), np.float32) * 7
    out = spec.fuse({"deep": a, "gabor": b})
    np.testing.assert_array_equal(out, np.concatenate([a, b], axis=1))
    assert out.dtype == np.float32 and spec.dim == 6


def test_balanced_blocks_have_norm_equal_to_weight():
    spec = _spec()
    rng = np.random.default_rng(0)
    out = spec.fuse({"deep": rng.normal(size=(5, 4)) * 100, "gabor": rng.normal(size=(5, 2)) * 1e-3})
    np.testing.assert_allclose(np.linalg.norm(out[:, :4], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:, 4:], axis=1), 0.5, rtol=1e-5)


def test_zscore_needs_fit_then_standardises():
    spec = FeatureSpec((Block("glcm", 3, 1.0, "zscore"),), mode="standardized")
    x = np.random.default_rng(1).normal(5, 3, size=(50, 3))
    assert spec.needs_fit
    with pytest.raises(ValueError, match="fit"):
        spec.fuse({"glcm": x})
    fitted = spec.fit({"glcm": x})
    assert not fitted.needs_fit
    z = fitted.fuse({"glcm": x})
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)


def test_constant_feature_gets_std_floor_not_nan():
    spec = FeatureSpec((Block("glcm", 2, 1.0, "zscore"),), mode="standardized")
    x = np.stack([np.ones(10), np.arange(10)], axis=1)
    z = spec.fit({"glcm": x}).fuse({"glcm": x})
    assert np.isfinite(z).all() and np.all(z[:, 0] == 0)


def test_json_round_trip_keeps_fitted_stats():
    spec = FeatureSpec((Block("glcm", 2, 0.7, "zscore+l2", {"levels": 32}),), mode="standardized", profile="texture")
    spec = spec.fit({"glcm": np.random.default_rng(2).normal(size=(10, 2))})
    back = FeatureSpec.from_json(spec.to_json())
    assert back == spec
    assert json.loads(spec.to_json())["dim"] == 2


def test_mismatch_names_the_difference():
    stored = _spec(w=(1.0, 0.5))
    stored.check_compatible(_spec(w=(1.0, 0.5)))
    with pytest.raises(SpecMismatchError, match="gabor.*weight"):
        stored.check_compatible(_spec(w=(1.0, 0.25)))
    other = FeatureSpec((Block("deep", 4, 1.0, "l2", {"backbone": "y"}),), mode="balanced")
    with pytest.raises(SpecMismatchError, match="blocks"):
        stored.check_compatible(other)


def test_fitted_stats_do_not_count_as_mismatch():
    spec = FeatureSpec((Block("glcm", 2, 1.0, "zscore"),), mode="standardized")
    spec.fit({"glcm": np.random.default_rng(3).normal(size=(4, 2))}).check_compatible(spec)


def test_wrong_feature_width_fails_loudly():
    with pytest.raises(SpecMismatchError, match=r"\(N, 4\)"):
        _spec().fuse({"deep": np.zeros((2, 5)), "gabor": np.zeros((2, 2))})
    with pytest.raises(SpecMismatchError, match="missing"):
        _spec().fuse({"deep": np.zeros((2, 4))})


@pytest.mark.parametrize("kwargs, msg", [
    ({"dim": 0}, "dim"), ({"norm": "max"}, "norm"), ({"weight": -1.0}, "weight"),
])
def test_block_validation(kwargs, msg):
    base = {"name": "b", "dim": 2}
    with pytest.raises(ValueError, match=msg):
        Block(**{**base, **kwargs})


def test_spec_validation():
    with pytest.raises(ValueError, match="at least one"):
        FeatureSpec(())
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSpec((Block("a", 1), Block("a", 1)))
    with pytest.raises(ValueError, match="mode"):
        FeatureSpec((Block("a", 1),), mode="fancy")
