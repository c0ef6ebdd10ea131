"""The read stage: files → content ids → decoded images, every failure a status and a reason, never an exception.

Record statuses: ``ok`` (decoded), ``duplicate`` (same bytes as an earlier path; one row, all paths
recorded), ``rejected`` (with ``error``: unreadable, empty, corrupt, too small, too large, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import ImageDecodeError
from .imageio import DEFAULT_MAX_PIXELS, ImageFile, content_id, decode_image

OK, DUPLICATE, REJECTED = "ok", "duplicate", "rejected"


@dataclass
class Record:
    """One file's passage through the read stage."""

    path: str
    label: str
    size: int = -1
    mtime: float = 0.0
    id: int = -1
    status: str = OK
    error: str = ""
    image: np.ndarray | None = field(default=None, repr=False)

    def manifest_row(self) -> dict:
        return {
            "path": self.path, "label": self.label, "size": self.size, "mtime": self.mtime,
            "id": self.id, "status": self.status, "error": self.error,
        }


def read_record(f: ImageFile, *, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True) -> Record:
    """Read one file: size, mtime, content id and (with ``decode``) the uint8 RGB image."""
    rec = Record(f.path, f.label)
    p = Path(f.path)
    if p.is_symlink() and not p.exists():
        rec.status, rec.error = REJECTED, f"broken symlink (points to {os.readlink(p)})"
        return rec
    try:
        st = p.stat()
        rec.size, rec.mtime = st.st_size, st.st_mtime
        data = p.read_bytes()
    except OSError as exc:
        rec.status, rec.error = REJECTED, f"unreadable: {exc.strerror or exc}"
        return rec
    if not data:
        rec.status, rec.error = REJECTED, "empty file (0 bytes)"
        return rec
    rec.id = content_id(data)
    if decode:
        try:
            rec.image = decode_image(data, max_pixels=max_pixels, name=Path(f.path).name)
        except ImageDecodeError as exc:
            rec.status, rec.error = REJECTED, str(exc)
    return rec


def mark_duplicates(records: Iterable[Record], seen: dict[int, str] | None = None) -> dict[int, str]:
    """Mark every ok record whose id was seen before as ``duplicate`` (error names the first path).

    ``seen`` (id → first path) carries over between shards; it is updated and returned.
    Records are taken in the order given, so sort them first for a stable choice of original.
    """
    seen = {} if seen is None else seen
    for r in records:
        if r.status != OK:
            continue
        first = seen.setdefault(r.id, r.path)
        if first != r.path:
            r.status, r.error, r.image = DUPLICATE, f"same content as {first}", None
    return seen
