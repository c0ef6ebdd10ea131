"""Building a FeatureSpec from user choices, and the named profiles (``--profile``).

Profiles
--------
``paper``
    Taheri et al.: deep features (ResNet-50 by default) + colour auto-correlogram + Gabor texture,
    plain concatenation.
``default``
    The same blocks, ``balanced`` fusion (each block L2-normalised, then weighted).
``shape``
    Pande et al. shapes: centroid-distance Fourier descriptors (10 coefficients) plus the shape's
    extreme points, standardised with statistics fitted on the indexed collection.
``texture``
    Pande et al. textures: SGLDM/GLCM inverse difference moment over a 3x3 tiling in 8 directions,
    with Gabor texture, standardised and L2-balanced per block.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import UsageError
from .descriptors import available_descriptors, default_weight
from .spec import DEEP, MODES, Block, FeatureSpec

DEFAULT_DESCRIPTORS = ("correlogram", "gabor")
DEFAULT_BACKBONE = "resnet50"
DEFAULT_WEIGHTS: Mapping[str, float] = {DEEP: 1.0, **{n: default_weight(n) for n in available_descriptors()}}
_NORM_FOR_MODE = {"paper": "none", "balanced": "l2", "standardized": "zscore"}

PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"backbone": DEFAULT_BACKBONE, "descriptors": DEFAULT_DESCRIPTORS, "mode": "paper"},
    "default": {"backbone": DEFAULT_BACKBONE, "descriptors": DEFAULT_DESCRIPTORS, "mode": "balanced"},
    "shape": {
        "backbone": "none",
        "descriptors": ("fourier_shape",),
        "mode": "standardized",
        "params": {"fourier_shape": {"n_coeffs": 10, "extreme_points": True}},
    },
    "texture": {
        "backbone": "none",
        "descriptors": ("glcm", "gabor"),
        "mode": "standardized",
        "norms": {"glcm": "zscore+l2", "gabor": "zscore+l2"},
        "block_weights": {"glcm": 1.0, "gabor": 1.0},
    },
}


def _descriptor_dim(name: str, params: Mapping[str, Any]) -> int:
    from .descriptors import get_descriptor

    return int(get_descriptor(name).dim(**params))


def build_spec(
    *,
    backbone: str | None = DEFAULT_BACKBONE,
    weights: str = "imagenet",
    image_size: int = 224,
    descriptors: Sequence[str] = DEFAULT_DESCRIPTORS,
    mode: str = "balanced",
    block_weights: Mapping[str, float] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    norms: Mapping[str, str] | None = None,
    profile: str = "",
    weights_sha256: str | None = None,
) -> FeatureSpec:
    """A FeatureSpec for a backbone (or ``None``/``"none"``) and a list of descriptor names.

    Raises ``ValueError`` naming the valid choices for an unknown backbone, descriptor or mode.
    """
    if mode not in MODES:
        raise UsageError(f"unknown fusion mode {mode!r}; choose one of {', '.join(MODES)}")
    # paper mode is plain concatenation: every block at weight 1 unless weights are given explicitly
    base_weights = {k: 1.0 for k in DEFAULT_WEIGHTS} if mode == "paper" else DEFAULT_WEIGHTS
    block_weights = {**base_weights, **(block_weights or {})}
    params = params or {}
    norms = norms or {}
    default_norm = _NORM_FOR_MODE[mode]
    blocks = []
    if backbone and backbone != "none":
        from .backbones import BACKBONES, MIN_IMAGE_SIZE, feature_dim

        if backbone not in BACKBONES:
            raise UsageError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)} or none")
        if image_size < MIN_IMAGE_SIZE:
            raise UsageError(f"image size {image_size} is too small for a backbone: give --image-size "
                             f"{MIN_IMAGE_SIZE} or more (default 224)")
        deep_params = {"backbone": backbone, "weights": str(weights), "image_size": int(image_size)}
        if weights_sha256:
            deep_params["sha256"] = weights_sha256
        blocks.append(
            Block(DEEP, feature_dim(backbone), block_weights[DEEP], norms.get(DEEP, default_norm), deep_params)
        )
    for name in descriptors:
        if name not in available_descriptors():
            raise UsageError(f"unknown descriptor {name!r}; choose from {', '.join(available_descriptors())}")
        p = dict(params.get(name, {}))
        blocks.append(
            Block(name, _descriptor_dim(name, p), block_weights.get(name, 1.0), norms.get(name, default_norm), p)
        )
    if not blocks:
        raise UsageError("nothing to index: give a backbone (--backbone) or at least one descriptor (--descriptors)")
    return FeatureSpec(tuple(blocks), mode=mode, profile=profile)


def profile_spec(name: str, **overrides) -> FeatureSpec:
    """The FeatureSpec of a named profile; keyword ``overrides`` replace the profile's settings."""
    if name not in PROFILES:
        raise UsageError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    settings = {**PROFILES[name], **{k: v for k, v in overrides.items() if v is not None}}
    return build_spec(
        backbone=settings.get("backbone"),
        weights=settings.get("weights", "imagenet"),
        image_size=settings.get("image_size", 224),
        descriptors=settings.get("descriptors", ()),
        mode=settings.get("mode", "balanced"),
        block_weights=settings.get("block_weights"),
        params=settings.get("params"),
        norms=settings.get("norms"),
        profile=name,
        weights_sha256=settings.get("weights_sha256"),
    )
