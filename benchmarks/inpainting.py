"""Inpainting quality and speed per fringe frequency on the held-out split: none, telea, ns, biharmonic, two-stage.

Protocol (the targets of docs/inpainting.md): every image of ``cbir_dist/weights/two_stage_split.txt``
(125 files never trained on, native size: Wang 256x384, Paris 256 px short side), fringe masks at
the 8 frequencies with 25 % missing, vertical fringes, and ``--phases`` phases per frequency: phase
0, then ``np.random.default_rng([seed, round(f * 1000), r]).uniform(0, pi)`` for repeat r (the rule
of ``cbir_dist.evaluation.damaged.mask_phase``). Whole-image PSNR, SSIM and FSIM
(``cbir_dist.evaluation.metrics``) of each reconstruction against the original; each image's
scores are averaged over the phases first, then the table gives mean ± std over images. ms/image
is the mean time of one inpainting call on one CPU thread, every method timed on every case in
the same pass (interleaved, so a busy machine slows all of them alike); the network's time is end
to end (Telea pre-fill + network + paste). ``--timing`` adds the median ms on one 256x256 image
(the 3x-Telea target). Prints one markdown table (``--out-md`` writes it) with the network's
margins over the best classical method (Telea or NS) per frequency; ``--figure`` draws one image
at 0.5, 2 and 6 Hz through every inpainter.

    OMP_NUM_THREADS=1 python benchmarks/inpainting.py --out-md runs/inpainting.md --out-json runs/inpainting.json \\
        --figure docs/inpainting_examples.png --timing
"""

from __future__ import annotations

import argparse
import json
import logging
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
METHODS = ("none", "telea", "ns", "biharmonic", "two-stage")
CLASSICAL_BEST = ("telea", "ns")  # the targets compare the network with the better of these
METRICS = ("psnr", "ssim", "fsim")
FIGURE_FREQUENCIES = (0.5, 2.0, 6.0)

log = logging.getLogger("benchmarks.inpainting")


def phase_of(seed: int, frequency: float, repeat: int) -> float:
    """The evaluation job's phase rule (``mask_phase``): 0 for the first repeat, then a seeded draw in [0, π)."""
    from cbir_dist.evaluation.damaged import mask_phase

    return mask_phase(seed, frequency, repeat)


def build_inpainters(methods, weights=None) -> dict:
    """Name -> inpainter; ``weights`` (shipped-style .pt with its JSON, or a checkpoint/snapshot) for two-stage."""
    from cbir_dist.damage.inpaint import get_inpainter

    out = {}
    for m in methods:
        if m == "two-stage" and weights:
            from cbir_dist.damage.inpaint.two_stage import from_checkpoint

            w = Path(weights)
            out[m] = (get_inpainter(m, weights=w, device="cpu") if w.with_suffix(".json").is_file()
                      else from_checkpoint(w, "cpu"))
        else:
            out[m] = get_inpainter(m, **({"device": "cpu"} if m == "two-stage" else {}))
    return out


def evaluate(images, names, inpainters: dict, frequencies, phases: int, seed: int = 0, missing_fraction: float = 0.25):
    """Scores and times: ``scores[method][f]`` = (n_images, phases, 3) array of PSNR/SSIM/FSIM, ``seconds[method]``."""
    from cbir_dist.damage.masks import fringe_mask
    from cbir_dist.evaluation.metrics import FsimReference, psnr, ssim

    scores = {m: {f: np.zeros((len(images), phases, 3)) for f in frequencies} for m in inpainters}
    seconds = {m: 0.0 for m in inpainters}
    calls = 0
    for i, img in enumerate(images):
        ref = FsimReference(img)
        for f in frequencies:
            for r in range(phases):
                known = fringe_mask(img.shape[0], img.shape[1], f, missing_fraction=missing_fraction, angle=0.0,
                                    phase=phase_of(seed, f, r))
                for m, inp in inpainters.items():
                    t = time.perf_counter()
                    rec = inp(img, known)
                    seconds[m] += time.perf_counter() - t
                    if not np.array_equal(rec[known], img[known]):
                        raise AssertionError(f"{m} changed known pixels of {names[i]} at {f} Hz")
                    scores[m][f][i, r] = (min(psnr(img, rec), 100.0), ssim(img, rec), ref.score(rec))
                calls += 1
        log.info("%d/%d %s", i + 1, len(images), names[i])
    return scores, {m: s / max(1, calls) for m, s in seconds.items()}


