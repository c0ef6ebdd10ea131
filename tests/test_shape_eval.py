"""The Pande et al. evaluation end to end through the store (shape and texture) and `cbir-dist classify`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cbir_dist.evaluation.scoring import rank_numpy, score_ranking
from cbir_dist.evaluation.shapes import ShapeEvalConfig, run_shape_evaluate

SHAPES = ("circle", "square", "star", "ell")


def _polygon(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Vertices (x, y) of one silhouette at a random scale, rotation and position."""
    r = rng.uniform(0.16, 0.3) * size
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif kind == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.8
    elif kind == "star":
        t = np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
    else:  # an L: a 2 x 2 square with the top-right 1 x 1 quarter cut away
        pts = np.array([[-1, -1], [0, -1], [0, 0], [1, 0], [1, 1], [-1, 1]], float)
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = rng.uniform(0.4, 0.6, size=2) * size
    return (pts @ rot.T) * r + centre


def make_silhouettes(root: Path, per_class: int = 5, size: int = 96, seed: int = 7) -> Path:
    """4 classes x ``per_class`` white silhouettes on black, as PNG (class-per-folder)."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(seed)
    for kind in SHAPES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            img = np.zeros((size, size), np.uint8)
            pts = np.round(_polygon(kind, rng, size) * 16).astype(np.int32)
            cv2.fillPoly(img, [pts], 255, lineType=cv2.LINE_AA, shift=4)
            Image.fromarray(img).save(root / kind / f"{kind}_{j}.png")
    return root


def make_textures(root: Path, per_class: int = 4, size: int = 96, seed: int = 3) -> Path:
    """3 texture classes (horizontal stripes, vertical stripes, blurred blobs) x ``per_class`` grey tiles."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for kind in ("hstripes", "vstripes", "blobs"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            period, phase = rng.uniform(6, 9), rng.uniform(0, 2 * np.pi)
            if kind == "hstripes":
                t = 0.5 + 0.5 * np.sin(2 * np.pi * yy / period + phase)
            elif kind == "vstripes":
                t = 0.5 + 0.5 * np.sin(2 * np.pi * xx / period + phase)
            else:
                t = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 3.0)
                t = (t - t.min()) / (np.ptp(t) + 1e-6)
            img = np.clip(255 * t + rng.normal(0, 12, t.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / kind / f"{kind}_{j}.png")
    return root


@pytest.fixture(scope="module")
def shape_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shape_eval")
    data = make_silhouettes(root / "data")
    out = root / "out"
    res = run_shape_evaluate(ShapeEvalConfig(str(data), str(out), profile="shape", seed=1, knn_k=(1, 3),
                                             progress=False, grid_queries=2))
    return data, out, res


def test_shape_profile_end_to_end_through_the_store(shape_run):
    data, out, res = shape_run
    on_disk = json.loads((out / "results.json").read_text())
    assert {"config", "versions", "records", "per_class", "ablation", "summary"} <= set(on_disk)
    keys = {"profile", "variant", "queries", "database", "p_at_1", "p_at_5", "p_at_10", "bullseye", "precision",
            "recall", "specificity", "accuracy", "map", "knn_k", "knn_accuracy"}
    for rec in on_disk["records"]:
        assert keys <= set(rec), keys - set(rec)
        assert rec["profile"] == "shape" and rec["protocol"] == "exclude-self"
    orig = [r for r in on_disk["records"] if r["variant"] == "original"]
    assert [r["knn_k"] for r in orig] == [1, 3]
    o = orig[0]
    assert o["n_queries"] == 20 and o["n_database"] == 20 and o["bullseye_window"] == 10
    # an easy set: four very different outlines
    assert o["p_at_1"] >= 90 and o["bullseye"] >= 80 and o["knn_accuracy"] >= 90
    # exclude-self: the query is never its own first hit, so P@1 < 100 is possible; KNN agrees with P@1 at k=1
    assert o["knn_accuracy"] == pytest.approx(o["p_at_1"])
    # the affine repository: 20 shapes x 5 in its own collection, plus variants -> originals rows
    aff = {r["queries"]: r for r in on_disk["records"] if r["variant"] == "affine" and r["knn_k"] == 1}
    assert set(aff) == {"all", "all variants", "rotation", "translation", "scaling", "combined"}
    assert aff["all"]["n_queries"] == 100 and aff["all"]["database"] == "affine"
    assert aff["all variants"]["n_queries"] == 80 and aff["rotation"]["n_queries"] == 20
    assert aff["all variants"]["p_at_1"] >= o["p_at_1"] - 10  # invariance on generated shapes
    assert len(list((out / "affine").rglob("*.png"))) == 100
    # the ablation holds the profile's setting, and its numpy retrieval reproduces the store's figures
    ab = on_disk["ablation"]
    prof = [r for r in ab if r["profile"]]
    assert len(prof) == 1 and prof[0]["n_coeffs"] == 10 and prof[0]["extreme_points"]
    assert prof[0]["p_at_1"] == pytest.approx(o["p_at_1"]) and prof[0]["bullseye"] == pytest.approx(o["bullseye"])
    assert {r["n_coeffs"] for r in ab} == {10, 20, 30} and {r["sigma"] for r in ab} == {0, 1, 2, 4}
    assert on_disk["query_path_check"]["max_abs_diff"] < 1e-4
    # tables, plots and a self-contained page
    table = (out / "table_shape.md").read_text()
    assert "exclude-self" in table and "| original | all | original (20) | 20 |" in table
    assert (out / "table_shape_per_class.md").read_text().count("\n| ") == 1 + 4
    for png in ("per_class_shape.png", "ablation_shape.png", "retrieval_grid_shape.png", "affine_examples.png"):
        assert (out / png).stat().st_size > 1000, png
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "bull" in page
    assert "P@1" in res["summary"] and "affine" in res["summary"]
    # the cores this machine kept busy over the run, of those available: results.json, the page, the summary
    busy = f"{on_disk['cores_busy']:.1f} of {on_disk['cores_available']} cores busy"
    assert on_disk["cores_busy"] > 0 and busy in page and busy in res["summary"]


def test_texture_profile_end_to_end(tmp_path):
    data = make_textures(tmp_path / "tex")
    res = run_shape_evaluate(ShapeEvalConfig(str(data), str(tmp_path / "out"), profile="texture",
                                             protocol="include-self", knn_k=(1,), progress=False))
    recs = res["records"]
    assert len(recs) == 1 and recs[0]["profile"] == "texture" and recs[0]["variant"] == "original"
    r = recs[0]
    # include-self: every query finds itself first
    assert r["p_at_1"] == 100.0 and r["bullseye_window"] == 8
    assert r["knn_accuracy"] >= 90 and r["precision"] >= 90 and r["specificity"] >= 95
    assert [a["name"] for a in res["ablation"]] == ["glcm", "gabor", "glcm + gabor"]
    assert not (tmp_path / "out" / "affine").exists()  # the affine repository is for shapes only
    assert "include-self" in (tmp_path / "out" / "table_texture.md").read_text()


def test_classify_cli_votes_without_the_image_itself(shape_run, tmp_path, capsys):
    from cbir_dist.cli import main

    data, out, _ = shape_run
    pred = tmp_path / "pred.parquet"
    rc = main(["classify", str(data), "--db", str(out / "eval.db"), "--collection", "shape", "-k", "3",
               "--out", str(pred)])
    assert rc == 0
    text = capsys.readouterr().out
    t = pq.read_table(pred).to_pydict()
    assert len(t["path"]) == 20 and set(t["label"]) == set(SHAPES)
    correct = np.mean([a == b for a, b in zip(t["label"], t["predicted"])])
    assert correct >= 0.9
    assert f"accuracy {100 * correct:.1f}" in text
    for own, neigh in zip(t["id"], t["neighbour_ids"]):
        assert len(neigh) == 3 and own not in neigh  # the image's own row is never a voter


def test_score_ranking_protocols_and_bullseye_on_a_tiny_case():
    # 2 queries over a database of 4 rows (ids 10, 11 of class a; 20, 21 of class b)
    ids = np.array([[10, 20, 11, 21], [21, 20, 10, 11]])
    lab = np.array([["a", "b", "a", "b"], ["b", "b", "a", "a"]], dtype=object)
    dist = np.array([[0.0, 1.0, 2.0, 3.0], [0.0, 0.5, 2.0, 3.0]])
    kw = dict(self_in_db=[True, True], knn_k=(1, 3), map_k=3, window=2)
    ex = score_ranking(ids, dist, lab, lab, [10, 21], ["a", "b"], {"a": 2, "b": 2}, exclude_self=True, **kw)
    inc = score_ranking(ids, dist, lab, lab, [10, 21], ["a", "b"], {"a": 2, "b": 2}, exclude_self=False, **kw)
    np.testing.assert_allclose(ex.p_at_1, [0.0, 1.0])  # self dropped: b then a for the first query
    np.testing.assert_allclose(inc.p_at_1, [1.0, 1.0])
    np.testing.assert_allclose(ex.ap, [0.5, 1.0])  # R = 1 after removing self
    np.testing.assert_allclose(inc.bullseye, [0.5, 1.0])  # top 2 including self, over class size 2
    np.testing.assert_allclose(ex.bullseye, inc.bullseye)  # the bull's-eye ignores the protocol
    assert list(ex.predictions[1]) == ["b", "b"]
    assert list(ex.predictions[3]) == ["b", "a"]  # second query: b at 0.5, then a, a


def test_rank_numpy_is_exact_and_breaks_ties_by_index():
    x = np.array([[0.0], [1.0], [1.0], [3.0]])
    idx, dist = rank_numpy(x[:1], x, 3)
    assert idx.tolist() == [[0, 1, 2]] and dist.tolist() == [[0.0, 1.0, 1.0]]


def test_config_rejects_bad_choices(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        ShapeEvalConfig("d", "o", profile="paper")
    with pytest.raises(ValueError, match="knn_k"):
        ShapeEvalConfig("d", "o", knn_k=(0,))
    with pytest.raises(ValueError, match="shape profile only"):
        ShapeEvalConfig("d", "o", profile="texture", n_coeffs=20)
    with pytest.raises(ValueError, match="variants"):
        ShapeEvalConfig("d", "o", variants=("shear",))


def test_evaluate_cli_passes_the_shape_options(monkeypatch, tmp_path, capsys):
    import cbir_dist.evaluation.shapes as se
    from cbir_dist.cli import main

    seen = {}

    def fake(cfg):
        seen["cfg"] = cfg
        return {"summary": "fake summary line"}

    monkeypatch.setattr(se, "run_shape_evaluate", fake)
    rc = main(["evaluate", str(tmp_path), "--profile", "shape", "--out", str(tmp_path / "o"), "--knn-k", "1,7",
               "--no-affine", "--n-coeffs", "20", "--sigma", "2", "--no-extreme-points", "--protocol", "include-self"])
    assert rc == 0 and "fake summary line" in capsys.readouterr().out
    cfg = seen["cfg"]
    assert (cfg.profile, cfg.knn_k, cfg.affine, cfg.n_coeffs, cfg.sigma, cfg.extreme_points, cfg.protocol) == (
        "shape", (1, 7), False, 20, 2.0, False, "include-self")
    spec = se.profile_spec_for(cfg)
    assert dict(spec.block("fourier_shape").params) == {"n_coeffs": 20, "sigma": 2.0, "extreme_points": False}
    assert spec.dim == 20
