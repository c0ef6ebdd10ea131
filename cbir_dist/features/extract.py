"""Per-image features for a FeatureSpec: the deep block (a backbone) and the handcrafted blocks.

Every path calls these: the local backend and the query side through :class:`Extractor`, the Ray
graph with :class:`DeepFeatures` inside its backbone actors and :func:`handcrafted_features`
inside its CPU tasks, the evaluation job inside its cells.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import numpy as np

from ..errors import SpecMismatchError
from .spec import DEEP, Block, FeatureSpec

log = logging.getLogger(__name__)

#: ``timer(stage, seconds, n_images)``: told how long each block kind took ("descriptors", "deep").
StageTimer = Callable[[str, float, int], None]


class DeepFeatures:
    """Callable computing a spec's deep block; loads the backbone once (an actor's ``__init__``).

    ``weights`` overrides the spec's weights source (e.g. ``"random"`` in tests, or a local file on
    a machine without internet); the spec itself, stored with the collection, is unchanged. Without
    it, ``imagenet`` weights come from ``$CBIR_WEIGHTS`` when it names this backbone (see
    :func:`cbir_dist.features.weights.local_weights`), else from torchvision's cache or download.
    ``num_threads`` sets torch's intra-op threads (a process-wide setting; ``None`` leaves it) and
    ONNX Runtime's. ``runtime`` (``auto``, ``torch``, ``onnx``) picks what runs the network (see
    :func:`~.backbones.load_backbone`); :attr:`runtime` then says what does, for the run's records.
    """

    def __init__(self, block: Block, *, device: str | None = None, weights: str | None = None,
                 batch_size: int = 32, num_threads: int | None = None, runtime: str = "auto"):
        from .backbones import load_backbone
        from .weights import local_weights

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
            num_threads=num_threads,
            runtime=runtime,
        )
        self.runtime: str = self.model.runtime
        if self.model.dim != block.dim:
            raise SpecMismatchError(
                f"backbone {p['backbone']} gives {self.model.dim}-d features, spec says {block.dim}")

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
            raise SpecMismatchError(f"descriptor {b.name} returned {arr.shape[1]} values, spec says {b.dim}")
        out[b.name] = arr
    return out


class Extractor:
    """All blocks of a spec for a list of images, in one process (the local backend and the query side)."""

    def __init__(self, spec: FeatureSpec, *, device: str | None = None, weights: str | None = None,
                 batch_size: int = 32, num_threads: int | None = None, runtime: str = "auto"):
        self.spec = spec
        deep = spec.deep
        self.deep = (DeepFeatures(deep, device=device, weights=weights, batch_size=batch_size,
                                  num_threads=num_threads, runtime=runtime) if deep else None)

    @property
    def runtime(self) -> str | None:
        """What runs the backbone (``"onnxruntime 1.32.0"``, ``"torch 2.14.1 cuda bf16"``); None without one."""
        return self.deep.runtime if self.deep is not None else None

    def blocks(self, images: Sequence[np.ndarray], *, timer: StageTimer | None = None) -> dict[str, np.ndarray]:
        """Every block's raw features, block name → ``(N, dim)``; ``timer`` is told each kind's seconds."""
        t = time.perf_counter()
        feats = handcrafted_features(images, self.spec.blocks)
        t2 = time.perf_counter()
        if timer is not None:
            timer("descriptors", t2 - t, len(images))
        if self.deep is not None:
            feats[DEEP] = self.deep(images)
            if timer is not None:
                timer("deep", time.perf_counter() - t2, len(images))
        return feats

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.spec.fuse(self.blocks(images))
