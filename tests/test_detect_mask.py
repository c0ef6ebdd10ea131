"""``--detect-mask``: a damaged photo searched without its mask file, in query and index.

The estimator is :mod:`fake_mask_estimator`'s network set by hand (black pixels are missing), loaded
through ``$CBIR_MASK_ESTIMATOR_WEIGHTS`` like the shipped weights, so every test knows what it finds:
a zero-filled band is found exactly, and reconstructing through it must give what the true mask gives.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fake_mask_estimator import dark_estimator, dark_weights, no_estimator, _dark_loaded  # noqa: F401 - fixtures
from PIL import Image

from cbir_dist.cli import main
from cbir_dist.cli.parser import build_parser
from cbir_dist.damage import detect
from cbir_dist.damage.hook import DamageConfig, DamageTransform
from cbir_dist.demo import make_dataset, make_image
from cbir_dist.query.search import QueryConfig, run_query

REPO = Path(__file__).resolve().parents[1]
BAND = slice(10, 22)  # the rows a torn strip takes off a 48-pixel query: 25 % of it


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    data = make_dataset(root / "data", per_class=3, size=48)  # 6 classes x 3, nothing black in them
    db = str(root / "d.db")
    assert main(["index", str(data), "--db", db, "--collection", "c", "--run-dir", str(root / "run"),
                 "--backbone", "none", "--descriptors", "correlogram,gabor"]) == 0
    return data, db


def _torn(image: np.ndarray) -> np.ndarray:
    torn = image.copy()
    torn[BAND] = 0
    return torn


@pytest.fixture
def queries(indexed, tmp_path):
    """``q/ocean_waves/torn.png`` (a stored image with a black strip across it) and ``intact.png``."""
    data, _ = indexed
    folder = tmp_path / "q" / "ocean_waves"
    folder.mkdir(parents=True)
    original = sorted((data / "ocean_waves").glob("*.png"))[0]
    Image.fromarray(_torn(np.asarray(Image.open(original)))).save(folder / "torn.png")
    (folder / "intact.png").write_bytes(sorted((data / "night_rings").glob("*.png"))[1].read_bytes())
    return tmp_path / "q", folder / "torn.png", folder / "intact.png"


def _true_masks(root: Path, torn: Path, intact: Path) -> Path:
    """A masks folder with the torn query's true mask (the strip black) and an all-known one for the other."""
    masks = root / "ocean_waves"
    masks.mkdir(parents=True)
    band = np.full((48, 48), 255, np.uint8)
    band[BAND] = 0
    Image.fromarray(band).save(masks / torn.name)
    Image.fromarray(np.full((48, 48), 255, np.uint8)).save(masks / intact.name)
    return root


def _query(db, *args):
    return ["query", *args, "--db", db, "--collection", "c"]


# ------------------------------------------------------------------ the option


