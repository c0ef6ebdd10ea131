"""Exceptions raised at the library's boundaries; every message says what to do next."""

from __future__ import annotations


class CbirError(Exception):
    """Base class of every error cbir_dist raises on purpose."""


class ImageDecodeError(CbirError):
    """An image file could not be read or decoded (corrupt, too small, too large, not an image)."""


class WeightsError(CbirError):
    """Model weights could not be obtained or do not match what was expected."""


class StoreError(CbirError):
    """The vector store (Milvus) refused an operation or could not be reached."""


class SpecMismatchError(CbirError):
    """A query's feature spec differs from the one the collection was built with."""
