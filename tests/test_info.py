"""`cbir-dist info`: what a store and a collection hold, on milvus-lite and on a real Milvus server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO

from cbir_dist.cli import main
from cbir_dist.demo import make_dataset

N_PER_CLASS = 2  # 6 classes: 12 images
DEEP_ARGS = ["--backbone", "mobilenet_v2", "--image-size", "32", "--weights-override", "random"]  # spec: imagenet


def _info(capsys, *args) -> dict:
    assert main(["info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def lite_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("info")
    data = make_dataset(root / "data", per_class=N_PER_CLASS, size=40)
    db = str(root / "i.db")
    assert main(["index", str(data), "--db", db, "--collection", "photos", "--run-dir", str(root / "r1"),
                 "--index-type", "HNSW", "--descriptors", "gabor", *DEEP_ARGS]) == 0
    assert main(["index", str(data), "--db", db, "--collection", "photos", "--run-dir", str(root / "r1")]
                + ["--index-type", "HNSW", "--descriptors", "gabor", *DEEP_ARGS]) == 0  # a resumed rerun
    assert main(["index", str(data), "--db", db, "--collection", "shapes", "--run-dir", str(root / "r2"),
                 "--backbone", "none", "--descriptors", "fourier_shape"]) == 0
    return data, db


def test_info_without_collection_lists_them_and_the_size_on_disk(lite_store, capsys):
    _, db = lite_store
    facts = _info(capsys, "--db", db)
    assert facts["collections"] == ["photos", "shapes"] and facts["store"] == "milvus-lite"
    on_disk = sum(p.stat().st_size for p in Path(db).rglob("*") if p.is_file() and not p.is_symlink())
    assert facts["disk_bytes"] == on_disk > 0
    assert main(["info", "--db", db]) == 0
    text = capsys.readouterr().out
    assert "collections 2: photos, shapes" in text and f"({on_disk} bytes" in text


def test_info_on_a_collection_tells_spec_rows_index_runs(lite_store, capsys):
    data, db = lite_store
    facts = _info(capsys, "--db", db, "--collection", "photos")
    assert facts["collection"] == "photos" and facts["rows"] == 6 * N_PER_CLASS
    assert [(b["name"], b["dim"]) for b in facts["blocks"]] == [("deep", 1280), ("gabor", 48)]
    assert facts["dim"] == 1280 + 48 and facts["fusion"] == "balanced"
    assert facts["backbone"] == {"name": "mobilenet_v2", "weights": "imagenet", "image_size": 32,
                                 "weights_sha256": None,
                                 "torchvision_weights": "MobileNet_V2_Weights.IMAGENET1K_V1"}
    assert facts["index"] == {"index_type": "HNSW", "params": {}}
    runs = facts["runs"]
    assert len(runs) == 2 and runs[0]["rows_written"] == 12 and runs[1]["rows_written"] == 0  # the rerun: nothing new
    assert all(r["images_dir"] == str(data.resolve()) and r["backend"] == "local" for r in runs)
    assert main(["info", "--db", db, "--collection", "photos"]) == 0
    text = capsys.readouterr().out
    for line in ("rows        12", "vectors     1328-d, fusion balanced",
                 "backbone    mobilenet_v2 at 32 px, weights imagenet = torchvision MobileNet_V2_Weights.IMAGENET1K_V1",
                 "index       HNSW (default parameters)", "runs        2 recorded"):
        assert line in text, line
    shapes = _info(capsys, "--db", db, "--collection", "shapes")
    assert shapes["backbone"] is None and [b["name"] for b in shapes["blocks"]] == ["fourier_shape"]


def test_info_releases_the_folder_for_other_processes(lite_store, capsys):
    """A local store is locked by one process at a time: after `info` another process can open it."""
    _, db = lite_store
    _info(capsys, "--db", db, "--collection", "photos")
    proc = subprocess.run([sys.executable, "-m", "cbir_dist.cli", "info", "--db", db, "--collection", "shapes",
                           "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == 6 * N_PER_CLASS


def test_info_on_a_missing_store_or_collection_is_an_input_error(lite_store, tmp_path, capsys):
    _, db = lite_store
    assert main(["info", "--db", db, "--collection", "nope"]) == 2
    assert capsys.readouterr().err.strip() == (f"cbir-dist info: error: collection 'nope' not found in {db} "
                                               "(it holds 'photos', 'shapes': pick one with --collection, or "
                                               "leave --collection out to list them)")
    missing = str(tmp_path / "none.db")
    assert main(["info", "--db", missing]) == 2
    assert "no milvus-lite store there" in capsys.readouterr().err
    assert not Path(missing).exists()  # asking does not create a store


# ------------------------------------------------------------------ a real Milvus server

MILVUS_VENV = Path(os.environ.get("CBIR_MILVUS_VENV") or REPO / ".milvus-venv")  # as the script reads it
SCRIPT = REPO / "scripts" / "milvus_server.sh"
START_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def server():
    """``(uri, token)`` of a Milvus standalone server started for this module (auth on), stopped after it."""
    if os.environ.get("CBIR_MILVUS_URI"):
        yield os.environ["CBIR_MILVUS_URI"], os.environ.get("CBIR_MILVUS_TOKEN") or None
        return
    if not (MILVUS_VENV / "bin" / "milvus-server").exists():
        pytest.skip(f"{MILVUS_VENV} is absent: run `bash scripts/milvus_server.sh install`")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tempfile.mkdtemp(prefix="cbir-milvus-info-")
    where = ["--port", str(port), "--data", data]
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start", *where, "--auth", "--timeout", str(START_TIMEOUT_S)],
                              capture_output=True, text=True, timeout=START_TIMEOUT_S + 30)
        assert proc.returncode == 0, f"milvus_server.sh start failed:\n{proc.stdout}\n{proc.stderr}"
        yield proc.stdout.strip().splitlines()[-1], "root:Milvus"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", *where], capture_output=True, text=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_info_on_a_milvus_server(server, tmp_path, capsys, monkeypatch):
    import uuid

    uri, token = server
    if token:
        monkeypatch.setenv("MILVUS_TOKEN", token)
    name = f"info_{uuid.uuid4().hex[:10]}"
    data = make_dataset(tmp_path / "data", per_class=N_PER_CLASS, size=40)
    assert main(["index", str(data), "--db", uri, "--collection", name, "--run-dir", str(tmp_path / "run"),
                 "--backbone", "none", "--descriptors", "correlogram", "--index-type", "IVF_FLAT"]) == 0
    capsys.readouterr()
    try:
        facts = _info(capsys, "--db", uri, "--collection", name)
        assert facts["store"] == "milvus server" and "disk_bytes" not in facts
        assert facts["rows"] == 6 * N_PER_CLASS and facts["dim"] == 256
        assert facts["index"]["index_type"] == "IVF_FLAT" and facts["backbone"] is None
        assert len(facts["runs"]) == 1 and facts["runs"][0]["indexed"] == 6 * N_PER_CLASS
        assert name in _info(capsys, "--db", uri)["collections"]
        assert main(["info", "--db", uri, "--collection", name]) == 0
        text = capsys.readouterr().out
        assert f"store       {uri} (milvus server)" in text and "on disk" not in text and "index       IVF_FLAT" in text
    finally:
        from cbir_dist.store import VectorStore

        with VectorStore(uri, name, token=token) as vs:
            vs.drop()
