"""Every command that writes writes only what it was told to write, and leaves no temporary file.

``cbir-dist query ... --html hits.html`` once wrote its page over one of the user's images: the
page writer reused the variable holding the page's path for an unreadable hit's path. This module
closes that class of bug for every subcommand: it snapshots (path, size, mtime_ns, sha256) of every
file under the inputs, the store, the outputs and the working directory (all inside one tmp
folder), runs the command as a subprocess, and asserts that every changed, added or removed path
equals or lies under an output the command was given (the file of --out/--html, the --db folder of
a command that writes a store, --run-dir, the --out folder of evaluate/demo/train-inpainter), that
the outputs exist, and that no ``.NAME.PID.tmp`` file is left anywhere.

Conditions: hits whose stored image is junk, empty or deleted; odd names (spaces, "é", a leading
dash, quotes) for inputs, stores and outputs; relative and absolute paths; running from a working
directory where the stored relative paths do not resolve. A milvus-lite store is a folder and its
lock file is ``LOCK`` inside it; nothing is allowed beside it. Commands that only read a store
(query, classify, info) must leave it as it was, and must not create one at a mistyped --db.
Descriptors only (``--backbone none``), ``--backend local``: about 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
#: what :func:`cbir_dist.io.tables.atomic_path` names its temporary files
TMP_NAME = re.compile(r"^\..+\.\d+\.tmp$")
#: odd file and folder names: a space, a non-ASCII letter, a leading dash, quotes
CLASSES = ("alpha", "beta é", "-gamma")
NAMES = ("plain", "with space", "é accent", "-lead", "quo'te", 'dq"x')
DESCRIPTORS = ("--backbone", "none", "--descriptors", "correlogram,gabor")
#: the tiny two-stage network of tests/test_two_stage.py
TINY = {"coarse_channels": 16, "coarse_blocks": 2, "refine_channels": 16, "refine_skip_channels": 8,
        "refine_blocks": 1, "half_channels": 8}
TINY_TRAINING = ("--config", json.dumps(TINY), "--batch-size", "2", "--crop-min", "32", "--crop-max", "32", "--warmup",
                 "1", "--ssim-batch", "1", "--log-every", "1", "--snapshot-every", "0", "--threads", "1", "--no-ray")


# --- the snapshot helpers (reusable) ---------------------------------------------------------------


def snapshot(*roots: str | os.PathLike) -> dict[str, tuple]:
    """Every path under ``roots`` (each a folder or a file; absent ones are skipped) -> what it holds.

    A file maps to ``(size, mtime_ns, sha256)``, a symlink to ``("link", target)`` (not followed), a
    folder to ``("dir",)`` (its mtime changes with its entries, so only its existence counts).
    Paths are absolute, symlinks in the roots themselves resolved.
    """
    out: dict[str, tuple] = {}

    def one(p: str) -> None:
        st = os.lstat(p)
        if os.path.islink(p):
            out[p] = ("link", os.readlink(p))
        elif os.path.isdir(p):
            out[p] = ("dir",)
        else:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[p] = (st.st_size, st.st_mtime_ns, h.hexdigest())

    for root in roots:
        root = os.path.realpath(root)
        if not os.path.lexists(root):
            continue
        one(root)
        for dirpath, dirnames, filenames in os.walk(root):  # does not descend into symlinked folders
            for name in dirnames + filenames:
                one(os.path.join(dirpath, name))
    return out


def changed(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    """Paths added, removed or changed (size, mtime or content) between two snapshots."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def outside(paths: set[str], allowed, after: dict[str, tuple] | None = None) -> set[str]:
    """The ``paths`` that are no allowed output: not equal to one, not under one, and not a folder
    created to hold one (an ancestor of an allowed output that is a folder in ``after``)."""
    allowed = [os.path.realpath(a) for a in allowed]

    def ok(p: str) -> bool:
        if any(p == a or p.startswith(a + os.sep) for a in allowed):
            return True
        return bool(after) and after.get(p) == ("dir",) and any(a.startswith(p + os.sep) for a in allowed)

    return {p for p in paths if not ok(p)}


