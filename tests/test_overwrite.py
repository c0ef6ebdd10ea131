"""``--overwrite`` builds the new collection beside the old one and swaps it in only on success;
markers are bound to the collection's identity; one job at a time holds a run directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbir_dist.cli import main
from cbir_dist.demo import make_dataset
from cbir_dist.errors import RunDirBusyError
from cbir_dist.index.plan import RunDirLock
from cbir_dist.store import VectorStore

REPO = Path(__file__).resolve().parents[1]
FAST = ["--backbone", "none", "--descriptors", "correlogram"]


def _index(data, db, run_dir, *extra):  # one process: a pool would only cost seconds of spawning here
    return main(["index", str(data), "--db", str(db), "--collection", "c", "--run-dir", str(run_dir), *FAST,
                 "--workers", "1", *extra])


def _rows(db) -> tuple[int, list[str]]:
    with VectorStore(str(db), "c") as s:
        return s.count(), s.list_collections()


@pytest.fixture
def built(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=2, size=40)  # 12 images
    db = tmp_path / "o.db"
    assert _index(data, db, tmp_path / "r1") == 0
    assert _rows(db) == (12, ["c"])
    return data, db


def test_overwrite_with_only_bad_files_leaves_the_old_collection_whole(built, tmp_path, capsys):
    _, db = built
    bad = tmp_path / "bad" / "x"
    bad.mkdir(parents=True)
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"junk%d" % i)
    assert _index(tmp_path / "bad", db, tmp_path / "r2", "--overwrite") == 1
    assert "every one of the 3 file(s) was rejected" in capsys.readouterr().err
    assert _rows(db) == (12, ["c"])  # the old rows, and no staging collection left behind


def test_overwrite_that_fails_midway_leaves_the_old_collection_whole(built, tmp_path, monkeypatch):
    data, db = built
    other = make_dataset(tmp_path / "other", per_class=3, size=40, seed=5)
    from cbir_dist.index.writer import ShardWriter

    real_write, calls = ShardWriter.write, []

    def write_then_fail(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real_write(self, *a, **k)

    monkeypatch.setattr(ShardWriter, "write", write_then_fail)
    assert _index(other, db, tmp_path / "r2", "--overwrite", "--shard-size", "4") == 1
    monkeypatch.undo()
    assert _rows(db) == (12, ["c"])
    assert _index(other, db, tmp_path / "r2", "--overwrite", "--shard-size", "4") == 0
    assert _rows(db) == (18, ["c"])  # now replaced: only the other set's rows


def test_markers_stop_vouching_once_another_run_overwrote_the_collection(built, tmp_path, capsys):
    data, db = built
    other = make_dataset(tmp_path / "other", per_class=1, size=40, seed=7)  # 6 other images
    assert _index(other, db, tmp_path / "r2", "--overwrite") == 0
    assert _rows(db)[0] == 6
    capsys.readouterr()
    # the first run's markers vouch for the replaced collection: the rerun redoes its shards at once
    assert _index(data, db, tmp_path / "r1") == 0
    assert "indexed 12," in capsys.readouterr().out
    assert _rows(db)[0] == 18


def test_a_second_job_in_the_same_run_dir_is_refused_naming_the_holder(tmp_path):
    lock = RunDirLock(tmp_path / "run")
    try:
        with pytest.raises(RunDirBusyError, match=rf"in use by process {os.getpid()} on .* own --run-dir"):
            RunDirLock(tmp_path / "run")
        data = make_dataset(tmp_path / "data", per_class=1, size=40)
        proc = subprocess.run([sys.executable, "-m", "cbir_dist.cli", "index", str(data), "--db",
                               str(tmp_path / "l.db"), "--run-dir", str(tmp_path / "run"), *FAST],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 1 and "is in use by process" in proc.stderr, proc.stderr
        assert not (tmp_path / "l.db").exists() or "images" not in _collections(tmp_path / "l.db")
    finally:
        lock.release()
    RunDirLock(tmp_path / "run").release()  # free again once released


def test_the_lock_of_a_killed_job_is_free(tmp_path):
    code = ("import sys,time; sys.path.insert(0, %r); from cbir_dist.index.plan import RunDirLock; "
            "RunDirLock(__import__('pathlib').Path(%r)); print('held', flush=True); time.sleep(60)"
            % (str(REPO), str(tmp_path / "run")))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(RunDirBusyError):
        RunDirLock(tmp_path / "run")
    p.kill()
    p.wait()
    time.sleep(0.1)
    RunDirLock(tmp_path / "run").release()


def _collections(db) -> list[str]:
    with VectorStore(str(db), "x") as s:
        return s.list_collections()


@pytest.mark.slow
def test_overwrite_swaps_on_a_milvus_server(milvus_server, tmp_path):
    import uuid

    data = make_dataset(tmp_path / "data", per_class=2, size=40)
    other = make_dataset(tmp_path / "other", per_class=1, size=40, seed=7)
    token = milvus_server.write_token_file(tmp_path / "token")
    name = f"o{uuid.uuid4().hex[:8]}"
    args = ["--db", milvus_server.uri, "--token-file", str(token), "--collection", name, *FAST]
    try:
        assert main(["index", str(data), "--run-dir", str(tmp_path / "r1"), *args]) == 0
        with VectorStore(milvus_server.uri, name, token=milvus_server.token) as s:
            first = s.identity()
        bad = tmp_path / "bad" / "x"
        bad.mkdir(parents=True)
        (bad / "0.png").write_bytes(b"junk")
        assert main(["index", str(tmp_path / "bad"), "--run-dir", str(tmp_path / "r2"), "--overwrite", *args]) == 1
        with VectorStore(milvus_server.uri, name, token=milvus_server.token) as s:
            assert s.count() == 12 and s.identity() == first
        assert main(["index", str(other), "--run-dir", str(tmp_path / "r2"), "--overwrite", *args]) == 0
        with VectorStore(milvus_server.uri, name, token=milvus_server.token) as s:
            assert s.count() == 6 and s.identity() not in ("", first)
            assert not [c for c in s.list_collections() if c.startswith(name + "__")]
        assert main(["query", str(sorted(other.rglob("*.png"))[0]), "-k", "3", *args[:-len(FAST)]]) == 0
    finally:
        with VectorStore(milvus_server.uri, name, token=milvus_server.token) as s:
            s.drop()
