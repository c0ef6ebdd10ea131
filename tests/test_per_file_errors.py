"""The one per-file error rule in query, classify and evaluate: a bad file or mask is a row with a reason."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cbir_dist.demo import make_dataset
from cbir_dist.features.profiles import build_spec
from cbir_dist.index import run_index
from cbir_dist.index.run import IndexConfig
from cbir_dist.query.search import QueryConfig, run_query


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("perfile")
    data = make_dataset(root / "data", per_class=3, size=48)
    db = str(root / "p.db")
    run_index(build_spec(backbone="none", descriptors=("glcm", "correlogram")),
              IndexConfig(str(data), db=db, collection="p", run_dir=str(root / "run"), progress=False))
    return data, db


def _queries(tmp_path, data):
    q = tmp_path / "q" / "c"
    q.mkdir(parents=True)
    good = sorted(data.rglob("*.png"))[:3]
    for p in good:
        (q / p.name).write_bytes(p.read_bytes())
    (q / "broken.png").write_bytes(b"\x89PNG but not")
    m = tmp_path / "m" / "c"
    m.mkdir(parents=True)
    half = np.full((48, 48), 255, np.uint8)
    half[:, :20] = 0
    Image.fromarray(half).save(m / good[0].name)
    (m / good[1].name).write_bytes(b"corrupt mask")
    return tmp_path / "q", tmp_path / "m", [p.name for p in good]


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_query_bad_file_and_bad_masks_are_error_rows(indexed, tmp_path, backend):
    data, db = indexed
    qdir, mdir, names = _queries(tmp_path, data)
    cfg = QueryConfig(db=db, collection="p", k=3, masks_dir=str(mdir), inpainter="telea", backend=backend,
                      progress=False)
    cols = run_query(str(qdir), cfg, progress=False)
    errors = {q.split("/")[-1]: e for q, e, r in zip(cols["query"], cols["error"], cols["rank"]) if r == 0}
    assert set(errors) == {"broken.png", names[1], names[2]}
    assert "not a readable image" in errors["broken.png"]
    assert "mask/inpaint failed" in errors[names[1]] and "cannot read the mask" in errors[names[1]]
    assert "mask/inpaint failed: no mask for" in errors[names[2]]
    hits = [q for q, r in zip(cols["query"], cols["rank"]) if r > 0]
    assert len(hits) == 3 and all(h.endswith(names[0]) for h in hits)  # k hits for the one good query


def test_classify_bad_file_is_an_error_row(indexed, tmp_path):
    from cbir_dist.query.classify import run_classify

    data, db = indexed
    qdir, _, names = _queries(tmp_path, data)
    res = run_classify(str(qdir), db=db, collection="p", k=1, progress=False)
    cols = res["columns"]
    errs = {p.split("/")[-1]: e for p, e in zip(cols["path"], cols["error"]) if e}
    assert set(errs) == {"broken.png"} and "not a readable image" in errs["broken.png"]
    assert res["n"] == 4 and res["failed"] == 1


def test_evaluate_lists_bad_files_and_a_failing_inpainter(tmp_path, monkeypatch):
    import cbir_dist.damage.inpaint as inpaint
    from cbir_dist.evaluation.damaged import EvalConfig, run_evaluate

    data = make_dataset(tmp_path / "data", per_class=3, size=48)
    (data / "sunset_stripes" / "bad.png").write_bytes(b"not an image")

    class Broken:
        name = "broken"

        def __call__(self, image, known):
            if int(image.sum()) % 2:  # fails on some images only
                raise RuntimeError("the network blew up")
            return image

    monkeypatch.setitem(inpaint._REGISTRY, "broken", lambda **kw: Broken())
    cfg = EvalConfig(str(data), str(tmp_path / "out"), frequencies=(6.0,), backbones=("none",),
                     inpainters=("none", "broken"), descriptors=("glcm",), queries=None, backend="local", map_k=12)
    res = run_evaluate(cfg, progress=False)
    errors = pq.read_table(tmp_path / "out" / "errors.parquet").to_pydict()
    by_status = {}
    for p, s, r in zip(errors["path"], errors["status"], errors["reason"]):
        by_status.setdefault(s, []).append((p, r))
    assert [p.split("/")[-1] for p, _ in by_status["rejected"]] == ["bad.png"]
    failed = by_status.get("inpaint_failed", [])
    assert failed and all("the network blew up" in r and "scored as the damaged image" in r for _, r in failed)
    assert len(failed) < res["config"]["n_queries"]  # only the images it failed on
