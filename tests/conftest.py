"""Shared fixtures: tiny generated images for unit tests, the ../shared data sets for integration tests."""

from __future__ import annotations

import os
import sys
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


# ------------------------------------------------------------------ the end of the session
#
# The test command's exit status must be pytest's. On one machine (AMD EPYC, AVX-512) the suite
# printed its summary and then died with SIGSEGV (exit 139) while the interpreter was tearing
# itself down. What is still alive at that point is native threads that Python's own atexit order
# does not stop in time: the in-process milvus-lite gRPC servers and pymilvus channels of stores a
# test left open, a Ray driver a test left initialised (its core worker's threads), torch's and
# OpenMP's pools. So, at the end of the session, in order: stop Ray, close every milvus-lite
# server, collect garbage; then, once every plugin has written its report, leave with pytest's
# status through os._exit, so that nothing torn down after that can change it. Set
# CBIR_TEST_NATURAL_EXIT=1 to exit the ordinary way (with PYTHONFAULTHANDLER=1 a crash there prints
# its native stack: how to find the culprit if it ever comes back).

def _stop_native_threads() -> list[str]:
    problems = []
    try:
        import sys

        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - report, never mask the session's result
        problems.append(f"ray.shutdown: {exc!r}")
    try:
        from cbir_dist.store.lite_internals import release_all

        release_all()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"milvus-lite release_all: {exc!r}")
    import gc

    gc.collect()
    return problems


def pytest_sessionfinish(session, exitstatus):
    session.config._cbir_exitstatus = int(exitstatus)
    for line in _stop_native_threads():
        print(f"\nconftest: at the end of the session, {line}", file=sys.stderr)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    status = getattr(config, "_cbir_exitstatus", None)
    if status is None or os.environ.get("CBIR_TEST_NATURAL_EXIT") == "1":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
