"""What every evaluation protocol shares: the protocol names and the software versions recorded with results."""

from __future__ import annotations

import platform

from .scoring import PROTOCOLS

__all__ = ["PROTOCOLS", "versions"]


def versions() -> dict:
    """Python and the versions of the packages a result depends on (for ``results.json``)."""
    import importlib.metadata as md

    v = {"python": platform.python_version()}
    for pkg in ("cbir-dist", "torch", "torchvision", "numpy", "ray", "pymilvus", "milvus-lite", "scikit-image",
                "opencv-python-headless", "piq"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return v
