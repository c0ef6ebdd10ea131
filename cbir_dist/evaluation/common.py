"""What every evaluation protocol shares: the protocol names and the software versions recorded with results."""

from __future__ import annotations

import platform
import re

from ..errors import UsageError
from .scoring import PROTOCOLS

__all__ = ["PROTOCOLS", "check_collection_prefix", "public_config", "versions"]

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
SECRET_KEYS = ("token",)


def check_collection_prefix(prefix: str) -> str:
    """``""`` or a Milvus-safe name start (a letter or ``_``, then letters, digits, ``_``)."""
    if prefix and not _PREFIX.fullmatch(prefix):
        raise UsageError(f"collection prefix must be letters, digits and '_' (not starting with a digit), "
                         f"got {prefix!r}")
    return prefix


def public_config(config: dict) -> dict:
    """A run's config as written to ``results.json``: without the store's credentials."""
    return {k: v for k, v in config.items() if k not in SECRET_KEYS}


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