def test_detect_mask_is_an_option_of_query_index_and_evaluate(capsys):
    parser = build_parser()
    assert parser.parse_args(["query", "a.jpg", "--detect-mask"]).detect_mask is True
    assert parser.parse_args(["query", "a.jpg"]).detect_mask is False
    args = parser.parse_args(["index", "photos", "--detect-mask", "--fringe", "3", "--inpainter", "telea"])
    assert args.detect_mask is True and args.fringe == 3.0
    assert parser.parse_args(["evaluate", "photos", "--out", "o", "--detect-mask"]).detect_mask is True
    for command in ("query", "index"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert "no mask file needed" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------ query, in this process


def test_query_finds_the_strip_and_searches_as_with_the_true_mask(indexed, queries, dark_estimator, tmp_path):
    _, db = indexed
    qdir, torn, intact = queries
    seen = {}
    cols = run_query(str(qdir), QueryConfig(db=db, collection="c", k=3, detect_mask=True, inpainter="telea"),
                     progress=False, observe=lambda r, result: seen.setdefault(r.path, result))
    missing = dict(zip(cols["query"], cols["estimated_missing"]))
    assert missing == {str(torn): 0.25, str(intact): 0.0} and not any(cols["error"])
    expected = np.ones((48, 48), bool)
    expected[BAND] = False
    assert np.array_equal(seen[str(torn)].known, expected)  # the strip, found exactly
    assert seen[str(intact)].known is None  # nothing found: searched as it is
    assert np.array_equal(seen[str(intact)].reconstructed, np.asarray(Image.open(intact)))
    # reconstructed through the found mask = reconstructed through the true mask file
    ref = run_query(str(qdir), QueryConfig(db=db, collection="c", k=3, inpainter="telea",
                                           masks_dir=str(_true_masks(tmp_path / "masks", torn, intact))),
                    progress=False)
    rows = [i for i, q in enumerate(cols["query"]) if q == str(torn)]
    assert [cols["id"][i] for i in rows] == [ref["id"][i] for i in rows]
    np.testing.assert_allclose([cols["distance"][i] for i in rows], [ref["distance"][i] for i in rows], atol=1e-6)
    assert set(ref["estimated_missing"]) == {None}  # no --detect-mask: null
    # without reconstruction the zero-filled strip is searched: other distances than Telea's
    zero = run_query(str(torn), QueryConfig(db=db, collection="c", k=3, detect_mask=True), progress=False)
    assert zero["estimated_missing"] == [0.25] * 3
    assert zero["distance"] != [cols["distance"][i] for i in rows]


def test_a_query_damaged_by_a_fringe_has_its_mask_found_after_that_damage(indexed, queries, dark_estimator):
    _, db = indexed
    _, _, intact = queries
    seen = {}
    cols = run_query(str(intact), QueryConfig(db=db, collection="c", k=2, fringe=3.0, missing_fraction=0.3,
                                              detect_mask=True, inpainter="telea"),
                     progress=False, observe=lambda r, result: seen.setdefault(r.path, result))
    true = DamageTransform(DamageConfig(fringe=3.0, missing_fraction=0.3)).known(np.asarray(Image.open(intact)))
    assert np.array_equal(seen[str(intact)].known, true)  # the zero-filled bands, found
    assert cols["estimated_missing"] == [pytest.approx(float((~true).mean()))] * 2
    assert 0.25 < cols["estimated_missing"][0] < 0.35


def _odd_photos(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    grey = rng.integers(40, 255, (40, 40), dtype=np.uint8)
    grey[5:12] = 0
    long = rng.integers(40, 255, (17, 301, 3), dtype=np.uint8)
    long[:, 100:130] = 0
    rgba = np.dstack([rng.integers(40, 255, (40, 40, 3), dtype=np.uint8), np.full((40, 40), 128, np.uint8)])
    photos = {"grey.png": Image.fromarray(grey), "rgba.png": Image.fromarray(rgba, "RGBA"),
              "dot.png": Image.fromarray(np.zeros((1, 1, 3), np.uint8)),
              "strip.png": Image.fromarray(np.zeros((3, 200, 3), np.uint8)),  # too small: the reader's reason
              "long.png": Image.fromarray(long),  # no multiple of the network's stride either way
              "black.png": Image.fromarray(np.zeros((32, 32, 3), np.uint8))}
    for name, im in photos.items():
        im.save(folder / name)
    return {name: folder / name for name in photos}


def test_odd_photos_never_crash_the_query_and_a_failing_estimate_is_that_files_error(indexed, tmp_path,
                                                                                    dark_estimator, monkeypatch):
    _, db = indexed
    photos = _odd_photos(tmp_path / "odd")
    cols = run_query(str(tmp_path / "odd"), QueryConfig(db=db, collection="c", k=2, detect_mask=True,
                                                        inpainter="telea"), progress=False)
    assert set(cols["query"]) == {str(p) for p in photos.values()}  # every one answered or given its reason
    for name, path in photos.items():
        rows = [i for i, q in enumerate(cols["query"]) if q == str(path)]
        if cols["error"][rows[0]]:
            assert len(rows) == 1 and cols["estimated_missing"][rows[0]] is None
        else:
            assert len(rows) == 2 and 0.0 <= cols["estimated_missing"][rows[0]] <= 1.0
    grey = [m for q, m, e in zip(cols["query"], cols["estimated_missing"], cols["error"]) if q.endswith("grey.png")]
    assert grey[0] == pytest.approx(7 / 40)  # a grey photo's black rows are found like any others
    found = dict(zip(cols["query"], cols["estimated_missing"]))
    assert found[str(photos["long.png"])] == pytest.approx(30 / 301) and found[str(photos["black.png"])] == 1.0
    assert "smaller than the minimum side" in cols["error"][cols["query"].index(str(photos["strip.png"]))]

    def exploding(image):
        if image.shape[1] == 40:
            raise ValueError("the estimator cannot take this one")
        return detect.classical_known_mask(image)

    monkeypatch.setattr(detect, "_ESTIMATOR", exploding)
    cols = run_query(str(tmp_path / "odd"), QueryConfig(db=db, collection="c", k=2, detect_mask=True),
                     progress=False)
    errors = {Path(q).name: e for q, e in zip(cols["query"], cols["error"]) if e}
    assert errors["grey.png"] == errors["rgba.png"] == "mask/inpaint failed: the estimator cannot take this one"
    assert "black.png" not in errors  # the others are searched all the same


# ------------------------------------------------------------------ query, from the command line


def test_cli_writes_estimated_missing_and_says_when_nothing_was_found(indexed, queries, dark_estimator, tmp_path,
                                                                      capsys, monkeypatch):
    _, db = indexed
    qdir, torn, intact = queries
    out = tmp_path / "hits.parquet"
    assert main(_query(db, str(qdir), "-k", "2", "--detect-mask", "--inpainter", "telea", "--out", str(out))) == 0
    cap = capsys.readouterr()
    lines = [line for line in cap.err.splitlines() if "no missing region" in line]
    assert lines == [f"no missing region found in {intact}: searched as it is"]
    table = pq.read_table(out)
    assert table.schema.field("estimated_missing").type == "float"
    t = table.to_pydict()
    assert {q: m for q, m in zip(t["query"], t["estimated_missing"])} == {str(torn): 0.25, str(intact): 0.0}
    # printed, the table says it too
    assert main(_query(db, str(torn), "-k", "2", "--detect-mask")) == 0
    assert "(missing region found: 25.0%)" in capsys.readouterr().out
    # without --detect-mask: null in every format, and no such line
    for ext in ("jsonl", "csv"):
        plain = tmp_path / f"plain.{ext}"
        assert main(_query(db, str(qdir), "-k", "2", "--out", str(plain))) == 0
        assert "no missing region" not in capsys.readouterr().err
        text = plain.read_text()
        if ext == "jsonl":
            assert {json.loads(line)["estimated_missing"] for line in text.splitlines()} == {None}
        else:
            assert all(line.endswith(",") for line in text.splitlines()[1:])  # the last cell, empty
    # damaged by --fringe, then nothing found by an estimator that finds nothing: searched damaged
    monkeypatch.setattr(detect, "_ESTIMATOR", lambda image: np.ones(image.shape[:2], bool))
    assert main(_query(db, str(intact), "-k", "2", "--fringe", "3", "--detect-mask")) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "no missing region" in line]
    assert lines == [f"no missing region found in {intact}: searched damaged, not reconstructed"]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self._caption = [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class", "").split()
        if tag == "section" and "query" in cls:
            self.sections.append({"query": a["data-query"], "missing": a.get("data-estimated-missing"),
                                  "views": {}, "order": [], "captions": {}, "rows": []})
        elif tag == "img" and "view" in cls:
            self.sections[-1]["views"][a["data-view"]] = a["src"]
            self.sections[-1]["order"].append(a["data-view"])
            self._caption = ("view", a["data-view"])
        elif tag == "div" and "hits" in cls:
            self.sections[-1]["rows"].append(a["data-searched"])

    def handle_endtag(self, tag):
        if tag == "figure":
            self._caption = None

    def handle_data(self, data):
        if self._caption:
            captions = self.sections[-1]["captions"]
            captions[self._caption[1]] = captions.get(self._caption[1], "") + data


def _image(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(int)


def test_the_page_shows_the_mask_found_in_each_query(indexed, queries, dark_estimator, tmp_path, capsys):
    _, db = indexed
    qdir, torn, intact = queries
    page = tmp_path / "hits.html"
    assert main(_query(db, str(qdir), "-k", "2", "--detect-mask", "--inpainter", "telea", "--html", str(page))) == 0
    assert f"page: {page}" in capsys.readouterr().out
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    s = {sec["query"]: sec for sec in p.sections}
    assert s[str(torn)]["order"] == ["query", "mask", "reconstructed"]
    assert s[str(intact)]["order"] == ["query", "mask"]  # nothing found: nothing reconstructed
    assert s[str(torn)]["missing"] == "0.2500" and s[str(intact)]["missing"] == "0.0000"
    assert "25.0%" in s[str(torn)]["captions"]["mask"]
    assert "no missing region found" in s[str(intact)]["captions"]["mask"]
    assert "through the missing region found" in s[str(torn)]["rows"][0]
    assert "as it is" in s[str(intact)]["rows"][0]
    mask = _image(s[str(torn)]["views"]["mask"])  # a 48-pixel query: its thumbnail is its own size
    red, rest = mask[12:20].reshape(-1, 3).mean(0), np.concatenate([mask[:8], mask[24:]]).reshape(-1, 3)
    assert red[0] > 120 and red[1] < 60 and red[2] < 60  # the strip found is painted red
    query = _image(s[str(torn)]["views"]["query"])
    assert np.abs(np.concatenate([query[:8], query[24:]]).reshape(-1, 3) - rest).mean() < 8  # the rest as it is
    # with --fringe too: the damaged view, then the mask found in it
    assert main(_query(db, str(intact), "-k", "2", "--fringe", "3", "--detect-mask", "--inpainter", "telea",
                       "--html", str(page))) == 0
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    assert p.sections[0]["order"] == ["query", "damaged", "mask", "reconstructed"]
    assert 0.2 < float(p.sections[0]["missing"]) < 0.3


def test_query_in_a_subprocess_loads_the_weights_the_variable_names(indexed, queries, dark_weights, tmp_path):
    _, db = indexed
    qdir, torn, intact = queries
    out = tmp_path / "hits.jsonl"
    env = {**os.environ, detect.WEIGHTS_ENV: str(dark_weights), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "cbir_dist.cli", *_query(db, str(qdir), "-k", "2", "--detect-mask",
                                                                          "--inpainter", "telea", "--out", str(out))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"no missing region found in {intact}: searched as it is" in proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["query"]: r["estimated_missing"] for r in rows} == {str(torn): 0.25, str(intact): 0.0}


@pytest.mark.slow
def test_the_ray_backend_finds_the_same_masks_and_writes_the_same_rows(indexed, queries, dark_weights, tmp_path):
    """A fresh Ray (a subprocess: its workers inherit $CBIR_MASK_ESTIMATOR_WEIGHTS from the job) against the
    local backend: the same rows, ``estimated_missing`` included, and the same page."""
    _, db = indexed
    qdir, torn, intact = queries
    env = {**os.environ, detect.WEIGHTS_ENV: str(dark_weights), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    results = {}
    for backend in ("local", "ray"):
        out, page = tmp_path / f"{backend}.jsonl", tmp_path / f"{backend}.html"
        proc = subprocess.run([sys.executable, "-m", "cbir_dist.cli",
                               *_query(db, str(qdir), "-k", "2", "--detect-mask", "--inpainter", "telea", "--out",
                                       str(out), "--html", str(page), "--backend", backend)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"no missing region found in {intact}: searched as it is" in proc.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        parsed = _Page()
        parsed.feed(page.read_text(encoding="utf-8"))
        results[backend] = rows, {sec["query"]: (sec["order"], sec["missing"]) for sec in parsed.sections}
    (local, local_page), (ray_, ray_page) = results["local"], results["ray"]
    for column in ("query", "rank", "id", "estimated_missing", "error"):
        assert [r[column] for r in ray_] == [r[column] for r in local], column
    np.testing.assert_allclose([r["distance"] for r in ray_], [r["distance"] for r in local], atol=1e-4)
    assert ray_page == local_page == {str(torn): (["query", "mask", "reconstructed"], "0.2500"),
                                      str(intact): (["query", "mask"], "0.0000")}


def test_missing_estimator_weights_stop_the_job_before_any_image(indexed, queries, no_estimator, tmp_path,
                                                                 monkeypatch, capsys):
    _, db = indexed
    qdir, _, _ = queries
    out = tmp_path / "hits.parquet"
    assert main(_query(db, str(qdir), "--detect-mask", "--out", str(out))) == 1
    err = capsys.readouterr().err
    assert "mask estimator weights not found" in err and "train-mask-estimator" in err and not out.exists()
    monkeypatch.setenv(detect.WEIGHTS_ENV, str(tmp_path / "typo.pt"))
    assert main(_query(db, str(qdir), "--detect-mask")) == 2  # a path the user gave names no file
    assert f"${detect.WEIGHTS_ENV}={tmp_path / 'typo.pt'}: no such file" in capsys.readouterr().err


# ------------------------------------------------------------------ the step itself


def test_a_damage_transform_with_detect_mask_pickles_and_works_after_unpickling(dark_estimator, monkeypatch):
    image = _torn(make_image(2, np.random.default_rng(0), 48))
    step = DamageTransform(DamageConfig(detect_mask=True, inpainter="telea")).load()
    assert step._estimator is not None
    here = step.damage(image, "torn.png")
    clone = pickle.loads(pickle.dumps(step))
    assert clone._estimator is None  # not the network: each process loads its own
    monkeypatch.setattr(detect, "_ESTIMATOR", None)  # as in a fresh process: loaded from $CBIR_MASK_ESTIMATOR_WEIGHTS
    there = clone.damage(image, "torn.png")
    assert detect._ESTIMATOR is not None and clone._estimator is detect._ESTIMATOR
    assert there.missing_fraction == here.missing_fraction == 0.25
    assert np.array_equal(there.known, here.known) and np.array_equal(there.reconstructed, here.reconstructed)
    assert (there.reconstructed[BAND] > 0).any()  # reconstructed through the strip, not zero-filled
    assert clone.estimate(image[:8]) is None  # nothing black in the rows above the strip: nothing found


def test_damage_config_describes_the_estimator_it_uses(dark_estimator):
    meta = json.loads(dark_estimator.with_suffix(".json").read_text())
    described = DamageConfig(fringe=2.0, detect_mask=True, inpainter="ns").describe()
    assert described["detect_mask"] is True and described["fringe"] == 2.0 and described["inpainter"] == "ns"
    assert described["mask_estimator"] == {"weights": str(dark_estimator), "sha256": meta["sha256"]}
    assert "mask_estimator" not in DamageConfig(fringe=2.0).describe()


# ------------------------------------------------------------------ index


def test_index_with_detect_mask_in_worker_processes_records_it_and_matches_the_true_masks(dark_estimator, tmp_path,
                                                                                         capsys):
    from cbir_dist.store import VectorStore

    data = make_dataset(tmp_path / "data", per_class=2, size=48)
    masks = tmp_path / "masks"
    torn = []
    for path in sorted(data.rglob("*.png")):
        band = np.full((48, 48), 255, np.uint8)
        if path.stem.endswith("_01"):  # one torn photo per class
            Image.fromarray(_torn(np.asarray(Image.open(path)))).save(path)
            band[BAND] = 0
            torn.append(path)
        (masks / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(band).save(masks / path.parent.name / path.name)
    db = str(tmp_path / "i.db")
    common = ["--db", db, "--backbone", "none", "--descriptors", "correlogram,gabor", "--inpainter", "telea"]
    # two spawned worker processes: each loads the weights $CBIR_MASK_ESTIMATOR_WEIGHTS names
    assert main(["index", str(data), *common, "--collection", "found", "--detect-mask", "--workers", "2",
                 "--shard-size", "6", "--run-dir", str(tmp_path / "run_found")]) == 0
    assert "2 processes" in capsys.readouterr().out
    assert main(["index", str(data), *common, "--collection", "true", "--masks", str(masks), "--workers", "1",
                 "--run-dir", str(tmp_path / "run_true")]) == 0
    stats = json.loads((tmp_path / "run_found" / "stats.json").read_text())
    sha = json.loads(dark_estimator.with_suffix(".json").read_text())["sha256"]
    assert stats["damage"]["detect_mask"] is True and stats["damage"]["inpainter"] == "telea"
    assert stats["damage"]["mask_estimator"]["sha256"] == sha and stats["workers"] == 2
    assert json.loads((tmp_path / "run_true" / "stats.json").read_text())["damage"]["detect_mask"] is False
    ids = pq.read_table(tmp_path / "run_found" / "manifest.parquet").to_pydict()["id"]
    vectors = {}
    for collection in ("found", "true"):
        with VectorStore(db, collection) as store:
            rows = store.fetch(ids)
            vectors[collection] = dict(zip(rows["id"].tolist(), rows["vector"]))
            if collection == "found":
                assert store.runs()[-1]["damage"]["detect_mask"] is True
    assert len(vectors["found"]) == len(ids) == 12
    for i in ids:  # the found masks reconstruct as the true ones do, torn photos and intact ones alike
        np.testing.assert_allclose(vectors["found"][i], vectors["true"][i], atol=1e-5)
    assert main(["info", "--db", db, "--collection", "found"]) == 0
    assert "masks estimated (--detect-mask), inpainter telea" in capsys.readouterr().out
