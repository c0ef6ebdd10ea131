"""The backbones on ONNX Runtime: the same features as torch, the runtime choice, and the export cache.

Equality is measured per image as ``||f_onnx - f_torch|| / ||f_torch||`` (the L2 norm of the row):
retrieval compares rows by Euclidean distance after each block is L2-normalised, and a row's
norm-relative error bounds how far its normalised vector moves, hence every distance it takes part
in (a distance moves by at most twice that error). An element-wise relative error would say nothing
useful: a ReLU feature has many components at or near zero. The bound is 1e-4; measured values
are a few 1e-6 (float32 summation order).

Unit tests use random weights at 64 px (32 px for the cache tests), MobileNetV2 with the real
ImageNet file from ``$CBIR_SHARED/weights/torch`` (read-only: its export stays in memory).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, shared_path

from cbir_dist.errors import UsageError
from cbir_dist.features import onnx_runtime as R
from cbir_dist.features.backbones import OnnxBackbone, load_backbone
from cbir_dist.io.files import sha256_file

TOLERANCE = 1e-4


def _images(seed: int = 0, n: int = 3) -> list[np.ndarray]:
    """``n`` RGB images of different sizes and aspect ratios (every one is resized and cropped)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 70 + 11 * i, 90 - 9 * i
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 / w, yy * 255 / h, ((xx * yy) % 97) * 2.5], axis=2)
        out.append(np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8))
    return out


def _row_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)


CASES = [("resnet50", "pool"), ("vgg16", "pool"), ("vgg16", "fc7"), ("vgg19", "pool"), ("vgg19", "fc7"),
         ("mobilenet_v2", "pool")]


