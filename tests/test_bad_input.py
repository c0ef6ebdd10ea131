"""Bad input never stops a job and is never silent: one per-file error rule, on both backends.

Every kind of bad file and bad mask below is a row of ``errors.parquet`` with its expected reason;
nothing blocks (a FIFO named ``x.jpg`` is never opened), the counts add up to the files found, and
the summary line is what the store holds.
"""

from __future__ import annotations

import io
import os
import re
import socket
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cbir_dist.features.profiles import build_spec
from cbir_dist.index import run_index
from cbir_dist.index.run import IndexConfig
from cbir_dist.io.images import decode_image
from cbir_dist.store import VectorStore

MAX_BYTES = 50_000


def _png(arr, fmt="PNG", mode=None):
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    im.save(buf, format=fmt)
    return buf.getvalue()


def _dds_with_unknown_pixel_format() -> bytes:
    """A DDS whose pixel-format flags make Pillow raise NotImplementedError (an 'unexpected' decoder error)."""
    data = bytearray(_png(np.zeros((40, 40, 3), np.uint8), "DDS"))
    data[80] = 157
    return bytes(data)


def make_bad_folder(root, rng):
    """Valid images of many kinds plus one entry of each bad kind.

    Returns (expected counts, {file name: expected reason pattern}).
    """
    good, bad, outside = root / "data" / "good", root / "data" / "bad", root / "outside"
    good.mkdir(parents=True)
    bad.mkdir()
    outside.mkdir()
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
    (good / "inside_link.png").symlink_to(good / "photo.jpg")  # a symlink inside the root: a duplicate too
    jpg = _png(imgs[7], "JPEG")
    reasons = {
        "zero.png": (b"", "empty file"),
        "random.jpg": (bytes(rng.integers(0, 255, 3000, dtype=np.uint8)), "not a readable image"),
        "truncated.png": (valid["rgb.png"][: len(valid["rgb.png"]) // 2], "corrupt or truncated"),
        "truncated.jpg": (jpg[: len(jpg) // 3], "corrupt or truncated"),
        "notes.png": (b"this is a text file with an image extension\n" * 20, "not a readable image"),
        "page.gif": (b"<html><body>not a gif</body></html>", "not a readable image"),
        "tiny.png": (_png(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)), "smaller than the minimum side"),
        "bomb.png": (_png(np.zeros((600, 600, 3), np.uint8)), "exceeds the limit of 200000"),  # over --max-pixels
        "corrupt.tiff": (b"II*\x00" + bytes(200), "not a readable image"),
        "huge.png": (_png(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)), "over the limit of 50000"),
        "odd.png": (_dds_with_unknown_pixel_format(), "unexpected decoder error \\(NotImplementedError"),
    }
    for name, (data, _pattern) in reasons.items():
        (bad / name).write_bytes(data)
    reasons = {name: pattern for name, (_data, pattern) in reasons.items()}
    (outside / "secret.png").write_bytes(_png(imgs[0][::-1].copy()))
    os.symlink(root / "nowhere.png", bad / "broken_link.png")
    reasons["broken_link.png"] = "broken symlink"
    os.symlink(outside / "secret.png", bad / "escape.png")
    reasons["escape.png"] = "symlink leaves the input root.*--follow-symlinks"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(bad / "socket.jpg"))
    sock.close()
    reasons["socket.jpg"] = r"not a regular file \(a socket\)"
    os.mkfifo(bad / "pipe.jpg")  # opening it for reading would block until a writer comes
    reasons["pipe.jpg"] = r"not a regular file \(a FIFO\)"
    os.symlink(outside, bad / "linked_outside")  # a symlinked folder leaving the root
    reasons["linked_outside"] = "symlinked folder leaves the input root"
    os.symlink(root / "data", bad / "loop")  # a cycle back to the root
    reasons["loop"] = "symlinked folder already listed"
    return {"indexed": len(valid), "duplicates": 2, "rejected": len(reasons)}, reasons


def _errors(run_dir):
    t = pq.read_table(run_dir / "errors.parquet").to_pydict()
    return {os.path.basename(p): (s, r) for p, s, r in zip(t["path"], t["status"], t["reason"])}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_bad_files_each_have_their_reason_and_nothing_blocks(tmp_path, rng, backend):
    expected, reasons = make_bad_folder(tmp_path, rng)
    spec = build_spec(backbone="none", descriptors=("glcm", "correlogram"))
    cfg = IndexConfig(str(tmp_path / "data"), db=str(tmp_path / "b.db"), collection="bad",
                      run_dir=str(tmp_path / "run"), max_pixels=200_000, max_bytes=MAX_BYTES, shard_size=5,
                      progress=False, backend=backend)
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("summary", run_index(spec, cfg)), daemon=True)
    t.start()
    t.join(200)
    assert not t.is_alive(), "the index job blocked (a FIFO opened for reading?)"
    summary = done["summary"]
    got = {"indexed": summary.indexed, "duplicates": summary.duplicates, "rejected": summary.rejected}
    assert got == expected
    assert summary.indexed + summary.duplicates + summary.rejected == summary.files == 10 + len(reasons)
    assert summary.line().startswith(f"indexed 8, duplicates 2, rejected {len(reasons)} (see ")
    errors = _errors(tmp_path / "run")
    assert {n for n, (s, _) in errors.items() if s == "rejected"} == set(reasons)
    for name, pattern in reasons.items():
        assert re.search(pattern, errors[name][1]), (name, errors[name][1])
    dups = {n: r for n, (s, r) in errors.items() if s == "duplicate"}
    assert set(dups) == {"rgb.png", "photo.jpg"}  # sorted order: copy_of_rgb.png and inside_link.png came first
    assert not re.search(r"0x[0-9a-f]{6,}", " ".join(r for _, r in errors.values())), "no memory addresses"
    store = VectorStore(str(tmp_path / "b.db"), "bad")
    try:
        assert store.count() == 8
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_bad_masks_are_per_file_errors_too(tmp_path, rng, backend):
    """--masks: a missing mask, a corrupt one and a FIFO mask each reject their image; the rest index."""
    data, masks = tmp_path / "data" / "c", tmp_path / "masks" / "c"
    data.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(5):
        (data / f"img{i}.png").write_bytes(_png(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)))
    half = np.full((48, 48), 255, np.uint8)
    half[:, :16] = 0
    for i in (0, 1):
        Image.fromarray(half).save(masks / f"img{i}.png")
    (masks / "img2.png").write_bytes(b"not a png at all")
    os.mkfifo(masks / "img3.png")
    # img4 has no mask
    from cbir_dist.damage.hook import DamageConfig, damage_transform

    transform = damage_transform(DamageConfig(masks_dir=str(tmp_path / "masks"), inpainter="telea",
                                              root=str(tmp_path / "data")))
    cfg = IndexConfig(str(tmp_path / "data"), db=str(tmp_path / "m.db"), collection="m",
                      run_dir=str(tmp_path / "run"), progress=False, backend=backend)
    summary = run_index(build_spec(backbone="none", descriptors=("glcm",)), cfg, transform=transform)
    assert (summary.indexed, summary.rejected) == (2, 3)
    errors = _errors(tmp_path / "run")
    assert re.search("mask/inpaint failed: .*cannot read the mask image", errors["img2.png"][1])
    assert re.search(r"mask/inpaint failed: .*not a regular file \(a FIFO\)", errors["img3.png"][1])
    assert re.search("mask/inpaint failed: no mask for", errors["img4.png"][1])


