"""VectorStore against a real Milvus server through an ``http://`` URI (not milvus-lite).

The server is the ``milvus`` 2.3.5 PyPI package's standalone Milvus, started by
``scripts/milvus_server.sh`` from its own venv (``.milvus-venv``) on a free 127.0.0.1 port with
authentication on, so the token path is exercised too. Set ``CBIR_MILVUS_URI`` (and
``CBIR_MILVUS_TOKEN``) to run these tests against a server of your own instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from cbir_dist.errors import StoreError

pytestmark = pytest.mark.slow  # a real server: ~15-30 s to start, ~40 s of tests on 2 cores

SCRIPT = REPO / "scripts" / "milvus_server.sh"
MILVUS_VENV = Path(os.environ.get("CBIR_MILVUS_VENV") or REPO / ".milvus-venv")  # as the script reads it
DEFAULT_TOKEN = "root:Milvus"  # Milvus' built-in user, valid once authentication is on
START_TIMEOUT_S = 240
DIM = 24
SPEC = json.dumps({"version": 1, "blocks": [{"name": "test", "dim": DIM, "weight": 1.0}]}, sort_keys=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, str | None]]:
    """``(uri, token)`` of a running Milvus server; started here and stopped after the module."""
    if os.environ.get("CBIR_MILVUS_URI"):
        yield os.environ["CBIR_MILVUS_URI"], os.environ.get("CBIR_MILVUS_TOKEN") or None
        return
    if not (MILVUS_VENV / "bin" / "milvus-server").exists():
        pytest.skip(
            f"{MILVUS_VENV} is absent: run `bash scripts/milvus_server.sh install` "
            "(or set CBIR_MILVUS_URI to a running Milvus server)"
        )
    port = _free_port()
    data = tempfile.mkdtemp(prefix="cbir-milvus-test-")
    cmd = ["bash", str(SCRIPT)]
    where = ["--port", str(port), "--data", data]
    try:
        proc = subprocess.run(
            [*cmd, "start", *where, "--auth", "--timeout", str(START_TIMEOUT_S)],
            capture_output=True, text=True, timeout=START_TIMEOUT_S + 30,
        )
        assert proc.returncode == 0, f"milvus_server.sh start failed:\n{proc.stdout}\n{proc.stderr}"
        uri = proc.stdout.strip().splitlines()[-1]
        assert uri == f"http://127.0.0.1:{port}", proc.stdout
        yield uri, DEFAULT_TOKEN
    finally:
        subprocess.run([*cmd, "stop", *where], capture_output=True, text=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def store(server):
    """A VectorStore on a fresh collection of the server; dropped afterwards."""
    from cbir_dist.store import VectorStore

    uri, token = server
    vs = VectorStore(uri, f"t_{uuid.uuid4().hex[:12]}", token=token)
    try:
        yield vs
    finally:
        vs.drop()
        vs.close()


def _rows(rng: np.random.Generator, n: int = 200):
    ids = rng.choice(np.int64(2) ** 62, size=n, replace=False).astype(np.int64)
    paths = [f"/images/class{i % 5}/img_{i:04d}.jpg" for i in range(n)]
    labels = [f"class{i % 5}" for i in range(n)]
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return ids, paths, labels, vectors


def _brute_force(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - vectors[None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def test_a_second_connection_sees_the_rows_and_nothing_is_written_locally(store, server, tmp_path, monkeypatch):
    """A server URI is a server: rows written through one connection are visible through another, and no
    milvus-lite folder appears in the working directory."""
    from cbir_dist.store import VectorStore

    monkeypatch.chdir(tmp_path)
    ids, paths, labels, vectors = _rows(np.random.default_rng(7), n=20)
    store.create(DIM, SPEC)
    store.upsert(ids, paths, labels, vectors)
    store.flush()
    other = VectorStore(server[0], store.collection, token=server[1])
    try:
        assert not other.is_local and other.count() == 20
        assert sorted(other.existing_ids(ids)) == sorted(int(i) for i in ids)
    finally:
        other.close()
    assert list(tmp_path.iterdir()) == []


def test_write_count_and_search_match_brute_force(store, rng):
    ids, paths, labels, vectors = _rows(rng)
    store.create(DIM, SPEC)
    assert store.upsert(ids, paths, labels, vectors) == 200
    store.flush_and_index()
    assert store.count() == 200

    queries = np.concatenate([vectors[:3], rng.standard_normal((5, DIM)).astype(np.float32)])
    k = 10
    res = store.search(queries, k)
    order, dist = _brute_force(queries, vectors, k)
    np.testing.assert_array_equal(res.ids, ids[order])
    np.testing.assert_allclose(res.distances, dist, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(res.paths, np.asarray(paths, dtype=object)[order])
    np.testing.assert_array_equal(res.labels, np.asarray(labels, dtype=object)[order])
    # A stored vector finds itself first, at distance 0.
    assert res.ids[:3, 0].tolist() == ids[:3].tolist()
    np.testing.assert_allclose(res.distances[:3, 0], 0.0, atol=1e-3)


def test_upsert_is_idempotent_and_replaces_rows(store, rng):
    ids, paths, labels, vectors = _rows(rng, 50)
    store.create(DIM, SPEC)
    store.upsert(ids, paths, labels, vectors)
    moved = vectors.copy()
    moved[:10] += 100.0  # rewrite 10 rows under the same ids
    store.upsert(ids, paths, labels, moved)
    store.flush_and_index()
    assert store.count() == 50
    assert store.existing_ids(np.concatenate([ids[:5], [12345]])) == set(ids[:5].tolist())
    res = store.search(moved[:10], 1)
    assert res.ids[:, 0].tolist() == ids[:10].tolist()
    np.testing.assert_allclose(res.distances[:, 0], 0.0, atol=1e-3)
    fetched = store.fetch(ids[:10])
    np.testing.assert_allclose(fetched["vector"], moved[:10], rtol=1e-6)


def test_spec_round_trip_and_mismatch(server, store):
    from cbir_dist.store import VectorStore

    store.create(DIM, SPEC)
    assert store.spec_json() == SPEC
    assert store.dim() == DIM
    uri, token = server
    with VectorStore(uri, store.collection, token=token) as again:  # a new connection reads it back
        assert again.spec_json() == SPEC
        again.create(DIM, SPEC)  # same dim and spec: a no-op
        with pytest.raises(StoreError, match="different feature spec"):
            again.create(DIM, SPEC.replace("test", "other"))
        with pytest.raises(StoreError, match="dim 24"):
            again.create(DIM + 1, SPEC)


def test_hnsw_and_ivf_indexes_on_the_server(server, rng):
    from cbir_dist.store import VectorStore

    uri, token = server
    ids, paths, labels, vectors = _rows(rng, 200)
    for index_type in ("HNSW", "IVF_FLAT"):
        with VectorStore(uri, f"t_{index_type.lower()}_{uuid.uuid4().hex[:8]}", token=token) as vs:
            try:
                vs.create(DIM, SPEC, index_type=index_type)
                vs.upsert(ids, paths, labels, vectors)
                vs.flush_and_index()  # IVF_FLAT: re-fits nlist to the row count (drop + create index)
                assert vs.index_type() == index_type
                res = vs.search(vectors[:20], 1)
                assert res.ids[:, 0].tolist() == ids[:20].tolist(), index_type
            finally:
                vs.drop()


def test_drop_removes_the_collection(store, rng):
    ids, paths, labels, vectors = _rows(rng, 20)
    store.create(DIM, SPEC)
    store.upsert(ids, paths, labels, vectors)
    assert store.exists()
    store.drop()
    assert not store.exists()
    with pytest.raises(StoreError, match="not found"):
        store.search(vectors[:1], 1)


def test_wrong_token_is_a_store_error(server):
    from cbir_dist.store import VectorStore

    uri, token = server
    if token is None:
        pytest.skip("the server under test has no authentication (CBIR_MILVUS_TOKEN unset)")
    with pytest.raises(StoreError, match="rejected the credentials: authentication failed") as err:
        VectorStore(uri, "images", token="root:not-the-password")
    assert "not-the-password" not in str(err.value)
