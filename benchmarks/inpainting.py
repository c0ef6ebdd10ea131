"""Inpainting quality per fringe frequency: none / telea / ns / biharmonic / two-stage on the held-out split.

For every held-out image (``cbir_dist/weights/two_stage_split.txt``, never seen in training) and
every fringe frequency, the image is masked with ``fringe_mask(H, W, f, missing_fraction)``
(vertical fringes, phase 0) and reconstructed by each inpainter; PSNR, SSIM and FSIM of the
reconstruction against the original (whole image, ``cbir_dist.evaluation.metrics``) are averaged, with the
mean seconds per image of each method measured in the same run. Prints (and with ``--out-md``
writes) one markdown table.

    OMP_NUM_THREADS=1 python benchmarks/inpainting.py --max-images 30 --out-md runs/inpainting_table.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FREQUENCIES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0)
METHODS = ("none", "telea", "ns", "biharmonic", "two-stage")
METRICS = ("psnr", "ssim", "fsim")

log = logging.getLogger("benchmarks.inpainting")


def select_images(split_file, data_root, max_images: int | None, seed: int = 0) -> list[Path]:
    """Held-out images, stratified: a seeded round-robin over classes until ``max_images``."""
    from cbir_dist.training.data import read_split_file

    rel = read_split_file(split_file)
    by_class: dict[str, list[str]] = {}
    for p in rel:
        by_class.setdefault(str(Path(p).parent), []).append(p)
    rng = np.random.default_rng(seed)
    queues = {c: list(rng.permutation(sorted(v))) for c, v in sorted(by_class.items())}
    chosen: list[str] = []
    while any(queues.values()) and (max_images is None or len(chosen) < max_images):
        for c in sorted(queues):
            if queues[c] and (max_images is None or len(chosen) < max_images):
                chosen.append(queues[c].pop(0))
    return [Path(data_root) / p for p in sorted(chosen)]


def fringe_reconstructions(image: np.ndarray, frequencies, inpainters: dict, missing_fraction: float = 0.25):
    """Reconstructions of ``image`` under fringe masks: ``{(frequency, name): (known_mask, reconstruction)}``.

    Also usable by retrieval evaluations (query -> fringe mask -> inpaint -> descriptors).
    """
    from cbir_dist.damage.masks import fringe_mask

    out = {}
    for f in frequencies:
        known = fringe_mask(image.shape[0], image.shape[1], f, missing_fraction=missing_fraction)
        for name, inp in inpainters.items():
            out[(f, name)] = (known, inp(image, known))
    return out


def run(images, frequencies, methods, *, weights=None, missing_fraction=0.25, short_side=None):
    """Evaluate; returns ``{(method, frequency): {metric: mean}}`` and ``{method: seconds per image}``."""
    from cbir_dist.damage.inpaint import get_inpainter
    from cbir_dist.damage.masks import fringe_mask
    from cbir_dist.evaluation import metrics
    from cbir_dist.io.images import read_image
    from cbir_dist.training.data import resize_short_side

    inpainters = {
        m: get_inpainter(m, **({"weights": weights} if weights and m == "two-stage" else {})) for m in methods
    }
    scores: dict = {}
    seconds = {m: 0.0 for m in methods}
    n = 0
    for i, path in enumerate(images):
        img = read_image(path)
        if short_side:
            img = resize_short_side(img, short_side)
        for f in frequencies:
            known = fringe_mask(img.shape[0], img.shape[1], f, missing_fraction=missing_fraction)
            for m, inp in inpainters.items():
                t = time.perf_counter()
                rec = inp(img, known)
                seconds[m] += time.perf_counter() - t
                s = scores.setdefault((m, f), {k: [] for k in METRICS})
                s["psnr"].append(metrics.psnr(img, rec))
                s["ssim"].append(metrics.ssim(img, rec))
                s["fsim"].append(metrics.fsim(img, rec))
            n += 1
        log.info("%d/%d %s", i + 1, len(images), path.name)
    means = {k: {mk: float(np.mean(v)) for mk, v in d.items()} for k, d in scores.items()}
    return means, {m: s / max(1, n) for m, s in seconds.items()}


def time_methods(methods, *, size: int = 256, repeats: int = 5, weights=None, frequency: float = 1.0) -> dict:
    """Median milliseconds per ``size``×``size`` image of each method (one CPU thread), same image and mask."""
    from cbir_dist.damage.inpaint import get_inpainter
    from cbir_dist.damage.masks import fringe_mask

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.clip(np.stack([xx, yy, xx + yy], 2) * (255 / (2 * size)) + rng.normal(0, 8, (size, size, 3)), 0, 255)
    img = img.astype(np.uint8)
    known = fringe_mask(size, size, frequency)
    out = {}
    for m in methods:
        inp = get_inpainter(m, **({"weights": weights} if weights and m == "two-stage" else {}))
        inp(img, known)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            inp(img, known)
            times.append(time.perf_counter() - t)
        out[m] = 1000 * float(np.median(times))
    return out


def markdown_table(means, seconds, frequencies, methods, caption: str) -> str:
    """One table: a row per (metric, method), a column per frequency plus the mean; best per column in bold."""
    head = "| metric | method | " + " | ".join(f"{f:g} Hz" for f in frequencies) + " | mean | s/image |"
    sep = "|---|---|" + "---:|" * (len(frequencies) + 2)
    lines = [caption, "", head, sep]
    for mk in METRICS:
        best = {f: max(means[(m, f)][mk] for m in methods) for f in frequencies}
        for m in methods:
            vals = [means[(m, f)][mk] for f in frequencies]
            fmt = "{:.2f}" if mk == "psnr" else "{:.3f}"
            cells = [("**" + fmt.format(v) + "**") if v == best[f] else fmt.format(v) for v, f in zip(vals, frequencies)]
            lines.append(f"| {mk.upper()} | {m} | " + " | ".join(cells) + f" | {fmt.format(np.mean(vals))} | {seconds[m]:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"), help="folder the split paths are relative to")
    p.add_argument("--split-file", default=str(REPO / "cbir_dist" / "weights" / "two_stage_split.txt"))
    p.add_argument("--max-images", type=int, default=30, help="stratified subset of the held-out split (0 = all)")
    p.add_argument("--short-side", type=int, help="resize images to this short side first (default: native size)")
    p.add_argument("--frequencies", type=float, nargs="+", default=list(FREQUENCIES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--missing-fraction", type=float, default=0.25)
    p.add_argument("--weights", help="two-stage weights (default: the shipped file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-md", help="also write the table here")
    p.add_argument("--out-json", help="also write the raw means here")
    p.add_argument("--from-json", nargs="+", metavar="JSON",
                   help="build the table from --out-json files of earlier runs (e.g. classical methods and "
                        "two-stage run separately on the same images) instead of evaluating")
    p.add_argument("--timing-only", action="store_true",
                   help="only print the median ms per 256x256 image of each method (--repeats runs)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(1)
    if args.timing_only:
        ms = time_methods(args.methods, repeats=args.repeats, weights=args.weights)
        print("| method | ms / 256x256 image (median of %d, 1 CPU thread) |\n|---|---:|" % args.repeats)
        for m, v in ms.items():
            print(f"| {m} | {v:.1f} |")
        return 0
    images = select_images(args.split_file, args.data_root, args.max_images or None, args.seed)
    t0 = time.perf_counter()
    if args.from_json:
        means, seconds, methods = {}, {}, []
        for fn in args.from_json:
            d = json.loads(Path(fn).read_text())
            if d["images"] != [str(x) for x in images]:
                raise SystemExit(f"{fn} was computed on other images than --max-images {args.max_images} selects")
            seconds.update(d["seconds_per_image"])
            methods += [m for m in d["seconds_per_image"] if m not in methods]
            for key, v in d["means"].items():
                m, f = key.rsplit("@", 1)
                means[(m, float(f))] = v
        args.methods = [m for m in METHODS if m in methods]
    else:
        means, seconds = run(images, args.frequencies, args.methods, weights=args.weights,
                             missing_fraction=args.missing_fraction, short_side=args.short_side)
    size = f"short side resized to {args.short_side} px" if args.short_side else "native size (Wang 256×256, Paris 256 px short side)"
    caption = (
        f"Inpainting quality on {len(images)} held-out images (a class-stratified subset of "
        f"`{Path(args.split_file).name}`, {size}), fringe masks with {args.missing_fraction:.0%} missing "
        f"(vertical fringes, phase 0), whole-image PSNR (dB) / SSIM / FSIM; best per column in bold; "
        f"s/image = mean seconds per inpainting on one CPU thread (shared 2-core machine). "
        f"Run: `python benchmarks/inpainting.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
        f"({time.perf_counter() - t0:.0f} s)."
    )
    table = markdown_table(means, seconds, args.frequencies, args.methods, caption)
    print(table)
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(table)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(
            {"images": [str(x) for x in images], "seconds_per_image": seconds,
             "means": {f"{m}@{f:g}": v for (m, f), v in means.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
