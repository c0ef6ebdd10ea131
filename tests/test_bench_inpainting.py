"""benchmarks/inpainting.py: the held-out comparison runs end to end and its margins are computed right."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_inpainting", REPO / "benchmarks" / "inpainting.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_margins_compare_with_the_better_of_telea_and_ns():
    bench = _bench()
    s = {m: {1.0: {"psnr_mean": p, "ssim_mean": q}} for m, p, q in
         (("telea", 20.0, 0.80), ("ns", 21.0, 0.79), ("two-stage", 21.6, 0.80))}
    mg = bench.margins(s)[1.0]
    assert mg["dpsnr"] == pytest.approx(0.6) and mg["dssim"] == pytest.approx(0.0) and mg["ok"]
    s["two-stage"][1.0]["psnr_mean"] = 21.4
    assert not bench.margins(s)[1.0]["ok"]


@pytest.mark.integration
def test_benchmark_runs_on_held_out_images_and_writes_table_json_figure(tmp_path):
    from conftest import shared_path

    data = shared_path("data")
    bench = _bench()
    rc = bench.main(["--data-root", str(data), "--max-images", "2", "--frequencies", "0.5", "6", "--phases", "3",
                     "--methods", "none", "telea", "ns", "two-stage", "--timing", "--timing-repeats", "2",
                     "--out-md", str(tmp_path / "t.md"), "--out-json", str(tmp_path / "t.json"),
                     "--figure", str(tmp_path / "f.png")])
    assert rc == 0
    md = (tmp_path / "t.md").read_text()
    assert "| 0.5 | PSNR |" in md and "| 6 | FSIM |" in md and "× Telea at 256×256" in md and "Targets:" in md
    res = json.loads((tmp_path / "t.json").read_text())
    assert set(res["summary"]) == {"none", "telea", "ns", "two-stage"} and res["phases"] == 3
    assert res["summary"]["telea"]["6"]["psnr_mean"] > res["summary"]["none"]["6"]["psnr_mean"] + 5
    assert set(res["margins"]) == {"0.5", "6"} and res["ms_256"]["two-stage"] > 0
    assert (tmp_path / "f.png").stat().st_size > 10_000
