"""The query job end to end on a tiny generated set, with a random-weight backbone (no download)."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cbir_dist.demo import make_dataset
from cbir_dist.errors import SpecMismatchError
from cbir_dist.features.profiles import build_spec
from cbir_dist.index import run_index
from cbir_dist.index.run import IndexConfig
from cbir_dist.io.files import content_id
from cbir_dist.query.results import RESULT_COLUMNS, precision_table
from cbir_dist.query.search import QueryConfig, run_query


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    data = make_dataset(root / "data", per_class=4, size=64)
    db = str(root / "s.db")
    spec = build_spec(backbone="mobilenet_v2", image_size=64, descriptors=("correlogram", "gabor"))
    run_index(spec, IndexConfig(str(data), db=db, collection="c", run_dir=str(root / "run"),
                                weights_override="random", progress=False))
    return data, db, root


def _cfg(db, **kw):
    return QueryConfig(db=db, collection="c", weights_override="random", **kw)


def test_query_table_columns_ranks_and_self_match(indexed):
    data, db, root = indexed
    out = root / "q.parquet"
    cols = run_query(str(data), _cfg(db, k=5), out=str(out), progress=False)
    table = pq.read_table(out)
    assert tuple(table.column_names) == RESULT_COLUMNS
    n_queries = 24
    assert table.num_rows == n_queries * 5
    ranks = table.column("rank").to_pylist()
    assert ranks[:5] == [1, 2, 3, 4, 5]
    # intact query, own original included: rank 1 is itself at distance ~0
    first = table.slice(0, 1).to_pylist()[0]
    assert first["id"] == first["query_id"] and first["distance"] < 1e-3
    assert first["query_id"] == content_id(open(first["query"], "rb").read())
    d = np.asarray(cols["distance"]).reshape(n_queries, 5)
    assert (np.diff(d, axis=1) >= -1e-6).all()


def test_exclude_self_never_returns_the_query(indexed):
    data, db, _ = indexed
    cols = run_query(str(data), _cfg(db, k=5, exclude_self=True, fringe=6.0, inpainter="telea"), progress=False)
    assert not any(q == i for q, i in zip(cols["query_id"], cols["id"]))
    assert len(cols["id"]) == 24 * 5
    ranks = np.asarray(cols["rank"]).reshape(24, 5)
    assert (ranks == np.arange(1, 6)).all()
    ids = np.asarray(cols["id"]).reshape(24, 5)
    assert all(len(set(row)) == 5 for row in ids)  # five distinct neighbours each
    # precision_table agrees with a recount from the rows
    same = (np.asarray(cols["label"], dtype=object) == np.asarray(cols["query_label"], dtype=object)).reshape(24, 5)
    p = precision_table(cols)
    assert p[1] == pytest.approx(100 * same[:, 0].mean()) and p[5] == pytest.approx(100 * same.mean())


def test_bad_query_file_gives_error_row(indexed, tmp_path):
    data, db, _ = indexed
    qdir = tmp_path / "q" / "x"
    qdir.mkdir(parents=True)
    (qdir / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(qdir / "ok.png")
    cols = run_query(str(tmp_path / "q"), _cfg(db, k=3), progress=False)
    errs = [(q.split("/")[-1], e) for q, e, r in zip(cols["query"], cols["error"], cols["rank"]) if r == 0]
    assert len(errs) == 1 and errs[0][0] == "broken.png" and errs[0][1]
    assert sum(1 for q in cols["query"] if q.endswith("ok.png")) == 3


def test_masks_dir_and_missing_mask(indexed, tmp_path):
    data, db, _ = indexed
    img = next(p for p in sorted((data).rglob("*.png")))
    qdir = tmp_path / "q" / img.parent.name
    qdir.mkdir(parents=True)
    (qdir / img.name).write_bytes(img.read_bytes())
    mdir = tmp_path / "m" / img.parent.name
    mdir.mkdir(parents=True)
    mask = np.full((64, 64), 255, np.uint8)
    mask[:, :20] = 0
    Image.fromarray(mask).save(mdir / img.name)
    cols = run_query(str(tmp_path / "q"), _cfg(db, k=2, masks_dir=str(tmp_path / "m")), progress=False)
    assert all(e == "" for e in cols["error"]) and len(cols["id"]) == 2
    cols = run_query(str(tmp_path / "q"), _cfg(db, k=2, masks_dir=str(tmp_path)), progress=False)
    assert cols["rank"] == [0] and "no mask" in cols["error"][0]


def test_searcher_run_leaves_the_records_as_read_and_shows_the_query_as_given(indexed):
    """The demo searches one list of records at several damages: each search starts from the images as read."""
    from cbir_dist.io.files import list_images
    from cbir_dist.query.search import Searcher, load_queries

    data, db, _ = indexed
    records = load_queries(list_images(str(data))[:6], 10**8)
    originals = [r.image.copy() for r in records]
    seen = {}
    cfg = _cfg(db, k=3, fringe=6.0, inpainter="telea")
    with Searcher(cfg) as searcher:
        first = searcher.run(records, cfg, progress=False,
                             observe=lambda r, result: seen.setdefault(r.path, (r.image.copy(), result.damaged,
                                                                                result.reconstructed)))
        again = searcher.run(records, cfg, progress=False)
    assert all(np.array_equal(r.image, o) for r, o in zip(records, originals))
    assert first == again
    for r, o in zip(records, originals):
        query, damaged, rebuilt = seen[r.path]
        assert np.array_equal(query, o)  # the page's "query" view is the query as given
        assert (damaged == 0).any() and not np.array_equal(damaged, o) and not np.array_equal(rebuilt, damaged)


def test_query_config_validation():
    with pytest.raises(ValueError, match="--inpainter 'deepfill' is unknown"):
        QueryConfig(inpainter="deepfill")
    with pytest.raises(ValueError, match="either"):
        QueryConfig(fringe=1.0, masks_dir="x")
    with pytest.raises(ValueError, match="positive"):
        QueryConfig(fringe=0.0)
    with pytest.raises(ValueError, match="k must"):
        QueryConfig(k=0)


def test_index_rerun_with_different_spec_is_refused(indexed):
    data, db, root = indexed
    other = build_spec(backbone="mobilenet_v2", image_size=64, descriptors=("gabor",))
    with pytest.raises(SpecMismatchError, match="blocks"):
        run_index(other, IndexConfig(str(data), db=db, collection="c", run_dir=str(root / "run2"),
                                     weights_override="random", progress=False))


def test_ray_backend_gives_the_same_results_as_local(indexed, tmp_path):
    data, db, _ = indexed
    qdir = tmp_path / "q" / "x"
    qdir.mkdir(parents=True)
    for p in sorted(data.rglob("*.png"))[:6]:
        (qdir / p.name).write_bytes(p.read_bytes())
    (qdir / "broken.png").write_bytes(b"nope")
    kw = dict(k=4, fringe=3.0, inpainter="telea", exclude_self=True, progress=False)
    local = run_query(str(tmp_path / "q"), _cfg(db, **kw), progress=False)
    ray_ = run_query(str(tmp_path / "q"), _cfg(db, backend="ray", **kw), progress=False)
    for c in ("query", "query_id", "rank", "id", "label", "error"):
        assert ray_[c] == local[c], c
    np.testing.assert_allclose(np.asarray(ray_["distance"]), np.asarray(local["distance"]), rtol=1e-4, atol=1e-4)
    assert sum(1 for r in ray_["rank"] if r == 0) == 1
