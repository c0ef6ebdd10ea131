"""`cbir-dist demo`: the generated set makes damage cost precision, a given folder is used, the page is written."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fake_mask_estimator import dark_estimator, dark_weights, no_estimator, _dark_loaded  # noqa: F401 - fixtures

from cbir_dist.cli import main
from cbir_dist.demo import DEMO_CLASSES, make_dataset, run_demo


class _Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class", "").split()
        if tag == "section" and "query" in cls:
            self.sections.append({"label": a["data-label"], "query": a["data-query"], "views": [], "rows": [],
                                  "missing": a.get("data-estimated-missing")})
        elif tag == "img" and "view" in cls:
            self.sections[-1]["views"].append(a["data-view"])
        elif tag == "div" and "hits" in cls:
            self.sections[-1]["rows"].append([])
        elif tag == "img" and "hit" in cls:
            self.sections[-1]["rows"][-1].append(a["data-same"])


def test_generated_demo_damage_costs_precision_and_reconstruction_recovers_it(tmp_path):
    """Descriptors only (no weights): 8 classes x 12; measured intact 96.9, 6 Hz damaged 76.0, Telea 96.9."""
    result = run_demo(tmp_path / "demo", backbone="none", per_class=12)
    p1 = {(r["query"], r["state"]): r["p_at_1"] for r in result.rows}
    intact, damaged = p1[("original", "intact")], p1[("6 Hz", "damaged (zero fill)")]
    rebuilt = p1[("6 Hz", "reconstructed (telea)")]
    assert intact - damaged >= 15 and rebuilt - damaged >= 15, p1
    assert result.n_queries == len(DEMO_CLASSES) * 12
    page = _Sections()
    page.feed(result.page.read_text(encoding="utf-8"))
    found = 1 if result.estimated else 0  # the query whose mask was found, when the estimator is installed
    assert len(page.sections) == result.n_page_queries == len(DEMO_CLASSES) + found  # one damaged query per class
    assert sorted(s["label"] for s in page.sections[found:]) == sorted(c[0] for c in DEMO_CLASSES)
    for s in page.sections[found:]:
        assert s["views"] == ["query", "damaged", "reconstructed"]
        assert [len(r) for r in s["rows"]] == [5, 5, 5]  # intact, zero-filled, reconstructed: top 5 each


def test_demo_uses_a_given_folder_and_prints_the_page(tmp_path, capsys):
    data = make_dataset(tmp_path / "photos", per_class=3, size=48)
    assert main(["demo", "--images", str(data), "--out", str(tmp_path / "out"), "--backbone", "none",
                 "--queries", "2"]) == 0
    out = capsys.readouterr().out
    assert "indexed 18, duplicates 0, rejected 0" in out
    assert re.search(r"\| 6 Hz \| reconstructed \(telea\) \| [\d.]+ \|", out)
    page = tmp_path / "out" / "demo.html"
    assert f"page: {page}" in out and f"--db {tmp_path / 'out' / 'demo.db'} --collection demo" in out
    p = _Sections()
    p.feed(page.read_text(encoding="utf-8"))
    found = 1 if "mask found in it:" in out else 0
    assert len(p.sections) == 6 + found  # 6 classes, one shown each
    assert not (tmp_path / "out" / "images").exists()  # nothing generated


def test_the_demo_page_opens_with_a_query_whose_mask_was_found_in_it(tmp_path, dark_estimator, capsys):
    data = make_dataset(tmp_path / "photos", per_class=3, size=48)
    assert main(["demo", "--images", str(data), "--out", str(tmp_path / "out"), "--backbone", "none",
                 "--queries", "2"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"the first one's mask found in it: ([\d.]+)% missing, IoU ([\d.]+) with the true one", out)
    assert m and float(m.group(1)) == pytest.approx(25.0, abs=2) and float(m.group(2)) >= 0.95, out
    p = _Sections()
    p.feed((tmp_path / "out" / "demo.html").read_text(encoding="utf-8"))
    assert len(p.sections) == 6 + 1
    first, twin = p.sections[0], p.sections[1]
    assert first["views"] == ["query", "damaged", "mask", "reconstructed"] and first["query"] == twin["query"]
    assert float(first["missing"]) == pytest.approx(0.25, abs=0.02) and twin["missing"] is None
    assert [len(r) for r in first["rows"]] == [5]  # its top 5, searched through the mask it was found to have
    assert all("mask" not in s["views"] for s in p.sections[1:])


def test_without_the_estimator_the_demo_says_why_and_shows_the_rest(tmp_path, no_estimator, capsys):
    data = make_dataset(tmp_path / "photos", per_class=3, size=48)
    result = run_demo(tmp_path / "out", images=data, backbone="none", queries_per_class=2)
    assert result.estimated is None and "mask estimator weights not found" in result.why_not_estimated
    p = _Sections()
    page = result.page.read_text(encoding="utf-8")
    p.feed(page)
    assert len(p.sections) == result.n_page_queries == 6
    assert "no query with its mask found in it: " in page


@pytest.mark.parametrize("images", ["missing", "empty"])
def test_demo_with_a_bad_folder_is_an_input_error(tmp_path, capsys, images):
    (tmp_path / "empty").mkdir()
    assert main(["demo", "--images", str(tmp_path / images), "--out", str(tmp_path / "out"),
                 "--backbone", "none"]) == 2
    assert str(tmp_path / images) in capsys.readouterr().err
