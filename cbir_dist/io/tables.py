"""Atomic, durable tables: Parquet, JSON and text files that a reader sees whole or not at all.

Every writer here writes a temporary file beside the target, fsyncs it, renames it into place and
fsyncs the folder, so a job killed (or a machine losing power) mid-write leaves either the old file
or the new one, never half of one, and a published marker is on disk before the next step runs.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: the longest file name (in bytes) of the file systems written to (NAME_MAX on Linux and macOS)
NAME_MAX = 255


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary file beside ``path`` that :func:`atomic_path` writes: ``.NAME.PID.tmp``.

    NAME is shortened (by whole characters) so that the temporary name fits in :data:`NAME_MAX`
    bytes: a target name near the limit is legal and must not fail after the work is done.
    """
    path = Path(path)
    suffix = f".{os.getpid()}.tmp"
    name = path.name
    while len(os.fsencode(name)) > NAME_MAX - 1 - len(suffix):
        name = name[:-1]
    return path.with_name(f".{name}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success, fsync it and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_parquet(path: str | os.PathLike, columns: Mapping[str, list], types: Mapping[str, Any] | None = None) -> None:
    """Write ``columns`` (name → list) as a Parquet file atomically.

    ``types`` gives pyarrow types for some columns (the rest are inferred), or is a ``pyarrow.Schema``
    naming every column in order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(types, pa.Schema):
        table = pa.table({name: pa.array(columns[name], types.field(name).type) for name in types.names})
    else:
        types = types or {}
        table = pa.table({name: pa.array(values, types.get(name)) for name, values in columns.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> dict[str, list]:
    """A Parquet file as ``{column: list}`` (only ``columns`` when given)."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns).to_pydict()


def rows(columns: Mapping[str, list]) -> list[dict]:
    """``{column: list}`` → a list of row dicts."""
    keys = list(columns)
    return [dict(zip(keys, vals)) for vals in zip(*(columns[k] for k in keys))]


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Fail before the work when ``path`` (a file or folder to be written) could not be written.

    Probes the nearest existing folder on the way (a temporary file made and removed at once), so a
    read-only or full file system is an :class:`~cbir_dist.errors.OutputError` (exit 1), and a file
    where a folder is needed a :class:`~cbir_dist.errors.UsageError` (exit 2), now rather than after
    hours of work.
    """
    import tempfile

    from ..errors import OutputError, UsageError

    target = Path(path)
    probe = target if target.is_dir() else target.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():  # the path itself is wrong: a usage error
        raise UsageError(f"{what} {path}: {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cbir-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write in {probe} ({exc.strerror or exc})") from exc


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> None:
    """``fig.savefig`` atomically (a kill mid-write leaves the old file or none, never half a PNG)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **savefig_kwargs)


def write_json(path: str | os.PathLike, obj: Any, *, default=None, indent: int = 2, sort_keys: bool = True) -> None:
    """Write ``obj`` as JSON atomically (``default`` converts what ``json`` cannot)."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value stored in ``path``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _plain(value: Any) -> Any:
    """A JSON/CSV-friendly scalar: numpy scalars unwrapped, NaN and infinity as None."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def write_csv(path: str | os.PathLike, columns: Mapping[str, list]) -> None:
    """Write ``columns`` (name → list) as a CSV file with a header row, atomically (NaN as an empty cell)."""
    import csv

    keys = list(columns)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for vals in zip(*(columns[k] for k in keys)):
            w.writerow(["" if (v := _plain(x)) is None else v for x in vals])


def write_jsonl(path: str | os.PathLike, columns: Mapping[str, list]) -> None:
    """Write ``columns`` (name → list) as JSON Lines, one object per row, atomically (NaN as null)."""
    keys = list(columns)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for vals in zip(*(columns[k] for k in keys)):
            fh.write(json.dumps({k: _plain(x) for k, x in zip(keys, vals)}, ensure_ascii=False) + "\n")
