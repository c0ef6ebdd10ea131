"""`cbir-dist query` as a new user runs it: files, folders and globs, the printed table, result files, the page.

A tiny generated set indexed with handcrafted descriptors only (no weights, a few seconds).
"""

from __future__ import annotations

import base64
import gc
import io
import json
import re
import weakref
from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cbir_dist.cli import main
from cbir_dist.demo import make_dataset
from cbir_dist.query.results import RESULT_COLUMNS

K = 3


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("qcli")
    data = make_dataset(root / "data", per_class=3, size=48)  # 6 classes x 3
    db = str(root / "q.db")
    assert main(["index", str(data), "--db", db, "--collection", "c", "--run-dir", str(root / "run"),
                 "--backbone", "none", "--descriptors", "correlogram,gabor"]) == 0
    return data, db


def _query(db, *args):
    return ["query", *args, "--db", db, "--collection", "c"]


def _tables(out: str) -> dict[str, list[tuple]]:
    """The printed per-query tables: query path -> [(rank, distance, label, path), ...] (or the error)."""
    tables, current = {}, None
    for line in out.splitlines():
        m = re.match(r"\[(\d+)/(\d+)\] (\S+)", line)
        if m:
            current = m.group(3)
            tables[current] = []
        elif current and line.strip().startswith("error:"):
            tables[current] = line.strip()
        elif current and re.match(r"\s+\d+\s+[\d.]+\s", line):
            rank, dist, label, path = line.split(maxsplit=3)
            tables[current].append((int(rank), float(dist), label, path))
    return tables


def test_a_single_file_prints_its_top_k(indexed, capsys):
    data, db = indexed
    photo = sorted((data / "ocean_waves").glob("*.png"))[1]
    assert main(_query(db, str(photo), "-k", str(K))) == 0
    out = capsys.readouterr().out
    tables = _tables(out)
    assert list(tables) == [str(photo)]
    rows = tables[str(photo)]
    assert [r[0] for r in rows] == [1, 2, 3]
    # intact and stored: its own row comes first at distance 0; distances ascend
    assert rows[0][3] == str(photo) and rows[0][1] == pytest.approx(0.0, abs=1e-3)
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    assert "(label ocean_waves)" in out  # a file's label: the folder holding it
    assert "1 query, 0 failed" in out and "P@1 100.0" in out and "P@3" in out and "P@5" not in out


def test_a_photo_from_elsewhere_gets_its_neighbours_and_no_made_up_precision(indexed, tmp_path, capsys):
    """A photo in ~/Downloads has the label "Downloads", which is no class of the collection: no P@k."""
    data, db = indexed
    original = sorted((data / "night_rings").glob("*.png"))[0]
    photo = tmp_path / "Downloads" / "photo.png"
    photo.parent.mkdir()
    photo.write_bytes(original.read_bytes())
    assert main(_query(db, str(photo), "-k", "2")) == 0
    out = capsys.readouterr().out
    rows = _tables(out)[str(photo)]
    assert rows[0][3] == str(original) and rows[0][2] == "night_rings"  # same bytes: the stored original
    assert "(label Downloads)" in out and "P@1" not in out and "no P@k" in out


def test_globs_folders_and_files_mix_without_duplicates(indexed, capsys):
    data, db = indexed
    one = sorted((data / "rose_noise").glob("*.png"))[0]
    pattern = str(data / "*" / "*_01.png")  # quoted on a shell: expanded by cbir-dist, not the shell
    args = _query(db, pattern, str(data / "rose_noise"), str(one), "-k", "2", "--exclude-self")
    assert main(args) == 0
    tables = _tables(capsys.readouterr().out)
    from_glob = sorted(str(p) for p in data.glob("*/*_01.png"))
    from_dir = sorted(str(p) for p in (data / "rose_noise").glob("*.png"))
    expected = list(dict.fromkeys(from_glob + from_dir))  # rose_noise_01 once; `one` already from the folder
    assert list(tables) == expected
    assert all(len(rows) == 2 and all(r[3] != q for r in rows) for q, rows in tables.items())


@pytest.mark.parametrize("arg, message", [
    ("missing.jpg", "missing.jpg: no such file or folder"),
    ("nowhere/*.png", "nowhere/*.png: the pattern matches no file or folder"),
])
def test_a_missing_path_or_an_empty_glob_is_an_input_error(indexed, tmp_path, capsys, arg, message):
    _, db = indexed
    assert main(_query(db, str(tmp_path / arg))) == 2
    assert capsys.readouterr().err.strip() == f"cbir-dist query: error: {tmp_path / message}"


def test_a_glob_that_matches_only_other_files_is_an_input_error(indexed, tmp_path, capsys):
    _, db = indexed
    (tmp_path / "notes.txt").write_text("x")
    assert main(_query(db, str(tmp_path / "*.txt"))) == 2
    assert "matches 1 path(s) but no image file" in capsys.readouterr().err


def test_out_by_extension_and_an_unknown_one_is_refused_before_running(indexed, tmp_path, capsys):
    data, db = indexed
    q = str(data / "desert_dots")
    tables = {}
    for ext in ("parquet", "csv", "jsonl"):
        out = tmp_path / f"hits.{ext}"
        assert main(_query(db, q, "-k", "2", "--out", str(out))) == 0
        printed = capsys.readouterr().out
        assert "[1/" not in printed and f"wrote {out}" in printed  # with --out nothing per query is printed
        if ext == "parquet":
            t = pq.read_table(out).to_pydict()
        elif ext == "csv":
            import csv

            with open(out, newline="") as fh:
                rows = list(csv.DictReader(fh))
            t = {c: [r[c] for r in rows] for c in rows[0]}
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            t = {c: [r[c] for r in rows] for c in rows[0]}
        assert tuple(t) == RESULT_COLUMNS
        tables[ext] = t
    assert len(tables["parquet"]["id"]) == 3 * 2
    for ext in ("csv", "jsonl"):
        assert [int(x) for x in tables[ext]["id"]] == tables["parquet"]["id"]
        assert [str(x) for x in tables[ext]["path"]] == tables["parquet"]["path"]
        np.testing.assert_allclose([float(x) for x in tables[ext]["distance"]], tables["parquet"]["distance"],
                                   rtol=1e-6)
    assert main(_query(db, q, "--out", str(tmp_path / "hits.txt"))) == 2
    assert "unknown format '.txt'" in capsys.readouterr().err
    assert not (tmp_path / "hits.txt").exists()


