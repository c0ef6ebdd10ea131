"""docs/architecture.md's table of folders cannot drift: it is checked against the import-linter
contracts in pyproject.toml and against the imports the code really makes (grimp, import-linter's
own graph builder; imports under ``TYPE_CHECKING`` excluded, as the contracts exclude them)."""

from __future__ import annotations

import re
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
SECTION = "## Folders and what each may import"
GUARDED = ("ray", "pymilvus", "milvus_lite", "torch", "torchvision")  # the forbidden contracts' modules
UNLISTED = {"errors", "numpy", "__future__"}  # every folder may import these: the table says so once


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _names(cell: str) -> set[str]:
    """The names of a cell: `code` spans or bare words, ``/`` and ``.py`` dropped; "nothing" is none."""
    cell = re.sub(r"\s*\([^)]*\)", "", cell).strip()  # a remark in parentheses is not a name
    if cell in ("nothing", "—", ""):
        return set()
    return {re.sub(r"(/|\.py)$", "", n.strip().strip("`")) for n in cell.split(",") if n.strip()}


def _table() -> list[dict]:
    text = DOC.read_text()
    assert SECTION in text, f"{DOC} lost its section {SECTION!r}"
    rows = []
    for line in text.split(SECTION, 1)[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0].isdigit():
            assert len(cells) == 5, f"a row of the table needs 5 cells (layer, folder, owns, imports, third-party): {line[:80]}"
            rows.append({"layer": int(cells[0]), "folder": _names(cells[1]).pop(), "imports": _names(cells[3]),
                         "third_party": _names(cells[4])})
        elif rows and not line.startswith("|"):
            break
    assert rows, f"no table rows under {SECTION!r} in {DOC}"
    return rows


@pytest.fixture(scope="module")
def actual() -> tuple[dict, dict]:
    """Top-level folder → the other folders it imports, and → the third-party packages it imports."""
    import grimp

    graph = grimp.build_graph("cbir_dist", include_external_packages=True, exclude_type_checking_imports=True)
    folders, third = defaultdict(set), defaultdict(set)
    for module in graph.modules:
        if not module.startswith("cbir_dist."):
            continue
        top = module.split(".")[1]
        for dep in graph.find_modules_directly_imported_by(module):
            if dep.startswith("cbir_dist."):
                if dep.split(".")[1] != top:
                    folders[top].add(dep.split(".")[1])
            elif dep != "cbir_dist" and dep.split(".")[0] not in sys.stdlib_module_names:
                third[top].add(dep.split(".")[0])
    return folders, third


def test_the_table_lists_the_layers_of_the_contract_in_order():
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    expected = [{n.strip() for n in level.split("|")} for level in layers["layers"]]
    rows = _table()
    got = defaultdict(set)
    for r in rows:
        got[r["layer"]].add(r["folder"])
    assert [got[k] for k in sorted(got)] == expected, "the table's layers differ from pyproject.toml's"
    assert sorted(got) == list(range(1, len(expected) + 1))


def test_each_folder_imports_exactly_what_the_table_says_and_only_from_below(actual):
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    level = {n.strip(): i for i, lv in enumerate(layers["layers"]) for n in lv.split("|")}
    folders, third = actual
    for r in _table():
        name = r["folder"]
        below = {f for f, i in level.items() if i > level[name]}
        assert r["imports"] <= below, f"{name}: the table lets it import {r['imports'] - below}, not below it"
        assert folders[name] - UNLISTED == r["imports"] - UNLISTED, (
            f"{name}: the code imports {sorted(folders[name] - UNLISTED)}, the table says {sorted(r['imports'])}")
        assert third[name] - UNLISTED == r["third_party"] - UNLISTED, (
            f"{name}: the code imports the third-party {sorted(third[name] - UNLISTED)}, the table says "
            f"{sorted(r['third_party'])}")


def test_guarded_packages_appear_only_in_the_rows_their_contracts_allow():
    allowed = defaultdict(set)  # guarded package -> top-level folders the forbidden contracts let import it
    for c in _contracts():
        if c["type"] != "forbidden":
            continue
        for rule in c.get("ignore_imports", []):
            source, target = (s.strip() for s in rule.split("->"))
            allowed[target.split(".")[0]].add(source.split(".")[1])
    assert set(allowed) == set(GUARDED), "a guarded package was added or removed: update GUARDED"
    for pkg in GUARDED:
        rows = {r["folder"] for r in _table() if pkg in r["third_party"]}
        assert rows == allowed[pkg], f"{pkg}: the table has it in {sorted(rows)}, the contracts allow {sorted(allowed[pkg])}"


def test_every_module_the_docs_name_exists():
    """Each `folder/module.py` the architecture names is a file of the repository (renamed modules are
    caught); a path may be given relative to any package folder. ``my_*`` names are examples."""
    text = DOC.read_text()
    named = {n for n in re.findall(r"`((?:[a-z_]+/)+[a-z_]+\.py)", text) if not Path(n).name.startswith("my_")}
    files = {p.relative_to(REPO).as_posix() for top in ("cbir_dist", "jobs", "tests", "benchmarks", "scripts")
             for p in (REPO / top).rglob("*.py")}
    missing = sorted(n for n in named if not any(f == n or f.endswith("/" + n) for f in files))
    assert named and not missing, f"{DOC} names modules that do not exist: {missing}"