def temp_files(snap: dict[str, tuple]) -> list[str]:
    """Leftover temporary files of the atomic writers (``.NAME.PID.tmp``) in a snapshot."""
    return sorted(p for p in snap if TMP_NAME.match(os.path.basename(p)))


def cbir(args, *, cwd, roots, allowed=(), rc: int | tuple = 0, timeout=240) -> subprocess.CompletedProcess:
    """Run ``cbir-dist ARGS`` in ``cwd`` and assert its exit status (``rc`` or one of them), that it changed nothing under
    ``roots`` but ``allowed`` (paths relative to ``cwd`` or absolute), and that no temporary file is left."""
    cwd = Path(cwd)
    before = snapshot(*roots)
    assert not temp_files(before)
    r = subprocess.run([sys.executable, "-m", "cbir_dist.cli", *map(str, args)], cwd=cwd, env=ENV,
                       capture_output=True, text=True, timeout=timeout)
    after = snapshot(*roots)
    what = f"cbir-dist {' '.join(map(str, args))} (in {cwd})"
    assert r.returncode in ((rc,) if isinstance(rc, int) else rc), \
        f"{what}: exit status {r.returncode}, not {rc}\n{r.stdout}\n{r.stderr}"
    stray = outside(changed(before, after), [cwd / a for a in allowed], after)
    assert not stray, f"{what} wrote outside its outputs {list(map(str, allowed))}: {sorted(stray)}"
    assert not temp_files(after), f"{what} left temporary files: {temp_files(after)}"
    return r


# --- a tiny image set with odd names -------------------------------------------------------------------


