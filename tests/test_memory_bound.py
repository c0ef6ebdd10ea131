"""Memory bounded per job, not per shard: the local backend holds decoded images within a pixel
budget, whatever the shard size and the images, and describes every image exactly as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir_dist.features.profiles import build_spec
from cbir_dist.index import run_index
from cbir_dist.index.run import IndexConfig
from cbir_dist.store import VectorStore

FAST = ["--backbone", "none", "--descriptors", "correlogram,gabor"]


def _photos(folder: Path, n: int, h: int, w: int) -> None:
    """``n`` large images that compress well (smooth gradients with a per-image twist)."""
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        img = np.stack([(xx * (i + 1) / w * 255) % 256, (yy / h * 255), ((xx + yy * (i + 2)) / (w + h) * 255) % 256],
                       axis=2).astype(np.uint8)
        Image.fromarray(img).save(folder / f"p{i:02d}.png", compress_level=1)


def test_a_small_budget_describes_the_same_rows(tmp_path):
    """Images dropped over the budget and decoded again when their chunk comes: the same vectors."""
    _photos(tmp_path / "data" / "c", 7, 60, 80)
    spec = build_spec(backbone="none", descriptors=("correlogram", "gabor"))
    vecs = {}
    for name, budget in (("whole", 10**9), ("tight", 60 * 80 * 2)):  # 2 images' pixels at a time
        cfg = IndexConfig(str(tmp_path / "data"), db=str(tmp_path / f"{name}.db"), collection="c",
                          run_dir=str(tmp_path / f"run_{name}"), progress=False, pixel_budget=budget)
        assert run_index(spec, cfg).indexed == 7
        with VectorStore(cfg.db, "c") as s:
            got = s.fetch(sorted(s.existing_ids(list(_ids(tmp_path / "data")))))
        vecs[name] = got
    assert np.array_equal(vecs["whole"]["id"], vecs["tight"]["id"])
    assert np.array_equal(vecs["whole"]["vector"], vecs["tight"]["vector"])  # bit for bit
    stats = json.loads((tmp_path / "run_tight" / "stats.json").read_text())
    assert stats["stage_items"]["decode"] > 7  # images were dropped and decoded again


def _ids(folder: Path) -> list[int]:
    from cbir_dist.io.files import content_id

    return [content_id(p.read_bytes()) for p in sorted(folder.rglob("*.png"))]


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_shard(tmp_path):
    """16 photos of 12 MP (36 MB each decoded, 576 MB together): one shard of all of them must not
    cost more than shards of 4 (the budget, 64 M pixels, holds 5 of them), and stays under 1.2 GB."""
    _photos(tmp_path / "data" / "c", 16, 3000, 4000)
    peaks = {}
    for shard in (256, 4):
        run = tmp_path / f"run{shard}"
        r = subprocess.run([sys.executable, "-m", "cbir_dist.cli", "index", str(tmp_path / "data"), "--db",
                            str(tmp_path / f"m{shard}.db"), "--run-dir", str(run), "--shard-size", str(shard), *FAST,
                            "--workers", "1"],  # the process whose peak stats.json gives decodes the images
                           capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        assert "indexed 16," in r.stdout
        peaks[shard] = json.loads((run / "stats.json").read_text())["peak_rss_mb"]
    assert peaks[256] < 1.25 * peaks[4], peaks  # was 2.4x (1,057 vs 437 MB for 40 x 6 MP)
    assert peaks[256] < 1200, peaks
