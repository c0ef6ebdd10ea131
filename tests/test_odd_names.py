"""Every name the file system can hold is indexed or rejected with a reason, never fatal, and never
reaches the terminal raw: bytes that are not UTF-8, newlines, ANSI/OSC escape sequences, bidi
overrides, names of 255 bytes, a symlink loop. Through ``index`` (both backends), ``query`` (the
table, ``--out`` in all three formats, ``--html``), ``info`` and the run's manifests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cbir_dist.io.text import os_path

REPO = Path(__file__).resolve().parents[1]
FAST = ["--backbone", "none", "--descriptors", "correlogram"]

#: valid images under names that must be indexed (bytes, as the file system holds them)
ODD = [
    b"caf\xe9 latin-1.png",  # not UTF-8
    b"\xff\xfe.png",  # not UTF-8 at all
    b"new\nline.png",
    b"\x1b]0;owned\x07title.png",  # OSC: sets the terminal's title when printed raw
    b"\x1b[2Jclear.png",  # CSI: clears the screen
    "\u202egnp.evil.png".encode(),  # bidi override
    b"tab\tand\rreturn.png",
    ("l" * 251).encode() + b".png",  # a name of 255 bytes, the longest
]
# what must never reach the terminal (\n, \t and the progress bar's \r are the program's own); and a
# name's own line break must not split a line
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x9b]|new\nline|and\rreturn")


def _png(path: bytes, seed: int) -> None:
    arr = np.random.default_rng(seed).integers(0, 255, (36, 36, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    data = os.fsencode(root / "data")
    for cls in (b"plain", b"cl\xe4ss"):  # a class folder whose name is not UTF-8 either
        os.makedirs(os.path.join(data, cls))
    for i, name in enumerate(ODD):
        _png(os.path.join(data, b"plain", name), i)
    for i in range(3):
        _png(os.path.join(data, b"cl\xe4ss", b"img%d.png" % i), 100 + i)
    os.symlink(b"loop.png", os.path.join(data, b"plain", b"loop.png"))  # points to itself
    # a UTF-8 name holding a character reserved for undecodable bytes: rejected, never confused
    _png(os.path.join(data, b"plain", "\U0010ffe9.png".encode()), 200)
    return root


def _cli(args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cbir_dist.cli", *args], capture_output=True, timeout=300, cwd=cwd,
                          env=env)


def _text(stream: bytes) -> str:
    return stream.decode("utf-8")  # raises when anything that is not UTF-8 was printed


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_odd_names_are_indexed_queried_and_shown_safely(odd_folder, tmp_path, backend):
    db, run = tmp_path / "o.db", tmp_path / "run"
    r = _cli(["index", str(odd_folder / "data"), "--db", str(db), "--collection", "c", "--run-dir", str(run),
              "--backend", backend, *FAST], tmp_path)
    out, err = _text(r.stdout), _text(r.stderr)
    assert r.returncode == 0, err[-3000:]
    assert f"indexed {len(ODD) + 3}, duplicates 0, rejected 2" in out
    assert not RAW_CONTROL.search(out + err), (out + err)[-2000:]

    manifest = pq.read_table(run / "manifest.parquet").to_pydict()
    ok = [p for p, s in zip(manifest["path"], manifest["status"]) if s == "ok"]
    assert len(ok) == len(ODD) + 3
    on_disk = {os.fsencode(os_path(p)) for p in ok}  # the stored text maps back to the very files
    assert {os.path.basename(p) for p in on_disk} == set(ODD) | {b"img0.png", b"img1.png", b"img2.png"}
    assert all(os.path.isfile(p) for p in on_disk)
    assert "cl\U0010ffe4ss" in manifest["label"]  # the undecodable folder name, losslessly
    errors = dict(zip(*pq.read_table(run / "errors.parquet").select(["path", "reason"]).to_pydict().values()))
    reasons = {os.path.basename(p): why for p, why in errors.items()}
    assert re.search("symlink loop", reasons["loop.png"])
    assert re.search("reserves for bytes that are not UTF-8", reasons["\U0010ffe9.png"])

    # query: the printed table, each output format and the page
    q = os.fsencode(odd_folder / "data" / "plain")
    for extra in ([], ["--out", "h.csv"], ["--out", "h.jsonl"], ["--out", "h.parquet"], ["--html", "h.html"]):
        r = subprocess.run([sys.executable, "-m", "cbir_dist.cli", "query", q, "--db", str(db), "--collection", "c",
                            "-k", "3", *extra], capture_output=True, timeout=300, cwd=tmp_path,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        out, err = _text(r.stdout), _text(r.stderr)
        assert r.returncode == 1, err  # the loop and the reserved name cannot be answered: said so
        assert f"{len(ODD) + 2} queries, 2 failed" in out
        assert not RAW_CONTROL.search(out + err), extra
    if True:  # every query found itself first (its own stored row, at distance 0)
        rows = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text(encoding="utf-8").splitlines()]
        firsts = [r for r in rows if r["rank"] == 1]
        assert len(firsts) == len(ODD) and all(r["path"] == r["query"] for r in firsts)
    page = (tmp_path / "h.html").read_text(encoding="utf-8")
    assert "\x1b" not in page and page.count("<section class='query") == len(ODD) + 2
    assert "not readable here" not in page  # every hit's thumbnail was read through its stored path

    r = _cli(["info", "--db", str(db), "--collection", "c", "--json"], tmp_path)
    assert r.returncode == 0 and json.loads(_text(r.stdout))["rows"] == len(ODD) + 3
