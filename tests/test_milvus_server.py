"""VectorStore against a real Milvus server through an ``http://`` URI (not milvus-lite).

The server is the session's ``milvus_server`` fixture (``tests/conftest.py``, helper
``tests/milvus_server.py``): the ``milvus`` 2.3.5 PyPI package's standalone Milvus, started by
``scripts/milvus_server.sh`` from its own venv on a free 127.0.0.1 port with authentication on, so
the token path is exercised too. Set ``CBIR_MILVUS_URI`` (and ``CBIR_MILVUS_TOKEN``) to run these
tests against a server of your own instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from cbir_dist.errors import StoreError

pytestmark = pytest.mark.slow  # a real server: ~10-30 s to start, ~40 s of tests on 2 cores

DIM = 24
SPEC = json.dumps({"version": 1, "blocks": [{"name": "test", "dim": DIM, "weight": 1.0}]}, sort_keys=True)


@pytest.fixture
def server(milvus_server) -> tuple[str, str | None]:
    """``(uri, token)`` of the session's server."""
    return milvus_server.uri, milvus_server.token


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


def test_rows_flushed_before_a_crash_survive_a_restart(rng):
    """The test helper's kill and restart on a private server (not the session's): SIGKILL of the whole
    server, a restart on the same port and data dir, and the flushed rows are all there."""
    from milvus_server import MilvusServer, available

    from cbir_dist.store import VectorStore

    if not available():
        pytest.skip("the server venv is absent")
    ids, paths, labels, vectors = _rows(rng, 30)
    with MilvusServer() as srv:
        with VectorStore(srv.uri, "crash", token=srv.token) as vs:
            vs.create(DIM, SPEC)
            vs.upsert(ids, paths, labels, vectors)
            vs.flush_and_index()
        pid = srv.pid
        srv.kill_hard()
        assert not srv.alive()  # the pid file stays, as after a real crash
        srv.restart()
        assert srv.alive() and srv.pid != pid and srv.uri.endswith(f":{srv.port}")
        with VectorStore(srv.uri, "crash", token=srv.token) as vs:  # reloading the collection takes ~20 s
            assert vs.count() == 30
            assert vs.search(vectors[:3], 1).ids[:, 0].tolist() == ids[:3].tolist()
    assert not srv.data_dir.exists()


# ------------------------------------------------------------------ scripts/milvus_server.sh: crashes and restarts


def _script_env(tmp_path) -> dict[str, str]:
    """A private XDG_STATE_HOME (the per-port pointer files) and TMPDIR (new data dirs) for the script."""
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {"XDG_STATE_HOME": str(tmp_path / "state"), "TMPDIR": str(tmp_path / "tmp")}


def _group_gone(pgid: int, timeout: float = 20.0) -> bool:
    from milvus_server import _group_alive

    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.timeout(600)
def test_a_server_whose_milvus_process_died_is_not_running_and_restarts_on_its_data(rng, tmp_path):
    """SIGKILL of the `milvus` process alone (its wrapper survives it): `status` says not running,
    the wrapper does not keep the slot, and `restart` brings the flushed rows back on the same port."""
    from milvus_server import START_TIMEOUT_S, MilvusServer, available

    from cbir_dist.store import VectorStore

    if not available():
        pytest.skip("the server venv is absent")
    ids, paths, labels, vectors = _rows(rng, 40)
    srv = MilvusServer(data_dir=tmp_path / "milvus", env=_script_env(tmp_path))
    try:
        srv.start()
        with VectorStore(srv.uri, "c", token=srv.token) as vs:
            vs.create(DIM, SPEC)
            vs.upsert(ids, paths, labels, vectors)
            vs.flush()
            assert vs.count() == 40
        st = srv.status()
        assert st.returncode == 0 and st.stdout.startswith("running"), st.stdout + st.stderr
        wrapper = srv.pid
        killed = srv.kill_server_process_only()
        assert srv.server_pid is None
        st = srv.status()
        assert st.returncode == 3 and st.stdout.startswith("not running"), st.stdout + st.stderr
        assert _group_gone(wrapper), "the wrapper outlived its milvus process"

        proc = srv.script("restart", "--auth", "--timeout", str(START_TIMEOUT_S), timeout=START_TIMEOUT_S + 120)
        assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == srv.uri, proc.stdout + proc.stderr
        st = srv.status()
        assert st.returncode == 0 and st.stdout.startswith("running"), st.stdout + st.stderr
        assert srv.server_pid not in (None, killed) and srv.pid != wrapper
        with VectorStore(srv.uri, "c", token=srv.token) as vs:  # reloading the collection takes ~20 s
            assert vs.count() == 40
            assert vs.existing_ids(ids) == set(ids.tolist())
    finally:
        srv.cleanup()
    assert not list((tmp_path / "state").rglob("*.data"))  # --data never writes the port's pointer