def summarise(scores) -> dict:
    """``{method: {f: {psnr_mean, psnr_std, ssim_mean, ...}}}``: phases averaged per image, then mean/std over images."""
    out = {}
    for m, per_f in scores.items():
        out[m] = {}
        for f, arr in per_f.items():
            per_image = arr.mean(axis=1)
            out[m][f] = {f"{k}_{s}": float(getattr(per_image[:, j], s)()) for j, k in enumerate(METRICS)
                         for s in ("mean", "std")}
    return out


def margins(summary, network: str = "two-stage") -> dict:
    """Per frequency: the network minus the best of Telea/NS, in PSNR and SSIM, and whether the targets hold."""
    out = {}
    for f, s in summary[network].items():
        best = {k: max(summary[c][f][f"{k}_mean"] for c in CLASSICAL_BEST if c in summary) for k in ("psnr", "ssim")}
        dp, ds = s["psnr_mean"] - best["psnr"], s["ssim_mean"] - best["ssim"]
        out[f] = {"dpsnr": dp, "dssim": ds, "ok": bool(dp >= 0.5 and ds >= 0)}
    return out


def time_256(methods, inpainters, img, repeats: int = 20, frequency: float = 1.0) -> dict:
    """Median ms of each method on one 256x256 image with one 1 Hz mask, interleaved, one thread."""
    from cbir_dist.damage.masks import fringe_mask

    known = fringe_mask(256, 256, frequency)
    for inp in inpainters.values():
        inp(img, known)  # warm-up
    times = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            t = time.perf_counter()
            inpainters[m](img, known)
            times[m].append(time.perf_counter() - t)
    return {m: 1000 * float(np.median(v)) for m, v in times.items()}


