import pytest

from cbir_dist.features.profiles import PROFILES, build_spec, profile_spec
from cbir_dist.features.spec import DEEP


def test_default_spec_blocks_and_dims():
    spec = build_spec(backbone="resnet50", descriptors=("correlogram", "gabor"))
    assert spec.names == [DEEP, "correlogram", "gabor"]
    assert spec.block(DEEP).dim == 2048 and spec.dim == 2048 + 256 + 48
    assert spec.mode == "balanced" and all(b.norm == "l2" for b in spec.blocks)


def test_paper_mode_is_unweighted_concatenation():
    spec = build_spec(backbone="mobilenet_v2", descriptors=("correlogram",), mode="paper")
    assert all(b.weight == 1.0 and b.norm == "none" for b in spec.blocks)


def test_descriptor_only_spec():
    spec = build_spec(backbone="none", descriptors=("glcm",))
    assert spec.names == ["glcm"] and spec.dim == 72


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_builds(name):
    spec = profile_spec(name)
    assert spec.profile == name and spec.dim > 0


def test_shape_profile_needs_fit():
    spec = profile_spec("shape")
    assert spec.names == ["fourier_shape"] and spec.needs_fit


@pytest.mark.parametrize("kwargs, msg", [
    ({"backbone": "alexnet"}, "unknown backbone"), ({"descriptors": ("sift",)}, "unknown descriptor"),
    ({"mode": "fancy"}, "fusion mode"), ({"backbone": "none", "descriptors": ()}, "nothing to index"),
])
def test_errors_name_valid_choices(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        build_spec(**kwargs)


def test_unknown_profile():
    with pytest.raises(ValueError, match="shape"):
        profile_spec("colour")