@pytest.mark.timeout(900)
def test_start_without_data_reuses_the_ports_last_store_and_fresh_makes_a_new_one(rng, tmp_path):
    """`start` without --data after a crash serves the port's last data dir again (the pointer is not
    overwritten), also when the crashed server's wrapper is still there, and keeps its authentication;
    `--fresh` makes a new empty store and only then moves the pointer."""
    from milvus_server import SCRIPT, START_TIMEOUT_S, MilvusServer, available, free_port

    from cbir_dist.store import VectorStore

    if not available():
        pytest.skip("the server venv is absent")
    env = _script_env(tmp_path)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    pointer = tmp_path / "state" / "cbir_dist" / f"milvus-{port}.data"

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args, "--port", str(port), "--timeout", str(START_TIMEOUT_S)],
                              capture_output=True, text=True, timeout=START_TIMEOUT_S + 120, env={**os.environ, **env})

    def started(proc: subprocess.CompletedProcess) -> bool:
        return proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == uri

    ids, paths, labels, vectors = _rows(rng, 25)
    servers: list[MilvusServer] = []
    try:
        first = script("start", "--auth")
        assert started(first), first.stdout + first.stderr
        assert "reusing" not in first.stderr
        data = Path(pointer.read_text().strip())
        assert data.parent == tmp_path / "tmp" and data.is_dir()
        srv = MilvusServer(port=port, data_dir=data, env=env)  # to address and kill it
        servers.append(srv)
        with VectorStore(uri, "c", token=srv.token) as vs:
            vs.create(DIM, SPEC)
            vs.upsert(ids, paths, labels, vectors)
            vs.flush()

        # a crash that leaves the wrapper behind (as the stock milvus-server wrapper does): the wrapper
        # is stopped, then the milvus process alone is killed
        wrapper = srv.pid
        os.kill(wrapper, signal.SIGSTOP)
        srv.kill_server_process_only()
        st = script("status")
        assert st.returncode == 3 and st.stdout.startswith("not running") and f"wrapper, pid {wrapper}" in st.stdout

        again = script("start")  # neither --data nor --auth
        assert started(again), again.stdout + again.stderr
        assert (f"reusing the data of the last server on port {port}: {data}; pass --data DIR or --fresh "
                "for a new one") in again.stderr
        assert f"is dead but its wrapper (pid {wrapper}) is alive" in again.stderr
        assert "authentication stays on" in again.stderr
        assert _group_gone(wrapper)
        assert pointer.read_text().strip() == str(data)
        assert script("status").returncode == 0
        with VectorStore(uri, "c", token=srv.token) as vs:
            assert vs.count() == 25
        with pytest.raises(StoreError, match="rejected the credentials"):
            VectorStore(uri, "c", token="root:not-the-password")

        stop = script("stop")
        assert stop.returncode == 0 and stop.stdout.startswith("stopped")
        assert script("status").returncode == 3
        fresh = script("start", "--fresh")
        assert started(fresh), fresh.stdout + fresh.stderr
        assert "reusing" not in fresh.stderr
        new = Path(pointer.read_text().strip())
        assert new != data and new.parent == tmp_path / "tmp"
        servers.append(MilvusServer(port=port, data_dir=new, auth=False, env=env))
        with VectorStore(uri, "c") as vs:  # a new, empty store (without authentication)
            assert vs.list_collections() == [] and not vs.exists()
        assert (data / "data").is_dir()  # the old store is still there
    finally:
        for s in servers:
            s.stop()
        script("stop")
        shutil.rmtree(tmp_path / "tmp", ignore_errors=True)


def test_status_and_stop_see_through_a_wrapper_whose_server_is_dead(tmp_path):
    """No real server: a stand-in wrapper (its command line names the data dir) whose milvus process
    is gone is "not running" (exit 3) once it got as far as starting the binary, "starting" (exit 1)
    before, and `stop` ends it."""
    from milvus_server import SCRIPT, free_port

    env = {**os.environ, **_script_env(tmp_path)}
    data = tmp_path / "milvus"
    (data / "logs").mkdir(parents=True)
    port = free_port()

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args, "--port", str(port), "--data", str(data)],
                              capture_output=True, text=True, timeout=60, env=env)

    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "milvus-server", "--data",
                             str(data), "--extra-config", "proxy.port=1"], start_new_session=True)
    try:
        (data / "server.pid").write_text(f"{fake.pid}\n")
        st = script("status")
        assert st.returncode == 1 and st.stdout.startswith("starting"), st.stdout + st.stderr
        time.sleep(0.05)
        (data / "logs" / "milvus-stdout.log").write_text("")  # the wrapper opens it as it starts the binary
        st = script("status")
        assert st.returncode == 3 and st.stdout.startswith("not running"), st.stdout + st.stderr
        assert f"wrapper, pid {fake.pid}" in st.stdout
        stop = script("stop")
        assert stop.returncode == 0 and stop.stdout.strip() == f"stopped (pid {fake.pid})", stop.stdout + stop.stderr
        fake.wait(timeout=15)
        assert not (data / "server.pid").exists()
        assert script("status").returncode == 3 and script("stop").stdout.strip() == "not running"
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()


def test_restart_needs_a_store_and_fresh_does_not_go_with_data(tmp_path):
    from milvus_server import SCRIPT, free_port

    env = {**os.environ, **_script_env(tmp_path)}
    port = str(free_port())

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env)

    proc = script("restart", "--port", port)
    assert proc.returncode == 1 and "nothing to restart" in proc.stderr
    proc = script("restart", "--port", port, "--data", str(tmp_path / "absent"))
    assert proc.returncode == 1 and "nothing to restart" in proc.stderr
    proc = script("start", "--port", port, "--fresh", "--data", str(tmp_path / "d"))
    assert proc.returncode == 2 and "--fresh" in proc.stderr
    proc = script("stop", "--port", port, "--fresh")
    assert proc.returncode == 2
    assert not (tmp_path / "d").exists() and not list((tmp_path / "state").rglob("*"))
    assert script("status", "--port", port).returncode == 3
