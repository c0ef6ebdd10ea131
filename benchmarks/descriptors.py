"""Per-image cost of the handcrafted descriptors on one core, beside the obvious library baselines.

Times every descriptor on the same 256 x 256 images, next to the straightforward implementation
one would write with the usual libraries, and checks both give the same numbers:

* correlogram: a per-distance NumPy loop, one ``np.bincount`` pair per ring offset;
* gabor: ``skimage.filters.gabor`` called once per kernel (the same kernels, same working image),
  run on the first ``--gabor-baseline-n`` images only because it is slow;
* glcm: ``skimage.feature.graycomatrix`` + ``graycoprops(..., 'homogeneity')`` per tile.

Threads are pinned to one (``OMP_NUM_THREADS=1``, ``cv2.setNumThreads(1)``) and the figure is
the median per-image CPU time of the process (``time.process_time``), which does not count the
time other processes on a shared machine take from it; median wall time is printed beside it.

Usage::

    python benchmarks/descriptors.py                 # 20 generated images
    python benchmarks/descriptors.py --images ../shared/data/wang1000 --n 20
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbir_dist.features.descriptors import compute  # noqa: E402
from cbir_dist.features.descriptors._validate import grey_uint8  # noqa: E402
from cbir_dist.features.descriptors.correlogram import quantize_colors  # noqa: E402
from cbir_dist.features.descriptors.gabor import gabor_bank, working_image  # noqa: E402
from cbir_dist.features.descriptors.glcm import ANGLES, tile_edges  # noqa: E402

SIDE = 256
TARGET_TOTAL_MS = 40.0


# ------------------------------------------------------------------------------------------------
# images


def generated_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Photo-like test images: smooth colour gradients, a few flat blobs, an oriented texture, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    images = []
    for _ in range(n):
        slope_x, slope_y = rng.uniform(-0.5, 0.5, (2, 3))
        base = rng.uniform(0, 255, 3) + slope_x * xx[..., None] + slope_y * yy[..., None]
        for _ in range(4):
            cy, cx, r = rng.uniform(0, SIDE, 2).tolist() + [rng.uniform(15, 60)]
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            base[blob] = rng.uniform(0, 255, 3)
        f, theta = rng.uniform(0.03, 0.3), rng.uniform(0, np.pi)
        base += 40 * np.cos(2 * np.pi * f * (xx * np.cos(theta) + yy * np.sin(theta)))[..., None]
        base += rng.normal(0, 8, base.shape)
        images.append(np.clip(base, 0, 255).astype(np.uint8))
    return images


def folder_images(root: str, n: int) -> list[np.ndarray]:
    """``n`` images spread over ``root``'s (sorted) files, resized to 256 x 256."""
    import cv2

    from cbir_dist.io.files import list_images
    from cbir_dist.io.images import read_image

    files = list_images(root)
    if not files:
        raise SystemExit(f"no images under {root}")
    step = max(1, len(files) // n)
    out = []
    for f in files[::step][:n]:
        img = read_image(f.path)
        out.append(cv2.resize(img, (SIDE, SIDE), interpolation=cv2.INTER_AREA))
    return out


# ------------------------------------------------------------------------------------------------
# baselines


def correlogram_baseline(image, n_colors=64, distances=(1, 3, 5, 7)):
    """Per distance, per ring offset: compare the overlapping slices, bincount matches and totals."""
    q = quantize_colors(image, n_colors).astype(np.intp)
    h, w = q.shape
    out = np.zeros((n_colors, len(distances)))
    for k, d in enumerate(distances):
        num = np.zeros(n_colors)
        den = np.zeros(n_colors)
        for dy in range(-d, d + 1):
            for dx in range(-d, d + 1):
                if max(abs(dy), abs(dx)) != d:
                    continue
                a = q[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
                b = q[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
                num += np.bincount(a[a == b], minlength=n_colors)
                den += np.bincount(a.ravel(), minlength=n_colors)
        out[:, k] = np.divide(num, den, out=np.zeros(n_colors), where=den > 0)
    return out.ravel()


def gabor_baseline(image, size=128):
    """``skimage.filters.gabor`` once per kernel of the same bank, on the same working image."""
    from skimage.filters import gabor

    grey = working_image(image, size).astype(np.float64)
    feats = []
    for g in gabor_bank():
        real, imag = gabor(grey, g.frequency, g.theta, sigma_x=g.sigma_x, sigma_y=g.sigma_y, n_stds=3, mode="reflect")
        mag = np.hypot(real, imag)
        feats += [mag.mean(), mag.std()]
    return np.asarray(feats)


def glcm_baseline(image, levels=32, distance=1, grid=(3, 3)):
    """``graycomatrix`` + ``graycoprops(..., 'homogeneity')`` on each tile of the quantised grey image."""
    from skimage.feature import graycomatrix, graycoprops

    g = ((grey_uint8(image).astype(np.int32) * levels) >> 8).astype(np.uint8)
    ey, ex = tile_edges(g.shape[0], grid[0]), tile_edges(g.shape[1], grid[1])
    feats = []
    for i in range(grid[0]):
        for j in range(grid[1]):
            tile = g[ey[i] : ey[i + 1], ex[j] : ex[j + 1]]
            P = graycomatrix(tile, [distance], list(ANGLES), levels=levels, symmetric=False, normed=True)
            feats.append(graycoprops(P, "homogeneity")[0])
    return np.concatenate(feats)


# ------------------------------------------------------------------------------------------------
# timing


def timed(fn, images):
    """(median CPU ms, median wall ms, outputs) of ``fn`` over ``images``, one call per image."""
    cpu, wall, outs = [], [], []
    for img in images:
        c0, w0 = time.process_time(), time.perf_counter()
        outs.append(fn(img))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return 1e3 * statistics.median(cpu), 1e3 * statistics.median(wall), outs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20, help="number of images (default 20)")
    p.add_argument("--images", metavar="DIR", help="read images from DIR (resized to 256 x 256), not generated ones")
    p.add_argument("--gabor-baseline-n", type=int, default=3, help="images for the slow skimage Gabor baseline (3)")
    p.add_argument("--native", action="store_true", help="also time Gabor at native 256 x 256 (size=None)")
    args = p.parse_args(argv)

    import cv2

    cv2.setNumThreads(1)
    images = folder_images(args.images, args.n) if args.images else generated_images(args.n)
    source = args.images or "generated"
    nb = max(1, min(args.gabor_baseline_n, len(images)))

    for name in ("correlogram", "gabor", "glcm"):  # warm-up: imports, kernel spectra, caches
        compute(name, images[0])
    if args.native:
        compute("gabor", images[0], size=None)
    glcm_baseline(images[0])

    rows = []
    specs = [
        ("correlogram", lambda im: compute("correlogram", im), correlogram_baseline, images, "NumPy bincount per offset"),
        ("gabor", lambda im: compute("gabor", im), gabor_baseline, images[:nb], "skimage.filters.gabor per kernel"),
        ("glcm", lambda im: compute("glcm", im), glcm_baseline, images, "skimage graycomatrix+graycoprops per tile"),
    ]
    if args.native:
        specs.append(
            (
                "gabor size=None",
                lambda im: compute("gabor", im, size=None),
                lambda im: gabor_baseline(im, size=None),
                images[:nb],
                "skimage.filters.gabor per kernel",
            )
        )
    for name, ours, base, base_images, base_name in specs:
        cpu, wall, outs = timed(ours, images)
        bcpu, _, bouts = timed(base, base_images)
        diff = max(float(np.abs(o.astype(np.float64) - b).max()) for o, b in zip(outs, bouts))
        rows.append((name, cpu, wall, bcpu, len(base_images), diff, base_name))

    print(f"{len(images)} images of {SIDE} x {SIDE} ({source}); one thread; median per-image CPU ms")
    head = ("descriptor", "ours", "(wall)", "baseline", "(n)", "speed-up", "max|diff|")
    print("{:<16} {:>7} {:>7} {:>9} {:>4} {:>9} {:>10}  baseline".format(*head))
    for name, cpu, wall, bcpu, n_b, diff, base_name in rows:
        print(f"{name:<16} {cpu:7.2f} {wall:7.2f} {bcpu:9.2f} {n_b:4d} {bcpu / cpu:8.1f}x {diff:10.2e}  {base_name}")
    main_rows = [r for r in rows if r[0] in ("correlogram", "gabor", "glcm")]
    total, total_wall, total_base = (sum(r[i] for r in main_rows) for i in (1, 2, 3))
    print(f"{'total (3)':<16} {total:7.2f} {total_wall:7.2f} {total_base:9.2f} {'':>4} {total_base / total:8.1f}x")
    faster = all(r[1] <= r[3] for r in rows)
    under = total < TARGET_TOTAL_MS
    print(f"each ours at least as fast as its baseline: {'yes' if faster else 'NO'}; "
          f"correlogram+gabor+glcm {total:.1f} ms < {TARGET_TOTAL_MS:.0f} ms: {'yes' if under else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