@pytest.mark.parametrize(("name", "head"), CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_onnx_features_equal_torch(name, head, monkeypatch):
    weights = "random"
    if name == "mobilenet_v2":  # the real ImageNet file, in a read-only folder
        monkeypatch.setenv("TORCH_HOME", str(shared_path("weights", "torch")))
        weights = "imagenet"
    # batch_size 2 on 3 images: batches of 2 and 1 through the dynamic batch axis
    kw = dict(device="cpu", image_size=64, batch_size=2, head=head)
    torch_bb = load_backbone(name, weights, runtime="torch", **kw)
    want = torch_bb(_images())
    del torch_bb
    onnx_bb = load_backbone(name, weights, runtime="onnx", **kw)
    assert isinstance(onnx_bb, OnnxBackbone) and onnx_bb.model is None
    assert onnx_bb.runtime.startswith("onnxruntime ")
    got = onnx_bb(_images())
    assert got.shape == want.shape and got.dtype == np.float32
    err = _row_error(got, want)
    assert (err < TOLERANCE).all(), err
    assert np.linalg.norm(want[0] - want[1]) > 100 * np.abs(got - want).max()  # the images' own differences stay


def test_shared_weights_folder_is_not_written(monkeypatch, caplog):
    """A folder without write bits (the shared weights) is left alone, even by root; said once at INFO."""
    folder = shared_path("weights", "torch", "hub", "checkpoints")
    before = sorted(os.listdir(folder))
    monkeypatch.setenv("TORCH_HOME", str(shared_path("weights", "torch")))
    monkeypatch.setattr(R, "_NOTED", set())
    monkeypatch.setattr(R, "_MEMO", {})  # the last test's export of the same weights
    with caplog.at_level(logging.INFO, logger=R.__name__):
        bb = load_backbone("mobilenet_v2", "imagenet", device="cpu", image_size=32, runtime="auto")
    assert bb.source == "memory" and sorted(os.listdir(folder)) == before
    assert any("kept in memory" in r.message and "read-only" in r.message for r in caplog.records)


# --------------------------------------------------------------------------- the runtime choice


def test_choice_of_runtime(monkeypatch):
    import torch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert R.choose("auto", cpu, None) == "onnx"
    assert R.choose("auto", cuda, None) == "torch"  # GPUs keep torch with autocast
    assert R.choose("torch", cpu, "cpu") == "torch"
    assert R.choose("onnx", cuda, None) == "onnx"  # no device named: ONNX Runtime on the CPU
    with pytest.raises(UsageError, match="runs on the CPU"):
        R.choose("onnx", cuda, "cuda")
    with pytest.raises(UsageError, match="auto, torch, onnx"):
        R.choose("tensorrt", cpu, None)
    monkeypatch.setattr(R, "available", lambda: False)
    assert R.choose("auto", cpu, None) == "torch"
    with pytest.raises(UsageError, match="pip install onnxruntime"):
        R.choose("onnx", cpu, None)
    assert R.torch_label(cpu).endswith(" cpu fp32") and R.torch_label(cuda).endswith(" cuda bf16")


def test_bad_runtime_is_refused_before_any_work():
    with pytest.raises(UsageError, match="unknown runtime"):
        load_backbone("mobilenet_v2", "random", runtime="fast")


def test_threads_follow_torch(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    bb = load_backbone("mobilenet_v2", "random", device="cpu", image_size=32, runtime="onnx")
    opts = bb.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)


# --------------------------------------------------------------------------- the cache


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Two MobileNetV2 state dicts (random seeds 0 and 1) in one folder, and their features in torch."""
    import torch

    folder = tmp_path_factory.mktemp("weights")
    files, feats = [], []
    for seed in (0, 1):
        bb = load_backbone("mobilenet_v2", "random", device="cpu", image_size=32, seed=seed, runtime="torch")
        torch.save(bb.model.state_dict(), folder / f"mnv2-seed{seed}.pth")
        files.append(folder / f"mnv2-seed{seed}.pth")
        feats.append(bb(_images(1)))
    return files, feats


def _onnx(path, **kw):
    return load_backbone("mobilenet_v2", path, device="cpu", image_size=32, runtime="onnx", **kw)


def _cached(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx"))


def test_cache_written_once_then_reused(tmp_path, weight_files, monkeypatch):
    (src, _), (want, _) = weight_files
    path = tmp_path / src.name
    path.write_bytes(src.read_bytes())
    first = _onnx(path)
    assert first.source == "exported"
    (cached,) = _cached(tmp_path)
    assert cached.name.startswith(f"{path.name}.mobilenet_v2-pool.") and cached.name.endswith(".onnx")
    stamp = cached.stat().st_mtime_ns

    def no_export(*a, **k):
        raise AssertionError("exported again although the cache holds it")

    monkeypatch.setattr(R, "export", no_export)
    again = _onnx(path)
    assert again.source == "cache" and cached.stat().st_mtime_ns == stamp
    assert (_row_error(again(_images(1)), want) < TOLERANCE).all()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_cache_is_keyed_by_the_weights(weight_files):
    (a, b), (want_a, want_b) = weight_files
    fa, fb = _onnx(a)(_images(1)), _onnx(b)(_images(1))
    files = _cached(a.parent)
    assert len([f for f in files if f.name.startswith(a.name)]) == 1
    assert len([f for f in files if f.name.startswith(b.name)]) == 1
    assert (_row_error(fa, want_a) < TOLERANCE).all() and (_row_error(fb, want_b) < TOLERANCE).all()
    assert (_row_error(fa, fb) > 0.01).all()  # other weights, other features: not the other's export


def test_truncated_cache_is_exported_again(tmp_path, weight_files, caplog):
    (src, _), (want, _) = weight_files
    path = tmp_path / src.name
    path.write_bytes(src.read_bytes())
    _onnx(path)
    (cached,) = _cached(tmp_path)
    data = cached.read_bytes()
    cached.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger=R.__name__):
        bb = _onnx(path)
    assert bb.source == "exported" and any("cannot be loaded" in r.message for r in caplog.records)
    assert cached.stat().st_size == len(data)
    assert (_row_error(bb(_images(1)), want) < TOLERANCE).all()


def test_cache_of_other_weights_under_the_name_is_exported_again(tmp_path, weight_files, caplog):
    """A file whose recorded key is not the expected one (here: another weights file's export
    copied under this one's name) is not trusted."""
    (a, b), (want_a, _) = weight_files
    for f in (a, b):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    _onnx(tmp_path / b.name)
    (other,) = _cached(tmp_path)
    expected = R.cache_file(tmp_path / a.name, "mobilenet_v2", "pool", sha256_file(tmp_path / a.name), 32)
    expected.write_bytes(other.read_bytes())
    with caplog.at_level(logging.WARNING, logger=R.__name__):
        bb = _onnx(tmp_path / a.name)
    assert bb.source == "exported" and any("was made for" in r.message for r in caplog.records)
    assert (_row_error(bb(_images(1)), want_a) < TOLERANCE).all()


def test_read_only_folder_exports_in_memory(tmp_path, weight_files, caplog, monkeypatch):
    (src, _), (want, _) = weight_files
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / src.name
    path.write_bytes(src.read_bytes())
    folder.chmod(0o555)
    monkeypatch.setattr(R, "_NOTED", set())
    try:
        with caplog.at_level(logging.INFO, logger=R.__name__):
            bb = _onnx(path)
        assert bb.source == "memory" and _cached(folder) == []
        assert [r.message for r in caplog.records if "kept in memory" in r.message] == [
            f"mobilenet_v2 pool: the ONNX export is kept in memory, not cached: {folder} is read-only"]
        assert (_row_error(bb(_images(1)), want) < TOLERANCE).all()
    finally:
        folder.chmod(0o755)


def test_random_weights_are_exported_in_memory(tmp_path):
    bb = load_backbone("mobilenet_v2", "random", device="cpu", image_size=32, runtime="onnx", seed=3)
    assert bb.source == "memory" and bb.weights_desc == "random:seed3"


def test_two_processes_exporting_at_once_leave_one_whole_file(tmp_path, weight_files):
    (src, _), (want, _) = weight_files
    path = tmp_path / src.name
    path.write_bytes(src.read_bytes())
    code = ("import sys; from cbir_dist.features.backbones import load_backbone; "
            "b = load_backbone('mobilenet_v2', sys.argv[1], device='cpu', image_size=32, runtime='onnx', "
            "num_threads=1); print(b.source)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=240)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and set(outs) <= {"exported", "cache"}, outs
    (cached,) = _cached(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))
    bb = _onnx(path)
    assert bb.source == "cache" and (_row_error(bb(_images(1)), want) < TOLERANCE).all()


# --------------------------------------------------------------------------- the jobs


def test_indexed_with_torch_queried_with_onnx_and_recorded(tmp_path, capsys):
    """The runtime is no part of the spec: a collection indexed in torch is queried in ONNX Runtime
    (each image finds itself at a distance near 0); stats.json, the summary line and info say what ran."""
    import json

    from cbir_dist.cli import main
    from cbir_dist.demo import make_dataset

    data = make_dataset(tmp_path / "images", per_class=2, size=40)
    db, run = str(tmp_path / "t.db"), tmp_path / "run"
    common = ["--db", db, "--collection", "t"]
    assert main(["index", str(data), *common, "--backbone", "mobilenet_v2", "--weights", "random",
                 "--descriptors", "correlogram", "--image-size", "32", "--run-dir", str(run),
                 "--runtime", "torch"]) == 0
    out = capsys.readouterr().out
    stats = json.loads((run / "stats.json").read_text())
    assert stats["runtime"].startswith("torch ") and stats["runtime"].endswith(" cpu fp32")
    assert f"; backbone on {stats['runtime']}" in out
    hits = tmp_path / "hits.jsonl"
    assert main(["query", str(data), *common, "-k", "1", "--out", str(hits), "--weights-override", "random",
                 "--runtime", "onnx"]) == 0
    rows = [json.loads(line) for line in hits.read_text().splitlines()]
    assert len(rows) == 12 and all(r["path"] == r["query"] and r["distance"] < 1e-3 for r in rows), rows[:2]
    capsys.readouterr()
    assert main(["info", *common]) == 0
    assert f"backbone on {stats['runtime']}" in capsys.readouterr().out


def test_cli_runtime_choices_are_the_library_s():
    from cbir_dist.cli import parser

    assert parser.RUNTIMES == R.RUNTIMES
    p = parser.build_parser()
    for cmd in (["index", "d"], ["query", "q"], ["classify", "d"], ["evaluate", "d", "--out", "o"], ["demo"]):
        assert p.parse_args([*cmd, "--runtime", "torch"]).runtime == "torch"
        assert p.parse_args(cmd).runtime == "auto"
