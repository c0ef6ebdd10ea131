"""The private milvus-lite names cbir_dist relies on still exist and behave as it uses them.

Every one of them is used in ``cbir_dist/store/lite_internals.py`` and nowhere else. When a
milvus-lite release renames or changes one, a test here fails with a message naming the installed
version and the private name: adapt ``lite_internals.py`` (and its ``TESTED_VERSION``) to it.
"""

from __future__ import annotations

import inspect
import json
import logging

import numpy as np
import pytest

from cbir_dist.io.records import VECTOR
from cbir_dist.store import VectorStore, lite, lite_internals

SPEC = json.dumps({"blocks": [{"name": "gabor", "dim": 8, "weight": 1.0}]})


def _changed(name: str, what: str):
    pytest.fail(f"milvus-lite {lite_internals.version() or '(not installed)'}: {name} {what}; "
                f"cbir_dist/store/lite_internals.py relies on it (as in milvus-lite {lite_internals.TESTED_VERSION}): "
                "adapt it to this version", pytrace=False)


def _attr(obj, attr: str, name: str):
    if not hasattr(obj, attr):
        _changed(name, "is gone")
    return getattr(obj, attr)


def _callable_as(fn, name: str, *args) -> None:
    """``fn`` can be called with ``args`` (checked on its signature, not called)."""
    if not callable(fn):
        _changed(name, "is no longer callable")
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as exc:
        _changed(name, f"takes other arguments now ({exc})")


def _server_manager():
    try:
        from milvus_lite import server_manager
    except ImportError as exc:
        _changed("the module milvus_lite.server_manager", f"cannot be imported ({exc})")
    return server_manager, _attr(server_manager, "server_manager_instance", "milvus_lite.server_manager.server_manager_instance")


@pytest.fixture
def filled(tmp_path):
    """An open local store with 50 indexed rows; yields (store, its folder, the rows)."""
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    store = VectorStore(str(tmp_path / "i.db"), "images")
    store.create(8, SPEC)
    store.upsert(np.arange(50), [f"p{i}" for i in range(50)], ["l"] * 50, x)
    store.flush_and_index()
    yield store, str(tmp_path / "i.db"), x
    store.close()


def test_the_server_of_a_folder_is_found_and_released_by_its_path(filled):
    store, path, _ = filled
    _module, manager = _server_manager()
    lock = _attr(manager, "_lock", "ServerManager._lock")
    if not (hasattr(lock, "__enter__") and hasattr(lock, "__exit__")):
        _changed("ServerManager._lock", "is no lock (context manager) any more")
    servers = _attr(manager, "_servers", "ServerManager._servers")
    with lock:
        entry = dict(servers).get(path) if isinstance(servers, dict) else None
    if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[2], int)):
        _changed("ServerManager._servers", f"no longer maps an open folder to (server, db, port): got {entry!r}")
    _callable_as(_attr(entry[1], "get_collection", "MilvusLite.get_collection"), "MilvusLite.get_collection", "images")
    _callable_as(_attr(manager, "release_server", "ServerManager.release_server"), "ServerManager.release_server", path)
    _callable_as(_attr(manager, "release_all", "ServerManager.release_all"), "ServerManager.release_all")
    store.close()  # the last store on the folder: release_server stops its server
    with lock:
        if path in servers:
            _changed("ServerManager.release_server(path)", "no longer removes the folder's server")


def test_the_engine_collection_waits_for_its_index_and_lists_its_segments(filled):
    store, path, x = filled
    _module, manager = _server_manager()
    with manager._lock:  # noqa: SLF001 - checked by the test above
        db = manager._servers[path][1]  # noqa: SLF001
    col = db.get_collection("images")
    wait = _attr(col, "_wait_for_bg", "Collection._wait_for_bg")
    _callable_as(wait, "Collection._wait_for_bg")
    snapshot = _attr(col, "_segments_snapshot", "Collection._segments_snapshot")
    _callable_as(snapshot, "Collection._segments_snapshot")
    wait()
    segments = list(snapshot())
    if not segments:
        _changed("Collection._segments_snapshot()", "returns no segment for a collection of 50 flushed rows")
    for seg in segments:
        if not isinstance(getattr(seg, "num_rows", None), int | np.integer):
            _changed("Segment.num_rows", f"is no row count any more ({getattr(seg, 'num_rows', None)!r})")
        if not hasattr(getattr(seg, "indexes", None), "__contains__"):
            _changed("Segment.indexes", "is no mapping of field name to index any more")
    if sum(int(s.num_rows) for s in segments) != 50 or not any(VECTOR in s.indexes for s in segments):
        _changed("Collection._segments_snapshot()", "no longer shows the 50 rows indexed on their vector field")
    # and so the adapter reaches them: flush_and_index takes its fast path, not the reload fallback
    assert lite_internals.available(path, "images")
    assert lite_internals.wait_indexed(path, "images", VECTOR)
    assert store.search(x[7], 1).ids[0, 0] == 7


def test_a_failed_start_is_logged_with_its_exception_to_the_start_logger(tmp_path):
    module, manager = _server_manager()
    logger = _attr(module, "logger", "milvus_lite.server_manager.logger")
    if logger.name != lite_internals.START_LOGGER:
        _changed("the logger of milvus_lite.server_manager", f"is called {logger.name!r} now")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store's parent folder should be")
    _callable_as(_attr(manager, "start_and_get_uri", "ServerManager.start_and_get_uri"),
                 "ServerManager.start_and_get_uri", str(blocker / "x.db"))
    with lite.StartErrors() as errors:
        uri = manager.start_and_get_uri(str(blocker / "x.db"))  # what pymilvus calls for a .db URI
    if uri is not None or not errors.errors:
        _changed("ServerManager.start_and_get_uri", "no longer logs a failed start with its exception "
                 f"(returned {uri!r}, logged {errors.errors!r})")
    assert not logging.getLogger(lite_internals.START_LOGGER).handlers  # StartErrors removed itself


def test_a_one_list_ivf_index_builds_through_the_module_faiss_and_trains_quietly(tmp_path, capfd, monkeypatch):
    try:
        from milvus_lite.index import faiss_ivf_flat
    except ImportError as exc:
        _changed("the module milvus_lite.index.faiss_ivf_flat", f"cannot be imported ({exc})")
    lists = []
    real = lite_internals._OneListFaiss.IndexIVFFlat  # noqa: SLF001

    def counting(self, quantizer, dim, nlist, *args):
        lists.append(nlist)
        return real(self, quantizer, dim, nlist, *args)

    monkeypatch.setattr(lite_internals._OneListFaiss, "IndexIVFFlat", counting)  # noqa: SLF001
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    with VectorStore(str(tmp_path / "q.db"), "images") as store:  # opening installs the shim
        if not isinstance(_attr(faiss_ivf_flat, "faiss", "milvus_lite.index.faiss_ivf_flat.faiss"),
                          lite_internals._OneListFaiss):  # noqa: SLF001
            _changed("milvus_lite.index.faiss_ivf_flat.faiss", "could not be replaced")
        store.create(8, SPEC)  # FLAT: an IVF_FLAT index of one list on milvus-lite
        store.upsert(np.arange(5), list("abcde"), ["l"] * 5, x)
        store.flush_and_index()
        np.testing.assert_array_equal(store.search(x, 1).ids[:, 0], np.arange(5))
    if 1 not in lists:
        _changed("milvus_lite.index.faiss_ivf_flat", "no longer builds its index with faiss.IndexIVFFlat(quantizer, "
                 f"dim, nlist, metric) from its module global `faiss` (calls seen: {lists})")
    assert "please provide at least" not in capfd.readouterr().err
