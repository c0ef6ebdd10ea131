"""The evaluation job end to end on a tiny generated set: outputs, schema, metrics, concurrency under Ray."""

import json

import numpy as np
import pytest

from cbir_dist.demo import make_dataset
from cbir_dist.evaluation.damaged import (
    EvalConfig,
    mask_phase,
    run_evaluate,
    select_queries,
)
from cbir_dist.io.records import Record

METRICS = ("p_at_1", "p_at_5", "p_at_10", "map")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = make_dataset(root / "data", per_class=4, size=64)
    cfg = EvalConfig(str(data), str(root / "out"), frequencies=(0.5, 6.0), backbones=("mobilenet_v2",),
                     inpainters=("none", "telea", "two-stage"), weights={"mobilenet_v2": "random"}, image_size=64,
                     queries=None, repeats=2, backend="ray", map_k=23)
    res = run_evaluate(cfg, progress=False)
    return cfg, res, root / "out"


def test_outputs_exist(evaluated):
    _, _, out = evaluated
    for name in ("results.json", "table1.md", "table2.md", "report.html", "precision_vs_frequency.png",
                 "quality_vs_frequency.png", "fig6.png", "timeline.png"):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "Table 2" in html


def test_results_json_schema(evaluated):
    cfg, _, out = evaluated
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"config", "versions", "records"}
    recs = res["records"]
    assert len(recs) == 2 * 3 * 3  # frequencies x inpainters x states
    for r in recs:
        assert r["state"] in ("original", "damaged", "reconstructed")
        for key in ("backbone", "inpainter", "frequency", "wall_seconds", *METRICS, *(m + "_std" for m in METRICS)):
            assert key in r, key
    rec = [r for r in recs if r["state"] == "reconstructed"]
    for r in rec:
        for key in ("ssim", "fsim", "psnr", "ssim_std", "fsim_std", "psnr_std"):
            assert key in r
    # the zero-filled image is worse than Telea's reconstruction, and 6 Hz/25 % damage is not identity
    tel = {r["frequency"]: r for r in rec if r["inpainter"] == "telea"}
    non = {r["frequency"]: r for r in rec if r["inpainter"] == "none"}
    for f in (0.5, 6.0):
        assert tel[f]["psnr"] > non[f]["psnr"] and tel[f]["ssim"] > non[f]["ssim"]
        assert non[f]["ssim"] < 0.99
    # with two repeats the phases differ, so the damaged figures have a spread in at least one cell
    assert any(r["psnr_std"] > 0 for r in rec)


def test_the_report_and_results_say_how_many_cores_the_machine_kept_busy(evaluated):
    from cbir_dist.evaluation.report.damaged import run_md

    _, res, out = evaluated
    saved = json.loads((out / "results.json").read_text())
    assert saved["cores_available"] >= 1 and 0 < saved["cores_busy"] == res["cores_busy"]
    html = (out / "report.html").read_text()
    assert "The run" in html and f"{saved['cores_busy']:.1f} of {saved['cores_available']} cores busy" in html
    # off Linux (no /proc/stat) the figure is absent, the rest of the paragraph stays
    text = run_md({**saved, "cores_busy": None})
    assert "cores busy" not in text.replace("Cores busy", "") and f"{saved['wall_seconds']:.0f} s; " in text


def test_intact_precision_matches_a_brute_force_recount(evaluated):
    """P@1 and P@5 of the intact queries equal a numpy recount over the stored vectors (exclude-self)."""
    from cbir_dist.store import VectorStore

    cfg, res, out = evaluated
    orig = next(r for r in res["records"] if r["state"] == "original")
    store = VectorStore(str(out / "eval.db"), "eval_mobilenet_v2")
    try:
        ids = [int(i) for i in res["config"]["query_ids"]]
        rows = store.fetch(ids)
    finally:
        store.close()
    x, labels = rows["vector"].astype(np.float64), np.asarray(rows["label"], dtype=object)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)  # exclude-self
    order = np.argsort(d, axis=1, kind="stable")
    hits = labels[order] == labels[:, None]
    assert orig["p_at_1"] == pytest.approx(100 * hits[:, 0].mean())
    assert orig["p_at_5"] == pytest.approx(100 * hits[:, :5].mean(axis=1).mean())


def test_original_state_is_shared_and_inpainter_none_equals_damaged(evaluated):
    _, res, _ = evaluated
    recs = res["records"]
    origs = {r["p_at_1"] for r in recs if r["state"] == "original"}
    assert len(origs) == 1
    for r in recs:
        if r["inpainter"] == "none" and r["state"] == "reconstructed":
            d = next(x for x in recs if x["state"] == "damaged" and x["frequency"] == r["frequency"]
                     and x["inpainter"] == "none")
            assert all(r[m] == d[m] for m in METRICS)


