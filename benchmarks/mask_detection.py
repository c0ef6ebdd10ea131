"""How well the mask estimator finds the missing region, per fill and frequency, on the held-out split.

Protocol (issue 21's targets): every image of ``cbir_dist/weights/two_stage_split.txt`` (files the
estimator and the inpainter never trained on, native size), damaged by

* a fringe mask at each of the 8 frequencies (25 % missing, angle 0, phase drawn per image and
  frequency from ``default_rng([seed, f*1000, i])``), or a free-form mask (``irregular_mask`` with
  a generator seeded by the image's index);
* its holes filled with zero, white or one flat colour (drawn per image);
* then JPEG at ``--quality`` (75) — and, in the "resized" rows, damage at twice the size, an area
  resize back, then JPEG;

and each image undamaged (JPEG only). For every case the network (:func:`estimate_known_mask`'s
estimator) and the classical baseline (:func:`classical_known_mask`) estimate the known mask; the
table gives the IoU of the estimated missing region with the true one, mean and worst image, per
fill and damage, and for undamaged photos the share of pixels marked missing (mean and worst).
Timing: the median ms of the network on one 256×256 image on one thread (``OMP_NUM_THREADS=1``,
ONNX Runtime with one intra-op thread), beside the baseline's.

    OMP_NUM_THREADS=1 python benchmarks/mask_detection.py --out-md runs/mask_detection.md --out-json runs/mask_detection.json \\
        --figure docs/mask_detection_examples.jpg

Retrieval with estimated masks (P@1 within 1 point of the true masks) is measured by the
evaluation job: ``cbir-dist evaluate ... --detect-mask`` (docs/mask_detection.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FREQUENCIES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0)
FILLS = ("zero", "white", "colour")
TARGET_MEAN, TARGET_WORST, TARGET_INTACT, TARGET_MS = 0.95, 0.8, 0.005, 20.0


def fill_value(fill: str, rng: np.random.Generator):
    return {"zero": (0, 0, 0), "white": (255, 255, 255)}.get(fill) or tuple(int(v) for v in rng.integers(0, 256, 3))


def damage_cases(img: np.ndarray, index: int, seed: int, fills, frequencies, quality: int, resized: bool):
    """Yield ``(fill, damage, damaged, true_known)`` for one image."""
    import cv2

    from cbir_dist.damage.masks import fringe_mask, irregular_mask
    from cbir_dist.training.mask_estimator import fill_holes, jpeg

    h, w = img.shape[:2]
    scale = 2 if resized else 1
    big = img if scale == 1 else cv2.resize(img, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
    masks = [(f"{f:g} Hz", fringe_mask(h * scale, w * scale, f, 0.25, angle=0.0,
                                        phase=float(np.random.default_rng([seed, round(f * 1000), index]).uniform(0, np.pi))))
             for f in frequencies]
    masks.append(("free-form", irregular_mask(h * scale, w * scale, np.random.default_rng([seed, 7, index]))))
    for fill in fills:
        rng = np.random.default_rng([seed, 11, index, FILLS.index(fill)])
        value = fill_value(fill, rng)
        for name, known in masks:
            damaged = fill_holes(big, known, value)
            truth = known
            if scale != 1:
                damaged = cv2.resize(damaged, (w, h), interpolation=cv2.INTER_AREA)
                truth = cv2.resize(known.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.5
            yield fill, name, jpeg(damaged, quality), truth


def time_256(estimators: dict, img: np.ndarray, repeats: int = 20) -> dict:
    import cv2

    sq = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)
    out = {}
    for name, est in estimators.items():
        est(sq)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            est(sq)
            times.append(time.perf_counter() - t)
        out[name] = 1e3 * float(np.median(times))
    return out


#: The figure's cases: (held-out index, damage, frequency, fill); the last two are the failure the
#: estimator cannot resolve (a night photo whose sky is as black as a hole).
FIGURE_CASES = ((9, "fringe", 6.0, (0, 0, 0)), (60, "free-form", 0.0, (0, 0, 0)), (100, "fringe", 2.0, (255, 255, 255)),
                (30, "fringe", 4.0, (40, 160, 90)), (2, "fringe", 6.0, (0, 0, 0)), (2, "undamaged", 0.0, None))


def figure(paths, estimator, out, quality: int = 75, width: int = 224) -> None:
    """Rows of: the damaged photo (JPEG), the region found (red), the true one (blue), at ``width`` px."""
    import cv2

    from cbir_dist.damage.masks import fringe_mask, irregular_mask
    from cbir_dist.io.images import read_image
    from cbir_dist.training.mask_estimator import fill_holes, iou_missing, jpeg

    def label(im, text):
        im = im.copy()
        cv2.rectangle(im, (0, 0), (im.shape[1], 16), (255, 255, 255), -1)
        cv2.putText(im, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        return im

    def tint(im, missing, colour):
        im = im.copy()
        im[missing] = (0.4 * im[missing] + 0.6 * np.array(colour)).astype(np.uint8)
        return im

    rows = []
    for i, damage, f, fill in FIGURE_CASES:
        img = read_image(paths[i])
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        img = cv2.resize(img, (width, width), interpolation=cv2.INTER_AREA)
        known = (fringe_mask(width, width, f, 0.25, phase=0.9) if damage == "fringe" else
                 irregular_mask(width, width, np.random.default_rng(3)) if damage == "free-form" else
                 np.ones((width, width), bool))
        damaged = jpeg(img if fill is None else fill_holes(img, known, fill), quality)
        found = estimator(damaged)
        name = (f"fringe {f:g} Hz" if damage == "fringe" else damage) + ("" if fill is None else f", fill {fill}")
        score = f"IoU {iou_missing(found, known):.3f}" if fill is not None else f"{100 * (~found).mean():.1f}% marked"
        rows.append(np.concatenate([label(damaged, f"{name}, JPEG q{quality}"),
                                    label(tint(damaged, ~found, (230, 30, 30)), "found (red): " + score),
                                    label(tint(damaged, ~known, (30, 90, 230)), "true missing (blue)")], 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    cv2.imwrite(str(out), np.concatenate(rows[:-1], 0)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"), help="folder the split paths are relative to")
    p.add_argument("--split", default=str(REPO / "cbir_dist" / "weights" / "two_stage_split.txt"))
    p.add_argument("--weights", help="mask estimator weights (default: the shipped ones)")
    p.add_argument("--max-images", type=int, help="only the first N held-out images")
    p.add_argument("--quality", type=int, default=75, help="JPEG quality after the damage")
    p.add_argument("--fills", default=",".join(FILLS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resized", action="store_true", help="skip the rows damaged at twice the size, then resized")
    p.add_argument("--figure", help="also draw examples (found vs true regions) to this JPEG")
    p.add_argument("--out-md")
    p.add_argument("--out-json")
    args = p.parse_args(argv)

    from cbir_dist.damage.detect import classical_known_mask, load_estimator
    from cbir_dist.io.images import read_image
    from cbir_dist.training.data import read_split_file
    from cbir_dist.training.mask_estimator import iou_missing, jpeg

    net = load_estimator(args.weights, num_threads=1) if args.weights else load_estimator(num_threads=1)
    estimators = {"network": net, "classical": classical_known_mask}
    paths = [Path(args.data_root) / r for r in read_split_file(args.split)][: args.max_images]
    fills = [f for f in args.fills.split(",") if f]
    iou: dict[tuple, list[float]] = {}
    intact: dict[str, list[float]] = {n: [] for n in estimators}
    intact_names: dict[str, list[str]] = {}
    t0 = time.monotonic()
    for i, path in enumerate(paths):
        img = read_image(path)
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        for resized in (False,) if args.no_resized else (False, True):
            for fill, damage, damaged, truth in damage_cases(img, i, args.seed, fills, FREQUENCIES, args.quality, resized):
                for name, est in estimators.items():
                    iou.setdefault((name, "resized ×2" if resized else "as damaged", fill, damage), []).append(
                        (iou_missing(est(damaged), truth), path.name))
        clean = jpeg(img, args.quality)
        for name, est in estimators.items():
            intact[name].append(float((~est(clean)).mean()))
            intact_names.setdefault(name, []).append(path.name)
        if (i + 1) % 25 == 0:
            print(f"  {i + 1}/{len(paths)} images, {time.monotonic() - t0:.0f} s", file=sys.stderr)
    if args.figure:
        figure([Path(args.data_root) / r for r in read_split_file(args.split)], net, args.figure, args.quality)
    ms = time_256(estimators, read_image(paths[0]) if read_image(paths[0]).ndim == 3 else
                  np.repeat(read_image(paths[0])[..., None], 3, axis=2))

    rows = []
    for (name, size, fill, damage), vals in sorted(iou.items(), key=lambda kv: (kv[0][0], kv[0][1], FILLS.index(kv[0][2]),
                                                                                  kv[0][3] == "free-form", kv[0][3])):
        ranked = sorted(vals)
        rows.append({"estimator": name, "size": size, "fill": fill, "damage": damage,
                     "iou_mean": float(np.mean([v for v, _ in vals])), "iou_worst": float(ranked[0][0]),
                     "worst_image": ranked[0][1], "iou_second_worst": float(ranked[1][0]) if len(ranked) > 1 else None,
                     "n": len(vals)})
    lines = [f"Mask estimation on {len(paths)} held-out images, JPEG q{args.quality}; IoU of the missing region "
             f"(mean / worst image). Targets (zero fill, free-form and every frequency, as damaged): mean ≥ {TARGET_MEAN}, "
             f"worst ≥ {TARGET_WORST}.", ""]
    for size in ("as damaged", "resized ×2"):
        sel = [r for r in rows if r["size"] == size]
        if not sel:
            continue
        damages = [f"{f:g} Hz" for f in FREQUENCIES] + ["free-form"]
        lines += [f"**{size}**", "", "| estimator | fill | " + " | ".join(damages) + " |",
                  "|---|---|" + "---:|" * len(damages)]
        for name in estimators:
            for fill in fills:
                cells = {r["damage"]: r for r in sel if r["estimator"] == name and r["fill"] == fill}
                lines.append(f"| {name} | {fill} | " + " | ".join(
                    f"{cells[d]['iou_mean']:.3f} / {cells[d]['iou_worst']:.3f}" for d in damages) + " |")
        lines.append("")
    lines += ["| estimator | undamaged photos: pixels marked missing, mean | worst image | ms per 256×256 image, one thread |",
              "|---|---:|---:|---:|"]
    for name in estimators:
        lines.append(f"| {name} | {100 * np.mean(intact[name]):.3f} % | {100 * np.max(intact[name]):.3f} % | {ms[name]:.1f} |")
    zero = [r for r in rows if r["estimator"] == "network" and r["size"] == "as damaged" and r["fill"] == "zero"]
    worst = sorted({r["worst_image"] for r in zero})
    lines += ["", f"Worst image of the network's zero-fill cells: {', '.join(worst)}; the second worst per cell: "
              + ", ".join(f"{r['damage']} {r['iou_second_worst']:.3f}" for r in zero)]
    marked = sorted(zip(intact["network"], intact_names["network"]), reverse=True)
    lines += [f"Undamaged photos the network marks more than 0.5 % of: {sum(v > 0.005 for v, _ in marked)} of "
              f"{len(marked)} (" + ", ".join(f"{n} {100 * v:.1f} %" for v, n in marked if v > 0.005) + ")"]
    met = {
        "iou_mean": all(r["iou_mean"] >= TARGET_MEAN for r in zero),
        "iou_worst": all(r["iou_worst"] >= TARGET_WORST for r in zero),
        "intact": float(np.mean(intact["network"])) <= TARGET_INTACT,
        "ms": ms["network"] <= TARGET_MS,
    }
    lines += ["", "Targets met (network, zero fill): " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()),
              f"load average at the end: {os.getloadavg()[0]:.2f}"]
    text = "\n".join(lines)
    print(text)
    if args.out_md:
        Path(args.out_md).write_text(text + "\n")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"rows": rows, "intact": {k: {"mean": float(np.mean(v)), "max": float(np.max(v)),
                                                                                "per_image": dict(zip(intact_names[k], v))}
                                                                            for k, v in intact.items()},
                                                   "ms_256": ms, "targets_met": met, "images": len(paths),
                                                   "quality": args.quality}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
