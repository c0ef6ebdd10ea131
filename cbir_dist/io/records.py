"""The row contract: column names, per-file records and the read stage.

Every stage passes ``dict[str, np.ndarray]`` batches keyed by the column names below, or lists of
:class:`Record` (one per file). The read stage turns files into content ids and decoded images;
every failure is a status and a reason, never an exception. Record statuses: ``ok`` (decoded),
``duplicate`` (same bytes as an earlier path; one row, all paths recorded), ``rejected`` (with
``error``: unreadable, empty, corrupt, too small, too large, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ImageDecodeError
from .files import ImageFile, content_id
from .images import DEFAULT_MAX_PIXELS, decode_image

# --- column names ------------------------------------------------------------------------------------
ID = "id"  # int64 content id (hash of the file bytes), the Milvus primary key
PATH = "path"  # str, the file the row came from
LABEL = "label"  # str, class = name of the parent folder
SIZE = "size"  # int64, file size in bytes (-1 when unreadable)
MTIME = "mtime"  # float64, file modification time
IMAGE = "image"  # uint8 H x W x 3 RGB (object array of such arrays when sizes differ)
MASK = "mask"  # bool H x W, True = known pixel
VECTOR = "vector"  # float32 fused feature vector
STATUS = "status"  # str: "ok" | "duplicate" | "rejected"
ERROR = "error"  # str, why a row was rejected ("" when ok)
REASON = "reason"  # str, the error column's name in errors.parquet
FEATURE_PREFIX = "feat_"

#: The manifest of an index run: one row per file, in this column order.
MANIFEST_COLUMNS = (PATH, LABEL, SIZE, MTIME, ID, STATUS, ERROR)

OK, DUPLICATE, REJECTED = "ok", "duplicate", "rejected"


def block_column(name: str) -> str:
    """Column holding the per-image features of one FeatureSpec block, e.g. ``feat_gabor``."""
    return f"{FEATURE_PREFIX}{name}"


# --- records -----------------------------------------------------------------------------------------


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
        return {PATH: self.path, LABEL: self.label, SIZE: self.size, MTIME: self.mtime, ID: self.id,
                STATUS: self.status, ERROR: self.error}

    @classmethod
    def from_row(cls, row: dict) -> "Record":
        """A record (without image) from a manifest row."""
        return cls(**{k: row[k] for k in MANIFEST_COLUMNS})

    def reject(self, reason: str) -> None:
        """Mark the record rejected with ``reason`` and drop its image."""
        self.status, self.error, self.image = REJECTED, reason, None


def manifest_columns(records: Iterable[Record]) -> dict[str, list]:
    """The manifest table (name → list) of ``records``."""
    rows = [r.manifest_row() for r in records]
    return {c: [row[c] for row in rows] for c in MANIFEST_COLUMNS}


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
