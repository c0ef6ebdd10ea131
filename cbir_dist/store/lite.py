"""milvus-lite's lifecycle: local store paths, opening a folder's embedded server, and closing it.

milvus-lite 3.2.2 runs one embedded server per ``.db`` folder per process and locks the folder to
that process. This module checks a local path, opens the folder (turning the server's start-up
failure log into a reason), counts the stores open on each folder (the last one closed stops the
server and releases the lock, so another process can open it) and silences gRPC chatter. What it
needs of milvus-lite beyond pymilvus goes through :mod:`.lite_internals`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ..errors import InputError, StoreError, UsageError
from . import lite_internals

logger = logging.getLogger(__name__)

SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")
# pymilvus pings every 10 s; the embedded server answers pings more often than every 5 min during a
# call that sends no data (an index build, a long search) with GOAWAY "too_many_pings" after ~3 min,
# and pymilvus then retries the call. Over loopback keepalive is useless: turn it off.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": False}

_REFS: dict[str, int] = {}
_REFS_LOCK = threading.Lock()


def lite_path(uri: str) -> str | None:
    """The absolute folder of a local store, or None for a server URI.

    Raises :class:`~cbir_dist.errors.UsageError` for another scheme or a path not ending in ``.db``
    (:class:`~cbir_dist.errors.InputError` when that path is an existing file).
    """
    lower = uri.lower()
    if lower.startswith(SERVER_SCHEMES):
        return None
    if "://" in uri:
        raise UsageError(
            f"unsupported store URI {uri!r}: use a local path like ./cbir.db or a Milvus server "
            "http://host:19530 (https:// and tcp:// work too)"
        )
    if not uri.endswith(".db"):
        if os.path.isfile(os.path.expanduser(uri)):
            raise InputError(f"{uri} is a file, not a milvus-lite store: pass a store folder ending in .db "
                             "(e.g. ./cbir.db, made by `cbir-dist index`) or a Milvus server http://host:19530")
        raise UsageError(f"local store path {uri!r} must end in .db (e.g. ./cbir.db), or pass http://host:19530")
    return os.path.abspath(os.path.expanduser(uri))


#: The collection size at which ``cbir-dist index`` advises moving from milvus-lite to a Milvus
#: server (README, "Where milvus-lite ends"; figures from benchmarks/scale.py and benchmarks/query.py).
ADVICE_ROWS = 100_000


def require_existing(uri: str) -> None:
    """For jobs that only read: a milvus-lite folder that is not there is an input error (a typo),
    not a store to create (opening one creates its folder and parents)."""
    local = lite_path(uri)
    if local is not None and not os.path.isdir(local):
        raise InputError(f"{uri}: no milvus-lite store there (a .db folder made by `cbir-dist index --db {uri}`)")


def advice(rows_before: int, rows_after: int) -> str | None:
    """The one-time advice for a lite collection that grew past :data:`ADVICE_ROWS` in this run."""
    if not rows_before < ADVICE_ROWS <= rows_after:
        return None
    return (f"note: this milvus-lite collection now holds {rows_after:,} rows (past {ADVICE_ROWS:,}); "
            "one process at a time can open it and it is searched inside that process: for larger "
            "collections, parallel writers or concurrent queries, move to a Milvus server "
            "(--db http://HOST:19530; README, 'Where milvus-lite ends')")


def display_uri(uri: str) -> str:
    """A server URI normalised for messages, logs and run state: scheme and host lower-cased, no
    credentials (``user:password@``), query or fragment, no trailing slash."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri.strip())
    host = (parts.hostname or "").lower()
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def acquire(path: str) -> None:
    """Count one more open store on the local folder ``path``."""
    with _REFS_LOCK:
        _REFS[path] = _REFS.get(path, 0) + 1


def release(path: str) -> None:
    """Count one store closed on ``path``; the last one stops the embedded server (releasing the lock)."""
    with _REFS_LOCK:
        left = _REFS.get(path, 1) - 1
        if left > 0:
            _REFS[path] = left
            return
        _REFS.pop(path, None)
        lite_internals.release_server(path)


class StartErrors(logging.Handler):
    """Collects the exception milvus-lite logs (with a traceback) when its embedded server fails to
    start, e.g. the folder is locked by another process, so StoreError can say why instead."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.errors: list[BaseException] = []
        self._logger = logging.getLogger(lite_internals.START_LOGGER)

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])

    def __enter__(self) -> StartErrors:
        self._logger.addHandler(self)
        self._propagate, self._logger.propagate = self._logger.propagate, False
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate


def quiet_grpc() -> None:
    """Silence transport chatter that is not an error of ours.

    milvus-lite's in-process gRPC server logs a traceback for ``AllocTimestamp`` (a call pymilvus 3
    makes and milvus-lite does not implement; pymilvus falls back) and gRPC core logs keepalive
    ``GOAWAY`` notices. Real failures still reach us as exceptions. ``GRPC_VERBOSITY`` set by the
    user is respected.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)


def open_client(path: str, timeout: float):
    """A pymilvus ``MilvusClient`` on the local store folder ``path`` (created with its parents),
    counted open (:func:`release` closes it).

    Raises :class:`~cbir_dist.errors.InputError` when ``path`` is a file, and
    :class:`~cbir_dist.errors.StoreError` when the folder cannot be made or opened (another process
    holds it, or this user cannot write it), saying why.
    """
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    lite_internals.quiet_faiss()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder for the local store {path}: {exc}") from exc
    if os.path.isfile(path):
        raise InputError(
            f"{path} is a file, but milvus-lite 3 keeps a store in a folder of that name "
            "(an older milvus-lite file?): move it away or pass another path like ./cbir.db"
        )
    try:
        with StartErrors() as lite_errors:
            client = MilvusClient(uri=path, timeout=timeout, grpc_options=GRPC_OPTIONS)
    except MilvusException as exc:
        cause = lite_errors.errors[-1] if lite_errors.errors else exc.message
        if any(t in str(cause) for t in ("Read-only file system", "Permission denied", "[Errno 13]", "[Errno 30]")):
            raise StoreError(
                f"cannot open the local store {path} ({cause}): milvus-lite writes its folder (a "
                "lock, its log) even to read it; give this user write access, or copy the folder "
                "somewhere writable and pass that path") from exc
        raise StoreError(
            f"cannot open the local store {path} ({cause}): a local store can be open in "
            "one process at a time; stop the other process using it, pass another path, or "
            "run a Milvus server and pass its http://host:19530 URI"
        ) from exc
    acquire(path)
    return client
