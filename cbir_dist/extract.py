"""Per-image features for a FeatureSpec: the deep block (a backbone) and the handcrafted blocks.

Both backends call these: the local backend in one process, the Ray pipeline with
:class:`DeepFeatures` inside GPU/CPU actors and :func:`handcrafted_features` inside CPU tasks.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from .fuse import DEEP, Block, FeatureSpec

log = logging.getLogger(__name__)


WEIGHTS_ENV = "CBIR_WEIGHTS"


def local_weights(backbone: str) -> str | None:
    """A local file holding ``backbone``'s ImageNet weights, from ``$CBIR_WEIGHTS`` (``name=PATH,...``).

    For air-gapped machines: ``CBIR_WEIGHTS=vgg16=/models/vgg16_features.pth`` makes ``imagenet``
    resolve to that file instead of torchvision's download. The stored spec still says ``imagenet``.
    """
    import os

    for item in os.environ.get(WEIGHTS_ENV, "").split(","):
        name, sep, path = item.partition("=")
        if sep and name.strip() == backbone and path.strip():
            return path.strip()
    return None


class DeepFeatures:
    """Callable computing a spec's deep block; loads the backbone once (an actor's ``__init__``).

    ``weights`` overrides the spec's weights source (e.g. ``"random"`` in tests, or a local file on
    a machine without internet); the spec itself, stored with the collection, is unchanged. Without
    it, ``imagenet`` weights come from ``$CBIR_WEIGHTS`` when it names this backbone (see
    :func:`local_weights`), else from torchvision's cache or download.
    """

    def __init__(self, block: Block, *, device: str | None = None, weights: str | None = None, batch_size: int = 32):
        from .backbones import load_backbone

        p = block.params
        self.block = block
        if weights is None:
            weights = p.get("weights", "imagenet")
            if weights == "imagenet":
                weights = local_weights(p["backbone"]) or weights
        self.model = load_backbone(
            p["backbone"],
            weights,
            device=device,
            sha256=p.get("sha256"),
            image_size=int(p.get("image_size", 224)),
            batch_size=batch_size,
        )
        if self.model.dim != block.dim:
            raise ValueError(f"backbone {p['backbone']} gives {self.model.dim}-d features, spec says {block.dim}")

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.block.dim), np.float32)
        return np.asarray(self.model(list(images)), dtype=np.float32)


def handcrafted_features(images: Sequence[np.ndarray], blocks: Sequence[Block]) -> dict[str, np.ndarray]:
    """Descriptor blocks for a list of uint8 images: block name → ``(N, dim)`` float32."""
    from .descriptors import compute

    out = {}
    for b in blocks:
        if b.name == DEEP:
            continue
        rows = [compute(b.name, img, **b.params) for img in images]
        arr = np.stack(rows).astype(np.float32) if rows else np.zeros((0, b.dim), np.float32)
        if arr.shape[1] != b.dim:
            raise ValueError(f"descriptor {b.name} returned {arr.shape[1]} values, spec says {b.dim}")
        out[b.name] = arr
    return out


class Extractor:
    """All blocks of a spec for a list of images, in one process (the local backend and the query side)."""

    def __init__(self, spec: FeatureSpec, *, device: str | None = None, weights: str | None = None, batch_size: int = 32):
        self.spec = spec
        deep = spec.deep
        self.deep = DeepFeatures(deep, device=device, weights=weights, batch_size=batch_size) if deep else None

    def blocks(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        feats = handcrafted_features(images, self.spec.blocks)
        if self.deep is not None:
            feats[DEEP] = self.deep(images)
        return feats

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.spec.fuse(self.blocks(images))

