"""A real Milvus server that dies mid-job, and secrets that stay secret.

The server is the ``milvus`` 2.3.5 standalone binary that ``scripts/milvus_server.sh`` installs
(auth on). The index job runs as a subprocess; the server is killed with SIGKILL while shards are
being written, restarted on the same data folder, and the job rerun: exactly one row per valid
image and a true summary, on each backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from milvus_server import SKIP_REASON, MilvusServer, available
from PIL import Image

from cbir_dist.index.writer import COMMIT_SHARDS
from cbir_dist.io.files import content_id
from cbir_dist.store import VectorStore

pytestmark = pytest.mark.slow

PASSWORD = "S3cr3t-Pa55-xyz"  # distinctive, so a leak is found by a plain search
TOKEN = f"root:{PASSWORD}"


@pytest.fixture
def server(tmp_path):
    """A private server (these tests kill it), its root password changed to :data:`PASSWORD`."""
    if not available():
        pytest.skip(SKIP_REASON)
    srv = MilvusServer(data_dir=tmp_path / "milvus").start()
    from pymilvus import MilvusClient

    c = MilvusClient(uri=srv.uri, token="root:Milvus")
    c.update_password("root", "Milvus", PASSWORD)
    c.close()
    try:
        yield srv
    finally:
        srv.stop()


def _images(folder: Path, n: int) -> list[int]:
    rng = np.random.default_rng(42)
    ids = []
    for i in range(n):
        d = folder / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"im{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(p)
        ids.append(content_id(p.read_bytes()))
    return ids


def _index(args, env):
    return subprocess.Popen([sys.executable, "-m", "cbir_dist.cli", "index", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})


def _stored(server, ids, collection="faults"):
    store = VectorStore(server.uri, collection, token=TOKEN)
    try:
        return store.count(), store.existing_ids(ids)
    finally:
        store.close()


def _wait_markers(run_dir: Path, n: int, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((run_dir / "shards").glob("*.done"))) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} shards done after {timeout} s")


def _kill_server_under(proc, server) -> None:
    """SIGKILL the server while the job's driver is frozen (SIGSTOP), then let the driver go on.

    Without the freeze the race can be lost on an idle machine: the job writes its tiny shards in
    about a second, so the next group commit could be done before the kill lands.
    """
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        server.kill_hard()
    finally:
        os.kill(proc.pid, signal.SIGCONT)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_server_killed_mid_index_then_restarted_and_rerun(tmp_path, server, backend):
    # 200 shards: markers are published by group commit every COMMIT_SHARDS (64) shards, so the
    # kill lands after the first group and at least one more group is still to come
    ids = _images(tmp_path / "data", 400)
    run_dir = tmp_path / "run"
    args = [str(tmp_path / "data"), "--db", server.uri, "--collection", "faults", "--backbone", "none",
            "--descriptors", "glcm,correlogram", "--shard-size", "2", "--run-dir", str(run_dir), "--backend", backend,
            "--workers", "1"]  # the kill must land between group commits: one process, as measured
    env = {"MILVUS_TOKEN": TOKEN, "CBIR_MILVUS_RETRY_S": "6", "CBIR_MILVUS_TIMEOUT_S": "5"}
    job = _index(args, env)
    _wait_markers(run_dir, 3, job)
    _kill_server_under(job, server)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 1, (out, err)
    line = [ln for ln in err.splitlines() if ln.startswith("cbir-dist index: error:")]
    assert len(line) == 1 and server.uri in line[0] and "gave up after" in line[0], err[-2000:]
    assert PASSWORD not in out + err
    done_before = len(list((run_dir / "shards").glob("*.done")))
    assert COMMIT_SHARDS <= done_before < 200  # the job stopped part way, after whole groups
    server.restart()  # same port and data folder
    job = _index(args, {"MILVUS_TOKEN": TOKEN})
    out, err = job.communicate(timeout=600)
    assert job.returncode == 0, err
    assert out.strip().splitlines()[-1].startswith("indexed 400, duplicates 0, rejected 0")
    assert _stored(server, ids) == (400, set(ids))


@pytest.mark.timeout(900)
def test_server_restarted_within_the_retry_budget_the_job_carries_on(tmp_path, server):
    ids = _images(tmp_path / "data", 400)  # 200 shards: the kill lands between group commits (see above)
    run_dir = tmp_path / "run"
    args = [str(tmp_path / "data"), "--db", server.uri, "--collection", "faults", "--backbone", "none",
            "--descriptors", "glcm,correlogram", "--shard-size", "2", "--run-dir", str(run_dir), "--workers", "1"]
    job = _index(args, {"MILVUS_TOKEN": TOKEN, "CBIR_MILVUS_RETRY_S": "240"})
    _wait_markers(run_dir, 3, job)
    _kill_server_under(job, server)
    restart = threading.Thread(target=server.restart)
    restart.start()
    out, err = job.communicate(timeout=600)
    restart.join()
    assert job.returncode == 0, err
    assert "retrying" in err  # it waited for the server instead of failing
    assert out.strip().splitlines()[-1].startswith("indexed 400, duplicates 0, rejected 0")
    assert _stored(server, ids) == (400, set(ids))


@pytest.mark.timeout(600)
def test_the_token_appears_in_no_log_stats_errors_or_message(tmp_path, server):
    _images(tmp_path / "data", 12)
    (tmp_path / "data" / "c0" / "bad.png").write_bytes(b"not an image")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    run_dir = tmp_path / "run"
    args = [str(tmp_path / "data"), "--db", server.uri, "--collection", "faults", "--backbone", "none",
            "--descriptors", "glcm", "--run-dir", str(run_dir), "--token-file", str(token_file)]
    job = subprocess.run([sys.executable, "-m", "cbir_dist.cli", "-vv", "index", *args], capture_output=True,
                         text=True, timeout=300)
    assert job.returncode == 0, job.stderr
    texts = [job.stdout, job.stderr, (run_dir / "stats.json").read_text()]
    errors = pq.read_table(run_dir / "errors.parquet").to_pydict()
    texts += [str(v) for col in errors.values() for v in col]
    assert errors["status"] == ["rejected"]
    # a failing job's message: another spec against the same collection, and a wrong password
    bad = subprocess.run([sys.executable, "-m", "cbir_dist.cli", "index", *args[:-2], "--descriptors", "gabor",
                          "--token-file", str(token_file)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "differs from the one the collection was built with" in bad.stderr
    texts += [bad.stdout, bad.stderr]
    wrong = subprocess.run([sys.executable, "-m", "cbir_dist.cli", "index", *args[:-2]], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "MILVUS_TOKEN": f"root:{PASSWORD}-wrong"})
    assert wrong.returncode == 1 and "authentication failed" in wrong.stderr
    texts += [wrong.stdout, wrong.stderr]
    leaks = [t for t in texts if PASSWORD in t]
    assert not leaks, leaks[0][:500]
    # a URI with credentials in it is shown without them
    from cbir_dist.store.lite import display_uri

    shown = display_uri(server.uri.replace("http://", f"http://root:{PASSWORD}@"))
    assert shown == server.uri and PASSWORD not in shown
