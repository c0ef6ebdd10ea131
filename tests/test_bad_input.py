"""Bad input never stops the index job and is never silent: exact counts and a reason per rejected file."""

import io
import os
import re
import socket

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cbir_dist.features.profiles import build_spec
from cbir_dist.index import run_index
from cbir_dist.index.run import IndexConfig
from cbir_dist.store import VectorStore


def _png(arr, fmt="PNG", mode=None):
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    im.save(buf, format=fmt)
    return buf.getvalue()


def make_bad_folder(root, rng):
    """Valid images of many kinds plus one file of each bad kind; returns (expected counts, reasons by name)."""
    good, bad = root / "good", root / "bad"
    good.mkdir(parents=True)
    bad.mkdir()
    imgs = [rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8) for i in range(8)]
    valid = {
        "rgb.png": _png(imgs[0]), "photo.jpg": _png(imgs[1], "JPEG"), "cmyk.jpg": _png(imgs[2], "JPEG", "CMYK"),
        "grey.bmp": _png(imgs[3], "BMP", "L"), "palette.gif": _png(imgs[4], "GIF"), "scan.tiff": _png(imgs[5], "TIFF"),
        "alpha.png": _png(imgs[6], "PNG", "RGBA"),
        "deep16.png": _png((np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16)),
    }
    for name, data in valid.items():
        (good / name).write_bytes(data)
    (good / "copy_of_rgb.png").write_bytes(valid["rgb.png"])  # duplicate: same content, another path
    jpg = _png(imgs[7], "JPEG")
    bad_files = {
        "zero.png": b"",
        "random.jpg": bytes(rng.integers(0, 255, 3000, dtype=np.uint8)),
        "truncated.png": valid["rgb.png"][: len(valid["rgb.png"]) // 2],
        "truncated.jpg": jpg[: len(jpg) // 3],
        "notes.png": b"this is a text file with an image extension\n" * 20,
        "page.gif": b"<html><body>not a gif</body></html>",
        "tiny.png": _png(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)),
        "bomb.png": _png(np.zeros((600, 600, 3), np.uint8)),  # over the max_pixels set below
        "corrupt.tiff": b"II*\x00" + bytes(200),
    }
    for name, data in bad_files.items():
        (bad / name).write_bytes(data)
    os.symlink(root / "nowhere.png", bad / "broken_link.png")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a file that exists but cannot be read
    sock.bind(str(bad / "socket.jpg"))
    sock.close()
    rejected = set(bad_files) | {"broken_link.png", "socket.jpg"}
    return {"indexed": len(valid), "duplicates": 1, "rejected": len(rejected)}, rejected


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_bad_input_exact_counts_and_reasons(tmp_path, rng, backend):
    expected, rejected_names = make_bad_folder(tmp_path / "data", rng)
    spec = build_spec(backbone="none", descriptors=("glcm", "correlogram"))
    cfg = IndexConfig(str(tmp_path / "data"), db=str(tmp_path / "b.db"), collection="bad",
                      run_dir=str(tmp_path / "run"), max_pixels=200_000, shard_size=5, progress=False,
                      backend=backend)
    summary = run_index(spec, cfg)
    got = {"indexed": summary.indexed, "duplicates": summary.duplicates, "rejected": summary.rejected}
    assert got == expected
    n_files = sum(len(fs) for _, _, fs in os.walk(tmp_path / "data"))
    assert summary.indexed + summary.duplicates + summary.rejected == summary.files == n_files == 20
    assert summary.line().startswith(f"indexed 8, duplicates 1, rejected {expected['rejected']} (see ")
    errors = pq.read_table(tmp_path / "run" / "errors.parquet").to_pydict()
    reasons = {os.path.basename(p): (s, r) for p, s, r in zip(errors["path"], errors["status"], errors["reason"])}
    assert {n for n, (s, _) in reasons.items() if s == "rejected"} == rejected_names
    dups = {n: r for n, (s, r) in reasons.items() if s == "duplicate"}
    assert set(dups) == {"rgb.png"}  # paths are taken in sorted order: copy_of_rgb.png came first
    assert "copy_of_rgb.png" in dups["rgb.png"]
    assert all(r for _, r in reasons.values()), "every rejected file needs a reason"
    assert "empty" in reasons["zero.png"][1]
    assert "symlink" in reasons["broken_link.png"][1]
    assert "smaller than" in reasons["tiny.png"][1]
    assert "exceeds the limit" in reasons["bomb.png"][1]
    assert "unreadable" in reasons["socket.jpg"][1]
    assert not re.search(r"0x[0-9a-f]{6,}", " ".join(errors["reason"])), "reasons must not hold memory addresses"
    store = VectorStore(str(tmp_path / "b.db"), "bad")
    assert store.count() == 8
    manifest = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pydict()
    assert len(manifest["path"]) == n_files and set(manifest) >= {"path", "size", "mtime", "id", "status"}
    store.close()
