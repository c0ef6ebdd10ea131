"""VectorStore on milvus-lite in tmp_path: round trips, exactness against NumPy, chunking, errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from cbir_dist.errors import StoreError, UsageError
from cbir_dist.io.records import ID, LABEL, PATH, VECTOR
from cbir_dist.store import SearchResult, VectorStore, auto_nlist

SPEC = json.dumps({"blocks": [{"name": "gabor", "dim": 64, "weight": 1.0}]})


@pytest.fixture
def db(tmp_path) -> str:
    return str(tmp_path / "sub" / "store.db")  # parent folder does not exist yet


@pytest.fixture
def store(db):
    s = VectorStore(db, "images")
    yield s
    s.close()


def _fill(store: VectorStore, x: np.ndarray, *, start: int = 0) -> np.ndarray:
    ids = np.arange(start, start + len(x))
    store.upsert(ids, [f"img/{i}.jpg" for i in ids], [f"c{i % 5}" for i in ids], x)
    return ids


def _numpy_knn(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(((q[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, 1)


def test_round_trip_insert_count_fetch(store, rng):
    store.create(64, SPEC)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    assert _fill(store, x).size == 50
    assert store.count() == 50
    got = store.fetch([7, 999, 3])
    assert got[ID].tolist() == [7, 3]
    assert got[PATH].tolist() == ["img/7.jpg", "img/3.jpg"]
    assert got[LABEL].tolist() == ["c2", "c3"]
    np.testing.assert_array_equal(got[VECTOR], x[[7, 3]])


def test_upsert_same_id_twice_keeps_one_row_with_new_path(store, rng):
    store.create(64, SPEC)
    v = rng.standard_normal((2, 64)).astype(np.float32)
    store.upsert([42], ["old.jpg"], ["a"], v[:1])
    store.upsert([42], ["new.jpg"], ["b"], v[1:])
    store.flush_and_index()
    assert store.count() == 1
    got = store.fetch([42])
    assert got[PATH].tolist() == ["new.jpg"] and got[LABEL].tolist() == ["b"]
    np.testing.assert_array_equal(got[VECTOR][0], v[1])
    # a repeated id inside one batch also keeps its last row
    assert store.upsert([5, 5], ["first.jpg", "last.jpg"], ["a", "a"], v) == 1
    assert store.fetch([5])[PATH].tolist() == ["last.jpg"]
    assert store.count() == 2


def test_flat_search_equals_numpy_brute_force(store, rng):
    store.create(64, SPEC)  # FLAT is the default
    x = rng.standard_normal((500, 64)).astype(np.float32)
    _fill(store, x)
    store.flush_and_index()
    q = rng.standard_normal((20, 64)).astype(np.float32)
    res = store.search(q, 10)
    assert isinstance(res, SearchResult)
    assert res.ids.shape == res.distances.shape == res.paths.shape == res.labels.shape == (20, 10)
    assert res.ids.dtype == np.int64 and res.distances.dtype == np.float32
    idx, dist = _numpy_knn(x, q, 10)
    np.testing.assert_array_equal(res.ids, idx)
    np.testing.assert_allclose(res.distances, dist, atol=1e-4)  # true Euclidean, not squared
    assert (np.diff(res.distances, axis=1) >= 0).all()
    assert res.paths[0, 0] == f"img/{idx[0, 0]}.jpg" and res.labels[0, 0] == f"c{idx[0, 0] % 5}"
    one = store.search(q[0], 3)  # a single 1-D query
    np.testing.assert_array_equal(one.ids, idx[:1, :3])


def test_tiny_memory_budget_splits_queries_without_changing_results(store, rng):
    store.create(64, SPEC)
    x = rng.standard_normal((300, 64)).astype(np.float32)
    _fill(store, x)  # not flushed: milvus-lite brute-forces these rows, so the budget applies
    q = rng.standard_normal((12, 64)).astype(np.float32)
    calls = []
    real = store.client.search

    def spy(*args, **kwargs):
        calls.append(len(kwargs["data"]))
        return real(*args, **kwargs)

    store._client.search = spy
    big = store.search(q, 5)
    assert calls == [12]
    calls.clear()
    store.memory_budget_bytes = 2 * 300 * 64 * 4 * 5  # room for 5 queries per request
    small = store.search(q, 5)
    assert calls == [5, 5, 2]
    np.testing.assert_array_equal(small.ids, big.ids)
    np.testing.assert_array_equal(small.distances, big.distances)
    np.testing.assert_array_equal(small.paths, big.paths)
    calls.clear()
    store.memory_budget_bytes = 1  # still at least one query per request
    assert np.array_equal(store.search(q[:3], 5).ids, big.ids[:3]) and calls == [1, 1, 1]
    idx, _ = _numpy_knn(x, q, 5)
    np.testing.assert_array_equal(big.ids, idx)


def test_spec_json_round_trips_exactly_including_100kb(db, rng):
    long_spec = json.dumps({"blocks": ["é→" + "x" * 50] * 1800, "note": "ünïcode"}, ensure_ascii=False)
    assert len(long_spec) > 100_000
    with VectorStore(db, "long") as s:
        s.create(8, long_spec)
        assert s.spec_json() == long_spec
        s.upsert([1], ["a"], ["b"], np.ones((1, 8), np.float32))
    with VectorStore(db, "long") as s:  # reopened: read back from disk
        assert s.spec_json() == long_spec
        assert s.dim() == 8
        assert s.count() == 1


def test_dim_mismatch_raises_store_error_naming_both_dims_and_spec(store, rng):
    store.create(64, SPEC)
    with pytest.raises(StoreError, match=r"32-d.*64-d.*gabor"):
        store.upsert([1], ["a"], ["b"], rng.standard_normal((1, 32)))
    _fill(store, rng.standard_normal((3, 64)).astype(np.float32))
    with pytest.raises(StoreError, match=r"48-d.*64-d"):
        store.search(rng.standard_normal((2, 48)), 1)


def test_missing_collection_raises_store_error(store):
    assert not store.exists()
    for call in (store.spec_json, store.dim, store.count, lambda: store.search(np.zeros((1, 4)), 1)):
        with pytest.raises(StoreError, match="not found.*cbir-dist index"):
            call()


def test_unreachable_server_is_retried_within_its_budget_then_named(monkeypatch, caplog):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CBIR_MILVUS_RETRY_S", "3")
    monkeypatch.setenv("CBIR_MILVUS_TIMEOUT_S", "1")
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="cbir_dist.store.calls"):
        with pytest.raises(StoreError, match=rf"cannot reach Milvus at http://127.0.0.1:{port} \(connect, tried"):
            VectorStore(f"http://user:secret@127.0.0.1:{port}", "images", token="user:secret")
    took = time.monotonic() - t0
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert retries, "connection refused must be retried"
    assert 2.5 < took < 20, took  # bounded by the budget (+ one attempt), not instant, not minutes
    assert not any("secret" in r.getMessage() for r in caplog.records)


def test_local_store_held_by_another_process_raises_store_error(db):
    holder = (
        "import sys; from cbir_dist.store import VectorStore; "
        f"s = VectorStore({db!r}, 'images'); print('ready', flush=True); sys.stdin.read(); s.close()"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match="another process holds the lock.*one process at a time"):
            VectorStore(db, "images")
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.mark.parametrize("uri", ["ftp://host/x", "no_suffix_store", ""])
def test_bad_uri_raises_usage_error(uri):
    with pytest.raises(UsageError, match=r"cbir\.db"):
        VectorStore(uri, "images")


def test_create_twice_same_spec_is_noop_other_spec_or_dim_raises(store, rng):
    store.create(64, SPEC)
    _fill(store, rng.standard_normal((4, 64)).astype(np.float32))
    reordered = json.dumps(json.loads(SPEC), indent=2)  # same spec, other whitespace
    store.create(64, reordered)
    assert store.count() == 4 and store.spec_json() == SPEC
    with pytest.raises(StoreError, match="different feature spec.*overwrite"):
        store.create(64, json.dumps({"blocks": []}))
    with pytest.raises(StoreError, match="dim 64.*overwrite"):
        store.create(32, SPEC)
    store.create(32, SPEC, overwrite=True)
    assert store.dim() == 32 and store.count() == 0


def test_existing_ids(store, rng):
    store.create(64, SPEC)
    _fill(store, rng.standard_normal((30, 64)).astype(np.float32), start=100)
    assert store.existing_ids([99, 100, 129, 130, 115, 115]) == {100, 115, 129}
    assert store.existing_ids([]) == set()


def test_stored_ids_lists_every_id_sorted_across_pages(store, rng, monkeypatch):
    import cbir_dist.store.milvus as milvus

    store.create(8, SPEC)
    assert store.stored_ids().tolist() == []
    ids = rng.permutation(np.arange(10, 10 + 3 * 37, 3))[:30]  # unordered, sparse
    store.upsert(ids, [f"p{i}" for i in ids], ["c"] * 30, rng.standard_normal((30, 8)).astype(np.float32))
    monkeypatch.setattr(milvus, "ID_PAGE", 7)  # several pages, the last one short
    got = store.stored_ids()
    assert got.dtype == np.int64 and got.tolist() == sorted(ids.tolist())


def test_hnsw_recall_at_10_vs_numpy(store, rng):
    store.create(64, SPEC, index_type="HNSW")
    centres = rng.standard_normal((20, 64)) * 3
    x = (centres[rng.integers(0, 20, 2000)] + rng.standard_normal((2000, 64))).astype(np.float32)
    _fill(store, x)
    store.flush_and_index()
    assert store.index_type() == "HNSW"
    q = (centres[rng.integers(0, 20, 50)] + rng.standard_normal((50, 64))).astype(np.float32)
    res = store.search(q, 10)
    idx, _ = _numpy_knn(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(res.ids, idx, strict=True)])
    assert recall >= 0.99
    assert (np.diff(res.distances, axis=1) >= 0).all()


def test_set_index_switches_flat_to_ivf_and_stays_exact_at_full_probe(store, rng):
    store.create(64, SPEC)
    x = rng.standard_normal((400, 64)).astype(np.float32)
    _fill(store, x)
    store.set_index("IVF_FLAT")
    assert store.index_type() == "IVF_FLAT" and store.count() == 400
    nlist = auto_nlist(400)
    q = rng.standard_normal((10, 64)).astype(np.float32)
    res = store.search(q, 10, search_params={"nprobe": nlist})
    np.testing.assert_array_equal(res.ids, _numpy_knn(x, q, 10)[0])


def test_fewer_rows_than_k_pads(store, rng):
    store.create(64, SPEC)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    _fill(store, x)
    store.flush_and_index()
    res = store.search(x[:2], 5)
    assert res.ids.shape == (2, 5)
    assert res.ids[0, 0] == 0 and res.ids[1, 0] == 1
    assert (res.ids[:, 3:] == -1).all() and np.isinf(res.distances[:, 3:]).all()
    assert (res.paths[:, 3:] == "").all() and (res.labels[:, 3:] == "").all()
    assert np.isfinite(res.distances[:, :3]).all()


def test_empty_collection_search_is_all_padding(store):
    store.create(4, SPEC)
    res = store.search(np.zeros((2, 4)), 3)
    assert (res.ids == -1).all() and np.isinf(res.distances).all()


def test_reopen_after_close_sees_rows(db, rng):
    x = rng.standard_normal((20, 64)).astype(np.float32)
    s = VectorStore(db, "images")
    s.create(64, SPEC)
    _fill(s, x)
    s.close()
    with VectorStore(db, "images") as s2:
        assert s2.count() == 20
        assert s2.search(x[5], 1).ids[0, 0] == 5
    s.close()  # closing twice is harmless


def test_upsert_validates_inputs(store):
    store.create(4, SPEC)
    ok = np.zeros((2, 4), np.float32)
    bad = ok.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="finite; row 1"):
        store.upsert([1, 2], ["a", "b"], ["l", "l"], bad)
    with pytest.raises(ValueError, match="non-negative"):
        store.upsert([1, -3], ["a", "b"], ["l", "l"], ok)
    with pytest.raises(ValueError, match="paths has 1 entries but 2 ids"):
        store.upsert([1, 2], ["a"], ["l", "l"], ok)
    with pytest.raises(ValueError, match="3 rows but 2 ids"):
        store.upsert([1, 2], ["a", "b"], ["l", "l"], np.zeros((3, 4)))
    with pytest.raises(TypeError, match="integers"):
        store.upsert([1.5, 2.0], ["a", "b"], ["l", "l"], ok)
    with pytest.raises(ValueError, match="4096 bytes"):
        store.upsert([1, 2], ["a" * 5000, "b"], ["l", "l"], ok)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 16384\]"):
        store.search(ok, 0)
    assert store.count() == 0


def test_auto_nlist_grows_like_sqrt_and_respects_training_size():
    assert auto_nlist(1) == 1
    assert auto_nlist(100_000) == 1024
    assert auto_nlist(400) == 8  # capped at n / 39 training points per list
    values = [auto_nlist(n) for n in (10**3, 10**4, 10**5, 10**6, 10**8)]
    assert values == sorted(values) and values[-1] == 16384


def test_module_import_does_not_import_pymilvus():
    code = "import sys, cbir_dist.store.milvus; assert 'pymilvus' not in sys.modules and 'milvus_lite' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("message, transient", [
    # flush on a server restarted after a hard kill (seen in CI): the old data node's session is alive
    ("Flush: attempt #0: rpc error: code = Unknown desc = node not match[expectedNodeID=1][actualNodeID=2]: "
     "attempt #6: session not found->datanode-1: node not found[node=1]: unrecoverable error", True),
    ("channel is not ready", True),
    ("collection not found[collection=images]", False),
    ("invalid parameter: dim", False),
])
def test_which_server_failures_are_retried(message, transient):
    from pymilvus.exceptions import MilvusException

    from cbir_dist.store import calls

    assert calls.transient(MilvusException(code=65535, message=message)) is transient


def test_a_collection_released_behind_the_store_is_loaded_again(store, rng, caplog):
    """What a server restart does to a loaded collection (seen in the server-fault tests): the
    next call finds it released; the store loads it again and the call succeeds."""
    store.create(64, SPEC)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    _fill(store, x)
    store.flush_and_index()
    before = store.search(x[:3], 2)
    store.client.release_collection(store.collection)  # behind the store's back
    with caplog.at_level("WARNING", logger="cbir_dist.store.calls"):
        after = store.search(x[:3], 2)
    np.testing.assert_array_equal(after.ids, before.ids)
    assert any("no longer loaded" in r.getMessage() for r in caplog.records)
