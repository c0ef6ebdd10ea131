"""Files on disk: listing labelled image folders, content ids and file digests.

A content id is a hash of a file's bytes, so re-indexing a file is an idempotent upsert and a
byte-identical copy under another path maps onto the same row.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def content_id(data: bytes) -> int:
    """Stable 63-bit id of a file's bytes (BLAKE2b), usable as a Milvus INT64 primary key.

    The same bytes always give the same id, so re-indexing a file is an idempotent upsert and a
    duplicate file under another path maps onto the same row.
    """
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (weights files, data listings), read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class ImageFile:
    """One file found under a dataset root; ``label`` is its parent folder's name."""

    path: str
    label: str


def list_images(root: str | os.PathLike, *, extensions=IMAGE_EXTENSIONS) -> list[ImageFile]:
    """All files with an image extension under ``root``, sorted, labelled by their parent folder.

    Broken symlinks and unreadable files are listed too (they fail later, with a reason), so that
    the count of files found is the count the job must account for. Raises
    :class:`~cbir_dist.errors.InputError` when ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such directory")
    found = []
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for fn in filenames:
            if Path(fn).suffix.lower() in extensions:
                p = Path(dirpath) / fn
                label = p.parent.name if p.parent != root else ""
                found.append(ImageFile(str(p), label))
    found.sort(key=lambda f: f.path)
    return found
