"""Whole jobs against a real Milvus server with authentication on: index, query, classify, evaluate.

Each job runs through the CLI (``cbir_dist.cli.main``, in this process) with ``--db http://...``;
the token comes from ``--token-file`` or ``$MILVUS_TOKEN``, never from the command line. What the
jobs wrote is read back from the server and checked against a numpy recount over the stored
vectors. The server is the session's (``milvus_server`` in ``conftest.py``); every collection
here has a name of its own (``_UNIQUE``), so a server shared with other runs is safe.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cbir_dist.cli import main
from cbir_dist.demo import make_dataset

pytestmark = pytest.mark.slow  # the session server's start, then ~1-2 min of jobs on 2 cores

_UNIQUE = f"t{uuid.uuid4().hex[:8]}_"  # this run's collection names
FAST = ["--backbone", "none"]  # the handcrafted descriptors only (correlogram + gabor): no network


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """6 generated classes x 4 images of 64 px."""
    return make_dataset(tmp_path_factory.mktemp("server_jobs") / "data", per_class=4, size=64)


@pytest.fixture(scope="module")
def token_file(milvus_server, tmp_path_factory) -> Path:
    return milvus_server.write_token_file(tmp_path_factory.mktemp("secret") / "milvus.token")


@pytest.fixture(scope="module")
def indexed(milvus_server, data, token_file, tmp_path_factory):
    """``data`` indexed into a collection of the server by ``cbir-dist index``; dropped afterwards."""
    from cbir_dist.store import VectorStore

    collection = f"{_UNIQUE}images"
    run_dir = tmp_path_factory.mktemp("index_run")
    rc = main(["index", str(data), "--db", milvus_server.uri, "--token-file", str(token_file),
               "--collection", collection, "--run-dir", str(run_dir), *FAST])
    assert rc == 0
    store = VectorStore(milvus_server.uri, collection, token=milvus_server.token)
    try:
        yield store, run_dir
    finally:
        store.drop()
        store.close()


def _stored(store, run_dir: Path) -> dict:
    """Every row of the collection (by the run's manifest), with vectors, fetched back from the server."""
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pydict()
    ids = [int(i) for i, s in zip(manifest["id"], manifest["status"]) if s == "ok"]
    rows = store.fetch(ids)
    return {"id": np.asarray(rows["id"], np.int64), "path": list(rows["path"]), "label": list(rows["label"]),
            "vector": np.asarray(rows["vector"], np.float64)}


def _knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows (exclude-self) by Euclidean distance, and the distances."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def test_index_writes_every_image_to_the_server(indexed, data, milvus_server, tmp_path, monkeypatch):
    store, run_dir = indexed
    assert not store.is_local
    stats = json.loads((run_dir / "stats.json").read_text())
    assert stats["db"] == milvus_server.uri and stats["indexed"] == 24 and stats["rows_written"] == 24
    assert store.count() == 24
    rows = _stored(store, run_dir)
    assert len(rows["id"]) == 24
    assert sorted(rows["path"]) == sorted(str(p) for p in data.rglob("*.png"))
    assert all(Path(p).parent.name == lab for p, lab in zip(rows["path"], rows["label"]))
    # a second connection sees them, and a rerun writes nothing new (it resumes from the run's shards)
    monkeypatch.chdir(tmp_path)  # nothing may be written locally: no milvus-lite folder appears here
    monkeypatch.setenv("MILVUS_TOKEN", milvus_server.token or "")
    assert main(["index", str(data), "--db", milvus_server.uri, "--collection", store.collection,
                 "--run-dir", str(run_dir), *FAST]) == 0
    assert json.loads((run_dir / "stats.json").read_text())["rows_written"] == 0
    assert store.count() == 24
    assert list(tmp_path.iterdir()) == []


def test_query_hits_are_the_stored_nearest_rows(indexed, data, milvus_server, tmp_path, monkeypatch):
    """``cbir-dist query`` on the server (token from $MILVUS_TOKEN): every hit is a row of the collection,
    and the hits are exactly the nearest stored vectors (a numpy recount, own row excluded)."""
    store, run_dir = indexed
    monkeypatch.setenv("MILVUS_TOKEN", milvus_server.token or "")
    out = tmp_path / "hits.parquet"
    assert main(["query", str(data), "--db", milvus_server.uri, "--collection", store.collection, "-k", "5",
                 "--exclude-self", "--out", str(out)]) == 0
    hits = pq.read_table(out).to_pydict()
    assert not any(hits["error"]) and len(hits["id"]) == 24 * 5
    stored = _stored(store, run_dir)
    assert set(hits["id"]) <= set(stored["id"].tolist())
    assert store.existing_ids(hits["id"]) == set(hits["id"])  # they are on the server, not only in the file
    order, dist = _knn(stored["vector"], 5)
    row_of = {int(i): j for j, i in enumerate(stored["id"])}
    for q in set(hits["query_id"]):
        mine = sorted((r, i, d) for r, i, d, qq in zip(hits["rank"], hits["id"], hits["distance"], hits["query_id"])
                      if qq == q)
        assert [r for r, _, _ in mine] == [1, 2, 3, 4, 5]
        j = row_of[int(q)]
        assert [i for _, i, _ in mine] == stored["id"][order[j]].tolist()
        np.testing.assert_allclose([d for _, _, d in mine], dist[j], rtol=1e-4, atol=1e-4)
    p1 = np.mean([lab == ql for lab, ql, r in zip(hits["label"], hits["query_label"], hits["rank"]) if r == 1])
    assert p1 >= 0.8  # six very different generated classes


def test_classify_matches_a_numpy_knn_vote(indexed, data, milvus_server, token_file, tmp_path, capsys):
    """``cbir-dist classify`` on the server: predictions and accuracy equal a numpy k-NN vote over the
    stored vectors (the image's own row never votes; ties go to the smaller summed distance)."""
    store, run_dir = indexed
    k = 3
    out = tmp_path / "pred.parquet"
    assert main(["classify", str(data), "--db", milvus_server.uri, "--token-file", str(token_file),
                 "--collection", store.collection, "-k", str(k), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    pred = pq.read_table(out).to_pydict()
    stored = _stored(store, run_dir)
    order, dist = _knn(stored["vector"], k)
    labels = np.asarray(stored["label"], dtype=object)
    expected = {}
    for j, i in enumerate(stored["id"]):
        votes, summed = Counter(labels[order[j]]), Counter()
        for lab, d in zip(labels[order[j]], dist[j]):
            summed[lab] += d
        top = max(votes.values())
        expected[int(i)] = min((lab for lab, n in votes.items() if n == top), key=lambda lab: summed[lab])
    assert len(pred["id"]) == 24 and not any(pred["error"])
    assert {int(i): p for i, p in zip(pred["id"], pred["predicted"])} == expected
    for own, neigh in zip(pred["id"], pred["neighbour_ids"]):
        assert own not in neigh and set(neigh) <= set(stored["id"].tolist())
    accuracy = np.mean([expected[int(i)] == lab for i, lab in zip(pred["id"], pred["label"])])
    assert accuracy >= 0.8
    assert f"accuracy {100 * accuracy:.1f} %" in printed


def test_a_job_without_the_token_is_refused(indexed, milvus_server, data, tmp_path, monkeypatch, capsys):
    """Authentication is on: the same query without a token fails with one line, exit 1, nothing written."""
    store, _ = indexed
    if milvus_server.token is None:
        pytest.skip("the server under test has no authentication")
    monkeypatch.delenv("MILVUS_TOKEN", raising=False)
    # pymilvus reports a refused login at connect as "Fail connecting to server ...", which the store
    # retries as transient for its whole budget (120 s) before naming the credentials: keep it short
    monkeypatch.setenv("CBIR_MILVUS_RETRY_S", "5")
    out = tmp_path / "hits.parquet"
    rc = main(["query", str(data), "--db", milvus_server.uri, "--collection", store.collection, "--out", str(out)])
    assert rc == 1 and not out.exists()
    assert "credentials" in capsys.readouterr().err


def test_evaluate_on_the_server(milvus_server, data, token_file, tmp_path):
    """``cbir-dist evaluate --db URI --token-file F --collection-prefix P``: the collection is on the server
    under the prefix, the intact P@k equal a numpy recount over its rows, and no token reaches results.json."""
    from cbir_dist.store import VectorStore

    out = tmp_path / "eval"
    prefix = f"{_UNIQUE}ev_"
    argv = ["evaluate", str(data), "--out", str(out), "--db", milvus_server.uri, "--token-file", str(token_file),
            "--collection-prefix", prefix, "--backbones", "mobilenet_v2", "--weights", "mobilenet_v2=random",
            "--frequencies", "6", "--inpainters", "none,telea", "--queries", "all", "--backend", "local", "-k", "5"]
    store = VectorStore(milvus_server.uri, f"{prefix}eval_mobilenet_v2", token=milvus_server.token)
    try:
        assert main(argv) == 0
        assert not (out / "eval.db").exists()  # the server was the store
        res = json.loads((out / "results.json").read_text())
        text = (out / "results.json").read_text()
        assert milvus_server.token is None or milvus_server.token not in text
        assert "token" not in res["config"]
        assert res["config"]["db"] == milvus_server.uri and res["config"]["collection_prefix"] == prefix
        assert len(res["records"]) == 1 * 2 * 3  # frequencies x inpainters x states
        assert store.count() == 24
        orig = next(r for r in res["records"] if r["state"] == "original")
        rows = store.fetch([int(i) for i in res["config"]["query_ids"]])
        x, labels = np.asarray(rows["vector"], np.float64), np.asarray(rows["label"], dtype=object)
        order, _ = _knn(x, 5)
        hits = labels[order] == labels[:, None]
        assert orig["p_at_1"] == pytest.approx(100 * hits[:, 0].mean())
        assert orig["p_at_5"] == pytest.approx(100 * hits.mean())
        table = (out / "table2.md").read_text()
        assert "24 queries against 24 images" in table and "## mobilenet_v2" in table and "| 6 |" in table
        assert (out / "report.html").stat().st_size > 0

        # the same prefix with another data set is refused before anything is written to the collection
        other = make_dataset(tmp_path / "other", per_class=2, size=64, seed=5)
        argv2 = [a if a != str(data) else str(other) for a in argv]
        argv2[argv2.index(str(out))] = str(tmp_path / "eval2")
        assert main(argv2) == 2
        assert store.count() == 24
    finally:
        store.drop()
        store.close()


def test_shape_evaluate_on_the_server(milvus_server, token_file, tmp_path):
    """The Pande path (``--profile texture``) on the server: its collection has the prefix and every image."""
    from test_shape_eval import make_textures

    from cbir_dist.store import VectorStore

    data = make_textures(tmp_path / "tex")
    prefix = f"{_UNIQUE}tx_"
    out = tmp_path / "out"
    store = VectorStore(milvus_server.uri, f"{prefix}texture", token=milvus_server.token)
    try:
        assert main(["evaluate", str(data), "--profile", "texture", "--out", str(out), "--db", milvus_server.uri,
                     "--token-file", str(token_file), "--collection-prefix", prefix, "--protocol", "include-self",
                     "--knn-k", "1", "--no-ablation"]) == 0
        assert not (out / "eval.db").exists()
        res = json.loads((out / "results.json").read_text())
        assert res["config"]["collection"] == f"{prefix}texture" and res["config"]["db"] == milvus_server.uri
        assert "token" not in res["config"]
        assert store.count() == 12
        r = res["records"][0]
        assert r["n_database"] == 12 and r["p_at_1"] == 100.0  # include-self: every image finds itself first
        assert f"`{prefix}texture` of `{milvus_server.uri}`" in (out / "table_texture.md").read_text()
    finally:
        store.drop()
        store.close()