def test_max_pixels_is_the_one_limit(rng):
    """An image over Pillow's own bomb threshold (89.5 M pixels) decodes when --max-pixels allows it."""
    side = 9500  # 90.25 M pixels
    buf = io.BytesIO()
    Image.new("L", (side, side), 7).save(buf, format="PNG")
    img = decode_image(buf.getvalue(), max_pixels=100_000_000)
    assert img.shape == (side, side, 3) and int(img[0, 0, 0]) == 7
    from cbir_dist.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="exceeds the limit of 90000000"):
        decode_image(buf.getvalue(), max_pixels=90_000_000)


def test_every_bad_entry_as_a_query_gets_its_reason(tmp_path, rng, capsys):
    """The same folder of bad entries through `query`: each one is an error row with its reason, the
    valid images are answered, nothing blocks, and the exit status says some could not be answered."""
    from cbir_dist.cli import main

    expected, reasons = make_bad_folder(tmp_path, rng)
    db = str(tmp_path / "q.db")
    assert main(["index", str(tmp_path / "data" / "good"), "--db", db, "--collection", "q", "--run-dir",
                 str(tmp_path / "run"), "--backbone", "none", "--descriptors", "glcm,correlogram"]) == 0
    out = tmp_path / "hits.jsonl"
    rc = main(["query", str(tmp_path / "data"), "--db", db, "--collection", "q", "-k", "2", "--max-pixels", "200000",
               "--max-bytes", str(MAX_BYTES), "--out", str(out)])
    assert rc == 1
    import json

    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    errors = {os.path.basename(r["query"]): r["error"] for r in rows if r["error"]}
    assert set(errors) == set(reasons)
    for name, pattern in reasons.items():
        assert re.search(pattern, errors[name]), (name, errors[name])
    answered = {os.path.basename(r["query"]) for r in rows if not r["error"]}
    assert len(answered) == expected["indexed"] + expected["duplicates"]
    assert f"{len(reasons)} of {len(reasons) + len(answered)} queries could not be answered" in capsys.readouterr().err
