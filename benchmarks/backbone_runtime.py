"""The backbones' speed on a CPU: torch (eager, fp32, channels_last) against ONNX Runtime, in one run.

    python benchmarks/backbone_runtime.py                      # MobileNetV2 and ResNet-50, 1 thread
    python benchmarks/backbone_runtime.py --backbones vgg16 --threads 2

For each backbone (random weights: speed does not depend on them) the same extractor is loaded with
``runtime="torch"`` and ``runtime="onnx"`` (:mod:`cbir_dist.features.onnx_runtime`; the export is made
in memory and not timed), warmed up on 2 images, then timed on ``--repeats`` batches of ``--batch``
images of ``--size`` + 32 px a side (the median batch is printed; the two runtimes alternate, so a
change in the machine's speed falls on both) (the resize is then a no-op and the crop a copy: the figure is the network's).
Prints ms per image for both, their ratio, the largest norm-relative difference of the two runtimes'
features, and the load average (``os.getloadavg()``) around each measurement: on a shared machine the
figures move with it. Targets on one thread, batch 32, 224 px: MobileNetV2 <= 10 ms, ResNet-50 <= 80 ms.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _images(n: int, side: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    base = np.stack([xx * 255 / side, yy * 255 / side, (xx + yy) * 127 / side], axis=2)
    return [np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def _once(model, images) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    feats = model(images)
    return (time.perf_counter() - t0) / len(images), feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", nargs="+", default=["mobilenet_v2", "resnet50"])
    ap.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--batch", type=int, default=32, help="images in the timed batch (default 32)")
    ap.add_argument("--size", type=int, default=224, help="crop fed to the network (default 224)")
    ap.add_argument("--repeats", type=int, default=3, help="timed batches per runtime; the median is printed")
    args = ap.parse_args()

    import logging

    import torch

    from cbir_dist.features.backbones import load_backbone, resize_size

    logging.disable(logging.INFO)  # the export's notes
    torch.set_num_threads(args.threads)
    images = _images(args.batch, resize_size(args.size))
    print(f"cpu, {args.threads} thread(s), batch {args.batch}, {args.size} px, random weights; "
          f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'backbone':<14}{'torch ms/img':>14}{'onnxruntime ms/img':>20}{'ratio':>8}{'max rel diff':>14}"
          f"{'load avg 1 min':>16}")
    for name in args.backbones:
        kw = dict(device="cpu", image_size=args.size, batch_size=args.batch, num_threads=args.threads)
        models = {rt: load_backbone(name, "random", runtime=rt, **kw) for rt in ("torch", "onnx")}
        for m in models.values():
            m(images[:2])  # warm-up: kernel selection, first allocations
        times, feats = {rt: [] for rt in models}, {}
        for _ in range(args.repeats):
            for rt, m in models.items():
                t, feats[rt] = _once(m, images)
                times[rt].append(t)
        del models
        t_torch, t_onnx = float(np.median(times["torch"])), float(np.median(times["onnx"]))
        f_torch, f_onnx = feats["torch"], feats["onnx"]
        rel = float((np.linalg.norm(f_onnx - f_torch, axis=1) / np.linalg.norm(f_torch, axis=1)).max())
        print(f"{name:<14}{t_torch * 1e3:>14.1f}{t_onnx * 1e3:>20.1f}{t_torch / t_onnx:>7.2f}x{rel:>14.1e}"
              f"{os.getloadavg()[0]:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
