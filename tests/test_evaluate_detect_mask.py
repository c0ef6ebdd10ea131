"""``cbir-dist evaluate --detect-mask``: the same damaged queries reconstructed through the mask the estimator
finds in them, an ``estimated`` record beside every true-mask record, and the masks' IoU per frequency.

The shipped estimator's weights are not needed: the in-process (local) runs replace the process-wide
estimator (``detect._ESTIMATOR``) by one that returns the true mask, or one that finds nothing; the Ray
run uses ``--mask-estimator classical``, which the workers build themselves.
"""

import hashlib
import json
import os

import numpy as np
import pytest

from cbir_dist.demo import make_dataset
from cbir_dist.evaluation.damaged import EvalConfig, mask_phase, run_evaluate

METRICS = ("p_at_1", "p_at_5", "p_at_10", "map")
QUALITY = ("ssim", "fsim", "psnr")
FREQS = (0.5, 6.0)


def _cfg(data, out, **kw):
    base = dict(frequencies=FREQS, backbones=("none",), inpainters=("none", "telea"), image_size=64, queries=6,
                repeats=2, map_k=17, detect_mask=True)
    return EvalConfig(str(data), str(out), **{**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("detect_data") / "data", per_class=3, size=64)


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


class TrueMask:
    """An estimator that knows every damaged query of the run: returns its true known mask, exactly."""

    def __init__(self, data, cfg: EvalConfig):
        from cbir_dist.damage.masks import apply_mask, fringe_mask
        from cbir_dist.io.files import list_images
        from cbir_dist.io.records import read_record

        self.masks, self.calls = {}, 0
        for f in cfg.frequencies:
            for rep in range(cfg.repeats):
                for path in list_images(str(data)):
                    img = read_record(path).image
                    known = fringe_mask(img.shape[0], img.shape[1], f, cfg.missing_fraction,
                                        phase=mask_phase(cfg.seed, f, rep))
                    self.masks[_key(apply_mask(img, known))] = known

    def __call__(self, image):
        self.calls += 1
        return self.masks[_key(image)].copy()


def _by_cell(records, state):
    return {(r["backbone"], r["frequency"], r["inpainter"]): r for r in records if r["state"] == state}


# --- the option ------------------------------------------------------------------------------------------


def test_the_option_parses_and_reaches_the_config(tmp_path, monkeypatch):
    import cbir_dist.evaluation.damaged as damaged
    from cbir_dist.cli import build_parser, main

    parser = build_parser()
    args = parser.parse_args(["evaluate", "d", "--out", "o", "--detect-mask", "--mask-estimator", "classical"])
    assert args.detect_mask is True and args.mask_estimator == "classical"
    args = parser.parse_args(["evaluate", "d", "--out", "o"])
    assert args.detect_mask is False and args.mask_estimator == "network"
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["evaluate", "d", "--out", "o", "--mask-estimator", "oracle"])
    assert e.value.code == 2

    seen = {}

    def fake_run(cfg, **_kw):
        seen["cfg"] = cfg
        (tmp_path / "ev").mkdir()
        (tmp_path / "ev" / "table2.md").write_text("table 2\n")
        return {"wall_seconds": 0.0}

    monkeypatch.setattr(damaged, "run_evaluate", fake_run)
    data = make_dataset(tmp_path / "d", per_class=2, size=32)
    assert main(["evaluate", str(data), "--out", str(tmp_path / "ev"), "--backbones", "none", "--detect-mask",
                 "--mask-estimator", "classical"]) == 0
    assert seen["cfg"].detect_mask is True and seen["cfg"].mask_estimator == "classical"


def test_detect_mask_is_refused_with_the_shape_profile_and_a_bad_estimator(tmp_path, capsys):
    from cbir_dist.cli import main

    assert main(["evaluate", str(tmp_path), "--out", str(tmp_path / "ev"), "--profile", "shape", "--detect-mask"]) == 2
    assert "--detect-mask applies to the damaged-query evaluation" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mask-estimator"):
        EvalConfig("d", "o", detect_mask=True, mask_estimator="oracle")


# --- the estimator's task ----------------------------------------------------------------------------------