def test_cells_ran_concurrently(evaluated):
    _, res, _ = evaluated
    tl = res["timeline"]
    assert len({t["pid"] for t in tl}) >= 2, "all tasks ran in one worker"
    overlaps = [(a, b) for i, a in enumerate(tl) for b in tl[i + 1:]
                if a["pid"] != b["pid"] and a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlaps, "no two tasks overlapped in time"


def test_the_network_ran_in_its_actor_on_telea_s_prefill(evaluated):
    """two-stage: no pre-fill task of its own (Telea's cells are its pre-fill), the network in one actor process."""
    _, res, _ = evaluated
    tl = res["timeline"]
    net = [t for t in tl if t["task"].startswith("network two-stage")]
    assert len(net) == 2 * 2  # frequencies x repeats
    assert len({t["pid"] for t in net}) == 1  # one actor, loaded once
    assert not [t for t in tl if t["task"].startswith("pre-fill")]
    cpu_pids = {t["pid"] for t in tl if t["task"].startswith(("quality", "features", "reconstruct"))}
    assert net[0]["pid"] not in cpu_pids
    rec = {(r["inpainter"], r["frequency"]): r for r in res["records"] if r["state"] == "reconstructed"}
    for f in (0.5, 6.0):
        assert rec[("two-stage", f)]["psnr"] > rec[("none", f)]["psnr"] + 5


def test_network_actor_equals_the_inpainter_and_telea_is_its_prefill():
    from cbir_dist.damage.inpaint import get_inpainter
    from cbir_dist.damage.masks import apply_mask, fringe_mask
    from cbir_dist.evaluation.damaged_tasks import NetworkActor, reconstruct_task

    imgs = [np.asarray(make_image(s)) for s in range(3)]
    f, ph = 2.0, 0.7
    pre = reconstruct_task(imgs, f, "two-stage", ph, 0.25)
    assert all(np.array_equal(a, b) for a, b in zip(pre["reconstructed"],
                                                    reconstruct_task(imgs, f, "telea", ph, 0.25)["reconstructed"]))
    out = NetworkActor("two-stage", "cpu").refine(imgs, pre, f, ph, 0.25)
    net = get_inpainter("two-stage", device="cpu")
    masks = [fringe_mask(img.shape[0], img.shape[1], f, 0.25, phase=ph) for img in imgs]
    want = [net(apply_mask(img, k), k) for img, k in zip(imgs, masks)]
    assert not out["errors"] and all(np.array_equal(a, b) for a, b in zip(out["reconstructed"], want))


def make_image(seed, size=48):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 4, yy * 4, (xx + yy) * 2], 2) + rng.normal(0, 10, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_progress_notes_each_finished_cell_above_a_tqdm_bar_with_its_eta():
    import io
    import re

    from cbir_dist.io.progress import NullBar, progress

    out = io.StringIO()
    bar = progress(4, True, "evaluate", "cell", file=out)
    bar.note("evaluate: 1/4 cells done (quality 1 Hz telea r0)")
    bar.update(1)
    bar.note("evaluate: 2/4 cells done (features x)")
    bar.update(1)
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "evaluate: 1/4 cells done (quality 1 Hz telea r0)" in lines
    assert "evaluate: 2/4 cells done (features x)" in lines
    assert re.search(r"evaluate: +50%.*\| 2/4 \[\d\d:\d\d<\d\d:\d\d", text), text  # tqdm's count and ETA
    silent = progress(4, False, "evaluate", "cell")
    assert isinstance(silent, NullBar)
    with silent:
        silent.note("x")
        silent.update(1)
        silent.set_postfix_str("x")


def test_tables_name_the_protocol(evaluated):
    _, _, out = evaluated
    t2 = (out / "table2.md").read_text()
    assert "exclude-self" in t2 and "| 6 |" in t2 and "telea P@1" in t2
    t1 = (out / "table1.md").read_text()
    assert "| 0.5 |" in t1 and "telea SSIM" in t1


def test_select_queries_is_stratified_and_seeded():
    recs = [Record(f"/d/{c}/{i}.png", c) for c in "abc" for i in range(10)]
    q = select_queries(recs, 7, seed=3)
    assert len(q) == 7 and q == select_queries(recs, 7, seed=3)
    counts = {c: sum(r.label == c for r in q) for c in "abc"}
    assert sorted(counts.values()) == [2, 2, 3]
    assert select_queries(recs, None, 0) == recs


def test_mask_phases_differ_per_repeat():
    phases = [mask_phase(0, 6.0, r) for r in range(4)]
    assert phases[0] == 0.0 and len(set(phases)) == 4 and all(0 <= p <= np.pi for p in phases)


@pytest.mark.parametrize("kwargs, msg", [({"protocol": "x"}, "protocol"), ({"repeats": 0}, "repeats"),
                                         ({"frequencies": (0.0,)}, "positive"), ({"inpainters": ()}, "inpainter")])
def test_config_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        EvalConfig("d", "o", **kwargs)
