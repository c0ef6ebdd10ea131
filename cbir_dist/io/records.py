"""The row contract: column names, per-file records and the read stage.

Every stage passes ``dict[str, np.ndarray]`` batches keyed by the column names below, or lists of
:class:`Record` (one per file). The read stage turns files into content ids and decoded images;
every failure is a status and a reason, never an exception. Record statuses: ``ok`` (decoded),
``duplicate`` (same bytes as an earlier path; one row, all paths recorded), ``rejected`` (with
``error``: unreadable, empty, corrupt, too small, too large, ...). ``stored`` lives only between an
index backend and its writer: ok, and its row is in the collection already (:func:`mark_stored`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ImageDecodeError
from .files import DEFAULT_MAX_BYTES, ImageFile, content_id, read_file, symlink_reason
from .images import DEFAULT_MAX_PIXELS, decode_image
from .text import os_path, path_text

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
#: in flight only, between a backend and the index writer: ok, and its id is stored in the collection
#: already, so it was read (its id is its content) but not described; the manifest records it as ok
STORED = "stored"
MISSING = "missing"  # errors.parquet only: planned as ok, but the store did not have its row afterwards


def _manifest_schema():
    import pyarrow as pa

    return pa.schema([(PATH, pa.string()), (LABEL, pa.string()), (SIZE, pa.int64()), (MTIME, pa.float64()),
                      (ID, pa.int64()), (STATUS, pa.string()), (ERROR, pa.string())])


def __getattr__(name):  # MANIFEST_SCHEMA: built on first use, so importing this module stays light
    if name == "MANIFEST_SCHEMA":
        return _manifest_schema()
    raise AttributeError(name)


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


def read_record(f: ImageFile, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                decode: bool = True) -> Record:
    """Read one file: size, mtime, content id and (with ``decode``) the uint8 RGB image.

    Never raises for a bad file: an entry the listing rejected, a file that is not regular, over
    ``max_bytes``, unreadable, empty, or that fails to decode (any decoder exception) comes back
    ``rejected`` with its reason.
    """
    rec = Record(f.path, f.label)
    if f.reason:
        rec.status, rec.error = REJECTED, f.reason
        return rec
    try:
        data, st = read_file(f.path, max_bytes=max_bytes)
    except OSError as exc:
        where = os_path(f.path)
        if os.path.islink(where) and not os.path.exists(where):
            rec.status, rec.error = REJECTED, path_text(symlink_reason(where))
        else:
            rec.status, rec.error = REJECTED, f"unreadable: {exc.strerror or exc}"
        return rec
    except ValueError as exc:
        rec.status, rec.error = REJECTED, str(exc)
        return rec
    rec.size, rec.mtime = st.st_size, st.st_mtime
    if not data:
        rec.status, rec.error = REJECTED, "empty file (0 bytes)"
        return rec
    rec.id = content_id(data)
    if decode:
        try:
            rec.image = decode_image(data, max_pixels=max_pixels, name=Path(f.path).name)
        except ImageDecodeError as exc:
            rec.status, rec.error = REJECTED, str(exc)
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one file is that file's reason, not a failed job
            rec.status, rec.error = REJECTED, f"{Path(f.path).name}: unexpected decoder error ({type(exc).__name__}: {exc})"
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


def mark_stored(record: Record, stored: np.ndarray | None) -> None:
    """Mark an ok record whose id is in ``stored`` (sorted int64 ids) :data:`STORED` and drop its image:
    its row is in the collection already, so nothing needs to describe it."""
    if record.status != OK or stored is None or stored.size == 0:
        return
    i = int(np.searchsorted(stored, record.id))
    if i < stored.size and int(stored[i]) == record.id:
        record.status, record.image = STORED, None
