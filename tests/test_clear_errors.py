"""Nothing a user can type, and no failure of the machine, ends as "internal error": bad options
exit 2 before any work, environment failures exit 1 with what to do, outputs are checked first."""

from __future__ import annotations

import errno

import grpc
import pytest

from cbir_dist.cli import main
from cbir_dist.demo import make_dataset
from cbir_dist.errors import StoreError
from cbir_dist.store import VectorStore

FAST = ["--backbone", "none", "--descriptors", "correlogram"]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("clear")
    data = make_dataset(root / "data", per_class=1, size=40)
    db = str(root / "c.db")
    assert main(["index", str(data), "--db", db, "--collection", "c", "--run-dir", str(root / "run"), *FAST]) == 0
    return data, db


@pytest.mark.parametrize("option, value, says", [
    ("--batch-size", "0", "0 is out of range: give 1 or more"),
    ("--device", "bogus", "'bogus' is no torch device"),
    ("-k", "100000", "100000 is out of range: give 1 to 16384"),
    ("--max-pixels", "0", "0 is out of range"),
    ("--max-bytes", "-5", "-5 is out of range"),
])
def test_bad_option_values_are_usage_errors_before_any_work(tmp_path, capsys, option, value, says):
    with pytest.raises(SystemExit) as exit_:
        main(["query", str(tmp_path / "x.png"), "--db", str(tmp_path / "never.db"), option, value])
    assert exit_.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "never.db").exists()


def test_an_out_folder_that_cannot_be_written_fails_before_the_search(indexed, tmp_path, capsys):
    data, db = indexed
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder is needed")
    photo = sorted(data.rglob("*.png"))[0]
    for flag, name in (("--out", "hits.csv"), ("--html", "hits.html")):
        assert main(["query", str(photo), "--db", db, "--collection", "c", flag, str(blocker / name)]) == 2
        err = capsys.readouterr().err
        assert f"error: {flag} {blocker / name}: {blocker} is not a folder" in err and "internal" not in err
    assert main(["index", str(data), "--db", str(tmp_path / "n.db"), "--run-dir", str(blocker / "run"), *FAST]) == 2
    assert "--run-dir" in capsys.readouterr().err
    assert not (tmp_path / "n.db").exists()  # refused before the store was opened


def test_a_full_disk_mid_job_is_an_environment_error(indexed, tmp_path, monkeypatch, capsys):
    data, _ = indexed
    import cbir_dist.io.tables as tables

    real = tables.write_parquet

    def full(path, *a, **k):
        if "shards" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(tables, "write_parquet", full)
    import cbir_dist.index.writer as writer_mod

    monkeypatch.setattr(writer_mod, "write_parquet", full)
    rc = main(["index", str(data), "--db", str(tmp_path / "f.db"), "--run-dir", str(tmp_path / "run"), *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left on device" in err and "internal error" not in err, err


class _Rejected(grpc.RpcError):
    """What grpc raises when the server refuses a call (``_InactiveRpcError`` is one)."""

    def code(self):
        return grpc.StatusCode.UNAUTHENTICATED

    def details(self):
        return "auth check failure, please check username and password are correct"


def test_credentials_rejected_mid_job_say_so(indexed, monkeypatch):
    _, db = indexed
    with VectorStore(db, "c") as store:
        def refuse(*a, **k):
            raise _Rejected()

        monkeypatch.setattr(store.client, "query", refuse)
        with pytest.raises(StoreError, match="rejected the credentials .*MILVUS_TOKEN or --token-file"):
            store.count()


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a read-only bind mount (needs root; skipped elsewhere). Yields (source, mount)."""
    import shutil
    import subprocess

    src, mnt = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "--bind", str(src), str(mnt)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (not root?)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield src, mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_read_only_file_system_is_said_before_the_work(indexed, read_only_folder, capsys):
    import shutil

    data, db = indexed
    src, ro = read_only_folder
    photo = sorted(data.rglob("*.png"))[0]
    assert main(["query", str(photo), "--db", db, "--collection", "c", "--out", str(ro / "hits.csv")]) == 1
    err = capsys.readouterr().err
    assert "cannot write in" in err and "Read-only file system" in err and "internal" not in err
    shutil.copytree(db, src / "c.db")  # a store on the read-only mount: not "another process"
    assert main(["query", str(photo), "--db", str(ro / "c.db"), "--collection", "c"]) == 1
    err = capsys.readouterr().err
    assert "milvus-lite writes its folder" in err and "another process" not in err and "one process" not in err


@pytest.mark.parametrize("db, says", [
    ("ftp://host/x", "unsupported store URI 'ftp://host/x': use a local path like ./cbir.db"),
    ("notes.txt", "notes.txt is a file, not a milvus-lite store: pass a store folder ending in .db"),
    ("no_suffix", "local store path 'no_suffix' must end in .db"),
])
def test_a_store_uri_that_names_no_store_is_a_usage_error(tmp_path, monkeypatch, capsys, db, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a store")
    assert main(["info", "--db", db]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "internal" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing created


def test_a_db_path_that_is_a_file_is_an_input_error(tmp_path):
    from cbir_dist.errors import InputError

    (tmp_path / "old.db").write_bytes(b"an older milvus-lite file")
    with pytest.raises(InputError, match="old.db is a file, but milvus-lite 3 keeps a store in a folder"):
        VectorStore(str(tmp_path / "old.db"), "images")
    (tmp_path / "empty.txt").touch()
    with pytest.raises(InputError, match="empty.txt is a file, not a milvus-lite store"):
        VectorStore(str(tmp_path / "empty.txt"), "images")


def test_k_beyond_the_store_limit_is_a_usage_error(indexed, capsys):
    from cbir_dist.errors import UsageError

    data, db = indexed
    with VectorStore(db, "c") as store:
        with pytest.raises(UsageError, match=r"k must be an int in \[1, 16384\].*got 16385: ask for fewer neighbours"):
            store.search([[0.0] * store.dim()], 16385)
    photo = sorted(data.rglob("*.png"))[0]  # -k 16384 passes the parser; without its own row it asks for 16385
    assert main(["query", str(photo), "--db", db, "--collection", "c", "-k", "16384", "--exclude-self"]) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(said) == 1 and "-k 16384 is too many" in said[0] and "give -k 16383 or less" in said[0], said
    assert "internal" not in said[0]
