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


def test_constant_feature_gets_std_1_not_nan():
    spec = FeatureSpec((Block("glcm", 2, 1.0, "zscore"),), mode="standardized")
    x = np.stack([np.ones(10), np.arange(10)], axis=1)
    fitted = spec.fit({"glcm": x})
    z = fitted.fuse({"glcm": x})
    assert fitted.block("glcm").std[0] == 1.0
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
    fitted = spec.fit({"glcm": np.random.default_rng(3).normal(size=(4, 2))})
    assert fitted != spec and fitted.block("glcm").mean is not None
    assert fitted.check_compatible(spec) is None  # same recipe, other statistics: compatible
    reweighted = FeatureSpec((Block("glcm", 2, 0.5, "zscore"),), mode="standardized")
    with pytest.raises(SpecMismatchError, match="weight"):
        fitted.check_compatible(reweighted)


def test_standardizer_in_chunks_equals_one_pass_and_constant_features_get_std_1():
    from cbir_dist.features.spec import (
        Standardizer,
        apply_standardizer,
        fit_standardizer,
    )

    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(3, 2, size=(1000, 3)), np.full((1000, 1), 7.0)], axis=1)
    st = Standardizer()
    for start in range(0, 1000, 97):  # uneven chunks
        st.update(x[start : start + 97])
    mean, std = st.result()
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std[:3], x[:, :3].std(axis=0), rtol=1e-10)
    assert std[3] == 1.0  # constant: standardises to 0 instead of blowing up
    m1, s1 = fit_standardizer(x)
    np.testing.assert_allclose(m1, mean) and np.testing.assert_allclose(s1, std)
    assert np.all(apply_standardizer(x, mean, std)[:, 3] == 0)


def test_version_1_specs_are_still_read_and_unknown_versions_refused():
    spec = FeatureSpec((Block("glcm", 2, 1.0, "zscore"),), mode="standardized").fit(
        {"glcm": np.random.default_rng(5).normal(size=(6, 2))})
    d = json.loads(spec.to_json())
    assert d["version"] == 2
    d["version"] = 1
    old = FeatureSpec.from_json(json.dumps(d))
    assert old.block("glcm").std == spec.block("glcm").std  # the stored statistics are used as they are
    d["version"] = 99
    with pytest.raises(SpecMismatchError, match="version 99"):
        FeatureSpec.from_json(json.dumps(d))


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