def make_set(root: Path, per_class: int = len(NAMES)) -> Path:
    """``root/<class>/<name>.png``: 3 classes x ``per_class`` 32 x 32 PNGs, each class its own pattern."""
    yy, xx = np.mgrid[0:32, 0:32]
    for ci, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(NAMES[:per_class]):
            rng = np.random.default_rng(10 * ci + i)
            img = np.stack([(xx * 8 * (ci + 1)) % 256, yy * 8, (xx + yy) * 4 * (3 - ci)], 2)
            img = img + rng.normal(0, 10, (32, 32, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / c / f"{name}.png")
    return root


def index_set(root: Path) -> dict:
    """``root/data`` (odd names) indexed from ``root/a`` with relative paths into ``root/store é/my 'db'.db``."""
    data = make_set(root / "data")
    (root / "a").mkdir()
    db, run = "../store é/my 'db'.db", "../run é"
    cbir(["index", "../data", "--db", db, "--collection", "c", "--run-dir", run, *DESCRIPTORS],
         cwd=root / "a", roots=[root], allowed=[db, run])
    return {"root": root, "data": data, "db": root / "store é" / "my 'db'.db", "a": root / "a"}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """One collection for the commands that only read it (never damaged by a test)."""
    return index_set(tmp_path_factory.mktemp("untouched"))


def _is_page(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>"), path
    return text


# --- the tests ---------------------------------------------------------------------------------------


def test_snapshot_sees_new_changed_touched_and_removed_paths(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    (tmp_path / "g").write_bytes(b"y")
    before = snapshot(tmp_path)
    assert set(before) == {str(tmp_path), str(tmp_path / "d"), str(tmp_path / "d" / "f"), str(tmp_path / "g")}
    assert changed(before, snapshot(tmp_path)) == set()
    (tmp_path / "d" / "f").write_bytes(b"z")  # same size, other bytes
    os.utime(tmp_path / "g", ns=(1, 1))  # same bytes, other mtime
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "h").write_bytes(b"")
    (tmp_path / "gone").mkdir()
    snap = snapshot(tmp_path)
    shutil.rmtree(tmp_path / "gone")
    after = snapshot(tmp_path)
    diff = changed(before, after)
    assert diff == {str(tmp_path / p) for p in ("d/f", "g", "new", "new/h")}
    assert changed(snap, after) == {str(tmp_path / "gone")}
    assert outside(diff, [tmp_path / "new" / "h", tmp_path / "d"], after) == {str(tmp_path / "g")}
    assert temp_files({str(tmp_path / ".hits.html.123.tmp"): (), str(tmp_path / "x.tmp"): ()}) == [
        str(tmp_path / ".hits.html.123.tmp")]


@pytest.mark.parametrize("paths", ["relative", "absolute"])
def test_index_writes_only_its_store_and_run_dir(tmp_path, paths):
    """Odd names in the images, the store and the run dir; a resumed rerun and --overwrite too."""
    data = make_set(tmp_path / "my data é")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    if paths == "relative":
        src, db, run = "../my data é", "../-st 'x'/c é.db", "../-run \"r\""
    else:
        src, db, run = data, tmp_path / "-st 'x'" / "c é.db", tmp_path / '-run "r"'
    args = ["index", src, "--db", db, "--collection", "c", "--run-dir", run, *DESCRIPTORS]
    r = cbir(args, cwd=cwd, roots=[tmp_path], allowed=[db, run])
    assert "indexed 18, duplicates 0, rejected 0" in r.stdout
    store = tmp_path / "-st 'x'" / "c é.db"
    assert store.is_dir() and (store / "LOCK").is_file()  # milvus-lite's lock: inside the folder
    assert sorted(p.name for p in store.parent.iterdir()) == ["c é.db"]
    assert (tmp_path / '-run "r"' / "stats.json").is_file()
    r = cbir(args, cwd=cwd, roots=[tmp_path], allowed=[db, run])  # resumes: everything is already stored
    assert "1 of 1 shards already done" in r.stderr
    cbir([*args, "--overwrite"], cwd=cwd, roots=[tmp_path], allowed=[db, run])


def test_index_without_run_dir_writes_only_under_runs_in_the_working_directory(tmp_path):
    make_set(tmp_path / "data", per_class=2)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cbir(["index", "../data", "--db", "../s.db", "--collection", "c", *DESCRIPTORS], cwd=cwd, roots=[tmp_path],
         allowed=["../s.db", "runs"])
    assert [p.name for p in cwd.iterdir()] == ["runs"]
    assert [p.name for p in (cwd / "runs").iterdir()][0].startswith("index-c-")


@pytest.mark.parametrize("where", ["same working directory", "another working directory"])
def test_query_out_and_html_with_unreadable_hits_write_only_their_files(tmp_path, where):
    """The bug's own case: hits whose stored file is junk, empty or gone; --out as Parquet, CSV and JSON Lines."""
    s = index_set(tmp_path)
    junk = s["data"] / "beta é" / "with space.png"
    empty = s["data"] / "-gamma" / "quo'te.png"
    gone = s["data"] / "-gamma" / "-lead.png"
    junk.write_bytes(b"not an image at all")
    empty.write_bytes(b"")
    gone.unlink()
    if where == "same working directory":
        cwd, q = s["a"], ["../data/alpha", "../data/alpha/-lead.png", "./../data/beta é/é accent.png"]
    else:  # the stored paths (../data/...) do not resolve from here: every hit is unreadable
        cwd, q = tmp_path / "b" / "deeper", [s["data"] / "alpha", s["data"] / "beta é" / "é accent.png"]
        cwd.mkdir(parents=True)
    db = os.path.relpath(s["db"], cwd)
    for ext in ("parquet", "csv", "jsonl"):
        out, page = f"../-hits é.{ext}", f"pages/-page 'q' \"{ext}\".html"
        r = cbir(["query", *q, "--db", db, "--collection", "c", "-k", "18", f"--out={out}", f"--html={page}"],
                 cwd=cwd, roots=[tmp_path], allowed=[out, page])
        assert (cwd / out).stat().st_size > 0
        if ext == "jsonl":
            rows = [json.loads(line) for line in (cwd / out).read_text(encoding="utf-8").splitlines()]
            assert {r["path"] for r in rows} >= {"../data/beta é/with space.png", "../data/-gamma/-lead.png"}
        text = _is_page(cwd / page)
        n = 3 if where == "same working directory" else 18
        assert f"{n} neighbour image(s) cannot be read from here" in text, r.stdout
        assert f"page: {page}" in r.stdout
    if where == "same working directory":
        # the broken files as queries and as images to classify: they fail (exit 1), the outputs are still written
        out, page = "../broken.jsonl", "../broken.html"
        r = cbir(["query", "../data/beta é/with space.png", "../data/-gamma/quo'te.png", "../data/alpha/plain.png",
                  "--db", db, "--collection", "c", "-k", "4", "--out", out, "--html", page],
                 cwd=cwd, roots=[tmp_path], allowed=[out, page], rc=1)
        assert "2 of 3 queries could not be answered" in r.stderr
        assert _is_page(cwd / page).count("could not be searched") == 2
        assert len((cwd / out).read_text(encoding="utf-8").splitlines()) == 2 + 4  # one row per failed query
        out = "../classified.parquet"
        r = cbir(["classify", "../data", "--db", db, "--collection", "c", "-k", "3", "--out", out],
                 cwd=cwd, roots=[tmp_path], allowed=[out], rc=1)
        assert "17 images, 2 failed" in r.stdout and (cwd / out).stat().st_size > 0
    assert junk.read_bytes() == b"not an image at all" and empty.read_bytes() == b"" and not gone.exists()


def test_query_prints_without_out_and_writes_nothing(indexed, tmp_path):
    s = indexed
    r = cbir(["query", s["data"] / "-gamma", "--db", s["db"], "--collection", "c", "-k", "3", "--fringe", "6",
              "--inpainter", "telea"], cwd=tmp_path, roots=[s["root"], tmp_path])
    assert "6 queries, 0 failed" in r.stdout


def test_query_outputs_named_at_the_length_limit(indexed, tmp_path):
    """A 255-byte file name is legal: its temporary sibling must fit too (it once failed after the search ran)."""
    s = indexed
    out, page = "é" * 122 + "-xy.parquet", "h" * 250 + ".html"  # 2 x 122 + 11 and 250 + 5 bytes
    assert len(out.encode()) == len(page.encode()) == 255
    cbir(["query", s["data"] / "alpha", "--db", s["db"], "--collection", "c", "-k", "2", "--out", out,
          "--html", page], cwd=tmp_path, roots=[s["root"], tmp_path], allowed=[out, page])
    assert (tmp_path / out).stat().st_size > 0
    _is_page(tmp_path / page)


def test_classify_writes_only_its_out(indexed, tmp_path):
    s = indexed
    out = "cl é/-classified 'x'.parquet"
    r = cbir(["classify", "../data", "--db", os.path.relpath(s["db"], s["a"]), "--collection", "c", "-k", "3",
              "--out", tmp_path / out], cwd=s["a"], roots=[s["root"], tmp_path], allowed=[tmp_path / out])
    assert "18 images, 0 failed" in r.stdout and (tmp_path / out).stat().st_size > 0
    r = cbir(["classify", s["data"], "--db", s["db"], "--collection", "c", "-k", "3"], cwd=tmp_path,
             roots=[s["root"], tmp_path])
    assert "accuracy" in r.stdout


def test_info_writes_nothing(indexed, tmp_path):
    s = indexed
    for extra in ([], ["--collection", "c"], ["--collection", "c", "--json"]):
        r = cbir(["info", "--db", s["db"], *extra], cwd=tmp_path, roots=[s["root"], tmp_path])
        assert "c" in r.stdout
    assert json.loads(r.stdout)["rows"] == 18


@pytest.mark.parametrize("command", ["query", "classify", "info"])
def test_reading_a_store_that_is_not_there_creates_nothing(indexed, tmp_path, command):
    """A typo in --db must not leave a new empty store (and its folders) behind; nor a wrong --collection
    change the store that is there."""
    s = indexed
    source = {"query": [s["data"] / "alpha"], "classify": [s["data"]], "info": []}[command]
    missing = tmp_path / "typo" / "nowhere.db"
    r = cbir([command, *source, "--db", missing, "--collection", "c"], cwd=tmp_path, roots=[s["root"], tmp_path],
             rc=2)  # an input error, like any path that is not there
    assert "nowhere.db" in r.stderr
    cbir([command, *source, "--db", s["db"], "--collection", "nope"], cwd=tmp_path, roots=[s["root"], tmp_path],
         rc=2)


def test_evaluate_writes_only_its_out_folder(tmp_path):
    make_set(tmp_path / "my data é", per_class=4)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = "../-eval 'out' é"
    r = cbir(["evaluate", "../my data é", "--out", out, "--frequencies", "6", "--inpainters", "none",
              "--backbones", "none", "--backend", "local", "--queries", "all", "-k", "3"],
             cwd=cwd, roots=[tmp_path], allowed=[out])
    assert "Table 2" in r.stdout
    o = cwd / out
    for name in ("results.json", "table1.md", "table2.md", "report.html"):
        assert (o / name).stat().st_size > 0, name
    assert (o / "eval.db" / "LOCK").is_file()
    _is_page(o / "report.html")


def test_demo_writes_only_its_out_folder_and_leaves_the_images_alone(tmp_path):
    data = make_set(tmp_path / "photos é", per_class=4)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = "-demo 'out'"
    r = cbir(["demo", "--images", os.path.relpath(data, cwd), f"--out={out}", "--backbone", "none", "--queries", "1"],
             cwd=cwd, roots=[tmp_path], allowed=[out])
    assert f"page: {out}/demo.html" in r.stdout and "indexed 12, duplicates 0, rejected 0" in r.stdout
    _is_page(cwd / out / "demo.html")
    assert not (cwd / out / "images").exists()
    gen = tmp_path / "generated"  # no --images: the generated set goes under --out too
    r = cbir(["demo", "--out", gen, "--backbone", "none", "--per-class", "2", "--queries", "1"], cwd=cwd,
             roots=[tmp_path], allowed=[gen])
    assert (gen / "images").is_dir() and (gen / "demo.db" / "LOCK").is_file()
    _is_page(gen / "demo.html")


def test_train_inpainter_writes_only_its_out_weights_and_split_file(tmp_path):
    make_set(tmp_path / "set é", per_class=4)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out, weights, split = "../-run 'x'", "../w é/-tiny.pt", "../split é.txt"
    tiny = [*TINY_TRAINING, "--steps", "2", "--val-every", "2", "--val-images", "1"]
    # the provenance JSON beside the weights is part of the export (cbir_dist/training/checkpoints.py)
    r = cbir(["train-inpainter", "../set é", f"--out={out}", f"--weights-out={weights}",
              f"--val-split-file={split}", *tiny], cwd=cwd, roots=[tmp_path],
             allowed=[out, weights, "../w é/-tiny.json", split])
    assert json.loads(r.stdout)["step"] == 2
    assert (cwd / weights).stat().st_size > 0 and (cwd / "../w é/-tiny.json").is_file()
    assert (cwd / split).read_text().startswith("# Held-out")
    assert (cwd / out / "metrics.jsonl").is_file()
    assert not (cwd / out / "two_stage.pt").exists()
    # a second run on the existing split file reads it and resumes its checkpoint: only the run and the weights change
    cbir(["train-inpainter", "../set é", f"--out={out}", f"--weights-out={weights}", f"--val-split-file={split}",
          *tiny], cwd=cwd, roots=[tmp_path], allowed=[out, weights, "../w é/-tiny.json"])


def test_train_inpainter_weights_out_named_json_keeps_the_weights(tmp_path):
    """--weights-out w.json: the provenance JSON (written to the weights' name with .json) must not replace
    the weights; refusing the name (exit 2, nothing written) would do too."""
    make_set(tmp_path / "set", per_class=4)
    r = cbir(["train-inpainter", "set", "--out", "run", "--weights-out", "w.json", *TINY_TRAINING, "--steps", "1",
              "--val-every", "0"], cwd=tmp_path, roots=[tmp_path / "set"], rc=(0, 2))  # where the JSON goes is open
    if r.returncode == 0:
        assert (tmp_path / "w.json").read_bytes()[:2] == b"PK", "the weights at --weights-out were overwritten"
    else:
        assert not (tmp_path / "w.json").exists()
