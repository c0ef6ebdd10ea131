"""Shared fixtures: tiny generated images for unit tests, the ../shared data sets for integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """``$CBIR_SHARED`` if set, else ``../shared`` beside the checkout."""
    return Path(os.environ.get("CBIR_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under the shared folder, or skip the test with the reason when it is absent."""
    p = shared_root().joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (set CBIR_SHARED to the folder holding data/ and weights/)")
    return p


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def rgb_image(rng) -> np.ndarray:
    """A 48 x 64 uint8 RGB image: smooth gradients plus noise, so every descriptor has signal."""
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=2)
    img = img + rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def milvus_server():
    """One real Milvus server for the whole session (``tests/milvus_server.py``), authentication on.

    ``.uri`` and ``.token`` address it. ``$CBIR_MILVUS_URI`` (and ``$CBIR_MILVUS_TOKEN``) use a
    running server of your own instead. Skips, with the reason, when the server venv is absent.
    Tests must not stop, kill or restart this one (start a ``MilvusServer`` of their own for that),
    and should use collection names of their own.
    """
    from milvus_server import SKIP_REASON, ExternalServer, MilvusServer, available

    if os.environ.get("CBIR_MILVUS_URI"):
        yield ExternalServer(os.environ["CBIR_MILVUS_URI"], os.environ.get("CBIR_MILVUS_TOKEN") or None)
        return
    if not available():
        pytest.skip(SKIP_REASON)
    server = MilvusServer(auth=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
