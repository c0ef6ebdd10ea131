"""Every call into milvus-lite that does not go through pymilvus: the one place its internals are touched.

milvus-lite (tested with :data:`TESTED_VERSION`) offers no public way to stop the embedded server of
one folder, to learn why that server did not start, to wait for its background index builds, or to
train a one-list IVF index quietly. This module does each through a name milvus-lite does not promise
to keep, and nothing else in the package imports ``milvus_lite``:

- ``milvus_lite.server_manager.server_manager_instance.release_server(path)`` and ``.release_all()``:
  :func:`release_server`, :func:`release_all`;
- the logger ``milvus_lite.server_manager``, which logs the exception of a failed start: :data:`START_LOGGER`;
- ``server_manager_instance._lock`` and ``._servers[path] -> (server, db, port)``, then
  ``db.get_collection(name)``, its ``_wait_for_bg()`` and ``_segments_snapshot()`` (segments with
  ``num_rows`` and ``indexes``): :func:`wait_indexed` and :func:`available`, which fall back (False)
  when those names are gone;
- ``milvus_lite.index.faiss_ivf_flat.faiss``, the module global its IVF_FLAT index builds with:
  :func:`quiet_faiss`.

``tests/test_lite_internals.py`` checks each against the installed milvus-lite and fails naming its
version and the private name that changed.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

TESTED_VERSION = "3.2.2"
#: The logger milvus-lite reports a failed embedded-server start to, with the exception.
START_LOGGER = "milvus_lite.server_manager"


def version() -> str:
    """The installed milvus-lite's version ("" when it is not installed)."""
    try:
        from milvus_lite import __version__
    except ImportError:
        return ""
    return str(__version__)


def release_server(path: str) -> None:
    """Stop the embedded server of the local folder ``path`` (releasing the folder's lock)."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(path)


def release_all() -> None:
    """Stop every embedded server this process started (a no-op when milvus-lite was never loaded)."""
    import sys

    if "milvus_lite.server_manager" in sys.modules:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_all()


def _engine_collection(path: str, collection: str):
    """The engine's collection object of ``collection`` in the open folder ``path``, or None."""
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


def available(path: str, collection: str) -> bool:
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


class _OneListFaiss:
    """The ``faiss`` module as milvus-lite's IVF_FLAT index sees it, but for one thing: an index of one
    list (our exact ``FLAT``, see :meth:`~cbir_dist.store.indexing.IndexingMixin._index_params`) trains
    without faiss' warning "clustering N points to 1 centroids: please provide at least 39 training
    points", which it prints to stderr for every collection under 39 rows although one centroid needs
    one point. The trained centroid (the mean) and every search result are unchanged."""

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