class _Page(HTMLParser):
    """The page's sections, their views, hit thumbnails, error paragraphs and every src/href."""

    def __init__(self):
        super().__init__()
        self.sections, self.srcs, self._in_error = [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "src" in a or "href" in a:
            self.srcs.append(a.get("src") or a.get("href"))
        cls = a.get("class", "").split()
        if tag == "section" and "query" in cls:
            data = {k[5:]: v for k, v in a.items() if k.startswith("data-")}
            self.sections.append({"query": data["query"], "label": data["label"], "status": data["status"],
                                  "n_hits": int(data["hits"]), "views": [], "hits": [], "error": ""})
        elif tag == "img" and "view" in cls:
            self.sections[-1]["views"].append(a["data-view"])
        elif tag == "img" and "hit" in cls:
            self.sections[-1]["hits"].append(a)
        elif tag == "p" and "error" in cls:
            self._in_error = True

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_error = False

    def handle_data(self, data):
        if self._in_error:
            self.sections[-1]["error"] += data


def test_the_html_page_shows_each_query_damaged_reconstructed_and_its_k_hits(indexed, tmp_path, capsys):
    data, db = indexed
    bad = tmp_path / "queries" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG not really")
    stranger = tmp_path / "Downloads" / "photo.png"  # its label "Downloads" is no class: grey frames
    stranger.parent.mkdir()
    stranger.write_bytes(sorted((data / "rose_noise").glob("*.png"))[0].read_bytes())
    page = tmp_path / "hits.html"
    pattern = str(data / "*" / "*_02.png")
    assert main(_query(db, pattern, str(bad), str(stranger), "-k", str(K), "--fringe", "6", "--inpainter", "telea",
                       "--exclude-self", "--html", str(page), "--out", str(tmp_path / "hits.parquet"))) == 1
    cap = capsys.readouterr()  # exit 1: the broken query could not be answered; the page is written all the same
    assert f"page: {page}" in cap.out and "1 of 8 queries could not be answered" in cap.err
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    table = pq.read_table(tmp_path / "hits.parquet").to_pydict()
    queries = list(dict.fromkeys(table["query"]))
    assert [s["query"] for s in p.sections] == queries and len(queries) == 6 + 2  # one block per query
    # self-contained: every image is inline
    assert p.srcs and all(s.startswith("data:image/jpeg;base64,") for s in p.srcs)
    for s in p.sections:
        if s["query"] == str(bad):
            reason = table["error"][table["query"].index(str(bad))]
            assert s["status"] == "error" and s["hits"] == [] and reason and reason in s["error"]
            continue
        assert s["status"] == "ok" and s["views"] == ["query", "damaged", "reconstructed"]
        assert len(s["hits"]) == K == s["n_hits"]
        rows = [i for i, q in enumerate(table["query"]) if q == s["query"]]
        assert [h["data-path"] for h in s["hits"]] == [table["path"][i] for i in rows]
        for h, i in zip(s["hits"], rows):
            if s["query"] == str(stranger):
                assert h["data-same"] == "" and "#b0b0b0" in h["style"]
                continue
            assert h["data-same"] == ("true" if table["label"][i] == s["label"] else "false")
            assert ("#2e9d3a" if h["data-same"] == "true" else "#d0342c") in h["style"]  # green / red frame
            thumb = Image.open(io.BytesIO(base64.b64decode(h["src"].split(",", 1)[1])))
            assert thumb.format == "JPEG" and max(thumb.size) <= 112
    same = [h["data-same"] for s in p.sections for h in s["hits"] if s["query"] != str(stranger)]
    assert "true" in same and set(same) <= {"true", "false"}


def test_local_queries_are_read_and_described_one_batch_at_a_time(indexed, monkeypatch):
    """Memory is bounded by --batch-size: no decoded query outlives its batch, whatever the query count."""
    import cbir_dist.query.search as search

    data, db = indexed
    alive: list[weakref.ref] = []
    batches, leaked = [], []
    real = search.load_queries

    def tracking(files, max_pixels, max_bytes):
        gc.collect()
        leaked.append(sum(r() is not None for r in alive))
        recs = real(files, max_pixels, max_bytes)
        batches.append(len(recs))
        alive.extend(weakref.ref(r.image) for r in recs if r.image is not None)
        return recs

    monkeypatch.setattr(search, "load_queries", tracking)
    cfg = search.QueryConfig(db=db, collection="c", k=2, batch_size=4, fringe=3.0, inpainter="telea")
    cols = search.run_query(str(data), cfg, progress=False)
    assert batches == [4, 4, 4, 4, 2] and leaked == [0, 0, 0, 0, 0]
    monkeypatch.setattr(search, "load_queries", real)
    whole = search.run_query(str(data), search.QueryConfig(db=db, collection="c", k=2, batch_size=64, fringe=3.0,
                                                           inpainter="telea"), progress=False)
    assert cols["id"] == whole["id"] and cols["query"] == whole["query"]
