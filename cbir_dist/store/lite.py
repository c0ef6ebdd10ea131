"""milvus-lite's lifecycle and the internals :class:`~cbir_dist.store.milvus.VectorStore` reaches into.

milvus-lite 3.2.2 runs one embedded server per ``.db`` folder per process and locks the folder to
that process. This module counts the stores open on each folder (the last one closed stops the
server and releases the lock, so another process can open it), turns the server's start-up
failure log into a reason, silences gRPC chatter, and waits for the engine's background index
builds through its private API (falling back to a reload when that API is not there).
"""

from __future__ import annotations

import logging
import os
import threading

from ..errors import InputError, StoreError

logger = logging.getLogger(__name__)

SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")
# pymilvus pings every 10 s; the embedded server answers pings more often than every 5 min during a
# call that sends no data (an index build, a long search) with GOAWAY "too_many_pings" after ~3 min,
# and pymilvus then retries the call. Over loopback keepalive is useless: turn it off.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": False}

_REFS: dict[str, int] = {}
_REFS_LOCK = threading.Lock()


def lite_path(uri: str) -> str | None:
    """The absolute folder of a local store, or None for a server URI; StoreError when malformed."""
    lower = uri.lower()
    if lower.startswith(SERVER_SCHEMES):
        return None
    if "://" in uri:
        raise StoreError(
            f"unsupported store URI {uri!r}: use a local path like ./cbir.db or a Milvus server "
            "http://host:19530 (https:// and tcp:// work too)"
        )
    if not uri.endswith(".db"):
        raise StoreError(f"local store path {uri!r} must end in .db (e.g. ./cbir.db), or pass http://host:19530")
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
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(path)


class StartErrors(logging.Handler):
    """Collects the exception milvus-lite logs (with a traceback) when its embedded server fails to
    start, e.g. the folder is locked by another process, so StoreError can say why instead."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.errors: list[BaseException] = []
        self._logger = logging.getLogger("milvus_lite.server_manager")

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


class _OneListFaiss:
    """The ``faiss`` module as milvus-lite's IVF_FLAT index sees it, but for one thing: an index of one
    list (our exact ``FLAT``, see ``VectorStore._index_params``) trains without faiss' warning
    "clustering N points to 1 centroids: please provide at least 39 training points", which it prints
    to stderr for every collection under 39 rows although one centroid needs one point. The trained
    centroid (the mean) and every search result are unchanged."""

    def __init__(self, faiss):
        self._faiss = faiss

    def __getattr__(self, name):
        return getattr(self._faiss, name)

    def IndexIVFFlat(self, quantizer, dim, nlist, *args):  # noqa: N802 - faiss' name
        index = self._faiss.IndexIVFFlat(quantizer, dim, nlist, *args)
        if nlist == 1:
            index.cp.min_points_per_centroid = 1
        return index


def quiet_faiss() -> None:
    """Install :class:`_OneListFaiss` in milvus-lite's IVF_FLAT module (once; no-op without it)."""
    try:
        from milvus_lite.index import faiss_ivf_flat
    except ImportError:  # no faiss: milvus-lite builds no IVF index, nothing warns
        return
    faiss = getattr(faiss_ivf_flat, "faiss", None)
    if faiss is not None and not isinstance(faiss, _OneListFaiss):
        faiss_ivf_flat.faiss = _OneListFaiss(faiss)


def _engine_collection(path: str, collection: str):
    try:
        from milvus_lite.server_manager import server_manager_instance

        with server_manager_instance._lock:  # noqa: SLF001
            _server, db, _port = server_manager_instance._servers[path]  # noqa: SLF001
        col = db.get_collection(collection)
        col._wait_for_bg, col._segments_snapshot  # noqa: B018, SLF001 - probe the API
        return col
    except (ImportError, AttributeError, KeyError, ValueError, TypeError) as exc:
        logger.debug("milvus-lite internals unavailable (%s); falling back to reload", exc)
        return None
    except Exception as exc:  # noqa: BLE001 - a lookup failure here only loses an optimisation
        logger.debug("could not reach the milvus-lite collection (%s); falling back to reload", exc)
        return None


def internals_available(path: str, collection: str) -> bool:
    """Whether the engine collection of ``collection`` in the open folder ``path`` can be reached."""
    return _engine_collection(path, collection) is not None


def wait_indexed(path: str, collection: str, field: str) -> bool:
    """Wait for the engine's background compaction and index builds; True when every row is indexed
    on ``field`` (False when some are not, or the private API is not there)."""
    col = _engine_collection(path, collection)
    if col is None:
        return False
    col._wait_for_bg()  # noqa: SLF001 - milvus-lite offers no public wait
    segments = col._segments_snapshot()  # noqa: SLF001
    return all(s.num_rows == 0 or field in s.indexes for s in segments)