def markdown(summary, seconds, ms256, frequencies, caption: str) -> str:
    methods = list(summary)
    lines = [caption, ""]
    head = "| Hz | metric | " + " | ".join(methods) + (" | two-stage − best(telea, ns) |" if "two-stage" in methods else " |")
    lines += [head, "|---:|---|" + "---:|" * len(methods) + ("---:|" if "two-stage" in methods else "")]
    mg = margins(summary) if "two-stage" in methods else {}
    for f in frequencies:
        for k, fmt in (("psnr", "{:.2f} ± {:.2f}"), ("ssim", "{:.4f} ± {:.4f}"), ("fsim", "{:.4f} ± {:.4f}")):
            best = max(summary[m][f][f"{k}_mean"] for m in methods)
            cells = []
            for m in methods:
                v = fmt.format(summary[m][f][f"{k}_mean"], summary[m][f][f"{k}_std"])
                cells.append(f"**{v}**" if summary[m][f][f"{k}_mean"] == best else v)
            extra = ""
            if mg and k in ("psnr", "ssim"):
                d = mg[f]["dpsnr" if k == "psnr" else "dssim"]
                ok = d >= (0.5 if k == "psnr" else 0.0)
                extra = f" {d:+.2f} {'✓' if ok else '✗'} |" if k == "psnr" else f" {d:+.4f} {'✓' if ok else '✗'} |"
            elif mg:
                extra = " |"
            lines.append(f"| {f:g} | {k.upper()} | " + " | ".join(cells) + " |" + extra)
    lines += ["", "| | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    lines.append("| ms / image (mean over the cases above, 1 thread) | " + " | ".join(f"{1000 * seconds[m]:.1f}" for m in methods) + " |")
    lines.append("| × Telea | " + " | ".join(f"{seconds[m] / seconds['telea']:.2f}" if "telea" in seconds else "" for m in methods) + " |")
    if ms256:
        lines.append("| ms / 256×256 image (median) | " + " | ".join(f"{ms256[m]:.1f}" for m in methods) + " |")
        lines.append("| × Telea at 256×256 | " + " | ".join(f"{ms256[m] / ms256['telea']:.2f}" if "telea" in ms256 else "" for m in methods) + " |")
    if mg:
        ok_q = all(v["ok"] for v in mg.values())
        speed = (ms256 or {}).get("two-stage", 0) / (ms256 or {}).get("telea", 1) if ms256 else seconds["two-stage"] / seconds["telea"]
        lines += ["", f"Targets: PSNR ≥ best + 0.5 dB and SSIM ≥ best at every frequency: **{'met' if ok_q else 'not met'}**"
                      f" (smallest PSNR margin {min(v['dpsnr'] for v in mg.values()):+.2f} dB, smallest SSIM margin "
                      f"{min(v['dssim'] for v in mg.values()):+.4f}); time ≤ 3 × Telea: **{'met' if speed <= 3 else 'not met'}** "
                      f"({speed:.2f} ×{' at 256×256' if ms256 else ''})."]
    return "\n".join(lines) + "\n"


def figure(image, name, inpainters: dict, path, seed: int = 0, missing_fraction: float = 0.25) -> None:
    """One image at 0.5, 2 and 6 Hz (phase 0): a column per frequency, a row per inpainter (PSNR in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cbir_dist.damage.masks import fringe_mask
    from cbir_dist.evaluation.metrics import psnr

    rows = ["original", *inpainters]
    fig, axes = plt.subplots(len(rows), len(FIGURE_FREQUENCIES), figsize=(3.0 * len(FIGURE_FREQUENCIES), 2.3 * len(rows)),
                             squeeze=False)
    for c, f in enumerate(FIGURE_FREQUENCIES):
        known = fringe_mask(image.shape[0], image.shape[1], f, missing_fraction=missing_fraction, phase=0.0)
        for r, m in enumerate(rows):
            ax = axes[r][c]
            if m == "original":
                ax.imshow(image)
                ax.set_title(f"{f:g} Hz: original", fontsize=8)
            else:
                rec = inpainters[m](image, known)
                ax.imshow(rec)
                ax.set_title(f"{m if m != 'none' else 'damaged (none)'}: {psnr(image, rec):.2f} dB", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{name}, fringe masks 25 % missing, phase 0", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"), help="folder the split paths are relative to")
    p.add_argument("--split-file", default=str(REPO / "cbir_dist" / "weights" / "two_stage_split.txt"))
    p.add_argument("--max-images", type=int, default=0, help="class-stratified subset of the split (0 = all 125)")
    p.add_argument("--frequencies", type=float, nargs="+", default=list(FREQUENCIES))
    p.add_argument("--phases", type=int, default=3, help="phases per frequency (>= 3 for the targets)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--missing-fraction", type=float, default=0.25)
    p.add_argument("--weights", help="two-stage weights: a .pt with its JSON, or a training checkpoint/snapshot "
                                     "(default: the shipped file)")
    p.add_argument("--seed", type=int, default=0, help="seed of the phase rule (the evaluation job's --seed)")
    p.add_argument("--timing", action="store_true", help="also the median ms per 256x256 image (--timing-repeats)")
    p.add_argument("--timing-repeats", type=int, default=20)
    p.add_argument("--figure", metavar="PNG", help="write the figure of one image at 0.5, 2, 6 Hz through every inpainter")
    p.add_argument("--figure-image", help="its path relative to --data-root (default: the first held-out Paris image)")
    p.add_argument("--out-md", help="also write the table here")
    p.add_argument("--out-json", help="also write the summary, margins and times here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from cbir_dist.io.images import read_image
    from cbir_dist.training.data import read_split_file, stratified_subset

    rel = stratified_subset(read_split_file(args.split_file), args.max_images or None)
    root = Path(args.data_root)
    inpainters = build_inpainters(args.methods, args.weights)
    t0 = time.time()
    images = [read_image(root / r) for r in rel]
    scores, seconds = evaluate(images, rel, inpainters, args.frequencies, args.phases, args.seed, args.missing_fraction)
    summary = summarise(scores)
    ms256 = None
    if args.timing:
        paris = next((i for i, r in enumerate(rel) if "paris" in r), 0)
        img = images[paris]
        crop = (np.ascontiguousarray(img[:256, :256]) if min(img.shape[:2]) >= 256
                else cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA))
        ms256 = time_256(args.methods, inpainters, crop, args.timing_repeats)
    run = f"`python benchmarks/inpainting.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
    caption = (f"Held-out split ({len(rel)} images of `{Path(args.split_file).name}`, native size), fringe masks "
               f"{args.missing_fraction:.0%} missing, vertical, {args.phases} phase(s) per frequency (phase 0 and the "
               f"evaluation's seeded draws, seed {args.seed}); mean ± std over images of the per-image mean over phases; "
               f"best per row in bold. Weights: {args.weights or 'shipped cbir_dist/weights/two_stage.pt'}. "
               f"Run: {run} ({time.time() - t0:.0f} s, load average {os.getloadavg()[0]:.1f} at the end).")
    table = markdown(summary, seconds, ms256, args.frequencies, caption)
    print(table)
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(table)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({
            "images": rel, "phases": args.phases, "frequencies": args.frequencies, "weights": args.weights,
            "summary": {m: {f"{f:g}": v for f, v in s.items()} for m, s in summary.items()},
            "margins": {f"{f:g}": v for f, v in margins(summary).items()} if "two-stage" in summary else None,
            "ms_per_image": {m: 1000 * s for m, s in seconds.items()}, "ms_256": ms256}, indent=2))
    if args.figure:
        name = args.figure_image or next((r for r in rel if "paris" in r), rel[0])
        figure(read_image(root / name), name, inpainters, args.figure, args.seed, args.missing_fraction)
    return 0


if __name__ == "__main__":
    sys.exit(main())