def test_estimate_masks_task_scores_iou_and_keeps_a_failing_image_as_damaged(monkeypatch):
    from cbir_dist.damage import detect
    from cbir_dist.damage.masks import fringe_mask
    from cbir_dist.evaluation.damaged_tasks import damaged_pairs, estimate_masks_task, mask_iou

    rng = np.random.default_rng(0)
    imgs = [rng.integers(40, 255, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    f, ph = 2.0, 0.4
    known = fringe_mask(48, 40, f, 0.25, phase=ph)
    calls = []

    def estimator(image):
        calls.append(image)
        if len(calls) == 2:
            raise RuntimeError("bad image")
        return known if len(calls) == 1 else np.ones(image.shape[:2], bool)

    monkeypatch.setattr(detect, "_ESTIMATOR", estimator)
    summary, masks = estimate_masks_task(imgs, f, ph, 0.25)
    assert len(calls) == 3 and not calls[0][~known].any()  # it saw the zero-filled query
    assert np.array_equal(masks[0], known) and masks[1] is None and masks[2] is None
    assert summary["iou"].tolist() == [1.0, 0.0, 0.0] and summary["found_nothing"] == 2
    assert list(summary["errors"]) == [1] and "bad image" in summary["errors"][1]
    assert summary["missing"] == pytest.approx([1 - known.mean()] * 3)
    assert summary["estimated_missing"] == pytest.approx([1 - known.mean(), 0.0, 0.0])
    # through the masks: the true damage where the mask was found, the zero-filled query as it is elsewhere
    true = damaged_pairs(imgs, f, ph, 0.25)
    est = damaged_pairs(imgs, f, ph, 0.25, masks)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(true, est))
    assert [m is None for _, m in est] == [False, True, True]
    partial = known.copy()
    partial[:, :20] = True  # finds the right half's holes only
    assert 0.0 < mask_iou(known, partial) < 1.0 and mask_iou(known, None) == 0.0


# --- whole evaluations -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle_run(data, tmp_path_factory):
    from cbir_dist.damage import detect

    cfg = _cfg(data, tmp_path_factory.mktemp("oracle") / "out", backend="local",
               inpainters=("none", "telea", "two-stage"))
    oracle = TrueMask(data, cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(detect, "_ESTIMATOR", oracle)
        res = run_evaluate(cfg, progress=False)
    return cfg, res, oracle


def test_with_the_true_mask_the_estimated_rows_equal_the_true_mask_rows(oracle_run):
    cfg, res, oracle = oracle_run
    assert oracle.calls == len(cfg.frequencies) * cfg.repeats * cfg.queries  # one estimate per query and mask
    recs = res["records"]
    true, est = _by_cell(recs, "reconstructed"), _by_cell(recs, "estimated")
    assert set(est) == set(true) and len(est) == len(FREQS) * 3
    for cell, r in est.items():
        for key in (*METRICS, *QUALITY):
            assert r[key] == true[cell][key], (cell, key)
            assert r[f"{key}_std"] == true[cell][f"{key}_std"], (cell, key)
        assert r["mask_iou"] == 1.0 and r["mask_iou_std"] == 0.0
    # the rows are not all alike: the test would see a wrong reconstruction
    assert est[("none", 6.0, "telea")]["psnr"] > est[("none", 6.0, "none")]["psnr"] + 5
    rows = {r["frequency"]: r for r in res["mask_estimation"]}
    assert sorted(rows) == list(FREQS)
    for r in rows.values():
        assert r["mask_iou"] == 1.0 and r["found_nothing"] == 0 and r["n_images"] == cfg.repeats * cfg.queries
        assert r["estimated_missing_fraction"] == pytest.approx(r["missing_fraction"])


def test_the_estimated_rows_sit_beside_the_true_rows_in_results_json_and_the_tables(oracle_run):
    cfg, _, _ = oracle_run
    out = cfg.out
    saved = json.loads(open(os.path.join(out, "results.json")).read())
    assert saved["config"]["detect_mask"] is True and saved["config"]["mask_estimator"] == "network"
    states = [(r["frequency"], r["inpainter"], r["state"]) for r in saved["records"]]
    for f in FREQS:
        for inp in cfg.inpainters:
            i = states.index((f, inp, "reconstructed"))
            assert states[i + 1] == (f, inp, "estimated")
    for r in saved["records"]:
        if r["state"] == "estimated":
            for key in ("backbone", "inpainter", "frequency", "wall_seconds", "mask_iou", "mask_iou_std",
                        *METRICS, *QUALITY, *(m + "_std" for m in (*METRICS, *QUALITY))):
                assert key in r, key
    assert [r["frequency"] for r in saved["mask_estimation"]] == list(FREQS)
    t2 = open(os.path.join(out, "table2.md")).read()
    assert "| 0.5 estimated mask |" in t2 and "| 6 estimated mask |" in t2
    assert "| 6 | 1.000 | 25.0 | 25.0 | 0 of 12 |" in t2  # IoU, true and estimated missing %, nothing found
    assert "two-stage ΔP@1" in t2 and "| 6 | 1.000 | +0.0 | +0.0 | +0.0 |" in t2
    assert "| 6 estimated mask |" in open(os.path.join(out, "table1.md")).read()
    html = open(os.path.join(out, "report.html")).read()
    assert "Estimated masks" in html and "0.5 estimated mask" in html and "mask IoU" in html


def test_an_estimator_that_finds_nothing_searches_the_damaged_images(data, tmp_path):
    """Nothing found (and, for one image, an estimator that fails: the same, and an errors.parquet row)."""
    from cbir_dist.damage import detect
    from cbir_dist.io.tables import read_parquet

    calls = []

    def nothing(image):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("estimator broke")
        return np.ones(image.shape[:2], bool)

    cfg = _cfg(data, tmp_path / "out", backend="local", inpainters=("none", "telea", "two-stage"), repeats=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(detect, "_ESTIMATOR", nothing)
        res = run_evaluate(cfg, progress=False)
    errors = read_parquet(tmp_path / "out" / "errors.parquet")
    assert errors["status"] == ["mask_estimate_failed"] and "estimator broke" in errors["reason"][0]
    recs = res["records"]
    damaged, est = _by_cell(recs, "damaged"), _by_cell(recs, "estimated")
    none_quality = _by_cell(recs, "reconstructed")
    assert len(est) == len(FREQS) * 3
    for (bb, f, inp), r in est.items():
        assert r["mask_iou"] == 0.0
        for key in METRICS:  # every inpainter's "reconstruction" is the damaged image itself
            assert r[key] == damaged[(bb, f, inp)][key], (f, inp, key)
        for key in QUALITY:
            assert r[key] == pytest.approx(none_quality[(bb, f, "none")][key]), (f, inp, key)
    for row in res["mask_estimation"]:
        assert row["mask_iou"] == 0.0 and row["estimated_missing_fraction"] == 0.0
        assert row["found_nothing"] == row["n_images"] == cfg.queries
    assert "| 6 | 0.000 | 25.0 | 0.0 | 6 of 6 |" in (tmp_path / "out" / "table2.md").read_text()


def test_on_ray_the_workers_estimate_the_masks(data, tmp_path):
    """Ray workers build the estimator themselves (``--mask-estimator classical``): the masks are estimated in
    worker processes, the estimated rows and the IoU come back beside the true-mask rows."""
    cfg = _cfg(data, tmp_path / "out", backend="ray", mask_estimator="classical", repeats=1)
    res = run_evaluate(cfg, progress=False)
    masks = [t for t in res["timeline"] if t["task"].startswith("estimate masks (classical)")]
    assert len(masks) == len(FREQS) and os.getpid() not in {t["pid"] for t in masks}
    assert any(t["task"].startswith("reconstruct telea (estimated mask)") for t in res["timeline"])
    est = _by_cell(res["records"], "estimated")
    assert sorted(est) == sorted(("none", f, i) for f in FREQS for i in cfg.inpainters)
    rows = {r["frequency"]: r for r in res["mask_estimation"]}
    assert sorted(rows) == list(FREQS) and all(r["estimator"] == "classical" for r in rows.values())
    # the generated images have no black pixels: wide bands are found whole; 6 Hz bands are thin, and the
    # baseline's 3x3 opening loses some of them
    assert rows[0.5]["mask_iou"] > 0.95
    assert 0.0 < rows[6.0]["mask_iou"] <= 1.0
    for cell, r in est.items():
        assert r["mask_iou"] == rows[cell[1]]["mask_iou"]


def test_missing_estimator_weights_fail_before_any_work(data, tmp_path, monkeypatch):
    from cbir_dist.damage import detect
    from cbir_dist.errors import WeightsError

    monkeypatch.setattr(detect, "_ESTIMATOR", None)
    monkeypatch.setattr(detect, "DEFAULT_WEIGHTS", tmp_path / "nowhere" / "mask_estimator.pt")
    monkeypatch.delenv("CBIR_MASK_ESTIMATOR_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match="mask estimator weights not found"):
        run_evaluate(_cfg(data, tmp_path / "out", backend="local"), progress=False)
    assert not (tmp_path / "out").exists()  # nothing indexed, nothing written
